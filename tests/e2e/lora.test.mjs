// LoRA adapters in the app: a file is added, checked against the loaded model, enabled at a strength and applied
// to an edit that equals the native CLI with the same `--lora FILE:WEIGHT` (±2 LSB; another strength and no LoRA
// are not); the recipe names it;
// a file that is not a LoRA for the model is refused with the reason; removing an adapter restores the base.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { openApp, screenshot, setNumber, loadDemo, resultPng, maxPixelDifference, nativeEdit, REFERENCE } from './browser.mjs';

const LORA = 'tests/fixtures/tiny/lora/lora_kohya.safetensors';
const NOT_A_LORA = 'tests/fixtures/tiny/bfl_gguf/transformer_bfl.safetensors';
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
  const withLora = await generate(page);
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
  await page.reload();
  await page.waitForSelector('#model-panel');
  await new Promise((resolve) => setTimeout(resolve, 1000));
  assert.equal(await page.locator('#lora-list li').count(), 0, 'a removed adapter stays removed');
  assert.deepEqual(browser.problems, []);
});
