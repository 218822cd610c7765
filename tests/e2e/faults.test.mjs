// Faults the app must survive: the inference worker dying mid-edit (a wasm panic or trap, or a lost GPU device
// that makes burn panic, all end as an uncaught error in the worker). The user gets a message and a fresh
// worker; loading the model again and editing works; LoRA adapters are handed to the new worker.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { openApp, screenshot, setNumber, loadDemo } from './browser.mjs';

let browser;
before(async () => { browser = await openApp('#load-demo'); });
after(() => browser.close());

test('a worker that dies mid-edit is replaced, with a message, and the next edit works', async () => {
  const { page } = browser;
  await loadDemo(page);
  await page.setInputFiles('#lora-input', 'tests/fixtures/tiny/lora/lora_comfy.safetensors');
  await page.waitForSelector('#lora-list li[data-state="ready"]', { timeout: 60_000 });
  await page.fill('#prompt', 'a red square');
  await setNumber(page, '#area', 64);
  await setNumber(page, '#steps', 60);
  await page.click('#generate');
  await page.waitForFunction(() => /denoising: [1-9]/.test(document.querySelector('#job-phase')?.textContent ?? ''), null, { timeout: 120_000 });
  const [worker] = page.workers();
  await worker.evaluate(() => { setTimeout(() => { throw new Error('simulated crash'); }, 0); });

  await page.waitForSelector('#job[data-state="failed"]', { timeout: 30_000 });
  await page.waitForSelector('#model-state[data-state="failed"]');
  assert.match(await page.textContent('#model-state'), /the worker stopped: .*simulated crash.*A fresh worker was started: load the model again/);
  await screenshot(page, 'worker-restarted');
  await page.waitForFunction(() => document.querySelector('#lora-list li')?.dataset.state === 'ready', null, { timeout: 30_000 });
  assert.match(await page.textContent('#lora-list li'), /checked when a model is loaded/, 'the adapter went to the new worker');

  await loadDemo(page);
  await page.waitForFunction(() => /23 layers/.test(document.querySelector('#lora-list li')?.textContent ?? ''));
  await setNumber(page, '#steps', 1);
  await page.click('#generate');
  await page.waitForSelector('#job[data-state="done"]', { timeout: 120_000 });
  assert.equal(page.workers().length, 1, 'the old worker is gone');
});
