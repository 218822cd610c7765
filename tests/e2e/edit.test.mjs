// A full edit through the UI with the built-in demo model: the worker loads it, the page sends an edit,
// progress is shown, the result appears, and it equals the native CLI's output for the same seed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir, homedir } from 'node:os';
import { join } from 'node:path';
import { serveDist, launch, screenshot } from './browser.mjs';

const REFERENCE = 'tests/fixtures/tiny/golden/reference_input.png';
const PROMPT = 'Make the red square blue and add a small yellow sun in the sky';
const SEED = '1234';
const SIDE = 128; // area 128² keeps SwiftShader fast: 144×96 output, 54 noise + 54 reference tokens
const TARGET = process.env.CARGO_TARGET_DIR ?? join(homedir(), '.cache', 'kontext-web', 'target');

let served;
let browser;
before(async () => {
  served = await serveDist();
  browser = await launch({ webgpu: true });
  await browser.page.goto(served.url);
});
after(async () => { await browser.close(); served.server.close(); });

async function setNumber(page, selector, value) {
  await page.fill(selector, String(value));
  await page.dispatchEvent(selector, 'change');
}

/** PSNR in dB of two PNGs (given as base64), decoded by the browser. */
async function psnr(page, a, b) {
  return page.evaluate(async ([a, b]) => {
    const pixels = async (b64) => {
      const bitmap = await createImageBitmap(await (await fetch(`data:image/png;base64,${b64}`)).blob());
      const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
      const ctx = canvas.getContext('2d');
      ctx.drawImage(bitmap, 0, 0);
      return { w: bitmap.width, h: bitmap.height, data: ctx.getImageData(0, 0, bitmap.width, bitmap.height).data };
    };
    const [x, y] = [await pixels(a), await pixels(b)];
    if (x.w !== y.w || x.h !== y.h) return { error: `${x.w}×${x.h} vs ${y.w}×${y.h}` };
    let sum = 0, n = 0;
    for (let i = 0; i < x.data.length; i++) { if (i % 4 === 3) continue; const d = x.data[i] - y.data[i]; sum += d * d; n++; }
    const mse = sum / n;
    return { psnr: mse === 0 ? Infinity : 10 * Math.log10(255 * 255 / mse), w: x.w, h: x.h };
  }, [a, b]);
}

test('the demo model loads in the worker with measured progress', async () => {
  const { page } = browser;
  await page.click('#load-demo');
  await page.waitForSelector('#model-state[data-state="loaded"]', { timeout: 120_000 });
  assert.match(await page.textContent('#model-state'), /Loaded: .*MB · DiT width 64, 2 double \+ 2 single blocks, 4 heads/);
});

test('an edit through the UI equals the native CLI for the same seed (PSNR ≥ 40 dB)', async () => {
  const { page } = browser;
  await page.setInputFiles('#reference-input', REFERENCE);
  await page.waitForSelector('.thumbs img');
  await page.fill('#prompt', PROMPT);
  await setNumber(page, '#area', SIDE);
  await setNumber(page, '#steps', 4);
  await page.fill('#seed', SEED);
  await page.click('#generate');
  await page.waitForSelector('#job[data-state="running"]', { timeout: 10_000 });
  await page.waitForSelector('#job[data-state="done"]', { timeout: 300_000 });
  const caption = await page.textContent('.result figcaption');
  assert.match(caption, /144×96 · seed 1234/);
  await screenshot(page, 'edit-result');
  const browserPng = await page.evaluate(async () => {
    const blob = await (await fetch(document.querySelector('#result-image').src)).blob();
    const bytes = new Uint8Array(await blob.arrayBuffer());
    let s = ''; for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s);
  });

  const dir = mkdtempSync(join(tmpdir(), 'kontext-native-'));
  try {
    const out = join(dir, 'native.png');
    execFileSync(join(TARGET, 'debug', 'kontext'), ['edit', '--model', 'tests/fixtures/tiny/FLUX.1-Kontext-dev-tiny',
      '--prompt', PROMPT, '--image', REFERENCE, '--max-area', String(SIDE * SIDE), '--steps', '4', '--guidance', '2.5',
      '--seed', SEED, '--backend', 'wgpu', '--out', out], { stdio: 'pipe' });
    const result = await psnr(page, browserPng, readFileSync(out).toString('base64'));
    assert.equal(result.error, undefined, result.error);
    assert.ok(result.psnr >= 40, `PSNR ${result.psnr} dB`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(browser.problems, []);
});

test('cancel stops a long edit within a step and the worker takes the next job', async () => {
  const { page } = browser;
  await setNumber(page, '#steps', 60);
  await page.click('#generate');
  await page.waitForFunction(() => /denoising: [1-9]/.test(document.querySelector('#job-phase')?.textContent ?? ''), null, { timeout: 120_000 });
  await page.click('#cancel');
  await page.waitForSelector('#job[data-state="cancelled"]', { timeout: 60_000 });
  await setNumber(page, '#steps', 1);
  await page.click('#generate');
  await page.waitForSelector('#job[data-state="done"]', { timeout: 120_000 });
  assert.deepEqual(browser.problems, []);
});
