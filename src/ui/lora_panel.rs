//! LoRA adapters: add safetensors files (kept in the browser's IndexedDB, in the model store's blob table, so
//! they survive reloads and work offline), enable them, set their strength, remove them. The worker checks each file against the loaded model and applies the enabled ones at runtime
//! on top of the base weights; the result's recipe names them.

use leptos::prelude::*;
use leptos::task::spawn_local;
use serde_bytes::ByteBuf;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use super::{AppState, format_bytes, send};
use crate::protocol::{LoraUse, ToWorker};
use crate::store::idb::Store;

/// Strength slider range: negative values invert an adapter, above 1 exaggerates it.
const STRENGTH_RANGE: (f32, f32) = (-1.0, 2.0);

/// What the worker said about an adapter.
#[derive(Debug, Clone, PartialEq)]
pub enum LoraStatus {
    /// Sent, no answer yet.
    Checking,
    /// Usable (or kept until a model is loaded), with what it adapts.
    Ready(String),
    /// Not a LoRA for the loaded model, and why.
    Rejected(String),
}

/// A LoRA file the user added.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraEntry {
    /// File name; the adapter's key.
    pub name: String,
    /// File size in bytes.
    pub size: usize,
    /// Applied to edits.
    pub enabled: bool,
    /// 1.0: as trained.
    pub strength: f32,
    /// The worker's verdict.
    pub status: LoraStatus,
}

impl LoraEntry {
    /// The adapters an edit applies: enabled and not rejected.
    pub fn active(entries: &[LoraEntry]) -> Vec<LoraUse> {
        entries
            .iter()
            .filter(|e| e.enabled && !matches!(e.status, LoraStatus::Rejected(_)))
            .map(|e| LoraUse { name: e.name.clone(), strength: e.strength })
            .collect()
    }
}

/// The stored list of adapters (name, enabled, strength), in the model store's blob table.
const INDEX_BLOB: &str = "loras.json";

/// The blob holding the file of adapter `name`.
fn file_blob(name: &str) -> String {
    format!("lora/{name}")
}

/// An adapter's settings as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct SavedLora {
    name: String,
    enabled: bool,
    strength: f32,
}

/// Writes the list of adapters and their settings.
async fn save_index(entries: &[LoraEntry]) -> crate::Result<()> {
    let saved: Vec<SavedLora> =
        entries.iter().map(|e| SavedLora { name: e.name.clone(), enabled: e.enabled, strength: e.strength }).collect();
    let json = serde_json::to_vec(&saved).map_err(|e| crate::Error::Invalid(e.to_string()))?;
    Store::open().await?.put_blob(INDEX_BLOB, &json).await
}

/// Saves the current list, reporting a failure (a full quota, storage evicted) in the panel.
fn persist(state: AppState, error: RwSignal<Option<String>>) {
    let entries = state.loras.get_untracked();
    spawn_local(async move {
        if let Err(e) = save_index(&entries).await {
            error.set(Some(format!("the LoRA settings could not be saved: {e}")));
        }
    });
}

/// Stores a new adapter's file and the list, then hands it to the worker.
async fn store_and_add(state: AppState, name: String, bytes: Vec<u8>) -> crate::Result<()> {
    Store::open().await?.put_blob(&file_blob(&name), &bytes).await?;
    add_lora(state, name, bytes, true, 1.0);
    save_index(&state.loras.get_untracked()).await
}

/// Restores the adapters kept from earlier visits and hands them to the worker.
pub async fn restore(state: AppState) -> crate::Result<()> {
    let store = Store::open().await?;
    let Some(index) = store.get_blob(INDEX_BLOB).await? else { return Ok(()) };
    let saved: Vec<SavedLora> = serde_json::from_slice(&index)
        .map_err(|e| crate::Error::Invalid(format!("the stored LoRA list is damaged ({e}); add the files again")))?;
    for entry in saved {
        match store.get_blob(&file_blob(&entry.name)).await? {
            Some(bytes) => add_lora(state, entry.name, bytes, entry.enabled, entry.strength),
            None => state.loras.update(|all| {
                all.push(LoraEntry {
                    name: entry.name.clone(),
                    size: 0,
                    enabled: false,
                    strength: entry.strength,
                    status: LoraStatus::Rejected("its file is no longer in the browser's storage: add it again".into()),
                })
            }),
        }
    }
    Ok(())
}

/// Sends every listed adapter's stored file to the worker again (a fresh worker after a crash).
pub async fn resend(state: AppState) {
    let Ok(store) = Store::open().await else { return };
    for entry in state.loras.get_untracked() {
        match store.get_blob(&file_blob(&entry.name)).await {
            Ok(Some(bytes)) => add_lora(state, entry.name, bytes, entry.enabled, entry.strength),
            _ => set_status(
                state,
                &entry.name,
                LoraStatus::Rejected("its file is no longer in the browser's storage".into()),
            ),
        }
    }
}

/// Sends `bytes` to the worker under `name` and lists (or replaces) the entry.
pub fn add_lora(state: AppState, name: String, bytes: Vec<u8>, enabled: bool, strength: f32) {
    let entry = LoraEntry { name: name.clone(), size: bytes.len(), enabled, strength, status: LoraStatus::Checking };
    state.loras.update(|all| match all.iter_mut().find(|e| e.name == name) {
        Some(existing) => *existing = entry,
        None => all.push(entry),
    });
    if let Err(e) = send(&ToWorker::AddLora { name: name.clone(), bytes: ByteBuf::from(bytes) }) {
        set_status(state, &name, LoraStatus::Rejected(e));
    }
}

/// Records the worker's verdict on `name`.
pub fn set_status(state: AppState, name: &str, status: LoraStatus) {
    state.loras.update(|all| {
        if let Some(entry) = all.iter_mut().find(|e| e.name == name) {
            entry.status = status;
        }
    });
}

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
        spawn_local(async move {
            error.set(None);
            for file in files {
                let added = match JsFuture::from(file.array_buffer()).await {
                    Ok(buffer) => store_and_add(state, file.name(), js_sys::Uint8Array::new(&buffer).to_vec()).await,
                    Err(e) => Err(crate::Error::Invalid(crate::web::js::describe(e))),
                };
                if let Err(e) = added {
                    error.set(Some(format!("{} could not be added: {e}", file.name())));
                }
            }
        });
    };
    let update = move |name: String, change: Box<dyn Fn(&mut LoraEntry)>| {
        state.loras.update(|all| all.iter_mut().filter(|e| e.name == name).for_each(|e| change(e)));
        persist(state, error);
    };
    let remove = move |name: String| {
        state.loras.update(|all| all.retain(|e| e.name != name));
        persist(state, error);
        if let Err(e) = send(&ToWorker::RemoveLora { name: name.clone() }) {
            error.set(Some(e));
        }
        spawn_local(async move {
            let deleted = async { Store::open().await?.delete_blob(&file_blob(&name)).await }.await;
            if let Err(e) = deleted {
                error.set(Some(format!("{name} could not be deleted from storage: {e}")));
            }
        });
    };
    spawn_local(async move {
        if let Err(e) = restore(state).await {
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
            <ul id="lora-list" class="loras" aria-label="LoRA adapters">
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
