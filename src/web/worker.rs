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

use crate::device::{self, selfcheck};
use crate::model::layers::LoraAdapter;
use crate::pipeline::cache::CacheConfig;
use crate::pipeline::edit::{Edit, EditRequest, Phase, plan_edit};
use crate::pipeline::kontext::VAE_SCALE;
use crate::pipeline::loader::{KontextModel, ModelFiles, Overrides, UPLOADING_THE_MODEL};
use crate::pipeline::mask::MaskedEdit;
use crate::pipeline::plan::{DeviceLimits, MemoryPlan};
use crate::pipeline::preview::LatentPreview;
use crate::pipeline::{image as images, size};
use crate::store::files::StoredModel;
use crate::store::idb::Store;
use crate::store::js;
use crate::web::canvas::{self, ResultCanvas};
use crate::web::protocol::{EditJob, FromWorker, ToWorker};
use crate::{Error, Result};

/// Everything the worker keeps between messages. One per worker (see [`Worker::current`]); the message
/// handler holds an `Rc` of it. No `RefCell` borrow is ever held across an `.await`: a message (a cancel,
/// a queued request) may be handled at any await point.
#[derive(Default)]
struct Worker {
    /// Whether [`start`] already installed the message handler.
    started: Cell<bool>,
    /// The loaded model; `None` before the first load, while a stored model replaces it, and while an edit
    /// runs on it (the edit takes it out and puts it back).
    model: RefCell<Option<KontextModel>>,
    /// The added LoRA files, by name.
    lora_files: RefCell<BTreeMap<String, Arc<Vec<u8>>>>,
    /// The LoRA files already resolved against the loaded model, by name (cleared when a model is loaded).
    loras: RefCell<HashMap<String, Rc<LoraAdapter>>>,
    /// The loaded model's latent → RGB projection, fitted at its first edit (cleared when a model is loaded).
    preview: RefCell<Option<Rc<LatentPreview>>>,
    /// The ids of the edit jobs asked to stop.
    cancelled: RefCell<HashSet<u32>>,
    /// Requests received and not yet started, oldest first.
    queue: RefCell<VecDeque<ToWorker>>,
    /// Whether a task is draining [`Worker::queue`] (so requests run one at a time).
    busy: Cell<bool>,
    /// GPU memory every edit on the loaded model must fit ([`ToWorker::LoadModel::gpu_memory`]).
    gpu_memory: Cell<Option<u64>>,
    /// The edit job running, for the progress of the uploads it causes.
    editing: Cell<Option<u32>>,
    /// The page's result canvas, once given; taken out while an edit draws on it.
    canvas: RefCell<Option<ResultCanvas>>,
}

thread_local! {
    /// This worker's state, for [`start`] and [`answer`].
    static WORKER: Rc<Worker> = Rc::new(Worker::default());
}

/// Installs the message handler and announces readiness. Called once by `worker.js`.
pub fn start() {
    console_error_panic_hook::set_once();
    let worker = Worker::current();
    if worker.started.replace(true) {
        return;
    }
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| worker.receive(event));
    scope.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    post(&FromWorker::Ready);
}

/// Runs one request to completion (posting progress on the way) and returns its final answer.
pub async fn answer(request: ToWorker) -> FromWorker {
    Worker::current().answer(request).await
}

impl Worker {
    /// This thread's worker.
    fn current() -> Rc<Worker> {
        WORKER.with(Rc::clone)
    }

    /// Handles one message from the page: a cancel at once, any other request queued behind the running one.
    fn receive(self: &Rc<Self>, event: MessageEvent) {
        if let Some(canvas) = canvas::attached(&event.data()) {
            *self.canvas.borrow_mut() = Some(canvas);
            return;
        }
        match serde_wasm_bindgen::from_value::<ToWorker>(event.data()) {
            Ok(ToWorker::Cancel { id }) => {
                self.cancelled.borrow_mut().insert(id);
            }
            Ok(request) => {
                self.queue.borrow_mut().push_back(request);
                if !self.busy.replace(true) {
                    wasm_bindgen_futures::spawn_local(Rc::clone(self).drain_queue());
                }
            }
            Err(e) => post(&FromWorker::Error {
                job: None,
                request: "worker".into(),
                message: format!("the worker did not understand a message: {e}"),
            }),
        }
    }

    /// Answers the queued requests in order until the queue is empty.
    async fn drain_queue(self: Rc<Self>) {
        while let Some(request) = self.next_request() {
            post(&self.answer(request).await);
        }
        self.busy.set(false);
    }

    /// The oldest queued request (a function of its own so that the queue's borrow ends before any await).
    fn next_request(&self) -> Option<ToWorker> {
        self.queue.borrow_mut().pop_front()
    }

    /// Runs one request to completion (posting progress on the way) and returns its final answer.
    async fn answer(&self, request: ToWorker) -> FromWorker {
        let started = js_sys::Date::now();
        match request {
            ToWorker::SelfCheck { size } => {
                let outcome = async {
                    let (device, _) = device::wgpu_async().await?;
                    let check =
                        selfcheck::matmul_check(&device, size, crate::kernels::quant_matmul::self_check_multiply)
                            .await?;
                    let kernels = crate::kernels::report::KernelPaths::of(&device);
                    Ok::<_, Error>((check, self.open_canvas().await, kernels))
                }
                .await;
                match outcome {
                    Ok((check, display, kernels)) => FromWorker::SelfCheck {
                        check,
                        millis: js_sys::Date::now() - started,
                        display,
                        kernels: Some(kernels),
                    },
                    Err(e) => FromWorker::Error { job: None, request: "self_check".into(), message: e.to_string() },
                }
            }
            ToWorker::LoadStored { id, gpu_memory } => match self.load_stored(&id, gpu_memory).await {
                Ok(description) => {
                    self.recheck_loras();
                    FromWorker::Loaded { description, heap_bytes: js::wasm_heap_bytes() }
                }
                Err(e) if e.is_device_failure() => {
                    // A lost GPU device: this worker cannot compute any more; the page replaces it.
                    post(&FromWorker::Error { job: None, request: "load_model".into(), message: e.to_string() });
                    FromWorker::Error {
                        job: None,
                        request: crate::web::client::WORKER_STOPPED.into(),
                        message: format!("the GPU device failed ({e})"),
                    }
                }
                Err(e) => FromWorker::Error { job: None, request: "load_model".into(), message: e.to_string() },
            },
            ToWorker::AddLora { name, bytes } => {
                self.lora_files.borrow_mut().insert(name.clone(), Arc::new(bytes.into_vec()));
                self.forget_lora(&name);
                if self.model.borrow().is_none() {
                    return FromWorker::LoraAdded { name, description: "checked when a model is loaded".into() };
                }
                match self.lora(&name) {
                    Ok(adapter) => FromWorker::LoraAdded { name, description: describe_lora(&adapter) },
                    Err(e) => {
                        self.lora_files.borrow_mut().remove(&name);
                        FromWorker::LoraRejected { name, message: e.to_string() }
                    }
                }
            }
            ToWorker::RemoveLora { name } => {
                self.lora_files.borrow_mut().remove(&name);
                self.forget_lora(&name);
                FromWorker::LoraRemoved { name }
            }
            ToWorker::Edit(job) => {
                let id = job.id;
                match self.run_edit(job, started).await {
                    Ok(Some(result)) => result,
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

    /// Makes `model` the loaded one and describes it.
    fn install(&self, model: KontextModel, bytes: u64, label: &str) -> String {
        let c = &model.flux_config;
        let description = format!(
            "{label} · {:.1} MB · DiT width {}, {} double + {} single blocks, {} heads",
            bytes as f64 / 1e6,
            c.hidden_size,
            c.depth,
            c.depth_single_blocks,
            c.num_heads
        );
        *self.model.borrow_mut() = Some(model);
        self.loras.borrow_mut().clear();
        *self.preview.borrow_mut() = None;
        progress(None, "loading", 1, 1);
        description
    }

    /// Loads the complete stored model `id` from IndexedDB (refused when any chunk is missing), streaming
    /// each tensor from its chunks to the GPU.
    async fn load_stored(&self, id: &str, gpu_memory: Option<u64>) -> Result<String> {
        let (device, _) = device::wgpu_async().await?;
        let store = Store::open().await?;
        let label = store.manifest(id).await?.map(|m| m.label).unwrap_or_else(|| id.to_string());
        let stored = StoredModel::open(&store, id).await;
        store.close();
        let stored = stored?;
        progress(None, "loading", 0, 1);
        // Release the previous model, its pages returned to the driver, before the new one takes GPU memory.
        drop(self.model.take());
        device::release_free_pages(&device);
        let mut model = self.open_within(&stored, stored.overrides(), gpu_memory, &device)?;
        // A GPU error of the upload arrives as an event: wait for the device, then ask.
        device::faults::settle(&device).await?;
        model.check_device(UPLOADING_THE_MODEL, &device)?;
        Ok(self.install(model, stored.total_bytes(), &label))
    }

    /// Resolves every part, then uploads what stays on the device: without a budget as
    /// [`KontextModel::load`]; with one, what the plan of a 1024² edit from a 1024² reference keeps within it
    /// (each edit is planned again for its own size).
    fn open_within(
        &self,
        files: &dyn ModelFiles,
        overrides: Overrides,
        gpu_memory: Option<u64>,
        device: &burn::tensor::Device,
    ) -> Result<KontextModel> {
        let mut model = KontextModel::open(files, overrides, device)?;
        model.on_upload(upload_progress());
        if gpu_memory.is_some() {
            let limits = DeviceLimits::of(device, gpu_memory);
            let typical = model.plan_inputs((1024, 1024), vec![(1024, 1024)], limits);
            model.follow(&MemoryPlan::new(&typical)?);
        }
        model.upload_kept(device)?;
        self.gpu_memory.set(gpu_memory);
        Ok(model)
    }

    /// The loaded model's preview projection, fitted on first use; `None` (no previews) if the fit fails.
    async fn preview_of(&self, model: &mut KontextModel, device: &burn::tensor::Device) -> Option<Rc<LatentPreview>> {
        let fitted = self.preview.borrow().clone();
        if fitted.is_some() {
            return fitted;
        }
        let fitted = match model.vae(device) {
            Ok(vae) => LatentPreview::fit(vae, device).await,
            Err(e) => Err(e),
        };
        match fitted {
            Ok(preview) => {
                let preview = Rc::new(preview);
                *self.preview.borrow_mut() = Some(preview.clone());
                Some(preview)
            }
            Err(e) => {
                web_sys::console::warn_1(&format!("no previews: {e}").into());
                None
            }
        }
    }

    /// Opens the page's canvas on the GPU, if the page gave one; says how it is drawn on (`None` without one).
    async fn open_canvas(&self) -> Option<String> {
        let gpu = device::wgpu_handles_async().await.ok()?;
        let mut canvas = self.canvas.borrow_mut();
        match canvas.as_mut()?.open(&gpu) {
            Ok(path) => Some(path.name().to_string()),
            Err(e) => Some(format!("none ({e})")),
        }
    }

    /// The LoRA file `name` resolved against the loaded model (cached until the next load).
    fn lora(&self, name: &str) -> Result<Rc<LoraAdapter>> {
        let cached = self.loras.borrow().get(name).cloned();
        if let Some(adapter) = cached {
            return Ok(adapter);
        }
        let bytes = self.lora_files.borrow().get(name).cloned();
        let bytes = bytes.ok_or_else(|| Error::Invalid(format!("LoRA {name} was not added")))?;
        let adapter = {
            let model = self.model.borrow();
            let model = model.as_ref().ok_or_else(|| Error::Invalid("load a model first".into()))?;
            LoraAdapter::read(crate::formats::source::Named::new(name, bytes), &model.flux)?
        };
        let adapter = Rc::new(adapter);
        self.loras.borrow_mut().insert(name.to_string(), adapter.clone());
        Ok(adapter)
    }

    /// Forgets the adapter read from LoRA file `name`, and frees its factors where the loaded model applies it
    /// (during an edit, which holds the model, [`Worker::run_edit`] frees them when it ends).
    fn forget_lora(&self, name: &str) {
        let Some(adapter) = self.loras.borrow_mut().remove(name) else { return };
        if let Some(model) = self.model.borrow_mut().as_mut() {
            model.flux.release_adapter(adapter.id);
        }
    }

    /// Checks every added LoRA file against the model just loaded, posting the outcome of each.
    fn recheck_loras(&self) {
        let names: Vec<String> = self.lora_files.borrow().keys().cloned().collect();
        for name in names {
            post(&match self.lora(&name) {
                Ok(adapter) => FromWorker::LoraAdded { description: describe_lora(&adapter), name },
                Err(e) => FromWorker::LoraRejected { message: e.to_string(), name },
            });
        }
    }

    /// Runs `job` (asked for at `started`, `Date.now()`) on the loaded model with the job's LoRA adapters and
    /// answers with its [`FromWorker::Result`]; `Ok(None)` when cancelled.
    async fn run_edit(&self, job: EditJob, started: f64) -> Result<Option<FromWorker>> {
        let adapters =
            job.loras.iter().map(|use_| Ok((self.lora(&use_.name)?, use_.strength))).collect::<Result<Vec<_>>>()?;
        let mut model = self.model.take().ok_or_else(|| Error::Invalid("load a model first".into()))?;
        let mut canvas = self.canvas.take();
        let outcome = async {
            let (device, _) = device::wgpu_async().await?;
            let active: Vec<(&LoraAdapter, f32)> =
                adapters.iter().map(|(adapter, strength)| (adapter.as_ref(), *strength)).collect();
            self.editing.set(Some(job.id));
            self.run_edit_on(&mut model, &device, canvas.as_mut(), job, &active, started).await
        }
        .await;
        self.editing.set(None);
        // The edit held the model: an adapter removed meanwhile is freed now.
        for (adapter, _) in &adapters {
            if !self.loras.borrow().values().any(|known| known.id == adapter.id) {
                model.flux.release_adapter(adapter.id);
            }
        }
        *self.model.borrow_mut() = Some(model);
        if self.canvas.borrow().is_none() {
            *self.canvas.borrow_mut() = canvas;
        }
        outcome
    }

    /// Runs `job` on `model` with the LoRA `adapters` (planned first, then applied); `Ok(None)` when cancelled.
    async fn run_edit_on(
        &self,
        model: &mut KontextModel,
        device: &burn::tensor::Device,
        mut canvas: Option<&mut ResultCanvas>,
        job: EditJob,
        adapters: &[(&LoraAdapter, f32)],
        started: f64,
    ) -> Result<Option<FromWorker>> {
        let references = job.images.iter().map(|bytes| images::decode(bytes)).collect::<Result<Vec<_>>>()?;
        let mask = match &job.mask {
            Some(mask) => Some(MaskedEdit {
                mask: images::decode(&mask.image).map_err(|e| Error::Invalid(format!("the mask: {e}")))?,
                strength: mask.strength,
                crop_padding: mask.crop_padding,
                reference: mask.reference.as_ref().map(|bytes| images::decode(bytes)).transpose()?,
            }),
            None => None,
        };
        let mask_recipe =
            job.mask.as_ref().zip(mask.as_ref()).map(|(job, mask)| images::MaskRecipe::of(mask, &job.name));
        let request = EditRequest {
            prompt: job.prompt.clone(),
            references,
            size: job.width.zip(job.height),
            max_area: job.max_area,
            resize: if job.keep_reference_size { size::Resize::None } else { size::Resize::Bucket },
            steps: job.steps,
            guidance: job.guidance,
            seed: job.seed,
            cache: job.cache.clone(),
            mask,
        };
        let id = job.id;
        if let Some(budget) = self.gpu_memory.get() {
            model.follow(&plan_edit(model, &request, adapters, DeviceLimits::of(device, Some(budget)), None)?);
        }
        model.flux.set_adapters_reporting(adapters, device, &mut |done, total| {
            progress(Some(job.id), "applying LoRA adapters", done as u64, total as u64)
        })?;
        let preview = match canvas {
            Some(_) if job.previews => self.preview_of(model, device).await,
            _ => None,
        };
        let gpu = device::wgpu_handles_async().await?;
        // Counted from here: the preview's fit (above) is one readback per loaded model, at its first edit.
        let readbacks_before = device::readbacks();
        let mut edit = Edit::prepare_reporting(model, &request, None, device, &mut |phase| match phase {
            Phase::EncodingText => progress(Some(id), "encoding text", 0, 1),
            Phase::EncodingReferences => progress(Some(id), "encoding references", 0, request.references.len() as u64),
            _ => {}
        })?;
        let steps = edit.progress().1 as u64;
        let output_size = edit.size();
        let latent_size = (output_size.0 / VAE_SCALE, output_size.1 / VAE_SCALE);
        // The GPU draws a preview after every step; the 2D path reads each back, so it shows fewer.
        let preview_every = |canvas: &ResultCanvas| match canvas.draws_on_gpu() {
            true => 1,
            false => (steps / PREVIEWS_PER_EDIT).max(1),
        };
        progress(Some(id), "denoising", 0, steps);
        let mut step_readbacks = 0;
        let denoise_started = js_sys::Date::now();
        while !edit.is_denoised() {
            if self.take_cancel(id) {
                return Ok(None);
            }
            let before = device::readbacks();
            edit.step().await?;
            let done = edit.progress().0 as u64;
            let mut shown = false;
            if let (Some(canvas), Some(preview)) = (canvas.as_deref_mut(), &preview) {
                let every = preview_every(canvas);
                if done.is_multiple_of(every) || done == steps {
                    let latents = edit.latents();
                    match canvas.show_latents(&gpu, latents, latent_size, &preview.weights, output_size).await {
                        Ok(()) => shown = true,
                        Err(e) => web_sys::console::warn_1(&format!("no preview after step {done}: {e}").into()),
                    }
                }
            }
            // Waiting for the queue to finish this step makes the progress real and lets messages (cancel) in.
            device::queue_done(device).await?;
            step_readbacks += device::readbacks() - before;
            if shown {
                post(&FromWorker::Preview { job: id, step: done });
            }
            let reused = edit.cache().last_step_reused();
            post(&FromWorker::Progress { job: Some(id), phase: "denoising".into(), done, total: steps, reused });
        }
        let denoise_millis = js_sys::Date::now() - denoise_started;
        progress(Some(id), "decoding", 0, 1);
        let (width, height) = edit.size();
        let mag_ratios = (job.cache == CacheConfig::Calibrate).then(|| edit.cache().measured_ratios().to_vec());
        let decoded = edit.decode()?;
        let latents = match job.return_latents {
            true => Some(device::read_f32(decoded.latents.clone()).await?),
            false => None,
        };
        let pixels = (!decoded.pastes_back()).then(|| decoded.pixels.clone());
        let result = decoded.read().await?;
        let shown = match canvas {
            Some(canvas) => {
                // An edited crop pasted back is shown from the pasted image, uploaded (nothing read back).
                let pixels = pixels.unwrap_or_else(|| (images::to_tensor(&result.image, device) + 1.0) / 2.0);
                match canvas.show_result(&gpu, &pixels, &result.image) {
                    Ok(()) => true,
                    Err(e) => {
                        web_sys::console::warn_1(&format!("the result was not drawn: {e}").into());
                        false
                    }
                }
            }
            None => false,
        };
        let readbacks = device::readbacks() - readbacks_before;
        let recipe = images::Recipe {
            prompt: job.prompt.clone(),
            steps: job.steps,
            guidance: job.guidance,
            seed: job.seed,
            width,
            height,
            model: images::Recipe::describe_model(&model.flux_config),
            references: job.images.len(),
            loras: job.loras.iter().map(|l| (l.name.clone(), l.strength)).collect(),
            cache: (job.cache != CacheConfig::None).then(|| job.cache.describe()),
            mask: mask_recipe,
        };
        let png = recipe.encode_png(&result.image)?;
        self.take_cancel(id);
        Ok(Some(FromWorker::Result {
            id,
            png: ByteBuf::from(png),
            latents,
            mag_ratios,
            seed: job.seed,
            width,
            height,
            millis: js_sys::Date::now() - started,
            shown,
            readbacks,
            step_readbacks,
            denoise_millis,
        }))
    }

    /// Whether job `id` was asked to stop, forgetting the request.
    fn take_cancel(&self, id: u32) -> bool {
        self.cancelled.borrow_mut().remove(&id)
    }
}

/// Posts uploads of weights as `loading` progress in bytes: of the load, or of the running edit when it uploads
/// released parts again. At most one message per percent.
fn upload_progress() -> crate::pipeline::loader::UploadReport {
    let mut last = (String::new(), u64::MAX);
    Box::new(move |part: &str, done: u64, total: u64| {
        let percent = done * 100 / total.max(1);
        if (part, percent) != (last.0.as_str(), last.1) {
            last = (part.to_string(), percent);
            progress(Worker::current().editing.get(), "loading", done, total);
        }
    })
}

/// Previews shown during an edit on the 2D canvas path, each read back, at most (every ⌊steps / this⌋ steps);
/// the GPU draws one after every step.
const PREVIEWS_PER_EDIT: u64 = 10;

fn progress(job: Option<u32>, phase: &str, done: u64, total: u64) {
    post(&FromWorker::Progress { job, phase: phase.into(), done, total, reused: false });
}

fn describe_lora(adapter: &LoraAdapter) -> String {
    let mut text = format!("{} layers, rank {}", adapter.layers.len(), adapter.max_rank());
    if adapter.ignored_text_encoder_tensors > 0 {
        text.push_str(&format!(" (its {} text-encoder tensors are not applied)", adapter.ignored_text_encoder_tensors));
    }
    text
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
