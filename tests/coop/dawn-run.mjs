// Runs WGSL kernels on Dawn (npm `webgpu`, the WebGPU implementation inside Chromium, with its Tint compiler)
// over the Vulkan adapter of the Debian 13 root: tests/coop/dawn.sh stages this file, www/device-request.js and a
// folder of cases in the root and runs it there with the root's node.
//
//   node dawn-run.mjs probe DIR   the worker's device request (www/device-request.js) on this adapter: writes
//                                 DIR/granted.json (what the kernels got, or null) and DIR/adapter.json
//   node dawn-run.mjs run DIR     every case of DIR/cases.json on such a device: writes DIR/<name>.out (the
//                                 output binding's bytes), or DIR/<name>.error (what Tint or Dawn said)
//
// A case: { name, wgsl (a file), workgroups: [x, y, z], bindings: [{ file, uniform }], output (a binding index) }.
// KONTEXT_DAWN_TIMES=1 prints each case's seconds (its kernel's compilation included the first time).
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { create, globals } from 'webgpu';
import { MATRIX_GLOBAL, extendDeviceRequests } from './device-request.js';

Object.assign(globalThis, globals);
const [command, dir] = process.argv.slice(2);
if (!['probe', 'run'].includes(command) || !dir) {
  console.error('usage: dawn-run.mjs probe|run DIR');
  process.exit(2);
}
// Chromium exposes its experimental features only with unsafe APIs allowed (its --enable-unsafe-webgpu).
const gpu = create(['backend=vulkan', 'enable-dawn-features=allow_unsafe_apis']);
const adapter = await gpu.requestAdapter();
if (!adapter) {
  console.error('dawn-run: no Vulkan adapter');
  process.exit(1);
}
// As in the worker: the wrapper adds what wgpu's request lacks.
extendDeviceRequests(globalThis);
const device = await adapter.requestDevice({ requiredFeatures: ['shader-f16'] });
const uncaptured = [];
device.addEventListener('uncapturederror', (event) => uncaptured.push(event.error.message));

if (command === 'probe') {
  await writeFile(join(dir, 'granted.json'), JSON.stringify(globalThis[MATRIX_GLOBAL] ?? null));
  await writeFile(join(dir, 'adapter.json'), JSON.stringify({
    description: adapter.info.description,
    features: [...device.features].sort(),
    maxComputeWorkgroupStorageSize: device.limits.maxComputeWorkgroupStorageSize,
  }));
  process.exit(0);
}

const { cases } = JSON.parse(await readFile(join(dir, 'cases.json'), 'utf8'));
const pipelines = new Map();
let failed = 0;
for (const c of cases) {
  const started = performance.now();
  const errors = await runCase(c).catch((e) => [String(e)]);
  if (process.env.KONTEXT_DAWN_TIMES) console.log(`${c.name}: ${((performance.now() - started) / 1000).toFixed(2)} s`);
  if (errors.length) {
    failed++;
    await writeFile(join(dir, `${c.name}.error`), errors.join('\n'));
  }
}
console.log(`dawn-run: ${cases.length - failed} of ${cases.length} cases ran on ${adapter.info.description}`);
process.exit(0);

async function pipelineFor(c) {
  const code = await readFile(join(dir, c.wgsl), 'utf8');
  if (pipelines.has(code)) return pipelines.get(code);
  const module = device.createShaderModule({ code });
  const messages = (await module.getCompilationInfo()).messages;
  const errors = messages.filter((m) => m.type === 'error').map((m) => `${c.wgsl}:${m.lineNum}:${m.linePos} ${m.message}`);
  if (errors.length) throw new Error(errors.join('\n'));
  const layout = device.createBindGroupLayout({
    entries: c.bindings.map((b, binding) => ({
      binding,
      visibility: GPUShaderStage.COMPUTE,
      buffer: { type: b.uniform ? 'uniform' : 'storage' },
    })),
  });
  device.pushErrorScope('validation');
  const pipeline = device.createComputePipeline({
    layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
    compute: { module, entryPoint: 'main' },
  });
  const error = await device.popErrorScope();
  if (error) throw new Error(error.message);
  const made = { pipeline, layout };
  pipelines.set(code, made);
  return made;
}

async function runCase(c) {
  const { pipeline, layout } = await pipelineFor(c);
  device.pushErrorScope('validation');
  const buffers = [];
  for (const [index, b] of c.bindings.entries()) {
    const bytes = await readFile(join(dir, b.file));
    const size = Math.max(16, Math.ceil(bytes.length / 16) * 16);
    const usage = (b.uniform ? GPUBufferUsage.UNIFORM : GPUBufferUsage.STORAGE) | GPUBufferUsage.COPY_DST
      | (index === c.output ? GPUBufferUsage.COPY_SRC : 0);
    const buffer = device.createBuffer({ size, usage });
    const padded = new Uint8Array(size);
    padded.set(bytes);
    device.queue.writeBuffer(buffer, 0, padded);
    buffers.push({ buffer, bytes: bytes.length });
  }
  const group = device.createBindGroup({
    layout,
    entries: buffers.map(({ buffer }, binding) => ({ binding, resource: { buffer } })),
  });
  const output = buffers[c.output];
  const readback = device.createBuffer({ size: output.buffer.size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const encoder = device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, group);
  pass.dispatchWorkgroups(...c.workgroups);
  pass.end();
  encoder.copyBufferToBuffer(output.buffer, 0, readback, 0, output.buffer.size);
  device.queue.submit([encoder.finish()]);
  const error = await device.popErrorScope();
  if (error) return [error.message];
  await readback.mapAsync(GPUMapMode.READ);
  const bytes = new Uint8Array(readback.getMappedRange()).slice(0, output.bytes);
  readback.unmap();
  await writeFile(join(dir, `${c.name}.out`), bytes);
  for (const { buffer } of buffers) buffer.destroy();
  readback.destroy();
  return uncaptured.splice(0);
}
