//! The inference worker's side: receives [`ToWorker`] messages, runs them on the GPU, answers with
//! [`FromWorker`]. Runs in a module Web Worker (`www/worker.js`) so the page never freezes.
//!
//! Requests run one at a time, in order (the GPU is one resource; a load and a self-check must not both
//! open it). An edit yields to the event loop after every step (awaiting that step's result), so progress
//! is measured, not estimated, and a [`ToWorker::Cancel`] is seen within one step.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use serde_bytes::ByteBuf;
use wasm_bindgen::prelude::*;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use super::js;
use crate::loader::{KontextModel, MemoryFiles, Overrides};
use crate::model::lora::LoraAdapter;
use crate::pipeline::edit::{Edit, EditRequest, Phase};
use crate::pipeline::kontext::VAE_SCALE;
use crate::pipeline::preview::LatentPreview;
use crate::pipeline::{image as images, size};
use crate::protocol::{EditJob, FromWorker, PartUrls, ToWorker};
use crate::store::files::StoredModel;
use crate::store::idb::Store;
use crate::{Error, Result, device, selfcheck};

thread_local! {
    static STARTED: Cell<bool> = const { Cell::new(false) };
    static MODEL: RefCell<Option<KontextModel>> = const { RefCell::new(None) };
    /// LoRA files by name, and those already resolved against the loaded model.
    static LORA_FILES: RefCell<BTreeMap<String, Arc<Vec<u8>>>> = const { RefCell::new(BTreeMap::new()) };
    static LORAS: RefCell<HashMap<String, Rc<LoraAdapter>>> = RefCell::new(HashMap::new());
    /// The loaded model's latent → RGB projection, fitted at its first edit.
    static PREVIEW: RefCell<Option<Rc<LatentPreview>>> = const { RefCell::new(None) };
    static CANCELLED: RefCell<HashSet<u32>> = RefCell::new(HashSet::new());
    static QUEUE: RefCell<VecDeque<ToWorker>> = const { RefCell::new(VecDeque::new()) };
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Installs the message handler and announces readiness. Called once by `worker.js`.
pub fn start() {
    console_error_panic_hook::set_once();
    if STARTED.with(|s| s.replace(true)) {
        return;
    }
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let on_message =
        Closure::<dyn FnMut(MessageEvent)>::new(|event: MessageEvent| {
            match serde_wasm_bindgen::from_value::<ToWorker>(event.data()) {
                Ok(ToWorker::Cancel { id }) => {
                    CANCELLED.with(|c| c.borrow_mut().insert(id));
                }
                Ok(request) => {
                    QUEUE.with(|q| q.borrow_mut().push_back(request));
                    if !BUSY.with(|b| b.replace(true)) {
                        wasm_bindgen_futures::spawn_local(drain_queue());
                    }
                }
                Err(e) => post(&FromWorker::Error {
                    job: None,
                    request: "worker".into(),
                    message: format!("the worker did not understand a message: {e}"),
                }),
            }
        });
    scope.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    post(&FromWorker::Ready);
}

async fn drain_queue() {
    while let Some(request) = QUEUE.with(|q| q.borrow_mut().pop_front()) {
        post(&answer(request).await);
    }
    BUSY.with(|b| b.set(false));
}

/// Runs one request to completion (posting progress on the way) and returns its final answer.
pub async fn answer(request: ToWorker) -> FromWorker {
    let started = js_sys::Date::now();
    match request {
        ToWorker::SelfCheck { size } => {
            let outcome = async {
                let (device, _) = device::wgpu_async().await?;
                selfcheck::matmul_check(&device, size).await
            }
            .await;
            match outcome {
                Ok(check) => FromWorker::SelfCheck { check, millis: js_sys::Date::now() - started },
                Err(e) => FromWorker::Error { job: None, request: "self_check".into(), message: e.to_string() },
            }
        }
        ToWorker::LoadModel { base, files, parts } => match load_model(&base, &files, &parts).await {
            Ok(description) => {
                recheck_loras();
                FromWorker::Loaded { description }
            }
            Err(e) => FromWorker::Error { job: None, request: "load_model".into(), message: e.to_string() },
        },
        ToWorker::LoadStored { id } => match load_stored(&id).await {
            Ok(description) => {
                recheck_loras();
                FromWorker::Loaded { description }
            }
            Err(e) => FromWorker::Error { job: None, request: "load_model".into(), message: e.to_string() },
        },
        ToWorker::AddLora { name, bytes } => {
            LORA_FILES.with(|files| files.borrow_mut().insert(name.clone(), Arc::new(bytes.into_vec())));
            LORAS.with(|parsed| parsed.borrow_mut().remove(&name));
            if MODEL.with(|m| m.borrow().is_none()) {
                return FromWorker::LoraAdded { name, description: "checked when a model is loaded".into() };
            }
            match lora(&name) {
                Ok(adapter) => FromWorker::LoraAdded { name, description: describe_lora(&adapter) },
                Err(e) => {
                    LORA_FILES.with(|files| files.borrow_mut().remove(&name));
                    FromWorker::LoraRejected { name, message: e.to_string() }
                }
            }
        }
        ToWorker::RemoveLora { name } => {
            LORA_FILES.with(|files| files.borrow_mut().remove(&name));
            LORAS.with(|parsed| parsed.borrow_mut().remove(&name));
            FromWorker::LoraRemoved { name }
        }
        ToWorker::Edit(job) => {
            let id = job.id;
            match run_edit(job).await {
                Ok(Some((png, seed, width, height))) => FromWorker::Result {
                    id,
                    png: ByteBuf::from(png),
                    seed,
                    width,
                    height,
                    millis: js_sys::Date::now() - started,
                },
                Ok(None) => FromWorker::Cancelled { id },
                Err(e) if e.is_device_failure() => {
                    // A lost or failed GPU device: this worker cannot compute any more; the page replaces it.
                    post(&FromWorker::Error { job: Some(id), request: "edit".into(), message: e.to_string() });
                    FromWorker::Error {
                        job: None,
                        request: crate::web::client::WORKER_STOPPED.into(),
                        message: format!("the GPU device failed ({e})"),
                    }
                }
                Err(e) => FromWorker::Error { job: Some(id), request: "edit".into(), message: e.to_string() },
            }
        }
        ToWorker::Cancel { id } => FromWorker::Cancelled { id },
    }
}

fn progress(job: Option<u32>, phase: &str, done: u64, total: u64) {
    post(&FromWorker::Progress { job, phase: phase.into(), done, total });
}

async fn fetch_bytes(url: &str) -> Result<Vec<u8>> {
    let response = js::call_async(&js_sys::global(), "fetch", &[url.into()])
        .await
        .map_err(|e| Error::Invalid(format!("{url}: {e}")))?;
    let status = js::get_f64(&response, "status").unwrap_or(0.0);
    if !js::get(&response, "ok").and_then(|v| v.as_bool()).unwrap_or(false) {
        return Err(Error::Invalid(format!("{url}: the server answered {status}")));
    }
    let buffer =
        js::call_async(&response, "arrayBuffer", &[]).await.map_err(|e| Error::Invalid(format!("{url}: {e}")))?;
    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
}

async fn load_model(base: &str, paths: &[String], parts: &PartUrls) -> Result<String> {
    let (device, _) = device::wgpu_async().await?;
    let mut files = HashMap::new();
    let mut bytes = 0u64;
    let total = (paths.len() + parts.given().len()) as u64;
    for (i, path) in paths.iter().enumerate() {
        progress(None, "downloading", i as u64, total);
        let data = fetch_bytes(&format!("{base}{path}")).await?;
        bytes += data.len() as u64;
        files.insert(path.clone(), Arc::new(data));
    }
    let mut overrides = Overrides::default();
    let slots = [
        (&parts.transformer, &mut overrides.transformer),
        (&parts.t5, &mut overrides.t5),
        (&parts.clip, &mut overrides.clip),
        (&parts.vae, &mut overrides.vae),
    ];
    let mut fetched = paths.len() as u64;
    for (url, slot) in slots {
        let Some(url) = url else { continue };
        progress(None, "downloading", fetched, total);
        let data = Arc::new(fetch_bytes(url).await?);
        bytes += data.len() as u64;
        fetched += 1;
        *slot = Some(Box::new(crate::formats::source::Named::new(url.as_str(), data)));
    }
    progress(None, "loading", 0, 1);
    let model = KontextModel::load(&MemoryFiles(files), overrides, &device)?;
    Ok(install(model, bytes, None))
}

/// Makes `model` the loaded one and describes it (`label` first when it came from the store).
fn install(model: KontextModel, bytes: u64, label: Option<&str>) -> String {
    let c = &model.flux_config;
    let description = format!(
        "{}{:.1} MB · DiT width {}, {} double + {} single blocks, {} heads",
        label.map(|l| format!("{l} · ")).unwrap_or_default(),
        bytes as f64 / 1e6,
        c.hidden_size,
        c.depth,
        c.depth_single_blocks,
        c.num_heads
    );
    MODEL.with(|m| *m.borrow_mut() = Some(model));
    LORAS.with(|parsed| parsed.borrow_mut().clear());
    PREVIEW.with(|p| *p.borrow_mut() = None);
    progress(None, "loading", 1, 1);
    description
}

/// Loads the complete stored model `id` from IndexedDB (refused when any chunk is missing), streaming each
/// tensor from its chunks to the GPU.
async fn load_stored(id: &str) -> Result<String> {
    let (device, _) = device::wgpu_async().await?;
    let store = Store::open().await?;
    let label = store.manifest(id).await?.map(|m| m.label).unwrap_or_else(|| id.to_string());
    let stored = StoredModel::open(&store, id).await;
    store.close();
    let stored = stored?;
    progress(None, "loading", 0, 1);
    // Release the previous model before the new one takes GPU memory.
    MODEL.with(|m| m.borrow_mut().take());
    let model = KontextModel::load(&stored, stored.overrides(), &device)?;
    Ok(install(model, stored.total_bytes(), Some(&label)))
}

/// Previews shown during an edit, at most (every ⌊steps / this⌋ steps).
const PREVIEWS_PER_EDIT: u64 = 10;

/// The loaded model's preview projection, fitted on first use; `None` (no previews) if the fit fails.
async fn preview_of(model: &KontextModel, device: &burn::tensor::Device) -> Option<Rc<LatentPreview>> {
    if let Some(preview) = PREVIEW.with(|p| p.borrow().clone()) {
        return Some(preview);
    }
    match LatentPreview::fit(&model.vae, device).await {
        Ok(preview) => {
            let preview = Rc::new(preview);
            PREVIEW.with(|p| *p.borrow_mut() = Some(preview.clone()));
            Some(preview)
        }
        Err(e) => {
            web_sys::console::warn_1(&format!("no previews: {e}").into());
            None
        }
    }
}

/// The LoRA file `name` resolved against the loaded model (cached until the next load).
fn lora(name: &str) -> Result<Rc<LoraAdapter>> {
    if let Some(adapter) = LORAS.with(|parsed| parsed.borrow().get(name).cloned()) {
        return Ok(adapter);
    }
    let bytes = LORA_FILES
        .with(|files| files.borrow().get(name).cloned())
        .ok_or_else(|| Error::Invalid(format!("LoRA {name} was not added")))?;
    let adapter = MODEL.with(|m| {
        let model = m.borrow();
        let model = model.as_ref().ok_or_else(|| Error::Invalid("load a model first".into()))?;
        LoraAdapter::read(crate::formats::source::Named::new(name, bytes), &model.flux)
    })?;
    let adapter = Rc::new(adapter);
    LORAS.with(|parsed| parsed.borrow_mut().insert(name.to_string(), adapter.clone()));
    Ok(adapter)
}

/// Checks every added LoRA file against the model just loaded, posting the outcome of each.
fn recheck_loras() {
    let names: Vec<String> = LORA_FILES.with(|files| files.borrow().keys().cloned().collect());
    for name in names {
        post(&match lora(&name) {
            Ok(adapter) => FromWorker::LoraAdded { description: describe_lora(&adapter), name },
            Err(e) => FromWorker::LoraRejected { message: e.to_string(), name },
        });
    }
}

fn describe_lora(adapter: &LoraAdapter) -> String {
    let mut text = format!("{} layers, rank {}", adapter.layers.len(), adapter.max_rank());
    if adapter.ignored_text_encoder_tensors > 0 {
        text.push_str(&format!(" (its {} text-encoder tensors are not applied)", adapter.ignored_text_encoder_tensors));
    }
    text
}

/// Runs `job` on the loaded model with the job's LoRA adapters; `Ok(None)` when cancelled.
async fn run_edit(job: EditJob) -> Result<Option<(Vec<u8>, u64, usize, usize)>> {
    let adapters = job.loras.iter().map(|use_| Ok((lora(&use_.name)?, use_.strength))).collect::<Result<Vec<_>>>()?;
    let mut model = MODEL.with(|m| m.borrow_mut().take()).ok_or_else(|| Error::Invalid("load a model first".into()))?;
    let outcome = async {
        let (device, _) = device::wgpu_async().await?;
        let active: Vec<(&LoraAdapter, f32)> =
            adapters.iter().map(|(adapter, strength)| (adapter.as_ref(), *strength)).collect();
        model.flux.set_adapters(&active, &device)?;
        run_edit_on(&mut model, &device, job).await
    }
    .await;
    MODEL.with(|m| *m.borrow_mut() = Some(model));
    outcome
}

/// Runs `job` on `model`; `Ok(None)` when cancelled.
async fn run_edit_on(
    model: &mut KontextModel,
    device: &burn::tensor::Device,
    job: EditJob,
) -> Result<Option<(Vec<u8>, u64, usize, usize)>> {
    let references = job.images.iter().map(|bytes| images::decode(bytes)).collect::<Result<Vec<_>>>()?;
    let request = EditRequest {
        prompt: job.prompt.clone(),
        references,
        size: job.width.zip(job.height),
        max_area: job.max_area,
        resize: if job.keep_reference_size { size::Resize::None } else { size::Resize::Bucket },
        steps: job.steps,
        guidance: job.guidance,
        seed: job.seed,
    };
    let id = job.id;
    let preview = preview_of(model, device).await;
    let mut edit = Edit::prepare_reporting(model, &request, None, device, &mut |phase| match phase {
        Phase::EncodingText => progress(Some(id), "encoding text", 0, 1),
        Phase::EncodingReferences => progress(Some(id), "encoding references", 0, request.references.len() as u64),
        _ => {}
    })?;
    let steps = job.steps as u64;
    let (latent_width, latent_height) = (edit.size().0 / VAE_SCALE, edit.size().1 / VAE_SCALE);
    let preview_every = (steps / PREVIEWS_PER_EDIT).max(1);
    progress(Some(id), "denoising", 0, steps);
    while !edit.is_denoised() {
        if CANCELLED.with(|c| c.borrow_mut().remove(&id)) {
            return Ok(None);
        }
        edit.step()?;
        // Waiting for this step's latents makes the progress real and lets messages (cancel) through.
        let latents = device::read_f32(edit.latents().clone()).await?;
        let done = edit.progress().0 as u64;
        if let Some(preview) = &preview
            && (done % preview_every == 0 || done == steps)
            && let Ok(png) = preview
                .render(&latents, latent_height, latent_width)
                .and_then(|image| images::encode_png_with_text(&image, &[]))
        {
            post(&FromWorker::Preview { job: id, step: done, png: ByteBuf::from(png) });
        }
        progress(Some(id), "denoising", done, steps);
    }
    progress(Some(id), "decoding", 0, 1);
    let (width, height) = edit.size();
    let result = edit.finish().await?;
    let recipe = images::Recipe {
        prompt: job.prompt.clone(),
        steps: job.steps,
        guidance: job.guidance,
        seed: job.seed,
        width,
        height,
        model: images::Recipe::describe_model(model),
        references: job.images.len(),
        loras: job.loras.iter().map(|l| (l.name.clone(), l.strength)).collect(),
    };
    let png = recipe.encode_png(&result.image)?;
    CANCELLED.with(|c| c.borrow_mut().remove(&id));
    Ok(Some((png, job.seed, width, height)))
}

fn post(message: &FromWorker) {
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    match js::to_message(message) {
        Ok(value) => {
            let _ = scope.post_message(&value);
        }
        Err(e) => web_sys::console::error_1(&format!("unserialisable worker message: {e}").into()),
    }
}
