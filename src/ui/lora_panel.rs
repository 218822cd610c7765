//! LoRA adapters: add safetensors files (kept in the browser's IndexedDB, in the model store's blob table, so
//! they survive reloads and work offline), enable them, set their strength, remove them. The worker checks each file against the loaded model and applies the enabled ones at runtime
//! on top of the base weights; the result's recipe names them.

use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::JsCast;

use super::format_bytes;
use crate::app::AppState;
use crate::app::loras::{self, LoraEntry, LoraStatus};

/// Strength slider range: negative values invert an adapter, above 1 exaggerates it.
const STRENGTH_RANGE: (f32, f32) = (-1.0, 2.0);

/// The list of adapters with their controls, and the file picker that adds more.
#[component]
pub fn LoraPanel() -> impl IntoView {
    let state = expect_context::<AppState>();
    let error = RwSignal::new(None::<String>);
    let add_files = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = ev.target().unwrap().unchecked_into();
        let Some(list) = input.files() else { return };
        let files: Vec<web_sys::File> = (0..list.length()).filter_map(|i| list.get(i)).collect();
        input.set_value("");
        spawn_local(loras::add_files(state, files, error));
    };
    let update = move |name: String, change: Box<dyn Fn(&mut LoraEntry)>| loras::update(state, &name, change, error);
    let remove = move |name: String| loras::remove(state, name, error);
    spawn_local(async move {
        if let Err(e) = loras::restore(state).await {
            error.set(Some(format!("the stored LoRA adapters could not be read: {e}")));
        }
    });
    view! {
        <section class="card" id="lora-panel" aria-labelledby="lora-title">
            <h2 id="lora-title">"LoRA adapters"</h2>
            <p class="muted">
                "Adapters trained on FLUX.1 Kontext [dev] or FLUX.1 [dev], as diffusers, kohya or ComfyUI .safetensors. "
                "They are added to the model at the strength you set while it runs; the model itself is not changed."
            </p>
            <div class="field">
                <label for="lora-input">"Add LoRA files"</label>
                <input id="lora-input" type="file" accept=".safetensors" multiple on:change=add_files />
            </div>
            {move || error.get().map(|message| view! { <p class="status bad" role="alert">{message}</p> })}
            <ul
                id="lora-list"
                class="loras"
                aria-label="LoRA adapters"
                aria-busy=move || (state.lora_writes.get() > 0).to_string()
            >
                <For each=move || state.loras.get() key=|entry| (entry.name.clone(), entry.size) let:entry>
                    <LoraRow entry update remove />
                </For>
            </ul>
        </section>
    }
}

/// One adapter: enable, strength, verdict, remove.
///
/// - `entry`: the adapter as added (its live state is read from the context by name).
/// - `update`: applies a change to the entry called `name`.
/// - `remove`: forgets the adapter called `name`.
#[component]
fn LoraRow(
    entry: LoraEntry,
    update: impl Fn(String, Box<dyn Fn(&mut LoraEntry)>) + Copy + 'static,
    remove: impl Fn(String) + Copy + 'static,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    let name = StoredValue::new(entry.name.clone());
    let current = move || state.loras.with(|all| all.iter().find(|e| e.name == name.get_value()).cloned());
    let status = move || current().map(|e| e.status).unwrap_or(LoraStatus::Checking);
    let label = entry.name.clone();
    view! {
        <li data-state=move || match status() {
            LoraStatus::Checking => "checking",
            LoraStatus::Ready(_) => "ready",
            LoraStatus::Rejected(_) => "rejected",
        }>
            <label class="lora-name">
                <input type="checkbox" prop:checked=move || current().is_some_and(|e| e.enabled)
                    disabled=move || matches!(status(), LoraStatus::Rejected(_))
                    on:change=move |ev| {
                        let on = event_target_checked(&ev);
                        update(name.get_value(), Box::new(move |e| e.enabled = on));
                    } />
                {label.clone()}
            </label>
            <span class="muted">
                {format_bytes(entry.size as f64)}
                " · "
                {move || match status() {
                    LoraStatus::Checking => "checking…".to_string(),
                    LoraStatus::Ready(description) => description,
                    LoraStatus::Rejected(_) => "not usable".to_string(),
                }}
            </span>
            <input type="range" min=STRENGTH_RANGE.0 max=STRENGTH_RANGE.1 step="0.05"
                aria-label=format!("strength of {label}")
                prop:value=move || current().map_or(1.0, |e| e.strength).to_string()
                on:input=move |ev| {
                    let value = event_target_value(&ev).parse::<f32>().unwrap_or(1.0).clamp(STRENGTH_RANGE.0, STRENGTH_RANGE.1);
                    update(name.get_value(), Box::new(move |e| e.strength = value));
                } />
            <output class="lora-strength">{move || format!("{:.2}", current().map_or(1.0, |e| e.strength))}</output>
            <button type="button" class="small" aria-label=format!("remove {label}")
                on:click=move |_| remove(name.get_value())>"Remove"</button>
            {move || match status() {
                LoraStatus::Rejected(message) => Some(view! { <p class="status bad" role="alert">{message}</p> }),
                _ => None,
            }}
        </li>
    }
}
