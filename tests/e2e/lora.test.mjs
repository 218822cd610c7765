// LoRA adapters in the app: a file is added, checked against the loaded model, enabled at a strength and applied
// to an edit that equals the native CLI with the same `--lora FILE:WEIGHT` (±2 LSB; another strength and no LoRA
// are not); the recipe names it; the edit shows the upload of its factors, which a repeat with the same adapter
// and strength skips; a file that is not a LoRA for the model is refused with the reason; removing an adapter
// restores the base.
// A Turbo preset offers its catalog file when it is not stored and refuses a download that is not that file; a
// file of its name is taken for it, at the card's strength, steps and guidance, and the edit equals the native CLI.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { openApp, screenshot, setNumber, loadDemo, resultPng, maxPixelDifference, nativeEdit, REFERENCE } from './browser.mjs';

const LORA = 'tests/fixtures/tiny/lora/lora_kohya.safetensors';
const NOT_A_LORA = 'tests/fixtures/tiny/bfl_gguf/transformer_bfl.safetensors';
// Hyper-FLUX's real layout at tiny size (tests/fixtures/generator/turbo_lora_golden.py).
const TURBO = 'tests/fixtures/tiny/lora/hyper_flux_layout.safetensors';
const PROMPT = 'Make the red square blue';
const SEED = '77';
const SIDE = 128;

let browser;
before(async () => {
  browser = await openApp();
  await loadDemo(browser.page);
});
after(() => browser.close());

async function generate(page) {
  await page.click('#generate');
  await page.waitForSelector('#job[data-state="running"]', { timeout: 10_000 });
  await page.waitForSelector('#job[data-state="done"]', { timeout: 300_000 });
  return resultPng(page);
}

function native(extra) {
  return nativeEdit(['--prompt', PROMPT, '--image', REFERENCE, '--max-area', String(SIDE * SIDE), '--steps', '3', '--guidance', '2.5',
    '--seed', SEED, ...extra]);
}

test('a LoRA file is checked against the model, and a file that is not one is refused with the reason', async () => {
  const { page } = browser;
  await page.setInputFiles('#lora-input', [LORA, NOT_A_LORA]);
  await page.waitForSelector('#lora-list li[data-state="ready"]', { timeout: 60_000 });
  await page.waitForSelector('#lora-list li[data-state="rejected"]', { timeout: 60_000 });
  assert.match(await page.textContent('#lora-list li[data-state="ready"]'), /lora_kohya\.safetensors.*23 layers, rank 4/);
  const refusal = await page.textContent('#lora-list li[data-state="rejected"] [role="alert"]');
  assert.match(refusal, /no tensor matches a layer of this Flux model; expected LoRA names like/);
  assert.equal(await page.isDisabled('#lora-list li[data-state="rejected"] input[type="checkbox"]'), true);
  await page.click('[aria-label="remove transformer_bfl.safetensors"]');
  await page.waitForFunction(() => document.querySelectorAll('#lora-list li').length === 1);
  // In the narrow column the file's name keeps a line of its own (it was wrapped a few letters to a line).
  const lines = await page.$eval('#lora-list li .lora-name', (name) => name.getBoundingClientRect().height
    / parseFloat(getComputedStyle(name).lineHeight));
  assert.ok(lines < 1.5, `the name takes ${lines.toFixed(1)} lines`);
  await screenshot(page, 'lora-panel');
});

test('an edit with the LoRA at 0.5 equals the native CLI with --lora FILE:0.5, and its recipe names it', async () => {
  const { page } = browser;
  await page.setInputFiles('#reference-input', REFERENCE);
  await page.fill('#prompt', PROMPT);
  await setNumber(page, '#area', SIDE);
  await setNumber(page, '#steps', 3);
  await page.fill('#seed', SEED);
  await page.evaluate(() => {
    const slider = document.querySelector('[aria-label="strength of lora_kohya.safetensors"]');
    slider.value = '0.5';
    slider.dispatchEvent(new Event('input', { bubbles: true }));
  });
  assert.equal(await page.textContent('#lora-list .lora-strength'), '0.50');
  // Every phase text the edit shows, in order.
  const watchPhases = () => page.evaluate(() => {
    window.phasesSeen = [];
    window.phaseWatch?.disconnect();
    window.phaseWatch = new MutationObserver(() => {
      const text = document.querySelector('#job-phase')?.textContent;
      if (text && text !== window.phasesSeen.at(-1)) window.phasesSeen.push(text);
    });
    window.phaseWatch.observe(document.querySelector('#job'), { subtree: true, childList: true, characterData: true });
  });
  const phasesSeen = () => page.evaluate(() => window.phasesSeen.map((text) => text.split(':')[0]));
  await watchPhases();
  const withLora = await generate(page);
  const uploading = (await page.evaluate(() => window.phasesSeen)).filter((t) => t.startsWith('applying LoRA adapters'));
  assert.ok(uploading.some((t) => t.startsWith('applying LoRA adapters: 23/23')), `the upload's progress: ${uploading}`);
  // The same adapter at the same strength again keeps its factors on the device: nothing is uploaded, and the
  // image is the same.
  await watchPhases();
  assert.equal(await generate(page), withLora);
  const again = await phasesSeen();
  assert.ok(again.includes('denoising') && !again.includes('applying LoRA adapters'), `the repeat's phases: ${again}`);
  // The recipe is a flat JSON object in the PNG's `kontext-recipe` tEXt chunk.
  const recipe = JSON.parse(Buffer.from(withLora, 'base64').toString('latin1').match(/kontext-recipe\0(\{.*?\})/s)[1]);
  assert.deepEqual(recipe.loras, [['lora_kohya.safetensors', 0.5]]);
  const [nativeWith, nativeFull, nativeWithout] = [native(['--lora', `${LORA}:0.5`]), native(['--lora', `${LORA}:1`]), native([])];
  const lsb = await maxPixelDifference(page, withLora, nativeWith);
  assert.ok(lsb <= 2, `${lsb} LSB from the native CLI with the LoRA at 0.5`);
  // Negative controls: the LoRA at another strength, and no LoRA, fail the same comparison.
  for (const [what, other] of [['strength 1', nativeFull], ['no LoRA', nativeWithout]]) {
    const wrong = await maxPixelDifference(page, withLora, other);
    assert.ok(wrong > 2, `${what} is within ${wrong} LSB: the comparison cannot tell`);
  }

  await page.uncheck('#lora-list input[type="checkbox"]');
  const without = await generate(page);
  assert.notEqual(without, withLora);
  const baseLsb = await maxPixelDifference(page, without, nativeWithout);
  assert.ok(baseLsb <= 2, `${baseLsb} LSB from the native CLI without the LoRA`);
  assert.ok(await maxPixelDifference(page, without, nativeWith) > 2, 'unchecking the LoRA restores the base model');
  assert.deepEqual(browser.problems, []);
});

test('adapters and their settings survive a reload (IndexedDB) and are checked again when a model loads', async () => {
  const { page } = browser;
  // The list says when its writes to storage are done.
  await page.waitForSelector('#lora-list[aria-busy="false"]', { state: 'attached' });
  await page.reload();
  await page.waitForSelector('#lora-list li[data-state="ready"]', { timeout: 60_000 });
  assert.equal(await page.locator('#lora-list li').count(), 1);
  assert.match(await page.textContent('#lora-list li'), /lora_kohya\.safetensors.*checked when a model is loaded/);
  assert.equal(await page.textContent('#lora-list .lora-strength'), '0.50');
  assert.equal(await page.isChecked('#lora-list input[type="checkbox"]'), false);
  await loadDemo(page);
  await page.waitForFunction(() => /23 layers, rank 4/.test(document.querySelector('#lora-list li')?.textContent ?? ''));
  await page.click('[aria-label="remove lora_kohya.safetensors"]');
  await page.waitForFunction(() => document.querySelectorAll('#lora-list li').length === 0);
  await page.waitForSelector('#lora-list[aria-busy="false"]', { state: 'attached' });
  await page.reload();
  await page.waitForSelector('#model-panel');
  await new Promise((resolve) => setTimeout(resolve, 1000));
  assert.equal(await page.locator('#lora-list li').count(), 0, 'a removed adapter stays removed');
  assert.deepEqual(browser.problems, []);
});

test('a Turbo preset offers its LoRA from the catalog and refuses a download that is not it; a file of its name is taken for it, at the card\'s strength, steps and guidance, and the edit equals the native CLI', async () => {
  const { page } = browser;
  await loadDemo(page);
  await page.click('#preset-hyper-flux');
  await page.waitForSelector('#turbo-offer');
  assert.match(await page.textContent('#turbo-offer'),
    /Hyper-FLUX \(8 steps\) needs Hyper-FLUX\.1-dev-8steps-lora\.safetensors \(1\.4 GB\), not in this browser yet\. Licence: FLUX\.1 \[dev\] Non-Commercial License/);
  assert.equal(await page.getAttribute('#turbo-offer a', 'href'), 'https://huggingface.co/ByteDance/Hyper-SD');
  await screenshot(page, 'turbo-offer');
  // The catalog's URL answers with another file: it is read with progress, then refused by size, and nothing is kept.
  const served = readFileSync(TURBO);
  await page.route('https://huggingface.co/ByteDance/Hyper-SD/**', (route) => route.fulfill({
    status: 200, body: served, headers: { 'access-control-allow-origin': '*', 'content-type': 'application/octet-stream' } }));
  await page.click('#turbo-fetch');
  await page.waitForSelector('#turbo-error');
  assert.match(await page.textContent('#turbo-error'),
    new RegExp(`^Hyper-FLUX\\.1-dev-8steps-lora\\.safetensors could not be fetched: .*arrived with ${served.length} bytes, the catalog's file has 1388026440: not stored$`));
  assert.equal(await page.locator('#lora-list li').count(), 0, 'nothing was kept');
  await page.click('#turbo-dismiss');
  await page.waitForSelector('#turbo-offer', { state: 'detached' });

  // A file of the catalog's name (here the tiny one) is taken for it: the preset enables it at 0.125 with 8 steps
  // and guidance 3.5.
  await page.setInputFiles('#lora-input', { name: 'Hyper-FLUX.1-dev-8steps-lora.safetensors', mimeType: 'application/octet-stream', buffer: served });
  await page.waitForFunction(() => /36 layers, rank 16/.test(document.querySelector('#lora-list li[data-state="ready"]')?.textContent ?? ''), null, { timeout: 60_000 });
  await page.uncheck('#lora-list input[type="checkbox"]');
  await page.click('#preset-hyper-flux');
  assert.equal(await page.$('#turbo-offer'), null, 'a stored LoRA is not offered');
  assert.equal(await page.getAttribute('#preset-hyper-flux', 'aria-pressed'), 'true');
  assert.equal(await page.getAttribute('#presets', 'data-preset'), 'Hyper-FLUX (8 steps)');
  assert.equal(await page.isChecked('#lora-list input[type="checkbox"]'), true);
  assert.deepEqual([await page.inputValue('#steps'), await page.inputValue('#guidance'), await page.inputValue('#area')], ['8', '3.5', '1024']);
  await screenshot(page, 'turbo-preset');
  // A smaller area keeps SwiftShader fast; the LoRA, steps and guidance stay the preset's.
  await setNumber(page, '#area', SIDE);
  await page.setInputFiles('#reference-input', REFERENCE);
  await page.fill('#prompt', PROMPT);
  await page.fill('#seed', SEED);
  const png = await generate(page);
  const recipe = JSON.parse(Buffer.from(png, 'base64').toString('latin1').match(/kontext-recipe\0(\{.*?\})/s)[1]);
  assert.deepEqual(recipe.loras, [['Hyper-FLUX.1-dev-8steps-lora.safetensors', 0.125]]);
  const turbo = (strength) => nativeEdit(['--prompt', PROMPT, '--image', REFERENCE, '--max-area', String(SIDE * SIDE), '--steps', '8',
    '--guidance', '3.5', '--seed', SEED, ...(strength ? ['--lora', `${TURBO}:${strength}`] : [])]);
  const lsb = await maxPixelDifference(page, png, turbo(0.125));
  assert.ok(lsb <= 2, `${lsb} LSB from the native CLI with the LoRA at 0.125, 8 steps, guidance 3.5`);
  for (const [what, strength] of [['full strength', 1], ['no LoRA', 0]]) {
    const wrong = await maxPixelDifference(page, png, turbo(strength));
    assert.ok(wrong > 2, `${what} is within ${wrong} LSB: the comparison cannot tell`);
  }
  // A preset without a turbo LoRA turns it off.
  await page.click('#preset-quality');
  assert.equal(await page.isChecked('#lora-list input[type="checkbox"]'), false);
  assert.equal(await page.getAttribute('#preset-hyper-flux', 'aria-pressed'), 'false');
  assert.deepEqual(browser.problems, []);
});
