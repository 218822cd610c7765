// The app shell and its device report, in Chromium with WebGPU on SwiftShader and without WebGPU.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { serveDist, launch, screenshot } from './browser.mjs';

let served;
before(async () => { served = await serveDist(); });
after(() => served.server.close());

test('device report shows the adapter, limits, storage and a passing GPU self-check in the worker', async () => {
  const browser = await launch({ webgpu: true });
  try {
    const { page } = browser;
    await page.goto(served.url);
    await page.waitForSelector('#device-report [data-field="adapter"]', { timeout: 60_000 });
    assert.match(await page.textContent('[data-field="webgpu"]'), /WebGPU is available/);
    assert.match((await page.textContent('[data-field="adapter"]')).toLowerCase(), /swiftshader|google/);
    assert.match(await page.textContent('[data-field="max-buffer-size"]'), /\d(\.\d)? (MiB|GiB)/);
    assert.match(await page.textContent('[data-field="max-storage-binding"]'), /\d(\.\d)? (MiB|GiB)/);
    assert.equal(await page.textContent('[data-field="shader-f16"]'), 'no');
    assert.match(await page.textContent('[data-field="quota"]'), /\d(\.\d)? (B|KiB|MiB|GiB|TiB)/);
    assert.match(await page.textContent('[data-field="persisted"]'), /^(yes|no)/);
    // The worker opens the GPU through burn and multiplies matrices; the page compares nothing itself.
    await page.waitForSelector('#self-check:not([data-state="running"])', { timeout: 240_000 });
    const state = await page.getAttribute('#self-check', 'data-state');
    const text = await page.textContent('#self-check');
    assert.equal(state, 'passed', `self-check: ${text}`);
    assert.match(text, /largest error \d\.\de-?\d+/);
    // The worker opened the page's result canvas: on this software adapter through a 2D context.
    assert.equal(await page.getAttribute('[data-field="display"]', 'data-path'), '2d');
    assert.match(await page.textContent('[data-field="display"]'), /^2D canvas: one readback per preview/);
    // SwiftShader offers no cooperative matrices (nor shader-f16): the worker's kernels fall back to f32. It has
    // subgroups of 4, which the worker's device request (www/device-request.js) adds to wgpu's.
    assert.equal(await page.getAttribute('[data-field="kernels"]', 'data-path'), 'f32');
    assert.equal(
      await page.textContent('[data-field="kernels"]'),
      'f32: matmuls f32, attention f32 with subgroups of 4 (this GPU can run f32)',
    );
    await screenshot(page, 'device-report-webgpu');
    assert.deepEqual(browser.problems, []);
  } finally {
    await browser.close();
  }
});

test('without WebGPU the page explains which browsers work instead of failing', async () => {
  const browser = await launch({ webgpu: false });
  try {
    const { page } = browser;
    await page.goto(served.url);
    await page.waitForSelector('#device-report [data-field="webgpu"]', { timeout: 60_000 });
    const text = await page.textContent('[data-field="webgpu"]');
    assert.match(text, /(does not offer WebGPU|gave no GPU adapter)/);
    assert.match(text, /Chrome or Edge 113/);
    assert.match(text, /Safari 26/);
    assert.equal(await page.$('#self-check'), null);
    await screenshot(page, 'device-report-no-webgpu');
    assert.deepEqual(browser.problems, []);
  } finally {
    await browser.close();
  }
});
