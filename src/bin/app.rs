//! The web app (built by trunk for wasm32). The same module also boots the inference worker.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen::prelude::wasm_bindgen;

/// Entry point of `www/worker.js`: turns this module instance into the inference worker.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen]
pub fn worker_entry() {
    kontext_web::web::worker::start();
}

fn main() {
    #[cfg(target_arch = "wasm32")]
    kontext_web::ui::mount();
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("This is the web app; it runs in a browser. Build and serve it with `make serve`.");
}
