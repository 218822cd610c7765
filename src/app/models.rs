//! The page's side of the model store: adding models from a source, running one download or copy at a time
//! with measured rate and ETA, pause / resume / cancel, verify, delete, the storage estimate, and the memory
//! check before a stored model is loaded in the worker.
//!
//! Downloads run in the page, not in the worker: the worker runs its requests one at a time, so a download of
//! several GB there would hold every edit back for its whole duration, while in the page `fetch` and IndexedDB are
//! asynchronous (the UI stays responsive; only hashing a chunk takes a few milliseconds) and pausing is a flag.
//! The worker opens the same IndexedDB to load a complete model.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use js_sys::Uint8Array;
use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use super::{AppState, ModelState, send};
use crate::pipeline::plan::DeviceLimits;
use crate::store::catalog::{self, DEMO_BASE};
use crate::store::download::{self, CancelFlag, Outcome, Progress};
use crate::store::footprint::{self, FileFacts, Footprint, HEAP_LOAD_LIMIT, PLANNED_EDIT};
use crate::store::idb::{self, Store, StoreEvent};
use crate::store::js;
use crate::store::manifest::{
    DEFAULT_CHUNK_SIZE, Manifest, Source, StorageEstimate, human_bytes, is_changed_on_server,
};
use crate::store::meter::TransferMeter;
use crate::web::protocol::ToWorker;
use crate::web::{locks, probe};
use crate::{Error, Result};

thread_local! {
    /// The running transfer's stop switch, and whether to delete the model once it stopped (Cancel).
    static RUNNING: RefCell<Option<(String, CancelFlag, bool)>> = const { RefCell::new(None) };
    /// Local files picked in this session, by model id, so a paused copy can resume until the page reloads.
    static LOCAL_FILES: RefCell<HashMap<String, Vec<(String, web_sys::Blob)>>> = RefCell::new(HashMap::new());
    /// Models this page deleted: their absence from the store is expected.
    static DELETED_HERE: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
}

/// What the running transfer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Fetching from URLs.
    Downloading,
    /// Copying local (or served demo) files into the store.
    Copying,
    /// Re-hashing stored chunks.
    Verifying,
    /// Another tab is filling or verifying the same model; this one goes on when it is done.
    Waiting,
}

/// The one download, copy or verification under way.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// Model id.
    pub id: String,
    /// Model name.
    pub label: String,
    /// What is done.
    pub action: Action,
    /// The file being worked on.
    pub file: String,
    /// Bytes (chunks when verifying) done.
    pub done: u64,
    /// Bytes (chunks) in all.
    pub total: u64,
    /// Bytes per second over the last seconds.
    pub rate: Option<f64>,
    /// Seconds left at that rate.
    pub eta: Option<f64>,
    /// A pause or cancel was asked for.
    pub stopping: bool,
}

/// A message for the user about the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// Something worked.
    Info(String),
    /// Something was refused or failed.
    Error(String),
}

/// The memory check of a model before loading.
#[derive(Debug, Clone, PartialEq)]
pub enum Fit {
    /// Reading the model's headers.
    Checking(String),
    /// The estimate.
    Done {
        /// Model id.
        id: String,
        /// Lines of the estimate.
        lines: Vec<String>,
        /// Limits on edits that do not prevent the load.
        warnings: Vec<String>,
        /// Why it must not be loaded here.
        refusal: Option<String>,
    },
    /// The estimate could not be made.
    Failed(String),
}

/// The store's signals, shared by the model panel's components.
#[derive(Debug, Clone, Copy)]
pub struct StoreController {
    /// Stored models with a valid manifest.
    pub models: RwSignal<Vec<Manifest>>,
    /// `(id, why)` of unreadable manifests.
    pub broken: RwSignal<Vec<(String, String)>>,
    /// Usage and quota.
    pub estimate: RwSignal<Option<StorageEstimate>>,
    /// The browser's answer about persistent storage.
    pub persisted: RwSignal<Option<bool>>,
    /// The running transfer.
    pub transfer: RwSignal<Option<Transfer>>,
    /// The last message of the source forms.
    pub notice: RwSignal<Option<Notice>>,
    /// Per-model outcome of the last action (verification, failure).
    pub row_notes: RwSignal<HashMap<String, Notice>>,
    /// The adapter's limits (`Err` when there is no WebGPU adapter).
    pub limits: RwSignal<Option<std::result::Result<DeviceLimits, String>>>,
    /// The memory check of the model chosen for loading.
    pub fit: RwSignal<Option<Fit>>,
    /// Opening the store waits for another tab that holds an older version of it.
    pub blocked: RwSignal<bool>,
    /// The GPU memory the user set for loads and edits, in bytes; `None` until set (then
    /// [`gpu_memory_guess`] applies).
    pub gpu_memory: RwSignal<Option<u64>>,
}

/// Where the GPU memory setting is kept between visits (`localStorage`).
const GPU_MEMORY_KEY: &str = "kontext-gpu-memory";

/// A first guess at the GPU's memory, which WebGPU does not tell a page: twice the largest buffer the adapter
/// allows, between 2 and 24 GB.
pub fn gpu_memory_guess(limits: &DeviceLimits) -> u64 {
    limits.max_buffer_size.saturating_mul(2).clamp(2_000_000_000, 24_000_000_000)
}

fn local_storage() -> Option<web_sys::Storage> {
    web_sys::window().and_then(|w| w.local_storage().ok().flatten())
}

impl Default for StoreController {
    fn default() -> Self {
        Self::new()
    }
}

impl StoreController {
    /// Empty signals; [`StoreController::start`] fills them.
    pub fn new() -> Self {
        Self {
            models: RwSignal::new(Vec::new()),
            broken: RwSignal::new(Vec::new()),
            estimate: RwSignal::new(None),
            persisted: RwSignal::new(None),
            transfer: RwSignal::new(None),
            notice: RwSignal::new(None),
            row_notes: RwSignal::new(HashMap::new()),
            limits: RwSignal::new(None),
            fit: RwSignal::new(None),
            blocked: RwSignal::new(false),
            gpu_memory: RwSignal::new(None),
        }
    }

    /// The GPU memory loads and edits must fit: the user's setting, else the guess from the adapter's limits.
    pub fn budget(self) -> Option<u64> {
        self.gpu_memory.get().or_else(|| self.limits.get()?.ok().map(|limits| gpu_memory_guess(&limits)))
    }

    /// Sets (and keeps for later visits) the GPU memory setting; `None` goes back to the guess.
    pub fn set_gpu_memory(self, bytes: Option<u64>) {
        self.gpu_memory.set(bytes);
        if let Some(storage) = local_storage() {
            let _ = match bytes {
                Some(bytes) => storage.set_item(GPU_MEMORY_KEY, &bytes.to_string()),
                None => storage.remove_item(GPU_MEMORY_KEY),
            };
        }
    }

    /// Lists the store, reads the estimate and persistence, probes the adapter; lists again whenever the page
    /// becomes visible (the browser may have evicted the store meanwhile), and reports other tabs' upgrades.
    pub fn start(self) {
        idb::on_event(move |event| {
            match event {
            StoreEvent::Blocked => self.blocked.set(true),
            StoreEvent::Unblocked => self.blocked.set(false),
            StoreEvent::Superseded { new_version: Some(version) } if version > idb::VERSION => self.notice.set(Some(Notice::Error(
                "kontext-web was updated in another tab and upgraded the model store: reload this page to go on with the new version."
                    .into(),
            ))),
            StoreEvent::Superseded { .. } => {}
        }
        });
        js::on_visible(move || self.refresh());
        self.refresh();
        let saved = local_storage().and_then(|s| s.get_item(GPU_MEMORY_KEY).ok().flatten());
        self.gpu_memory.set(saved.and_then(|bytes| bytes.parse().ok()));
        spawn_local(async move {
            self.persisted.set(idb::persisted().await.ok());
            self.limits.set(Some(adapter_limits().await));
        });
    }

    /// Reads the list of models and the storage estimate again.
    pub fn refresh(self) {
        spawn_local(async move {
            match Store::open().await {
                Ok(store) => {
                    match store.list().await {
                        Ok(listing) => {
                            self.report_vanished(&listing.models);
                            self.models.set(listing.models);
                            self.broken.set(listing.broken);
                        }
                        Err(e) => self.notice.set(Some(Notice::Error(e.to_string()))),
                    }
                    store.close();
                }
                Err(e) => self.notice.set(Some(Notice::Error(e.to_string()))),
            }
            self.estimate.set(idb::estimate().await.ok());
        });
    }

    /// Tells the user about listed models that are gone from the store although this page did not delete them:
    /// the browser evicted or cleared the site's storage, or another tab deleted them.
    fn report_vanished(self, now: &[Manifest]) {
        let vanished: Vec<String> = self.models.with_untracked(|before| {
            before
                .iter()
                .filter(|m| !now.iter().any(|n| n.id == m.id) && !DELETED_HERE.with(|d| d.borrow().contains(&m.id)))
                .map(|m| m.label.clone())
                .collect()
        });
        if vanished.is_empty() {
            return;
        }
        let persistence = if self.persisted.get_untracked() == Some(true) {
            ""
        } else {
            " Persistent storage, asked for with the next download, keeps the browser from evicting them."
        };
        let them = if vanished.len() == 1 { "it" } else { "them" };
        self.notice.set(Some(Notice::Error(format!(
            "No longer stored: {}. The browser cleared this site's storage (to free disk space, or site data was deleted), or \
             another tab deleted {them}; add {them} again to use {them}.{persistence}",
            vanished.join(", "),
        ))));
    }

    /// Takes the Web Lock that lets one tab at a time fill or verify model `id`, showing the transfer as waiting
    /// while another tab holds it.
    async fn lock_model(self, id: &str) -> Result<locks::HeldLock> {
        locks::model(id, || self.show_action(Action::Waiting)).await
    }

    fn show_action(self, action: Action) {
        self.transfer.update(|t| {
            if let Some(t) = t {
                t.action = action;
            }
        });
    }

    fn note(self, id: &str, notice: Notice) {
        self.row_notes.update(|notes| {
            notes.insert(id.to_string(), notice);
        });
    }

    fn busy(self) -> bool {
        if self.transfer.get_untracked().is_some() {
            self.notice
                .set(Some(Notice::Error("another download is running: pause it or wait for it to finish".into())));
            return true;
        }
        false
    }

    /// Asks the browser to keep the site's storage (once per page), showing the answer.
    fn ask_persistence(self) {
        if self.persisted.get_untracked() == Some(true) {
            return;
        }
        spawn_local(async move {
            if let Ok(answer) = idb::persist().await {
                self.persisted.set(Some(answer));
            }
        });
    }

    /// Stores `manifest` (refused, with nothing stored, when its bytes do not fit the quota) and fills it:
    /// from its URLs, or from `blobs` (path, bytes) when given.
    pub fn add(self, manifest: Manifest, blobs: Option<Vec<(String, web_sys::Blob)>>) {
        if self.busy() {
            return;
        }
        self.notice.set(None);
        spawn_local(async move {
            let added = async {
                let store = Store::open().await?;
                if let Some(existing) = store.manifest(&manifest.id).await? {
                    store.close();
                    return Ok(Some(existing));
                }
                idb::estimate().await?.check_fits(manifest.missing_bytes())?;
                store.put_manifest(&manifest).await?;
                store.close();
                Ok::<_, Error>(None)
            }
            .await;
            match added {
                Ok(Some(existing)) if existing.is_complete() => {
                    self.notice.set(Some(Notice::Info(format!("{} is already stored.", existing.label))));
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    self.notice.set(Some(Notice::Error(e.to_string())));
                    return;
                }
            }
            if let Some(blobs) = blobs {
                LOCAL_FILES.with(|l| l.borrow_mut().insert(manifest.id.clone(), blobs));
            }
            DELETED_HERE.with(|d| d.borrow_mut().remove(&manifest.id));
            self.ask_persistence();
            self.refresh();
            self.resume(manifest.id.clone());
        });
    }

    /// Fetches or copies the missing chunks of model `id`.
    pub fn resume(self, id: String) {
        if self.busy() {
            return;
        }
        spawn_local(async move {
            let manifest = match Store::open().await {
                Ok(store) => {
                    let m = store.manifest(&id).await;
                    store.close();
                    m
                }
                Err(e) => Err(e),
            };
            let manifest = match manifest {
                Ok(Some(m)) => m,
                Ok(None) => return self.note(&id, Notice::Error("this model is no longer in the store".into())),
                Err(e) => return self.note(&id, Notice::Error(e.to_string())),
            };
            let blobs = match manifest.source {
                Source::Local => match LOCAL_FILES.with(|l| l.borrow().get(&id).cloned()) {
                    Some(blobs) => Some(blobs),
                    None => {
                        return self.note(
                            &id,
                            Notice::Error("its local files are no longer available to this page: delete it and add the files again".into()),
                        );
                    }
                },
                Source::Demo => match demo_blobs(&manifest).await {
                    Ok(blobs) => Some(blobs),
                    Err(e) => return self.note(&id, Notice::Error(e.to_string())),
                },
                Source::Catalog { .. } | Source::Urls { .. } => None,
            };
            self.run(manifest, blobs).await;
        });
    }

    /// Runs the transfer of `manifest`'s missing chunks, showing progress, until it completes, stops or fails.
    async fn run(self, manifest: Manifest, blobs: Option<Vec<(String, web_sys::Blob)>>) {
        let id = manifest.id.clone();
        let cancel = CancelFlag::new();
        RUNNING.with(|r| *r.borrow_mut() = Some((id.clone(), cancel.clone(), false)));
        let action = if blobs.is_some() { Action::Copying } else { Action::Downloading };
        let now = || js_sys::Date::now() / 1000.0;
        self.transfer.set(Some(Transfer {
            id: id.clone(),
            label: manifest.label.clone(),
            action,
            file: String::new(),
            done: manifest.stored_bytes(),
            total: manifest.total_bytes(),
            rate: None,
            eta: None,
            stopping: false,
        }));
        self.row_notes.update(|n| {
            n.remove(&id);
        });
        let outcome = async {
            let _lock = self.lock_model(&id).await?;
            if cancel.is_cancelled() {
                return Ok(Outcome::Cancelled);
            }
            let store = Store::open().await?;
            let current = store
                .manifest(&id)
                .await?
                .ok_or_else(|| Error::Invalid("this model is no longer in the store".into()))?;
            let mut meter = TransferMeter::start(now(), current.stored_bytes());
            self.show_action(action);
            let mut on_progress = |p: &Progress| {
                meter.record(now(), p.done);
                let (rate, eta) = (meter.rate(), meter.eta(p.total));
                self.transfer.update(|t| {
                    if let Some(t) = t {
                        (t.file, t.done, t.total, t.rate, t.eta) = (p.path.clone(), p.done, p.total, rate, eta);
                    }
                });
            };
            let outcome = match &blobs {
                Some(blobs) => copy_blobs(&store, &id, blobs, &cancel, &mut on_progress).await,
                None => download::download_model(&store, &id, &cancel, &mut on_progress).await,
            };
            store.close();
            outcome
        }
        .await;
        let delete = RUNNING.with(|r| r.borrow_mut().take()).is_some_and(|(_, _, delete)| delete);
        self.transfer.set(None);
        match outcome {
            Ok(Outcome::Complete) => {
                LOCAL_FILES.with(|l| l.borrow_mut().remove(&id));
                self.note(&id, Notice::Info(format!("Stored and verified: {}.", human_bytes(manifest.total_bytes()))));
            }
            Ok(Outcome::Cancelled) if delete => {
                self.delete(id.clone());
                return;
            }
            Ok(Outcome::Cancelled) => {
                self.note(&id, Notice::Info("Paused: Resume fetches only the missing chunks.".into()))
            }
            Err(e) if is_changed_on_server(&e) => {
                self.note(&id, Notice::Error(format!("{e}: delete this model and add it again.")))
            }
            Err(e) => {
                self.note(&id, Notice::Error(format!("{e}. What was stored is kept: Resume continues from there.")))
            }
        }
        self.refresh();
    }

    /// Stops the running transfer; stored chunks stay.
    pub fn pause(self) {
        self.stop(false);
    }

    /// Stops the running transfer and deletes its model.
    pub fn cancel(self) {
        self.stop(true);
    }

    fn stop(self, delete: bool) {
        RUNNING.with(|r| {
            if let Some((_, flag, delete_after)) = r.borrow_mut().as_mut() {
                *delete_after |= delete;
                flag.cancel();
            }
        });
        self.transfer.update(|t| {
            if let Some(t) = t {
                t.stopping = true;
            }
        });
    }

    /// Deletes model `id` and everything stored of it.
    pub fn delete(self, id: String) {
        if self.transfer.get_untracked().is_some_and(|t| t.id == id) {
            self.cancel();
            return;
        }
        spawn_local(async move {
            let deleted = async {
                let store = Store::open().await?;
                let result = store.delete_model(&id).await;
                store.close();
                result
            }
            .await;
            LOCAL_FILES.with(|l| l.borrow_mut().remove(&id));
            DELETED_HERE.with(|d| d.borrow_mut().insert(id.clone()));
            match deleted {
                Ok(()) => {
                    self.row_notes.update(|n| {
                        n.remove(&id);
                    });
                    if matches!(&self.fit.get_untracked(), Some(Fit::Done { id: fit_id, .. }) if *fit_id == id) {
                        self.fit.set(None);
                    }
                    self.notice.set(Some(Notice::Info("Deleted; its space is free again.".into())));
                }
                Err(e) => self.note(&id, Notice::Error(e.to_string())),
            }
            self.refresh();
        });
    }

    /// Re-hashes every stored chunk of `id`; damaged ones are dropped so Resume fetches them again.
    pub fn verify(self, id: String) {
        if self.busy() {
            return;
        }
        spawn_local(async move {
            let label = self
                .models
                .with_untracked(|m| m.iter().find(|m| m.id == id).map(|m| m.label.clone()))
                .unwrap_or_default();
            self.transfer.set(Some(Transfer {
                id: id.clone(),
                label,
                action: Action::Verifying,
                file: String::new(),
                done: 0,
                total: 1,
                rate: None,
                eta: None,
                stopping: false,
            }));
            let verified = async {
                let _lock = self.lock_model(&id).await?;
                self.show_action(Action::Verifying);
                let store = Store::open().await?;
                let result = store
                    .verify_model(&id, &mut |done, total| {
                        self.transfer.update(|t| {
                            if let Some(t) = t {
                                (t.done, t.total) = (done as u64, total as u64);
                            }
                        })
                    })
                    .await;
                store.close();
                result
            }
            .await;
            self.transfer.set(None);
            let notice = match verified {
                Ok(v) if v.bad.is_empty() => {
                    Notice::Info(format!("Verified: all {} chunks match their SHA-256.", v.checked))
                }
                Ok(v) => {
                    let bad: Vec<String> = v.bad.iter().map(|(path, index)| format!("{path} chunk {index}")).collect();
                    Notice::Error(format!(
                        "{} of {} chunks were damaged ({}); they were dropped: Resume fetches them again.",
                        v.bad.len(),
                        v.checked,
                        bad.join(", ")
                    ))
                }
                Err(e) => Notice::Error(e.to_string()),
            };
            self.note(&id, notice);
            self.refresh();
        });
    }

    /// Checks model `id` against the adapter's limits and, when it fits, loads it in the worker.
    pub fn load(self, state: AppState, id: String) {
        spawn_local(async move {
            self.fit.set(Some(Fit::Checking(id.clone())));
            let limits = match self.limits.get_untracked() {
                Some(limits) => limits,
                None => {
                    let limits = adapter_limits().await;
                    self.limits.set(Some(limits.clone()));
                    limits
                }
            };
            let limits = match limits {
                Ok(limits) => DeviceLimits {
                    budget: Some(self.gpu_memory.get_untracked().unwrap_or_else(|| gpu_memory_guess(&limits))),
                    ..limits
                },
                Err(e) => return self.fit.set(Some(Fit::Failed(e))),
            };
            let footprint = async {
                let store = Store::open().await?;
                let footprint = footprint_of(&store, &id).await;
                store.close();
                footprint
            }
            .await;
            let footprint = match footprint {
                Ok(f) => f,
                Err(e) => {
                    self.fit.set(Some(Fit::Failed(e.to_string())));
                    return self.refresh();
                }
            };
            let verdict = footprint.assess(limits);
            let lines = describe(&footprint, &verdict, limits);
            let refused = verdict.refusal.is_some();
            self.fit.set(Some(Fit::Done {
                id: id.clone(),
                lines,
                warnings: verdict.warnings,
                refusal: verdict.refusal,
            }));
            if refused {
                return;
            }
            state.model.set(ModelState::Loading { phase: "reading".into(), done: 0, total: footprint.file_bytes });
            if let Err(e) = send(&ToWorker::LoadStored { id, gpu_memory: limits.budget }) {
                state.model.set(ModelState::Failed(e));
            }
        });
    }
}

/// The adapter's limits as the page's probe sees them.
async fn adapter_limits() -> std::result::Result<DeviceLimits, String> {
    match probe::probe().await.webgpu {
        probe::WebGpu::Available(adapter) => Ok(DeviceLimits {
            max_buffer_size: adapter.max_buffer_size as u64,
            max_storage_buffer_binding_size: adapter.max_storage_buffer_binding_size as u64,
            budget: None,
        }),
        probe::WebGpu::Missing => Err("this browser has no WebGPU: no model can be loaded here".into()),
        probe::WebGpu::NoAdapter(why) => {
            Err(format!("WebGPU gave no GPU adapter ({why}): no model can be loaded here"))
        }
    }
}

/// The estimate as lines for the user.
fn describe(footprint: &Footprint, verdict: &footprint::Assessment, limits: DeviceLimits) -> Vec<String> {
    let mut lines = vec![format!(
        "Weights on the GPU: DiT {}, T5 {}, CLIP {}, VAE {}.",
        human_bytes(footprint.dit),
        human_bytes(footprint.t5),
        human_bytes(footprint.clip),
        human_bytes(footprint.vae)
    )];
    if let Some(plan) = &verdict.plan {
        lines.push(format!(
            "Within {} of GPU memory, a {}×{} edit with one reference peaks at {} ({}); each edit is planned again for its size.",
            human_bytes(limits.budget.unwrap_or(plan.peak_bytes)),
            PLANNED_EDIT.0,
            PLANNED_EDIT.1,
            human_bytes(plan.peak_bytes),
            plan.residency.describe()
        ));
    }
    if let Some((name, bytes)) = &footprint.largest_tensor {
        lines.push(format!(
            "Largest tensor: {name}, {} (this adapter's largest buffer: {}).",
            human_bytes(*bytes),
            human_bytes(limits.max_buffer_size)
        ));
    }
    lines.push(format!(
        "Loading streams the files ({}) to the GPU one tensor at a time, through at most {} of WebAssembly memory (this version allows {}).",
        human_bytes(footprint.file_bytes),
        human_bytes(footprint.load_heap_bytes()),
        human_bytes(HEAP_LOAD_LIMIT)
    ));
    lines
}

/// The footprint of stored model `id`, from its safetensors headers and configs.
async fn footprint_of(store: &Store, id: &str) -> Result<Footprint> {
    let manifest = store.manifest(id).await?.ok_or_else(|| Error::Invalid(format!("the store has no model {id:?}")))?;
    if !manifest.is_complete() {
        return Err(Error::Invalid(format!(
            "{} is not complete ({} of {} stored): resume its download first",
            manifest.label,
            human_bytes(manifest.stored_bytes()),
            human_bytes(manifest.total_bytes())
        )));
    }
    let mut facts = Vec::new();
    let text = |path: &str| {
        let file = manifest.file(path).ok().cloned();
        async move {
            match file {
                Some(file) => {
                    let bytes = store.read_range(id, &file.path, 0, file.size).await?;
                    String::from_utf8(bytes)
                        .map(Some)
                        .map_err(|_| Error::Invalid(format!("{} is not UTF-8 text", file.path)))
                }
                None => Ok(None),
            }
        }
    };
    for file in &manifest.files {
        let tensors = match footprint::weight_part(&file.path, file.role) {
            Some(_) if file.path.ends_with(".safetensors") => {
                let first = store.read_range(id, &file.path, 0, 8.min(file.size)).await?;
                let len = footprint::safetensors_header_len(&first, &file.path)?;
                if 8 + len > file.size {
                    return Err(Error::Invalid(format!("{}: its header runs past the end of the file", file.path)));
                }
                let header = store.read_range(id, &file.path, 8, len).await?;
                Some(footprint::summarize_safetensors(&header, &file.path)?)
            }
            _ => None,
        };
        facts.push(FileFacts { path: file.path.clone(), role: file.role, size: file.size, tensors });
    }
    let transformer_config = text("transformer/config.json").await?;
    let vae_config = text("vae/config.json").await?;
    Footprint::new(&facts, transformer_config.as_deref(), vae_config.as_deref())
}

/// Copies the missing chunks of every `(path, blob)` into model `id`, one chunk in memory at a time.
async fn copy_blobs(
    store: &Store,
    id: &str,
    blobs: &[(String, web_sys::Blob)],
    cancel: &CancelFlag,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Outcome> {
    for (path, blob) in blobs {
        let manifest =
            store.manifest(id).await?.ok_or_else(|| Error::Invalid(format!("the store has no model {id:?}")))?;
        let file = manifest.file(path)?.clone();
        if blob.size() as u64 != file.size {
            return Err(Error::Invalid(format!(
                "{path} is {} bytes now, {} when it was added",
                blob.size(),
                file.size
            )));
        }
        for index in file.missing_chunks() {
            if cancel.is_cancelled() {
                return Ok(Outcome::Cancelled);
            }
            let (start, len) = file.chunk_span(index)?;
            let piece = blob
                .slice_with_f64_and_f64(start as f64, (start + len) as f64)
                .map_err(|e| Error::Invalid(js::describe(e)))?;
            let buffer = JsFuture::from(piece.array_buffer())
                .await
                .map_err(|e| Error::Invalid(format!("reading {path}: {}", js::describe(e))))?;
            let updated = store.put_chunk(id, path, index, &Uint8Array::new(&buffer).to_vec()).await?;
            on_progress(&Progress {
                path: path.clone(),
                file_done: updated.file(path)?.stored_bytes(),
                file_total: file.size,
                done: updated.stored_bytes(),
                total: updated.total_bytes(),
            });
        }
    }
    Ok(Outcome::Complete)
}

/// The page's URL joined with `relative`.
pub fn page_url(relative: &str) -> String {
    let href = web_sys::window().and_then(|w| w.location().href().ok()).unwrap_or_default();
    let href = href.split(['?', '#']).next().unwrap_or_default();
    format!("{}{relative}", &href[..href.rfind('/').map_or(href.len(), |i| i + 1)])
}

/// `fetch(url)` as a Blob.
async fn fetch_blob(url: &str) -> Result<web_sys::Blob> {
    let response = js::call_async(&js_sys::global(), "fetch", &[url.into()])
        .await
        .map_err(|e| Error::Invalid(format!("{url}: {e}")))?;
    if !js::get(&response, "ok").and_then(|v| v.as_bool()).unwrap_or(false) {
        let status = js::get_f64(&response, "status").unwrap_or(0.0);
        return Err(Error::Invalid(format!("{url}: the server answered {status}")));
    }
    let blob = js::call_async(&response, "blob", &[]).await.map_err(|e| Error::Invalid(format!("{url}: {e}")))?;
    blob.dyn_into().map_err(|_| Error::Invalid(format!("{url}: the response is not a file")))
}

/// The demo pack's files as served with the app.
async fn demo_blobs(manifest: &Manifest) -> Result<Vec<(String, web_sys::Blob)>> {
    let mut blobs = Vec::new();
    for file in &manifest.files {
        let url = file.url.clone().unwrap_or_else(|| page_url(&format!("{DEMO_BASE}{}", file.path)));
        blobs.push((file.path.clone(), fetch_blob(&url).await?));
    }
    Ok(blobs)
}

/// Stores the demo pack served with the app (5 MB), copied chunk by chunk like local files.
pub fn add_demo(ui: StoreController) {
    spawn_local(async move {
        let base = page_url(DEMO_BASE);
        let fetched = async {
            let mut blobs = Vec::new();
            for path in crate::pipeline::loader::DIFFUSERS_FILES {
                blobs.push((path.to_string(), fetch_blob(&format!("{base}{path}")).await?));
            }
            let sizes: Vec<u64> = blobs.iter().map(|(_, b)| b.size() as u64).collect();
            Ok::<_, Error>((catalog::demo_manifest(&base, &sizes, DEFAULT_CHUNK_SIZE)?, blobs))
        }
        .await;
        match fetched {
            Ok((manifest, blobs)) => ui.add(manifest, Some(blobs)),
            Err(e) => ui.notice.set(Some(Notice::Error(e.to_string()))),
        }
    });
}
