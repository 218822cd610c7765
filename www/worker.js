// Inference worker: loads the same wasm module as the page and hands control to Rust.
// Messages are exchanged as described in src/web/protocol.rs.
import init, { worker_entry } from './app.js';
import { extendDeviceRequests } from './device-request.js';

// Before wgpu opens the device: where the adapter has subgroups (and Chromium's subgroup matrices), the device
// gets them.
extendDeviceRequests(self);
await init({ module_or_path: new URL('./app_bg.wasm', import.meta.url) });
worker_entry();
