//! The web app (built by trunk for wasm32). The same module also boots the inference worker.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen::prelude::wasm_bindgen;

#[cfg(target_arch = "wasm32")]
unsafe extern "C" {
    /// The linker's function that runs every static constructor (cubecl's WGSL compiler registers its operations
    /// through `inventory`). Named here, so wasm-ld links this module as a reactor: otherwise it wraps every
    /// export (`__wbindgen_malloc`, `__externref_table_alloc`, …) in a call of all ~4,900 constructors, which
    /// took most of the worker's time between GPU dispatches.
    fn __wasm_call_ctors();
}

/// Entry point of `www/worker.js`: turns this module instance into the inference worker.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen]
pub fn worker_entry() {
    kontext_web::web::worker::start();
}

/// Runs first in every instance, the page's and the worker's: wasm-bindgen's start function.
fn main() {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: runs once per instance, before any other code of this module.
        unsafe { __wasm_call_ctors() };
        kontext_web::ui::mount();
    }
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("This is the web app; it runs in a browser. Build and serve it with `make serve`.");
}
