// The worker's device request (www/subgroup-matrix.js) against adapters as browsers describe them: it adds
// Chromium's subgroup matrices where the coop kernels can use them, leaves every other request as it was, and
// records only what a device was granted. On a real Dawn (the implementation inside Chromium) it runs in
// tests/subgroup_matrix.rs; no browser here exposes the feature (SwiftShader has no matrices).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FEATURE, GLOBAL, requestSubgroupMatrices, subgroupMatrixSupport } from '../../www/subgroup-matrix.js';

const config = (side, componentType, resultComponentType) =>
  ({ M: side, N: side, K: side, componentType, resultComponentType });

// An adapter class as a browser's scope has it: `requestDevice` grants what is asked and the adapter has.
function scopeWith({ features, configs = [], subgroupMaxSize = 32, workgroupBytes = 32768, refuse = false }) {
  const requests = [];
  class GPUAdapter {
    constructor() {
      this.features = new Set(features);
      this.info = { subgroupMinSize: 4, subgroupMaxSize, subgroupMatrixConfigs: configs };
      this.limits = { maxComputeWorkgroupStorageSize: workgroupBytes };
    }
    async requestDevice(descriptor) {
      requests.push(descriptor);
      const asked = descriptor?.requiredFeatures ?? [];
      if (refuse && asked.includes(FEATURE)) throw new TypeError('refused');
      return { features: new Set(asked.filter((f) => this.features.has(f))), limits: descriptor?.requiredLimits };
    }
  }
  return { GPUAdapter, requests };
}

const full = ['shader-f16', 'subgroups', FEATURE];
const nvidia = [config(16, 'f16', 'f16'), config(16, 'f16', 'f32'), config(8, 'f16', 'f32'), config(8, 'i8', 'i32')];

test('an adapter with square f16→f32 products gets them, the largest first, and the grant is recorded', async () => {
  const scope = scopeWith({ features: full, configs: nvidia });
  requestSubgroupMatrices(scope);
  requestSubgroupMatrices(scope); // wrapping twice changes nothing
  const device = await new scope.GPUAdapter().requestDevice({ requiredFeatures: ['timestamp-query'], label: 'wgpu' });
  assert.equal(scope.requests.length, 1);
  const [asked] = scope.requests;
  assert.deepEqual([...asked.requiredFeatures].sort(), ['chromium-experimental-subgroup-matrix', 'shader-f16', 'subgroups', 'timestamp-query']);
  assert.equal(asked.label, 'wgpu');
  assert.equal(asked.requiredLimits.maxComputeWorkgroupStorageSize, 32768);
  assert.ok(device.features.has(FEATURE));
  assert.deepEqual(scope[GLOBAL], {
    fragment: 16, subgroupMinSize: 4, subgroupMaxSize: 32,
    configs: ['16x16x16 f16→f16', '16x16x16 f16→f32', '8x8x8 f16→f32', '8x8x8 i8→i32'],
  });
});

test('adapters the coop kernels cannot use are asked exactly what wgpu asked, and nothing is recorded', async () => {
  const cases = [
    { features: ['shader-f16', 'subgroups'], configs: nvidia },
    { features: ['shader-f16', FEATURE], configs: nvidia },
    { features: full, configs: [config(16, 'f16', 'f16'), config(8, 'i8', 'i32')] },
    { features: full, configs: nvidia, subgroupMaxSize: 128 },
    { features: full, configs: nvidia, workgroupBytes: 16384 },
  ];
  for (const c of cases) {
    const scope = scopeWith(c);
    const adapter = new scope.GPUAdapter();
    assert.equal(subgroupMatrixSupport(adapter), null, JSON.stringify(c));
    requestSubgroupMatrices(scope);
    const descriptor = { requiredFeatures: ['shader-f16'] };
    await adapter.requestDevice(descriptor);
    assert.deepEqual(scope.requests, [descriptor]);
    assert.equal(scope[GLOBAL], undefined);
  }
  assert.equal(subgroupMatrixSupport(new (scopeWith({ features: full, configs: [config(8, 'f16', 'f32')] }).GPUAdapter)()).fragment, 8);
});

test('a request refused with the matrices is made again as asked, and records nothing', async () => {
  const scope = scopeWith({ features: full, configs: nvidia, refuse: true });
  requestSubgroupMatrices(scope);
  const device = await new scope.GPUAdapter().requestDevice({ requiredFeatures: ['shader-f16'] });
  assert.equal(scope.requests.length, 2);
  assert.deepEqual(scope.requests[1], { requiredFeatures: ['shader-f16'] });
  assert.ok(!device.features.has(FEATURE));
  assert.equal(scope[GLOBAL], undefined);
});
