// Preloaded (node --import) into the wasm tests that tests/coop/dawn-node.sh runs in the Debian 13 root: Dawn
// (npm `webgpu`) as the worker's `navigator.gpu`, with the worker's device request (www/device-request.js, staged
// as .mjs) installed before the wasm opens its device, as worker.js does. wgpu's WebGPU backend finds the GPU of
// a worker's global scope only where `WorkerGlobalScope` is defined.
import { create, globals } from 'webgpu';
import { extendDeviceRequests } from './device-request.mjs';

Object.assign(globalThis, globals);
globalThis.WorkerGlobalScope ??= class WorkerGlobalScope {};
// Chromium exposes its experimental features only with unsafe APIs allowed (its --enable-unsafe-webgpu).
const gpu = create(['backend=vulkan', 'enable-dawn-features=allow_unsafe_apis']);
Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
extendDeviceRequests(globalThis);
