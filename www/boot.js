// Starts the page: registers the service worker that keeps the app shell for offline use, then loads the wasm
// module, whose Rust `main` mounts the UI. A file rather than trunk's inline loader, so the Content-Security-Policy
// needs no 'unsafe-inline'.
import init from './app.js';

if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('./sw.js').catch((e) => console.warn(`Offline use is unavailable: ${e.message}`));
}
await init({ module_or_path: new URL('./app_bg.wasm', import.meta.url) });
