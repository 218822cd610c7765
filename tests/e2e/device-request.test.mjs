// The worker's device request (www/device-request.js) against adapters as browsers describe them: it adds
// `subgroups` wherever the adapter has them, and Chromium's subgroup matrices where the coop kernels can use them,
// leaves every other request as it was, and records only what a device was granted. On a real Dawn (the
// implementation inside Chromium) it runs in tests/subgroup_matrix.rs and tests/dawn_wasm.rs; in Chromium on
// SwiftShader (subgroups of 4, no matrices) in the app's end-to-end tests.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  FEATURE, MATRIX_GLOBAL, SUBGROUPS_GLOBAL, extendDeviceRequests, subgroupMatrixSupport, subgroupSupport,
} from '../../www/device-request.js';

const config = (side, componentType, resultComponentType) =>
  ({ M: side, N: side, K: side, componentType, resultComponentType });

// An adapter class as a browser's scope has it: `requestDevice` grants what is asked and the adapter has.
function scopeWith({
  features, configs = [], subgroupMinSize = 4, subgroupMaxSize = 32, workgroupBytes = 32768, refuse = false,
}) {
  const requests = [];
  class GPUAdapter {
    constructor() {
      this.features = new Set(features);
      this.info = { subgroupMinSize, subgroupMaxSize, subgroupMatrixConfigs: configs };
      this.limits = { maxComputeWorkgroupStorageSize: workgroupBytes };
    }
    async requestDevice(descriptor) {
      requests.push(descriptor);
      const asked = descriptor?.requiredFeatures ?? [];
      if (refuse && asked.includes('subgroups')) throw new TypeError('refused');
      return { features: new Set(asked.filter((f) => this.features.has(f))), limits: descriptor?.requiredLimits };
    }
  }
  return { GPUAdapter, requests };
}

const full = ['shader-f16', 'subgroups', FEATURE];
const nvidia = [config(16, 'f16', 'f16'), config(16, 'f16', 'f32'), config(8, 'f16', 'f32'), config(8, 'i8', 'i32')];

test('an adapter with square f16→f32 products gets them, the largest first, and both grants are recorded', async () => {
  const scope = scopeWith({ features: full, configs: nvidia });
  extendDeviceRequests(scope);
  extendDeviceRequests(scope); // wrapping twice changes nothing
  const device = await new scope.GPUAdapter().requestDevice({ requiredFeatures: ['timestamp-query'], label: 'wgpu' });
  assert.equal(scope.requests.length, 1);
  const [asked] = scope.requests;
  assert.deepEqual([...asked.requiredFeatures].sort(), [FEATURE, 'shader-f16', 'subgroups', 'timestamp-query']);
  assert.equal(asked.label, 'wgpu');
  assert.equal(asked.requiredLimits.maxComputeWorkgroupStorageSize, 32768);
  assert.ok(device.features.has(FEATURE));
  assert.deepEqual(scope[SUBGROUPS_GLOBAL], { subgroupMinSize: 4, subgroupMaxSize: 32 });
  assert.deepEqual(scope[MATRIX_GLOBAL], {
    fragment: 16, subgroupMinSize: 4, subgroupMaxSize: 32,
    configs: ['16x16x16 f16→f16', '16x16x16 f16→f32', '8x8x8 f16→f32', '8x8x8 i8→i32'],
  });
});

test('adapters with subgroups the coop kernels cannot use get subgroups alone, and only that is recorded', async () => {
  const cases = [
    { features: ['subgroups'], subgroupMinSize: 4, subgroupMaxSize: 4 }, // SwiftShader in Chromium
    { features: ['shader-f16', 'subgroups'], configs: nvidia },
    { features: full, configs: [config(16, 'f16', 'f16'), config(8, 'i8', 'i32')] },
    { features: full, configs: nvidia, subgroupMaxSize: 128 },
    { features: full, configs: nvidia, workgroupBytes: 16384 },
  ];
  for (const c of cases) {
    const scope = scopeWith(c);
    const adapter = new scope.GPUAdapter();
    assert.equal(subgroupMatrixSupport(adapter), null, JSON.stringify(c));
    extendDeviceRequests(scope);
    await adapter.requestDevice({ requiredFeatures: ['shader-f16'], requiredLimits: { maxBufferSize: 1 << 30 } });
    assert.equal(scope.requests.length, 1, JSON.stringify(c));
    const [asked] = scope.requests;
    assert.deepEqual(asked.requiredFeatures, ['shader-f16', 'subgroups'], JSON.stringify(c));
    assert.deepEqual(asked.requiredLimits, { maxBufferSize: 1 << 30 }, JSON.stringify(c));
    const { subgroupMinSize = 4, subgroupMaxSize = 32 } = c;
    assert.deepEqual(scope[SUBGROUPS_GLOBAL], { subgroupMinSize, subgroupMaxSize }, JSON.stringify(c));
    assert.equal(scope[MATRIX_GLOBAL], undefined, JSON.stringify(c));
  }
  assert.equal(subgroupMatrixSupport(new (scopeWith({ features: full, configs: [config(8, 'f16', 'f32')] }).GPUAdapter)()).fragment, 8);
});

test('adapters without subgroups, or without their sizes, are asked exactly what wgpu asked', async () => {
  const cases = [
    { features: ['shader-f16'] },
    { features: ['shader-f16', FEATURE], configs: nvidia },
    { features: full, configs: nvidia, subgroupMinSize: 0, subgroupMaxSize: 0 },
  ];
  for (const c of cases) {
    const scope = scopeWith(c);
    const adapter = new scope.GPUAdapter();
    assert.equal(subgroupSupport(adapter), null, JSON.stringify(c));
    extendDeviceRequests(scope);
    const descriptor = { requiredFeatures: ['shader-f16'] };
    await adapter.requestDevice(descriptor);
    assert.deepEqual(scope.requests, [descriptor]);
    assert.equal(scope[SUBGROUPS_GLOBAL], undefined);
    assert.equal(scope[MATRIX_GLOBAL], undefined);
  }
});

test('a request refused with the additions is made again as asked, and records nothing', async () => {
  for (const features of [full, ['subgroups']]) {
    const scope = scopeWith({ features, configs: nvidia, refuse: true });
    extendDeviceRequests(scope);
    const device = await new scope.GPUAdapter().requestDevice({ requiredFeatures: ['shader-f16'] });
    assert.equal(scope.requests.length, 2);
    assert.deepEqual(scope.requests[1], { requiredFeatures: ['shader-f16'] });
    assert.ok(!device.features.has(FEATURE) && !device.features.has('subgroups'));
    assert.equal(scope[SUBGROUPS_GLOBAL], undefined);
    assert.equal(scope[MATRIX_GLOBAL], undefined);
  }
});
