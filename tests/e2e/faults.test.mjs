// Faults the app must survive: the inference worker dying mid-edit (a wasm panic or trap: an uncaught error in the
// worker), and its GPU device destroyed mid-edit (a real `GPUDevice.destroy()`, as a driver reset loses it). The
// user gets a message and a fresh worker; loading the model again and editing works; LoRA adapters are handed to
// the new worker. A GPU that runs out of memory is an answer: the same worker loads and edits afterwards.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { openApp, screenshot, setNumber, loadDemo, resultPng, unfoldModelPanel } from './browser.mjs';

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

test('a GPU device destroyed mid-edit (GPUDevice.destroy) is reported, and a fresh worker loads and edits', async () => {
  const { page } = browser;
  await loadDemo(page);
  await setNumber(page, '#area', 64);
  await setNumber(page, '#steps', 60);
  await page.click('#generate');
  await page.waitForFunction(() => /denoising: [1-9]/.test(document.querySelector('#job-phase')?.textContent ?? ''), null, { timeout: 120_000 });
  const [worker] = page.workers();
  // The next command encoder the worker asks for is the moment its real device is destroyed, as a driver reset does.
  await worker.evaluate(() => {
    const encoder = GPUDevice.prototype.createCommandEncoder;
    GPUDevice.prototype.createCommandEncoder = function (descriptor) {
      GPUDevice.prototype.createCommandEncoder = encoder;
      this.destroy();
      return encoder.call(this, descriptor);
    };
  });
  await page.waitForSelector('#job[data-state="failed"]', { timeout: 60_000 });
  await page.waitForSelector('#model-state[data-state="failed"]');
  assert.match(await page.textContent('#model-state'), /^Could not load: the GPU device failed \(reading back from the device failed: .*Device was destroyed\.\)\. A fresh worker was started: load the model again\.$/);
  await page.waitForFunction(() => document.querySelector('#lora-list li')?.dataset.state === 'ready', null, { timeout: 30_000 });

  await loadDemo(page);
  await setNumber(page, '#steps', 1);
  await page.click('#generate');
  await page.waitForSelector('#job[data-state="done"]', { timeout: 120_000 });
  assert.equal(page.workers().length, 1, 'the old worker is gone');
});

/** Makes the worker's GPU device report out of memory, as Chromium does (a `GPUOutOfMemoryError` in an
 * `uncapturederror` event, after the call), once buffers of more than `allowance` bytes have been created from
 * now on; `null` puts `createBuffer` back. The buffers themselves are still created. */
function gpuMemoryAllowance(worker, allowance) {
  return worker.evaluate((allowance) => {
    self.originalCreateBuffer ??= GPUDevice.prototype.createBuffer;
    const create = self.originalCreateBuffer;
    if (allowance === null) { GPUDevice.prototype.createBuffer = create; return; }
    let left = allowance;
    GPUDevice.prototype.createBuffer = function (descriptor) {
      const buffer = create.call(this, descriptor);
      left -= descriptor.size;
      if (left < 0) {
        GPUDevice.prototype.createBuffer = create;
        const error = new GPUOutOfMemoryError('the test allowance of GPU memory is used up');
        setTimeout(() => this.dispatchEvent(new GPUUncapturedErrorEvent('uncapturederror', { error })), 0);
      }
      return buffer;
    };
  }, allowance);
}

test('a GPU out of memory in a load or an edit is a message, and the same worker loads and edits after it', async () => {
  const { page } = browser;
  assert.equal(page.workers().length, 1);
  const [worker] = page.workers();
  await worker.evaluate(() => { self.sameWorker = true; });

  await gpuMemoryAllowance(worker, 0);
  await unfoldModelPanel(page);
  await page.click('#load-demo');
  await page.waitForSelector('#model-state[data-state="failed"]', { timeout: 120_000 });
  assert.match(await page.textContent('#model-state'),
    /^Could not load: the GPU ran out of memory during the upload of the model's weights, holding .*: try a GPU memory budget of .* or less/);
  await screenshot(page, 'gpu-out-of-memory-load');

  await loadDemo(page);
  await setNumber(page, '#area', 64);
  await setNumber(page, '#steps', 2);
  await page.fill('#prompt', 'a green field');
  await page.click('#generate');
  await page.waitForSelector('#job[data-state="done"]', { timeout: 120_000 });
  const control = await resultPng(page);

  // A larger edit needs new buffers; the allowance fails the first.
  await setNumber(page, '#area', 128);
  await gpuMemoryAllowance(worker, 0);
  await page.click('#generate');
  await page.waitForSelector('#job[data-state="failed"]', { timeout: 120_000 });
  assert.match(await page.textContent('#job'), /^the GPU ran out of memory during (the upload of the weights for .*|denoising step \d+|decoding), holding /);
  await page.waitForSelector('#model-state[data-state="loaded"]');

  await gpuMemoryAllowance(worker, null);
  await setNumber(page, '#area', 64);
  await page.click('#generate');
  await page.waitForSelector('#job[data-state="done"]', { timeout: 120_000 });
  assert.equal(await resultPng(page), control, 'the edit after the failure gives the control image');
  assert.deepEqual(page.workers().length, 1);
  assert.equal(await page.workers()[0].evaluate(() => self.sameWorker), true, 'the worker was not replaced');
});
