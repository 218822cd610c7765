//! The web app's components (leptos, client-side rendered). They render the state in [`crate::app`] and call its
//! intents; no tensor math and no persistence here: inference runs in the worker, storage is `store/`.

mod device_report;
mod editor;
mod embed;
mod history;
mod lora_panel;
mod model_list;
mod model_panel;
mod model_sources;
mod result_canvas;

use leptos::prelude::*;

pub use device_report::DeviceReport;
pub use editor::Editor;
pub use embed::EmbedView;
pub use lora_panel::LoraPanel;
pub use model_panel::ModelPanel;

use crate::app::{self, AppState};

/// Mounts the app on `<body>`. Does nothing outside a window (e.g. when the worker loads the same module).
pub fn mount() {
    if web_sys::window().is_none() {
        return;
    }
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}

/// The whole page.
#[component]
pub fn App() -> impl IntoView {
    let state = AppState::new();
    provide_context(state);
    app::start_worker(state);
    if app::embed::requested() {
        app::embed::start(state);
        return view! { <EmbedView /> }.into_any();
    }
    view! {
        <header class="topbar">
            <h1>"Kontext"</h1>
            <p class="tagline">
                "Image editing with FLUX.1 Kontext [dev], computed on your own GPU. Nothing you load or make leaves this tab."
            </p>
        </header>
        <main class="content">
            <ModelPanel />
            <Editor />
            <LoraPanel />
            <DeviceReport />
        </main>
    }
    .into_any()
}

/// An object URL of a Blob holding `bytes` of type `mime` (revoke it when done).
pub fn object_url(bytes: &[u8], mime: &str) -> crate::Result<String> {
    let describe = |e| crate::Error::Invalid(crate::store::js::describe(e));
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes));
    let options = web_sys::BlobPropertyBag::new();
    options.set_type(mime);
    let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &options).map_err(describe)?;
    web_sys::Url::create_object_url_with_blob(&blob).map_err(describe)
}

/// `1536` → "1.5 KiB"; binary units, as browsers and GPUs count.
pub fn format_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{value:.0} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}
