//! The history of results, kept in the browser's IndexedDB (the model store's blob table) so it survives
//! reloads and works offline: each result's PNG (which also carries its recipe), the references it was made
//! from (stored once by content hash, shared by the entries that use them) and its settings. Entries can be
//! re-run (the form is filled with them and the edit starts) or deleted.

use leptos::prelude::*;
use leptos::task::spawn_local;
use sha2::{Digest, Sha256};

use crate::store::idb::Store;
use crate::{Error, Result};

/// The list of entries, oldest first.
const INDEX_BLOB: &str = "history.json";

/// Entries kept; the oldest go first.
pub const MAX_ENTRIES: usize = 50;

fn png_blob(id: u64) -> String {
    format!("history/{id}.png")
}

fn reference_blob(hash: &str) -> String {
    format!("reference/{hash}")
}

/// One result and how it was made.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    /// When it finished (ms since the epoch); the key of its PNG.
    pub id: u64,
    /// The instruction.
    pub prompt: String,
    /// Output width in pixels.
    pub width: usize,
    /// Output height in pixels.
    pub height: usize,
    /// The output shape chosen in the editor (index of its shape list).
    pub aspect: usize,
    /// The size chosen in the editor (side of the same-area square).
    pub side: usize,
    /// Denoising steps.
    pub steps: usize,
    /// Distilled guidance.
    pub guidance: f32,
    /// Seed of the noise.
    pub seed: u64,
    /// LoRA adapters and strengths.
    pub loras: Vec<(String, f32)>,
    /// The model that made it.
    pub model: String,
    /// The references: file name and SHA-256 of the bytes, in order.
    pub references: Vec<(String, String)>,
    /// Seconds the edit took.
    pub seconds: f64,
}

/// What a re-run needs: the entry and its reference files (name, bytes).
pub type Rerun = (HistoryEntry, Vec<(String, Vec<u8>)>);

async fn read_index(store: &Store) -> Result<Vec<HistoryEntry>> {
    match store.get_blob(INDEX_BLOB).await? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("the stored history is damaged ({e}); it starts again empty"))),
        None => Ok(Vec::new()),
    }
}

async fn write_index(store: &Store, entries: &[HistoryEntry]) -> Result<()> {
    let json = serde_json::to_vec(entries).map_err(|e| Error::Invalid(e.to_string()))?;
    store.put_blob(INDEX_BLOB, &json).await
}

/// Every stored entry, newest first.
pub async fn entries() -> Result<Vec<HistoryEntry>> {
    let mut entries = read_index(&Store::open().await?).await?;
    entries.reverse();
    Ok(entries)
}

/// Stores a result: its PNG, its references (those not stored yet) and the entry. Drops the oldest entries
/// beyond [`MAX_ENTRIES`].
pub async fn add(mut entry: HistoryEntry, png: &[u8], references: &[(String, Vec<u8>)]) -> Result<()> {
    let store = Store::open().await?;
    entry.references.clear();
    for (name, bytes) in references {
        let hash = format!("{:x}", Sha256::digest(bytes));
        if store.get_blob(&reference_blob(&hash)).await?.is_none() {
            store.put_blob(&reference_blob(&hash), bytes).await?;
        }
        entry.references.push((name.clone(), hash));
    }
    store.put_blob(&png_blob(entry.id), png).await?;
    let mut all = read_index(&store).await.unwrap_or_default();
    all.push(entry);
    let dropped: Vec<HistoryEntry> = all.drain(..all.len().saturating_sub(MAX_ENTRIES)).collect();
    write_index(&store, &all).await?;
    for old in &dropped {
        remove_files(&store, old, &all).await?;
    }
    Ok(())
}

/// Deletes an entry, its PNG and the references no other entry uses.
pub async fn delete(id: u64) -> Result<()> {
    let store = Store::open().await?;
    let mut all = read_index(&store).await?;
    let Some(at) = all.iter().position(|e| e.id == id) else { return Ok(()) };
    let removed = all.remove(at);
    write_index(&store, &all).await?;
    remove_files(&store, &removed, &all).await
}

/// Deletes the PNG of `removed` and its references that no entry of `kept` uses.
async fn remove_files(store: &Store, removed: &HistoryEntry, kept: &[HistoryEntry]) -> Result<()> {
    store.delete_blob(&png_blob(removed.id)).await?;
    for (_, hash) in &removed.references {
        if !kept.iter().any(|e| e.references.iter().any(|(_, h)| h == hash)) {
            store.delete_blob(&reference_blob(hash)).await?;
        }
    }
    Ok(())
}

/// The stored PNG of entry `id`.
pub async fn png(id: u64) -> Result<Vec<u8>> {
    Store::open()
        .await?
        .get_blob(&png_blob(id))
        .await?
        .ok_or_else(|| Error::Invalid("this result is no longer stored".into()))
}

/// The stored reference files of `entry`, in order.
pub async fn references(entry: &HistoryEntry) -> Result<Vec<(String, Vec<u8>)>> {
    let store = Store::open().await?;
    let mut out = Vec::new();
    for (name, hash) in &entry.references {
        let bytes = store
            .get_blob(&reference_blob(hash))
            .await?
            .ok_or_else(|| Error::Invalid(format!("the reference {name} is no longer stored")))?;
        out.push((name.clone(), bytes));
    }
    Ok(out)
}

/// An entry as shown: its data and object URLs of its images.
#[derive(Debug, Clone, PartialEq)]
struct Shown {
    entry: HistoryEntry,
    result_url: String,
    reference_urls: Vec<(String, String)>,
}

fn object_url(bytes: &[u8], mime: &str) -> Result<String> {
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes));
    let options = web_sys::BlobPropertyBag::new();
    options.set_type(mime);
    let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &options)
        .map_err(|e| Error::Invalid(crate::web::js::describe(e)))?;
    web_sys::Url::create_object_url_with_blob(&blob).map_err(|e| Error::Invalid(crate::web::js::describe(e)))
}

async fn shown() -> Result<Vec<Shown>> {
    let mut out = Vec::new();
    for entry in entries().await? {
        let Ok(png) = png(entry.id).await else { continue };
        let references = references(&entry).await.unwrap_or_default();
        let reference_urls = references
            .iter()
            .filter_map(|(name, bytes)| Some((name.clone(), object_url(bytes, "image/*").ok()?)))
            .collect();
        out.push(Shown { result_url: object_url(&png, "image/png")?, reference_urls, entry });
    }
    Ok(out)
}

/// The stored results, newest first, with re-run, download and delete.
///
/// - `revision`: bumped by the editor after it stores a result, to refresh the list.
/// - `on_rerun`: called with an entry and its reference files when the user asks to run it again.
#[component]
pub fn History(revision: RwSignal<u32>, on_rerun: Callback<Rerun>) -> impl IntoView {
    let list = RwSignal::new(Vec::<Shown>::new());
    let error = RwSignal::new(None::<String>);
    Effect::new(move |_| {
        revision.track();
        spawn_local(async move {
            match shown().await {
                Ok(items) => {
                    for old in list.get_untracked() {
                        let _ = web_sys::Url::revoke_object_url(&old.result_url);
                        old.reference_urls.iter().for_each(|(_, url)| drop(web_sys::Url::revoke_object_url(url)));
                    }
                    list.set(items);
                }
                Err(e) => error.set(Some(format!("the history could not be read: {e}"))),
            }
        });
    });
    let remove = move |id: u64| {
        spawn_local(async move {
            match delete(id).await {
                Ok(()) => revision.update(|r| *r += 1),
                Err(e) => error.set(Some(format!("could not delete: {e}"))),
            }
        });
    };
    let rerun = move |entry: HistoryEntry| {
        spawn_local(async move {
            match references(&entry).await {
                Ok(files) => on_rerun.run((entry, files)),
                Err(e) => error.set(Some(e.to_string())),
            }
        });
    };
    view! {
        <section class="card" id="history" aria-labelledby="history-title">
            <h2 id="history-title">"History"</h2>
            <p class="muted">{format!("Your last {MAX_ENTRIES} results, kept in this browser only.")}</p>
            {move || error.get().map(|message| view! { <p class="status bad" role="alert">{message}</p> })}
            {move || list.with(Vec::is_empty).then(|| view! { <p class="muted" id="history-empty">"No results yet."</p> })}
            <ol class="history" aria-label="results">
                <For each=move || list.get() key=|item| item.entry.id let:item>
                    {
                        let entry = item.entry.clone();
                        let id = entry.id;
                        let rerun_entry = entry.clone();
                        let loras = entry.loras.iter().map(|(n, w)| format!("{n} × {w}")).collect::<Vec<_>>().join(", ");
                        view! {
                            <li data-id=id.to_string()>
                                <img class="history-result" src=item.result_url.clone()
                                    alt=format!("result of “{}”", entry.prompt) />
                                <div class="history-recipe">
                                    <p class="history-prompt">{entry.prompt.clone()}</p>
                                    <p class="muted">
                                        {format!(
                                            "{}×{} · {} steps · guidance {} · seed {} · {:.1} s",
                                            entry.width, entry.height, entry.steps, entry.guidance, entry.seed, entry.seconds
                                        )}
                                    </p>
                                    {(!loras.is_empty()).then(|| view! { <p class="muted">{format!("LoRA: {loras}")}</p> })}
                                    <p class="muted">{entry.model.clone()}</p>
                                    <ul class="history-references" aria-label="references">
                                        {item.reference_urls.iter().map(|(name, url)| view! {
                                            <li><img src=url.clone() alt=name.clone() /></li>
                                        }).collect_view()}
                                    </ul>
                                </div>
                                <div class="row" role="group" aria-label="actions">
                                    <button type="button" class="history-rerun" on:click=move |_| rerun(rerun_entry.clone())
                                        aria-label=format!("re-run “{}” with seed {}", entry.prompt, entry.seed)>"Re-run"</button>
                                    <a href=item.result_url.clone() download=format!("kontext-{}.png", entry.seed)>"Download"</a>
                                    <button type="button" class="history-delete" on:click=move |_| remove(id)
                                        aria-label=format!("delete “{}”", entry.prompt)>"Delete"</button>
                                </div>
                            </li>
                        }
                    }
                </For>
            </ol>
        </section>
    }
}
