//! The history of results, kept in the browser's IndexedDB (the model store's blob table) so it survives
//! reloads and works offline: each result's PNG (which also carries its recipe), the references and mask it was
//! made from (stored once by content hash, shared by the entries that use them) and its settings. Entries can be
//! re-run (the form is filled with them and the edit starts) or deleted.

use sha2::{Digest, Sha256};

use crate::pipeline::cache::CacheConfig;
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
    /// The step cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// The model that made it.
    pub model: String,
    /// The references: file name and SHA-256 of the bytes, in order.
    pub references: Vec<(String, String)>,
    /// Seconds the edit took.
    pub seconds: f64,
    /// The mask of a masked edit.
    #[serde(default)]
    pub mask: Option<HistoryMask>,
}

/// The mask of a masked edit in the history.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistoryMask {
    /// SHA-256 of the mask's PNG, stored once like the references.
    pub sha256: String,
    /// The strength.
    pub strength: f64,
    /// The crop padding, where the edit ran on a crop around the mask.
    pub crop_padding: Option<u32>,
    /// The reference (index in the entry's references) that conditioned the edit instead of the image.
    #[serde(default)]
    pub reference: Option<usize>,
}

/// What a re-run needs.
#[derive(Debug, Clone)]
pub struct Rerun {
    /// The entry.
    pub entry: HistoryEntry,
    /// Its reference files (name, bytes), in order.
    pub references: Vec<(String, Vec<u8>)>,
    /// Its mask's PNG, for a masked edit.
    pub mask: Option<Vec<u8>>,
}

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

/// Stores `bytes` once under their SHA-256, which it returns.
async fn put_content(store: &Store, bytes: &[u8]) -> Result<String> {
    let hash = format!("{:x}", Sha256::digest(bytes));
    if store.get_blob(&reference_blob(&hash)).await?.is_none() {
        store.put_blob(&reference_blob(&hash), bytes).await?;
    }
    Ok(hash)
}

/// Stores a result: its PNG, its references and mask (those not stored yet) and the entry (whose mask's hash is
/// filled in). Drops the oldest entries beyond [`MAX_ENTRIES`].
pub async fn add(
    mut entry: HistoryEntry,
    png: &[u8],
    references: &[(String, Vec<u8>)],
    mask: Option<&[u8]>,
) -> Result<()> {
    let store = Store::open().await?;
    entry.references.clear();
    for (name, bytes) in references {
        entry.references.push((name.clone(), put_content(&store, bytes).await?));
    }
    if let (Some(kept), Some(bytes)) = (entry.mask.as_mut(), mask) {
        kept.sha256 = put_content(&store, bytes).await?;
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

/// The hashes of the stored files `entry` uses: its references and its mask.
fn contents(entry: &HistoryEntry) -> impl Iterator<Item = &String> {
    entry.references.iter().map(|(_, hash)| hash).chain(entry.mask.as_ref().map(|m| &m.sha256))
}

/// Deletes the PNG of `removed` and its references and mask that no entry of `kept` uses.
async fn remove_files(store: &Store, removed: &HistoryEntry, kept: &[HistoryEntry]) -> Result<()> {
    store.delete_blob(&png_blob(removed.id)).await?;
    for hash in contents(removed) {
        if !kept.iter().any(|e| contents(e).any(|h| h == hash)) {
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

/// The stored mask of `entry`, for a masked edit.
pub async fn mask(entry: &HistoryEntry) -> Result<Option<Vec<u8>>> {
    let Some(mask) = &entry.mask else { return Ok(None) };
    Store::open()
        .await?
        .get_blob(&reference_blob(&mask.sha256))
        .await?
        .map(Some)
        .ok_or_else(|| Error::Invalid("the mask of this result is no longer stored".into()))
}

/// Everything a re-run of `entry` needs.
pub async fn rerun(entry: HistoryEntry) -> Result<Rerun> {
    Ok(Rerun { references: references(&entry).await?, mask: mask(&entry).await?, entry })
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
