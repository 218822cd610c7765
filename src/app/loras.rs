//! LoRA adapters the user added: kept in the browser's IndexedDB (the model store's blob table) so they survive
//! reloads and work offline, handed to the worker (which checks each against the loaded model), with their
//! enabled flag, strength and the worker's verdict.

use leptos::prelude::*;
use leptos::task::spawn_local;
use serde_bytes::ByteBuf;
use wasm_bindgen_futures::JsFuture;

use super::{AppState, send};
use crate::store::idb::Store;
use crate::web::protocol::{LoraUse, ToWorker};

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

/// One storage write, counted in [`AppState::lora_writes`] from its start until it is dropped.
struct CountedWrite(AppState);

impl CountedWrite {
    fn start(state: AppState) -> Self {
        state.lora_writes.update(|n| *n += 1);
        Self(state)
    }
}

impl Drop for CountedWrite {
    fn drop(&mut self) {
        self.0.lora_writes.update(|n| *n -= 1);
    }
}

/// Runs the storage write `write` in the background, counted from now until it is done.
fn spawn_write(state: AppState, write: impl std::future::Future<Output = ()> + 'static) {
    let counted = CountedWrite::start(state);
    spawn_local(async move {
        write.await;
        drop(counted);
    });
}

/// Saves the current list, reporting a failure (a full quota, storage evicted) in `error`.
pub fn persist(state: AppState, error: RwSignal<Option<String>>) {
    let entries = state.loras.get_untracked();
    spawn_write(state, async move {
        if let Err(e) = save_index(&entries).await {
            error.set(Some(format!("the LoRA settings could not be saved: {e}")));
        }
    });
}

/// Stores a new adapter's file and the list, then hands it to the worker.
pub async fn store_and_add(state: AppState, name: String, bytes: Vec<u8>) -> crate::Result<()> {
    let _counted = CountedWrite::start(state);
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

/// Reads the picked `files`, stores each and hands it to the worker; a file that fails is named in `error`.
pub async fn add_files(state: AppState, files: Vec<web_sys::File>, error: RwSignal<Option<String>>) {
    error.set(None);
    for file in files {
        let added = match JsFuture::from(file.array_buffer()).await {
            Ok(buffer) => store_and_add(state, file.name(), js_sys::Uint8Array::new(&buffer).to_vec()).await,
            Err(e) => Err(crate::Error::Invalid(crate::store::js::describe(e))),
        };
        if let Err(e) = added {
            error.set(Some(format!("{} could not be added: {e}", file.name())));
        }
    }
}

/// Changes the settings of adapter `name` and saves them.
pub fn update(state: AppState, name: &str, change: impl Fn(&mut LoraEntry), error: RwSignal<Option<String>>) {
    state.loras.update(|all| all.iter_mut().filter(|e| e.name == name).for_each(&change));
    persist(state, error);
}

/// Removes adapter `name`: from the list, the worker and the browser's storage.
pub fn remove(state: AppState, name: String, error: RwSignal<Option<String>>) {
    state.loras.update(|all| all.retain(|e| e.name != name));
    persist(state, error);
    if let Err(e) = send(&ToWorker::RemoveLora { name: name.clone() }) {
        error.set(Some(e));
    }
    spawn_write(state, async move {
        let deleted = async { Store::open().await?.delete_blob(&file_blob(&name)).await }.await;
        if let Err(e) = deleted {
            error.set(Some(format!("{name} could not be deleted from storage: {e}")));
        }
    });
}
