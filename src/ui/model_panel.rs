//! Which model is loaded in the worker, and loading the built-in demo model served with the app.

use leptos::prelude::*;

use super::{AppState, ModelState, send};
use crate::loader::DIFFUSERS_FILES;
use crate::protocol::ToWorker;

/// Folder of the built-in demo model, next to the page (`Trunk.toml` copies it into `dist/`).
pub const DEMO_MODEL_BASE: &str = "demo-model/";

/// Loads the demo model and shows the model's state with measured progress.
#[component]
pub fn ModelPanel() -> impl IntoView {
    let state = expect_context::<AppState>();
    let load_demo = move |_| {
        let base = web_sys::window()
            .and_then(|w| w.location().href().ok())
            .map(|href| format!("{}{DEMO_MODEL_BASE}", &href[..href.rfind('/').map_or(href.len(), |i| i + 1)]))
            .unwrap_or_else(|| DEMO_MODEL_BASE.to_string());
        let files = DIFFUSERS_FILES.iter().map(|f| f.to_string()).collect();
        state.model.set(ModelState::Loading { phase: "downloading".into(), done: 0, total: DIFFUSERS_FILES.len() as u64 });
        if let Err(e) = send(&ToWorker::LoadModel { base, files, parts: Default::default() }) {
            state.model.set(ModelState::Failed(e));
        }
    };
    let busy = move || matches!(state.model.get(), ModelState::Loading { .. });
    view! {
        <section class="card" id="model-panel" aria-labelledby="model-title">
            <h2 id="model-title">"Model"</h2>
            <p class="muted">
                "The built-in demo model is a 5 MB FLUX.1 Kontext with tiny random weights: it runs the whole pipeline "
                "on your GPU in seconds, but its pictures are abstract noise, not real edits."
            </p>
            <div class="row">
                <button id="load-demo" on:click=load_demo disabled=busy>"Load the demo model"</button>
                <span id="model-state" role="status" data-state=move || match state.model.get() {
                    ModelState::Empty => "empty",
                    ModelState::Loading { .. } => "loading",
                    ModelState::Loaded(_) => "loaded",
                    ModelState::Failed(_) => "failed",
                }>
                    {move || match state.model.get() {
                        ModelState::Empty => "No model loaded.".to_string(),
                        ModelState::Loading { phase, done, total } => format!("{phase}… {done}/{total}"),
                        ModelState::Loaded(description) => format!("Loaded: {description}"),
                        ModelState::Failed(message) => format!("Could not load: {message}"),
                    }}
                </span>
            </div>
            {move || match state.model.get() {
                ModelState::Loading { done, total, .. } => Some(view! {
                    <progress max=total.max(1) value=done aria-label="model loading progress"></progress>
                }),
                _ => None,
            }}
        </section>
    }
}
