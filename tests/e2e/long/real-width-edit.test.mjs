// The long browser tests, run by `make test-long` (not by `make test`, to keep CI within its time): a real-width edit
// in Chromium (WebGPU on SwiftShader, about 8 minutes here) equals the native CLI's on the same ComfyUI file set
// (issue 14, point 4).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runNative, psnr, REFERENCE, requireRealWidth, REAL_WIDTH_FILES, COMFY_FILES } from '../browser.mjs';
import { openEmbedHarness, answer, editPng } from '../embed-parent.mjs';
import { folderFiles } from '../host-server.mjs';

let harness, page;
const problems = [];

before(async () => {
  requireRealWidth();
  harness = await openEmbedHarness(folderFiles(REAL_WIDTH_FILES), problems);
  harness.host.control.refuseHead = false; // hosting as it is has tests/e2e/hosting.test.mjs
  page = harness.page;
  const source = Object.fromEntries(Object.entries(COMFY_FILES).map(([part, file]) => [part, `${harness.host.hub}/m/${file}`]));
  await page.evaluate((source) => send({ type: 'kontext:load', id: 'model', source }), source);
  const loaded = await answer(page, 'model', 'kontext:loaded', 1_200_000);
  assert.equal(loaded.type, 'kontext:loaded', loaded.message);
});
after(() => harness.close());

test('a real-width edit in Chromium equals the native CLI on the same four files (PSNR ≥ 40 dB)', async () => {
  const [prompt, seed, size] = ['Make the red square blue', 31, 32];
  const started = Date.now();
  const png = await editPng(page, 'real', REFERENCE, { prompt, width: size, height: size, steps: 1, seed });
  const browserSeconds = (Date.now() - started) / 1000;
  const dir = mkdtempSync(join(tmpdir(), 'kontext-real-width-'));
  try {
    const out = join(dir, 'native.png');
    const files = Object.entries(COMFY_FILES).flatMap(([part, file]) => [`--${part}`, join(REAL_WIDTH_FILES, file)]);
    runNative(['edit', ...files, '--prompt', prompt, '--image', REFERENCE, '--width', String(size), '--height', String(size),
      '--max-area', String(size * size), '--steps', '1', '--guidance', '2.5', '--seed', String(seed), '--backend', 'wgpu', '--out', out]);
    const db = await psnr(page, png, readFileSync(out).toString('base64'));
    console.log(`real-width edit: Chromium ${browserSeconds.toFixed(0)} s, PSNR ${db.toFixed(1)} dB against the native CLI`);
    assert.ok(db >= 40, `PSNR ${db} dB`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(problems, []);
});
