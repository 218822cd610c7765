//! The app's state and intents, without rendering: the signals the components read ([`AppState`]), the
//! inference worker they talk to, and the controllers behind the panels: the model store ([`models`]), LoRA
//! adapters ([`loras`]) and the Turbo presets ([`turbo`]), the history ([`history`]), the editor's inputs
//! ([`edit`]) and the embed API ([`embed`]).
//! Components in `ui/` render these and call their intents.

pub mod edit;
pub mod embed;
pub mod history;
pub mod loading;
pub mod loras;
pub mod mag_ratios;
pub mod masking;
pub mod models;
pub mod turbo;

use std::cell::RefCell;

use leptos::prelude::*;
use wasm_bindgen::JsCast;

use crate::pipeline::cache::MagRatios;
use crate::web::canvas::DisplayChoice;
use crate::web::client::{WORKER_STOPPED, WorkerClient};
use crate::web::protocol::{FromWorker, ToWorker};
use loras::{LoraEntry, LoraStatus};

thread_local! {
    static WORKER: RefCell<Option<WorkerClient>> = const { RefCell::new(None) };
}

/// Sends a request to the inference worker.
pub fn send(request: &ToWorker) -> Result<(), String> {
    WORKER.with(|w| match w.borrow().as_ref() {
        Some(client) => client.send(request),
        None => Err("the inference worker is not running".into()),
    })
}

/// The GPU self-check shown in the device report.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckState {
    /// Waiting for the worker.
    Running,
    /// The worker answered.
    Done {
        /// Within tolerance.
        passed: bool,
        /// Largest difference from the CPU.
        max_abs_error: f32,
        /// Time taken, GPU start-up included.
        millis: f64,
    },
    /// The check could not run.
    Failed(String),
}

/// The model in the worker.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelState {
    /// Nothing loaded.
    Empty,
    /// Downloading or loading: `phase`, `done` of `total`.
    Loading {
        /// `downloading` or `loading`.
        phase: String,
        /// Units done.
        done: u64,
        /// Units in the phase.
        total: u64,
    },
    /// Ready, with a description.
    Loaded(String),
    /// Loading failed.
    Failed(String),
}

/// The current or last edit.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    /// No edit yet.
    Idle,
    /// Running: which job, phase, progress, and when it started (ms since epoch).
    Running {
        /// Job id.
        id: u32,
        /// Phase name from the worker.
        phase: String,
        /// Units done in the phase.
        done: u64,
        /// Units in the phase.
        total: u64,
        /// Whether the last step reused the step cache.
        reused: bool,
        /// `Date.now()` at the start.
        started: f64,
        /// `Date.now()` when the current phase started.
        phase_started: f64,
    },
    /// Finished: the result's object URL and recipe facts.
    Done {
        /// `blob:` URL of the PNG.
        url: String,
        /// The PNG itself (for "use as reference").
        png: std::sync::Arc<[u8]>,
        /// Seed used.
        seed: u64,
        /// Width.
        width: usize,
        /// Height.
        height: usize,
        /// Time taken.
        millis: f64,
        /// Whether the result canvas shows it (the worker drew it there).
        shown: bool,
        /// Buffers the edit read back to the CPU, in all and during its steps.
        readbacks: (u64, u64),
    },
    /// Stopped by the user.
    Cancelled,
    /// Failed with a message.
    Failed(String),
}

impl JobState {
    /// Edit `id` just sent to the worker, started now.
    pub fn starting(id: u32) -> Self {
        let now = js_sys::Date::now();
        Self::Running {
            id,
            phase: "starting".into(),
            done: 0,
            total: 1,
            reused: false,
            started: now,
            phase_started: now,
        }
    }
}

/// Signals shared by the components (provided as context).
#[derive(Debug, Clone, Copy)]
pub struct AppState {
    /// GPU self-check.
    pub check: RwSignal<Option<CheckState>>,
    /// The loaded model.
    pub model: RwSignal<ModelState>,
    /// The current edit.
    pub job: RwSignal<JobState>,
    /// LoRA adapters the user added.
    pub loras: RwSignal<Vec<LoraEntry>>,
    /// Writes of the LoRA list or of an adapter's file to the browser's storage still under way.
    pub lora_writes: RwSignal<u32>,
    /// The running edit's latest preview on the result canvas: job and steps done.
    pub preview: RwSignal<Option<(u32, u64)>>,
    /// The result canvas the worker draws on (a new one with each worker: a canvas is transferred once).
    pub canvas: RwSignal<Option<web_sys::HtmlCanvasElement>, LocalStorage>,
    /// How the worker draws on the result canvas (`webgpu`, `2d`), once its self-check said.
    pub display: RwSignal<Option<String>>,
    /// The kernel path of each operation in the worker, once its self-check said.
    pub kernels: RwSignal<Option<crate::kernels::report::KernelPaths>>,
    /// The loaded model's MagCache ratios, where it was calibrated in this browser.
    pub mag_ratios: RwSignal<Option<Vec<f32>>>,
}

impl Default for AppState {
    fn default() -> Self {
        Self::new()
    }
}

impl AppState {
    /// Fresh state: nothing checked, loaded or running.
    pub fn new() -> Self {
        Self {
            check: RwSignal::new(None),
            model: RwSignal::new(ModelState::Empty),
            job: RwSignal::new(JobState::Idle),
            loras: RwSignal::new(Vec::new()),
            lora_writes: RwSignal::new(0),
            preview: RwSignal::new(None),
            canvas: RwSignal::new_local(None),
            display: RwSignal::new(None),
            kernels: RwSignal::new(None),
            mag_ratios: RwSignal::new(None),
        }
    }

    /// Applies one worker answer to the signals.
    fn apply(self, event: FromWorker) {
        match event {
            FromWorker::Ready => {}
            FromWorker::SelfCheck { check, millis, display, kernels } => {
                self.display.set(display);
                self.kernels.set(kernels);
                self.check.set(Some(CheckState::Done {
                    passed: check.passed,
                    max_abs_error: check.max_abs_error,
                    millis,
                }))
            }
            FromWorker::Progress { job: None, phase, done, total, .. } => {
                self.model.set(ModelState::Loading { phase, done, total })
            }
            FromWorker::Progress { job: Some(id), phase, done, total, reused } => self.job.update(|job| {
                if let JobState::Running { id: running, .. } = job
                    && *running == id
                {
                    let (started, phase_started) = match job {
                        JobState::Running { started, phase: current, phase_started, .. } if *current == phase => {
                            (*started, *phase_started)
                        }
                        JobState::Running { started, .. } => (*started, js_sys::Date::now()),
                        _ => (js_sys::Date::now(), js_sys::Date::now()),
                    };
                    *job = JobState::Running { id, phase, done, total, reused, started, phase_started };
                }
            }),
            FromWorker::Loaded { description, .. } => {
                self.mag_ratios.set(None);
                let (model, ratios) = (description.clone(), self.mag_ratios);
                leptos::task::spawn_local(async move {
                    if let Ok(Some(stored)) = mag_ratios::load(&model).await {
                        ratios.set(Some(stored.mag_ratios));
                    }
                });
                self.model.set(ModelState::Loaded(description))
            }
            FromWorker::Preview { job, step } => self.preview.set(Some((job, step))),
            FromWorker::LoraAdded { name, description } => {
                loras::set_status(self, &name, LoraStatus::Ready(description))
            }
            FromWorker::LoraRejected { name, message } => loras::set_status(self, &name, LoraStatus::Rejected(message)),
            FromWorker::LoraRemoved { .. } => {}
            FromWorker::Result {
                png,
                seed,
                width,
                height,
                millis,
                mag_ratios: measured,
                shown,
                readbacks,
                step_readbacks,
                ..
            } => {
                if let (Some(measured), ModelState::Loaded(model)) = (measured, self.model.get_untracked()) {
                    let ratios = MagRatios { model, steps: measured.len(), mag_ratios: measured.clone() };
                    self.mag_ratios.set(Some(measured));
                    leptos::task::spawn_local(async move {
                        if let Err(e) = mag_ratios::store(&ratios).await {
                            web_sys::console::warn_1(&format!("the MagCache ratios were not kept: {e}").into());
                        }
                    });
                }
                let state = match png_object_url(&png) {
                    Ok(url) => JobState::Done {
                        url,
                        png: png.into_vec().into(),
                        seed,
                        width,
                        height,
                        millis,
                        shown,
                        readbacks: (readbacks, step_readbacks),
                    },
                    Err(e) => JobState::Failed(e),
                };
                self.job.set(state);
            }
            FromWorker::Cancelled { .. } => self.job.set(JobState::Cancelled),
            FromWorker::Error { job: Some(_), message, .. } => self.job.set(JobState::Failed(message)),
            FromWorker::Error { job: None, request, message } => match request.as_str() {
                "self_check" => self.check.set(Some(CheckState::Failed(message))),
                "load_model" => self.model.set(ModelState::Failed(message)),
                WORKER_STOPPED => {
                    if matches!(self.check.get_untracked(), Some(CheckState::Running)) {
                        self.check.set(Some(CheckState::Failed(message.clone())));
                    }
                    if matches!(self.job.get_untracked(), JobState::Running { .. }) {
                        self.job.set(JobState::Failed(message.clone()));
                    }
                    self.model.set(ModelState::Failed(format!(
                        "{message}. A fresh worker was started: load the model again."
                    )));
                    // Not from inside the old worker's own callback: replace it once this one returns.
                    leptos::task::spawn_local(async move { restart_worker(self) });
                }
                _ => {
                    // The worker itself failed: whatever was waiting on it will not get an answer.
                    if matches!(self.check.get_untracked(), Some(CheckState::Running)) {
                        self.check.set(Some(CheckState::Failed(message.clone())));
                    }
                    if matches!(self.model.get_untracked(), ModelState::Loading { .. }) {
                        self.model.set(ModelState::Failed(message.clone()));
                    }
                    if matches!(self.job.get_untracked(), JobState::Running { .. }) {
                        self.job.set(JobState::Failed(message));
                    }
                }
            },
        }
    }
}

fn png_object_url(png: &[u8]) -> Result<String, String> {
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(png));
    let options = web_sys::BlobPropertyBag::new();
    options.set_type("image/png");
    let blob =
        web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &options).map_err(crate::store::js::describe)?;
    web_sys::Url::create_object_url_with_blob(&blob).map_err(crate::store::js::describe)
}

/// Replaces the inference worker with a fresh one, which gets the LoRA files again. What the old one held (a
/// model, GPU memory, queued requests) ends with it; an edit that was running or queued ends as cancelled.
pub fn restart_worker(state: AppState) {
    start_worker(state);
    if matches!(state.job.get_untracked(), JobState::Running { .. }) {
        state.job.set(JobState::Cancelled);
    }
    leptos::task::spawn_local(loras::resend(state));
}

/// Starts the inference worker, replacing (and terminating) any earlier one.
pub fn start_worker(state: AppState) {
    WORKER.with(|w| w.borrow_mut().take());
    match WorkerClient::spawn(move |event| {
        embed::on_worker(&event);
        state.apply(event)
    }) {
        Ok(client) => {
            match hand_over_canvas(&client) {
                Ok(canvas) => state.canvas.set(Some(canvas)),
                Err(e) => {
                    web_sys::console::warn_1(&format!("no result canvas: {e}").into());
                    state.canvas.set(None)
                }
            }
            WORKER.with(|w| *w.borrow_mut() = Some(client))
        }
        Err(e) => state.model.set(ModelState::Failed(format!("the inference worker could not start: {e}"))),
    }
}

/// The value of `name` in the page's query string (`?embed` gives `Some("")`), or `None` without it.
pub fn query_param(name: &str) -> Option<String> {
    web_sys::window()
        .and_then(|w| w.location().search().ok())
        .and_then(|search| web_sys::UrlSearchParams::new_with_str(&search).ok())
        .and_then(|params| params.get(name))
}

/// Makes a result canvas and transfers it to the worker, which draws previews and results on it; the page
/// keeps the element to show. `?display=2d` or `?display=webgpu` chooses the worker's path
/// ([`crate::web::canvas::DisplayChoice`]).
fn hand_over_canvas(client: &WorkerClient) -> Result<web_sys::HtmlCanvasElement, String> {
    let document = web_sys::window().and_then(|w| w.document()).ok_or("no document")?;
    let canvas: web_sys::HtmlCanvasElement =
        document.create_element("canvas").map_err(crate::store::js::describe)?.unchecked_into();
    canvas.set_class_name("stage-image result-canvas");
    let offscreen = canvas.transfer_control_to_offscreen().map_err(crate::store::js::describe)?;
    let display = query_param("display").unwrap_or_default();
    client.attach_canvas(&offscreen, DisplayChoice::named(&display))?;
    Ok(canvas)
}
