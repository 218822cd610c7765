//! The store in IndexedDB (through the `idb` crate): database `kontext-web` with the object stores
//! `manifests` (key: model id, value: the manifest's JSON), `chunks` (key: `[model id, path, chunk index]`,
//! value: the chunk as a `Blob`, whose contents the browser keeps on disk; chunks stored as bytes by earlier
//! versions are read too) and `blobs` (key: a name, value: the bytes of one small file such as a LoRA).
//!
//! A chunk is written in the same transaction as the manifest entry that marks it stored, after its SHA-256 was
//! checked: a failed write (a full quota included) aborts both, so the store never claims bytes it lacks.

use std::cell::RefCell;
use std::rc::Rc;

use ::idb::{
    Database, DatabaseEvent, Factory, KeyRange, ObjectStore, ObjectStoreParams, Transaction, TransactionMode,
    TransactionResult,
};
use js_sys::{Array, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, DomException, IdbDatabase, IdbTransaction};

use super::manifest::{ChunkState, Manifest, StorageEstimate, StoredFile, sha256_hex};
use crate::store::js;
use crate::{Error, Result};

/// Name of the app's database.
pub const DATABASE: &str = "kontext-web";
/// Schema version of the app's database.
pub const VERSION: u32 = 1;
const MANIFESTS: &str = "manifests";
const CHUNKS: &str = "chunks";
const BLOBS: &str = "blobs";

/// What happens to the store's connections because of other tabs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreEvent {
    /// Opening the store waits for another tab that holds an older version of it open.
    Blocked,
    /// That wait is over.
    Unblocked,
    /// Another tab upgrades or deletes the database: this tab's connection was closed to let it.
    Superseded {
        /// The version the other tab asks for; `None` when it deletes the database.
        new_version: Option<u32>,
    },
}

/// What [`on_event`] calls.
type Listener = Rc<dyn Fn(StoreEvent)>;

thread_local! {
    static LISTENER: RefCell<Option<Listener>> = RefCell::new(None);
}

/// Has `listener` told of every [`StoreEvent`] of this thread's stores.
pub fn on_event(listener: impl Fn(StoreEvent) + 'static) {
    LISTENER.with(|l| *l.borrow_mut() = Some(Rc::new(listener)));
}

fn notify(event: StoreEvent) {
    if let Some(listener) = LISTENER.with(|l| l.borrow().clone()) {
        listener(event);
    }
}

/// An open store. Dropping it closes the connection (after its transactions finish); it also closes itself when
/// another tab upgrades or deletes the database, so this tab never blocks that.
pub struct Store {
    db: Database,
    injected_failure: RefCell<Option<String>>,
}

/// The models in the store; manifests that fail validation are listed apart so they can be deleted.
#[derive(Debug, Default)]
pub struct Listing {
    /// Valid manifests.
    pub models: Vec<Manifest>,
    /// `(model id, why it is unreadable)` for every broken manifest.
    pub broken: Vec<(String, String)>,
}

/// What [`Store::verify_model`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Chunks re-hashed.
    pub checked: usize,
    /// `(path, chunk index)` of every chunk that failed and is now marked missing.
    pub bad: Vec<(String, usize)>,
}

/// The key of chunk `index` of `path` in model `model`.
pub fn chunk_key(model: &str, path: &str, index: usize) -> JsValue {
    Array::of3(&model.into(), &path.into(), &(index as f64).into()).into()
}

/// Every chunk key of `model`: from `[model]` up to `[model, []]` (arrays sort after strings).
fn model_range(model: &str) -> Result<KeyRange> {
    let lower: JsValue = Array::of1(&model.into()).into();
    let upper: JsValue = Array::of2(&model.into(), &Array::new()).into();
    KeyRange::bound(&lower, &upper, None, None).map_err(|e| storage_error("selecting a model's chunks", e))
}

/// Maps an IndexedDB failure to the crate's error; a full quota becomes a `storage full:` error.
pub fn storage_error(what: &str, error: ::idb::Error) -> Error {
    match &error {
        ::idb::Error::DomException(e) => dom_error(what, &e.name(), &e.message()),
        other => {
            let text = other.to_string();
            let name = ["QuotaExceededError", "VersionError", "InvalidStateError"]
                .into_iter()
                .find(|name| text.contains(name) || *name == "InvalidStateError" && text.contains("connection is clos"))
                .unwrap_or("");
            dom_error(what, name, &text)
        }
    }
}

fn dom_error(what: &str, name: &str, message: &str) -> Error {
    if name == "QuotaExceededError" {
        Error::Invalid(format!(
            "storage full: {what} did not fit in the space the browser grants this site; delete models or free disk space ({message})"
        ))
    } else if name == "VersionError" {
        Error::Invalid(format!(
            "browser storage: {what} failed: the model store was upgraded by a newer kontext-web in another tab; reload this page"
        ))
    } else if name == "InvalidStateError" && message.contains("clos") {
        Error::Invalid(format!(
            "browser storage: {what} failed: another tab is upgrading or deleting the model store, or the browser cleared it; \
             reload this page"
        ))
    } else {
        Error::Invalid(format!(
            "browser storage: {what} failed: {}",
            if name.is_empty() { message.to_string() } else { format!("{name}: {message}") }
        ))
    }
}

fn bytes_of(value: JsValue) -> Result<Uint8Array> {
    match value.dyn_into::<Uint8Array>() {
        Ok(array) => Ok(array),
        Err(value) if value.is_instance_of::<js_sys::ArrayBuffer>() => Ok(Uint8Array::new(&value)),
        Err(_) => Err(Error::Invalid("browser storage: a stored chunk is not bytes".into())),
    }
}

/// A chunk as IndexedDB returns it: a `Blob` (a handle; the bytes stay on disk) or, from earlier versions,
/// bytes.
enum StoredChunk {
    Blob(Blob),
    Bytes(Uint8Array),
}

impl StoredChunk {
    fn of(value: JsValue) -> Result<Self> {
        match value.dyn_into::<Blob>() {
            Ok(blob) => Ok(Self::Blob(blob)),
            Err(value) => bytes_of(value).map(Self::Bytes),
        }
    }

    fn len(&self) -> u64 {
        match self {
            Self::Blob(blob) => blob.size() as u64,
            Self::Bytes(bytes) => bytes.length() as u64,
        }
    }

    /// The chunk's bytes, read from disk for a `Blob` (an await outside IndexedDB: its transaction ends).
    async fn bytes(&self, what: &str) -> Result<Uint8Array> {
        match self {
            Self::Bytes(bytes) => Ok(bytes.clone()),
            Self::Blob(blob) => {
                let buffer = JsFuture::from(blob.array_buffer())
                    .await
                    .map_err(|e| Error::Invalid(format!("browser storage: {what} failed: {}", js::describe(e))))?;
                Ok(Uint8Array::new(&buffer))
            }
        }
    }

    fn into_blob(self) -> Result<Blob> {
        match self {
            Self::Blob(blob) => Ok(blob),
            Self::Bytes(bytes) => blob_of(&bytes),
        }
    }
}

fn blob_of(bytes: &Uint8Array) -> Result<Blob> {
    Blob::new_with_u8_array_sequence(&Array::of1(bytes))
        .map_err(|e| Error::Invalid(format!("browser storage: making a Blob of a chunk failed: {}", js::describe(e))))
}

async fn read_manifest(manifests: &ObjectStore, id: &str) -> Result<Option<Manifest>> {
    let what = format!("reading the manifest of {id:?}");
    let value = manifests
        .get(JsValue::from_str(id))
        .map_err(|e| storage_error(&what, e))?
        .await
        .map_err(|e| storage_error(&what, e))?;
    match value {
        None => Ok(None),
        Some(value) => {
            let json = value
                .as_string()
                .ok_or_else(|| Error::Invalid(format!("the stored manifest of {id:?} is not JSON text")))?;
            Manifest::from_json(&json).map(Some)
        }
    }
}

async fn write_manifest(manifests: &ObjectStore, manifest: &Manifest) -> Result<()> {
    let what = format!("saving the manifest of {:?}", manifest.id);
    let key = JsValue::from_str(&manifest.id);
    manifests
        .put(&JsValue::from_str(&manifest.to_json()), Some(&key))
        .map_err(|e| storage_error(&what, e))?
        .await
        .map_err(|e| storage_error(&what, e))?;
    Ok(())
}

/// A transaction and a handle on it that survives awaiting it (to read its error after an abort).
struct Tx {
    tx: Transaction,
    raw: IdbTransaction,
}

impl Tx {
    fn store(&self, name: &str) -> Result<ObjectStore> {
        self.tx.object_store(name).map_err(|e| storage_error(&format!("opening {name}"), e))
    }

    /// Waits for the commit; an abort is reported with the transaction's own error (a full quota shows here).
    async fn commit(self, what: &str) -> Result<()> {
        match self.tx.await {
            Ok(TransactionResult::Committed) => Ok(()),
            Ok(TransactionResult::Aborted) => Err(match self.raw.error() {
                Some(e) => dom_error(what, &e.name(), &e.message()),
                None => dom_error(what, "", "the transaction was aborted"),
            }),
            Err(e) => Err(storage_error(what, e)),
        }
    }

    fn abort(self) {
        let _ = self.tx.abort();
    }
}

impl Store {
    /// Opens (creating on first use) the app's database.
    pub async fn open() -> Result<Self> {
        Self::open_named(DATABASE).await
    }

    /// Opens the database `name` (tests use their own).
    pub async fn open_named(name: &str) -> Result<Self> {
        Self::open_versioned(name, VERSION).await
    }

    /// Opens the database `name` at schema `version` (tests use it to play a newer app in another tab).
    #[doc(hidden)]
    pub async fn open_versioned(name: &str, version: u32) -> Result<Self> {
        let fail = |e| storage_error("opening the model store", e);
        let factory = Factory::new().map_err(fail)?;
        let mut request = factory.open(name, Some(version)).map_err(fail)?;
        let was_blocked = Rc::new(std::cell::Cell::new(false));
        let blocked = was_blocked.clone();
        request.on_blocked(move |_| {
            blocked.set(true);
            notify(StoreEvent::Blocked);
        });
        request.on_upgrade_needed(|event| {
            let Ok(db) = event.database() else { return };
            let existing = db.store_names();
            for store in [MANIFESTS, CHUNKS, BLOBS] {
                if !existing.iter().any(|s| s == store) {
                    let _ = db.create_object_store(store, ObjectStoreParams::new());
                }
            }
        });
        let opened = request.await;
        if was_blocked.get() {
            notify(StoreEvent::Unblocked);
        }
        let raw: IdbDatabase = opened.map_err(fail)?.into();
        let mut db = Database::from(raw.clone());
        db.on_version_change(move |event| {
            raw.close();
            let new_version =
                event.dyn_ref::<web_sys::IdbVersionChangeEvent>().and_then(|e| e.new_version()).map(|v| v as u32);
            notify(StoreEvent::Superseded { new_version });
        });
        let names = db.store_names();
        if let Some(missing) = [MANIFESTS, CHUNKS, BLOBS].into_iter().find(|s| !names.iter().any(|n| n == s)) {
            return Err(Error::Invalid(format!("browser storage: the model store has no {missing} table")));
        }
        Ok(Self { db, injected_failure: RefCell::new(None) })
    }

    /// Deletes the database `name` and everything in it (closes nothing: close stores first).
    pub async fn delete_database(name: &str) -> Result<()> {
        let fail = |e| storage_error("deleting the model store", e);
        Factory::new().map_err(fail)?.delete(name).map_err(fail)?.await.map_err(fail)
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.db.close();
    }

    /// Runs `body` in one read-write transaction over `stores`: committed when it succeeds (an abort at commit,
    /// such as a full quota, is reported as failing `what`), aborted when it fails.
    async fn with_tx<T>(&self, stores: &[&str], what: &str, body: impl AsyncFnOnce(&Tx) -> Result<T>) -> Result<T> {
        let tx = self.transaction(stores, TransactionMode::ReadWrite)?;
        match body(&tx).await {
            Ok(value) => tx.commit(what).await.map(|()| value),
            Err(e) => {
                tx.abort();
                Err(e)
            }
        }
    }

    fn transaction(&self, stores: &[&str], mode: TransactionMode) -> Result<Tx> {
        let tx = self.db.transaction(stores, mode).map_err(|e| storage_error("starting a transaction", e))?;
        let raw: IdbTransaction =
            tx.object_store(stores[0]).map_err(|e| storage_error("starting a transaction", e))?.transaction().into();
        Ok(Tx { tx, raw })
    }

    /// Saves `manifest`, replacing the stored one of the same id (chunks are kept).
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<()> {
        manifest.validate()?;
        let what = format!("saving the manifest of {:?}", manifest.id);
        self.with_tx(&[MANIFESTS], &what, async |tx| write_manifest(&tx.store(MANIFESTS)?, manifest).await).await
    }

    /// The manifest of model `id`, validated; `None` when the store has no such model.
    pub async fn manifest(&self, id: &str) -> Result<Option<Manifest>> {
        let tx = self.transaction(&[MANIFESTS], TransactionMode::ReadOnly)?;
        read_manifest(&tx.store(MANIFESTS)?, id).await
    }

    /// Every model in the store.
    pub async fn list(&self) -> Result<Listing> {
        let what = "listing the stored models";
        let tx = self.transaction(&[MANIFESTS], TransactionMode::ReadOnly)?;
        let store = tx.store(MANIFESTS)?;
        let keys = store
            .get_all_keys(None, None)
            .map_err(|e| storage_error(what, e))?
            .await
            .map_err(|e| storage_error(what, e))?;
        let values =
            store.get_all(None, None).map_err(|e| storage_error(what, e))?.await.map_err(|e| storage_error(what, e))?;
        let mut listing = Listing::default();
        for (key, value) in keys.into_iter().zip(values) {
            let id = key.as_string().unwrap_or_else(|| format!("{key:?}"));
            let parsed = value
                .as_string()
                .ok_or_else(|| Error::Invalid(format!("the stored manifest of {id:?} is not JSON text")))
                .and_then(|json| Manifest::from_json(&json));
            match parsed {
                Ok(manifest) if manifest.id == id => listing.models.push(manifest),
                Ok(manifest) => {
                    listing.broken.push((id, format!("it is stored under another id than its own ({:?})", manifest.id)))
                }
                Err(e) => listing.broken.push((id, e.to_string())),
            }
        }
        Ok(listing)
    }

    /// Stores `bytes` as chunk `index` of `path` in model `model` and marks it stored, in one transaction.
    /// Refused when the length is not the chunk's or the bytes do not match a SHA-256 recorded earlier.
    /// Returns the updated manifest.
    pub async fn put_chunk(&self, model: &str, path: &str, index: usize, bytes: &[u8]) -> Result<Manifest> {
        let hash = sha256_hex(bytes);
        let value = blob_of(&Uint8Array::from(bytes))?;
        let what = format!("storing chunk {index} of {path}");
        self.with_tx(&[MANIFESTS, CHUNKS], &what, async |tx| {
            let manifests = tx.store(MANIFESTS)?;
            let mut manifest = read_manifest(&manifests, model)
                .await?
                .ok_or_else(|| Error::Invalid(format!("the store has no model {model:?}")))?;
            let hash = manifest.check_hashed_chunk(path, index, bytes.len(), hash)?;
            tx.store(CHUNKS)?
                .put(&value, Some(&chunk_key(model, path, index)))
                .map_err(|e| storage_error(&what, e))?
                .await
                .map_err(|e| storage_error(&what, e))?;
            manifest.mark_stored(path, index, hash)?;
            write_manifest(&manifests, &manifest).await?;
            if let Some(name) = self.injected_failure.borrow_mut().take() {
                return Err(storage_error(&what, ::idb::Error::DomException(simulated_exception(&name))));
            }
            Ok(manifest)
        })
        .await
    }

    /// Makes the next [`Store::put_chunk`] fail, after its writes were issued, with a `DOMException` named
    /// `name` (as a full disk does with `QuotaExceededError`), so tests can check that the aborted transaction
    /// leaves the store as it was. Browsers offer no way to shrink a quota from inside a page.
    #[doc(hidden)]
    pub fn fail_next_chunk_write(&self, name: &str) {
        *self.injected_failure.borrow_mut() = Some(name.to_string());
    }

    /// Chunk `index` of `path` as stored (no check of state or hash).
    async fn raw_chunk(
        &self,
        chunks: &ObjectStore,
        model: &str,
        path: &str,
        index: usize,
    ) -> Result<Option<StoredChunk>> {
        let what = format!("reading chunk {index} of {path}");
        let value = chunks
            .get(chunk_key(model, path, index))
            .map_err(|e| storage_error(&what, e))?
            .await
            .map_err(|e| storage_error(&what, e))?;
        value.map(StoredChunk::of).transpose()
    }

    /// The bytes of chunk `index` of `path`; refused when the chunk is not marked stored.
    pub async fn read_chunk(&self, model: &str, path: &str, index: usize) -> Result<Vec<u8>> {
        let manifest =
            self.manifest(model).await?.ok_or_else(|| Error::Invalid(format!("the store has no model {model:?}")))?;
        let (_, len) = manifest.file(path)?.chunk_span(index)?;
        self.read_range(model, path, index as u64 * manifest.file(path)?.chunk_size, len).await
    }

    /// `len` bytes of `path` from `offset`, gathered across chunks. Every chunk read must be marked stored and
    /// hold the length its place in the file says.
    pub async fn read_range(&self, model: &str, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let pieces = {
            let tx = self.transaction(&[MANIFESTS, CHUNKS], TransactionMode::ReadOnly)?;
            let manifest = read_manifest(&tx.store(MANIFESTS)?, model)
                .await?
                .ok_or_else(|| Error::Invalid(format!("the store has no model {model:?}")))?;
            let file = manifest.file(path)?;
            let chunks = tx.store(CHUNKS)?;
            let mut pieces = Vec::new();
            for (index, inside, take) in file.chunks_for_range(offset, len)? {
                pieces.push((self.checked_chunk(&chunks, model, file, index).await?, inside, take));
            }
            pieces
        };
        let mut out = vec![0u8; len as usize];
        let mut at = 0usize;
        for (chunk, inside, take) in pieces {
            let bytes = chunk.bytes(&format!("reading {path}")).await?;
            bytes.subarray(inside as u32, (inside + take) as u32).copy_to(&mut out[at..at + take as usize]);
            at += take as usize;
        }
        Ok(out)
    }

    /// Chunk `index` of `file`, refused unless marked stored and of the length its place in the file says.
    async fn checked_chunk(
        &self,
        chunks: &ObjectStore,
        model: &str,
        file: &StoredFile,
        index: usize,
    ) -> Result<StoredChunk> {
        let path = &file.path;
        if file.chunks[index].state != ChunkState::Stored {
            return Err(Error::Invalid(format!(
                "{path} chunk {index} of model {model:?} is not stored; download it first"
            )));
        }
        let (_, chunk_len) = file.chunk_span(index)?;
        self.raw_chunk(chunks, model, path, index).await?.filter(|c| c.len() == chunk_len).ok_or_else(|| {
            Error::Invalid(format!(
                "{path} chunk {index} of model {model:?} is damaged in storage; verify the model to fetch it again"
            ))
        })
    }

    /// Handles on every chunk of `path`, in order, as `Blob`s whose bytes stay on disk until sliced and read.
    /// Refused unless every chunk is stored with its length.
    pub async fn chunk_blobs(&self, model: &str, path: &str) -> Result<Vec<Blob>> {
        let tx = self.transaction(&[MANIFESTS, CHUNKS], TransactionMode::ReadOnly)?;
        let manifest = read_manifest(&tx.store(MANIFESTS)?, model)
            .await?
            .ok_or_else(|| Error::Invalid(format!("the store has no model {model:?}")))?;
        let file = manifest.file(path)?;
        let chunks = tx.store(CHUNKS)?;
        let mut blobs = Vec::with_capacity(file.chunks.len());
        for index in 0..file.chunks.len() {
            blobs.push(self.checked_chunk(&chunks, model, file, index).await?);
        }
        blobs.into_iter().map(StoredChunk::into_blob).collect()
    }

    /// Deletes model `id`: every chunk and the manifest, in one transaction.
    pub async fn delete_model(&self, id: &str) -> Result<()> {
        let what = format!("deleting model {id:?}");
        self.with_tx(&[MANIFESTS, CHUNKS], &what, async |tx| {
            tx.store(CHUNKS)?
                .delete(model_range(id)?)
                .map_err(|e| storage_error(&what, e))?
                .await
                .map_err(|e| storage_error(&what, e))?;
            tx.store(MANIFESTS)?
                .delete(JsValue::from_str(id))
                .map_err(|e| storage_error(&what, e))?
                .await
                .map_err(|e| storage_error(&what, e))
        })
        .await
    }

    /// Re-hashes every stored chunk of model `id` (one at a time), marks the ones that are absent, of the wrong
    /// length or of another SHA-256 missing, and drops their bytes; a download then fetches exactly those.
    /// `progress(done, total)` counts chunks.
    pub async fn verify_model(&self, id: &str, progress: &mut dyn FnMut(usize, usize)) -> Result<Verification> {
        let manifest =
            self.manifest(id).await?.ok_or_else(|| Error::Invalid(format!("the store has no model {id:?}")))?;
        let stored: Vec<(usize, usize)> = manifest
            .files
            .iter()
            .enumerate()
            .flat_map(|(f, file)| {
                file.chunks.iter().enumerate().filter(|(_, c)| c.state == ChunkState::Stored).map(move |(i, _)| (f, i))
            })
            .collect();
        let mut bad = Vec::new();
        for (done, &(f, index)) in stored.iter().enumerate() {
            progress(done, stored.len());
            let file = &manifest.files[f];
            let (_, len) = file.chunk_span(index)?;
            let tx = self.transaction(&[CHUNKS], TransactionMode::ReadOnly)?;
            let chunk = self.raw_chunk(&tx.store(CHUNKS)?, id, &file.path, index).await?;
            let bytes = match chunk.filter(|c| c.len() == len) {
                Some(chunk) => Some(chunk.bytes(&format!("reading chunk {index} of {}", file.path)).await?),
                None => None,
            };
            let good = bytes.is_some_and(|b| Some(sha256_hex(&b.to_vec())) == file.chunks[index].sha256);
            if !good {
                bad.push((file.path.clone(), index));
            }
        }
        progress(stored.len(), stored.len());
        if !bad.is_empty() {
            self.drop_chunks(id, &bad).await?;
        }
        Ok(Verification { checked: stored.len(), bad })
    }

    /// Marks `chunks` missing (keeping their recorded hashes) and deletes their bytes, in one transaction.
    async fn drop_chunks(&self, id: &str, chunks: &[(String, usize)]) -> Result<()> {
        let what = format!("dropping damaged chunks of {id:?}");
        self.with_tx(&[MANIFESTS, CHUNKS], &what, async |tx| {
            let manifests = tx.store(MANIFESTS)?;
            let mut manifest = read_manifest(&manifests, id)
                .await?
                .ok_or_else(|| Error::Invalid(format!("the store has no model {id:?}")))?;
            let store = tx.store(CHUNKS)?;
            for (path, index) in chunks {
                manifest.mark_missing(path, *index)?;
                store
                    .delete(chunk_key(id, path, *index))
                    .map_err(|e| storage_error(&what, e))?
                    .await
                    .map_err(|e| storage_error(&what, e))?;
            }
            write_manifest(&manifests, &manifest).await
        })
        .await
    }

    /// Stores one small file under `name` (a LoRA adapter), replacing any earlier one.
    pub async fn put_blob(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let what = format!("storing {name}");
        self.with_tx(&[BLOBS], &what, async |tx| {
            tx.store(BLOBS)?
                .put(&Uint8Array::from(bytes), Some(&JsValue::from_str(name)))
                .map_err(|e| storage_error(&what, e))?
                .await
                .map_err(|e| storage_error(&what, e))?;
            Ok(())
        })
        .await
    }

    /// The file stored under `name`, if any.
    pub async fn get_blob(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let what = format!("reading {name}");
        let tx = self.transaction(&[BLOBS], TransactionMode::ReadOnly)?;
        let value = tx
            .store(BLOBS)?
            .get(JsValue::from_str(name))
            .map_err(|e| storage_error(&what, e))?
            .await
            .map_err(|e| storage_error(&what, e))?;
        value.map(|v| bytes_of(v).map(|b| b.to_vec())).transpose()
    }

    /// Deletes the file stored under `name` (nothing when absent).
    pub async fn delete_blob(&self, name: &str) -> Result<()> {
        let what = format!("deleting {name}");
        self.with_tx(&[BLOBS], &what, async |tx| {
            tx.store(BLOBS)?
                .delete(JsValue::from_str(name))
                .map_err(|e| storage_error(&what, e))?
                .await
                .map_err(|e| storage_error(&what, e))
        })
        .await
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.db.close();
    }
}

fn simulated_exception(name: &str) -> DomException {
    DomException::new_with_message_and_name("simulated by fail_next_chunk_write", name)
        .expect("DOMException constructor")
}

fn storage_manager() -> Result<JsValue> {
    let navigator =
        js::get(&js_sys::global(), "navigator").ok_or_else(|| Error::Invalid("no navigator in this scope".into()))?;
    js::get(&navigator, "storage").ok_or_else(|| Error::Invalid("this browser has no navigator.storage".into()))
}

/// `navigator.storage.estimate()`: bytes used by this site and its quota.
pub async fn estimate() -> Result<StorageEstimate> {
    let estimate = js::call_async(&storage_manager()?, "estimate", &[])
        .await
        .map_err(|e| Error::Invalid(format!("storage estimate: {e}")))?;
    match (js::get_f64(&estimate, "usage"), js::get_f64(&estimate, "quota")) {
        (Some(usage), Some(quota)) => Ok(StorageEstimate { usage, quota }),
        _ => Err(Error::Invalid("storage estimate: the browser reported no usage or quota".into())),
    }
}

/// `navigator.storage.persist()`: asks that the site's storage not be evicted under pressure; the browser's
/// answer (Chromium grants it to installed or engaged sites, Firefox asks the user).
pub async fn persist() -> Result<bool> {
    let answer = js::call_async(&storage_manager()?, "persist", &[])
        .await
        .map_err(|e| Error::Invalid(format!("storage persist: {e}")))?;
    Ok(answer.as_bool().unwrap_or(false))
}

/// `navigator.storage.persisted()`: whether storage is already persistent.
pub async fn persisted() -> Result<bool> {
    let answer = js::call_async(&storage_manager()?, "persisted", &[])
        .await
        .map_err(|e| Error::Invalid(format!("storage persisted: {e}")))?;
    Ok(answer.as_bool().unwrap_or(false))
}
