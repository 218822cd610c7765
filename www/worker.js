// Inference worker: loads the same wasm module as the page and hands control to Rust.
// Messages are exchanged as described in src/web/protocol.rs.
import init, { worker_entry } from './app.js';
import { requestSubgroupMatrices } from './subgroup-matrix.js';

// Before wgpu opens the device: where the adapter has Chromium's subgroup matrices, the device gets them.
requestSubgroupMatrices(self);
await init({ module_or_path: new URL('./app_bg.wasm', import.meta.url) });
worker_entry();
