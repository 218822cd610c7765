//! `/?embed`: a compact view (result, progress, cancel) for product pages, driven by the postMessage API
//! documented in the README ("Embedding"). Requests from the parent map onto the worker's requests
//! ([`crate::web::embed_api`]); the worker's answers go back to the sender only, at the sender's origin.
//!
//! Messages whose origin is neither the app's own nor listed in `?allow=` are ignored without an answer.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use js_sys::{Array, Function, Object, Reflect};
use leptos::prelude::*;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, BlobPropertyBag, MessageEvent};

use super::loading::{self, Stored};
use super::{AppState, JobState, send};
use crate::store::js;
use crate::web::client::WORKER_STOPPED;
use crate::web::embed_api::{self, EditBlobs, EditOptions, LoadSource, allowed_origins, origin_of};
use crate::web::protocol::{FromWorker, ToWorker};

thread_local! {
    static EMBED: RefCell<Option<Rc<Embed>>> = const { RefCell::new(None) };
}

/// Where an answer goes: the parent's id for the request, its window and its origin.
#[derive(Clone)]
struct Reply {
    id: JsValue,
    target: JsValue,
    origin: String,
}

impl Reply {
    /// Posts `{type, id, ...fields}` to the sender, at its origin only.
    fn post(&self, kind: &str, fields: &[(&str, JsValue)]) {
        let message = Object::new();
        let _ = Reflect::set(&message, &"type".into(), &kind.into());
        let _ = Reflect::set(&message, &"id".into(), &self.id);
        for (key, value) in fields {
            let _ = Reflect::set(&message, &(*key).into(), value);
        }
        post_to(&self.target, &message, &self.origin);
    }

    fn error(&self, message: &str) {
        self.post("kontext:error", &[("message", message.into())]);
    }

    fn cancelled(&self) {
        self.post("kontext:error", &[("message", "cancelled".into()), ("cancelled", true.into())]);
    }

    /// Whether `other` came from the same sender with the same id.
    fn same_request(&self, other: &Reply) -> bool {
        self.origin == other.origin && Object::is(&self.id, &other.id)
    }
}

fn post_to(target: &JsValue, message: &JsValue, origin: &str) {
    let sent = js::get(target, "postMessage")
        .and_then(|f| f.dyn_into::<Function>().ok())
        .map(|post| post.call2(target, message, &origin.into()));
    if !matches!(sent, Some(Ok(_))) {
        web_sys::console::warn_1(&format!("kontext embed: could not answer {origin}").into());
    }
}

/// The embed's bookkeeping: who asked for what.
struct Embed {
    allowed: Vec<String>,
    state: AppState,
    /// The load whose files are being stored, with its number (a later load replaces it).
    downloading: RefCell<Option<(u32, Reply)>>,
    /// Loads sent to the worker, in the order it runs them; the first one owns load progress.
    loads: RefCell<VecDeque<Reply>>,
    /// Edits by worker job id.
    edits: RefCell<Vec<(u32, Reply)>>,
    next_job: Cell<u32>,
}

/// Whether the page was opened as `/?embed`.
pub fn requested() -> bool {
    super::query_param("embed").is_some()
}

/// Starts listening to the parent and tells it `kontext:ready`.
pub fn start(state: AppState) {
    let Some(window) = web_sys::window() else { return };
    let location = window.location();
    let own = location.origin().unwrap_or_default();
    let allow = location
        .search()
        .ok()
        .and_then(|search| web_sys::UrlSearchParams::new_with_str(&search).ok())
        .and_then(|params| params.get("allow"));
    let embed = Rc::new(Embed {
        allowed: allowed_origins(&own, allow.as_deref()),
        state,
        downloading: RefCell::new(None),
        loads: RefCell::new(VecDeque::new()),
        edits: RefCell::new(Vec::new()),
        next_job: Cell::new(1),
    });
    EMBED.with(|e| *e.borrow_mut() = Some(embed.clone()));
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| embed.receive(event));
    let _ = window.add_event_listener_with_callback("message", on_message.as_ref().unchecked_ref());
    on_message.forget();
    announce_ready(&window);
}

/// Posts `kontext:ready` to the parent window when its origin is allowed (known from `location.ancestorOrigins`,
/// else from the referrer; without either, to every allowed origin, of which the browser delivers the matching one).
fn announce_ready(window: &web_sys::Window) {
    let Some(parent) = window.parent().ok().flatten() else { return };
    if Object::is(parent.as_ref(), window.as_ref()) {
        return;
    }
    let allowed = EMBED.with(|e| e.borrow().as_ref().map(|e| e.allowed.clone())).unwrap_or_default();
    let ancestor = js::get(window.location().as_ref(), "ancestorOrigins")
        .and_then(|list| js::get(&list, "0"))
        .and_then(|o| o.as_string());
    let referrer = window.document().map(|d| d.referrer()).filter(|r| !r.is_empty());
    let known = ancestor.or(referrer).and_then(|url| origin_of(&url));
    let targets = match known {
        Some(origin) => allowed.into_iter().filter(|a| *a == origin).collect(),
        None => allowed,
    };
    let message = Object::new();
    let _ = Reflect::set(&message, &"type".into(), &"kontext:ready".into());
    for origin in targets {
        post_to(&parent, &message, &origin);
    }
}

/// Routes one worker answer to the parent that asked. Does nothing outside the embed.
pub fn on_worker(event: &FromWorker) {
    if let Some(embed) = EMBED.with(|e| e.borrow().clone()) {
        embed.answer(event);
    }
}

impl Embed {
    fn receive(&self, event: MessageEvent) {
        let origin = event.origin();
        if !self.allowed.contains(&origin) {
            return;
        }
        let (data, Some(target)) = (event.data(), event.source()) else { return };
        let kind = js::get_string(&data, "type");
        if !kind.starts_with("kontext:") {
            return;
        }
        let reply = Reply { id: js::get(&data, "id").unwrap_or(JsValue::NULL), target: target.into(), origin };
        match kind.as_str() {
            "kontext:load" => self.load(reply, &data),
            "kontext:edit" => self.edit(reply, &data),
            "kontext:cancel" => self.cancel(&reply),
            other => reply.error(&format!("unknown message type {other}")),
        }
    }

    /// Stores the source's files (what is missing; nothing when it is stored, so an embed works offline), then has
    /// the worker load the stored model. A load that arrives while another downloads replaces it.
    fn load(&self, reply: Reply, data: &JsValue) {
        let page = web_sys::window().and_then(|w| w.location().href().ok()).unwrap_or_default();
        let source =
            serde_wasm_bindgen::from_value::<LoadSource>(js::get(data, "source").unwrap_or(JsValue::UNDEFINED))
                .map_err(|e| format!("kontext:load: bad source: {e}"))
                .and_then(|source| source.to_source(&page));
        let number_field = |key: &str| js::get(data, key).map(|v| v.as_f64().unwrap_or(f64::NAN));
        let budget = embed_api::gpu_memory(number_field("gpuMemory"));
        let chunk_size = embed_api::chunk_size(number_field("chunkSize"));
        let (source, gpu_memory, chunk_size) = match (source, budget, chunk_size) {
            (Ok(source), Ok(budget), Ok(chunk_size)) => (source, budget, chunk_size),
            (Err(message), _, _) | (_, Err(message), _) | (_, _, Err(message)) => return reply.error(&message),
        };
        let number = self.next_job.get();
        self.next_job.set(number + 1);
        if let Some((_, earlier)) = self.downloading.replace(Some((number, reply.clone()))) {
            earlier.error("cancelled: a later kontext:load replaced this one");
        }
        let state = self.state;
        leptos::task::spawn_local(async move {
            let progress_reply = reply.clone();
            let mut on_progress = move |p: &crate::store::download::Progress| {
                progress_reply.post("kontext:progress", &progress_fields("downloading", p.done, p.total));
            };
            let stored = loading::load_urls(state, source, gpu_memory, chunk_size, &mut on_progress).await;
            let Some(embed) = EMBED.with(|e| e.borrow().clone()) else { return };
            let ours = embed.downloading.borrow().as_ref().is_some_and(|(n, _)| *n == number);
            if !ours {
                return; // cancelled or replaced: answered then
            }
            embed.downloading.replace(None);
            match stored {
                Ok(Stored::Sent(_)) => embed.loads.borrow_mut().push_back(reply),
                Ok(Stored::Cancelled) => reply.cancelled(),
                Err(message) => reply.error(&message),
            }
        });
    }

    fn edit(&self, reply: Reply, data: &JsValue) {
        let options = match serde_wasm_bindgen::from_value::<EditOptions>(without_images(data)) {
            Ok(options) => options,
            Err(e) => return reply.error(&format!("kontext:edit: {e}")),
        };
        let blobs: Vec<JsValue> = match js::get(data, "images") {
            None => Vec::new(),
            Some(images) if Array::is_array(&images) => Array::from(&images).to_vec(),
            Some(_) => return reply.error("kontext:edit: images must be an array of Blobs"),
        };
        let (mask, mask_reference) = (js::get(data, "mask"), js::get(data, "maskReference"));
        let job_id = self.next_job.get();
        self.next_job.set(job_id + 1);
        // Registered now, so a cancel that arrives while the images are read still finds the job.
        self.edits.borrow_mut().push((job_id, reply.clone()));
        let state = self.state;
        leptos::task::spawn_local(async move {
            let outcome = async {
                let mut images = Vec::with_capacity(blobs.len());
                for (i, blob) in blobs.into_iter().enumerate() {
                    images.push(blob_bytes(blob, &format!("images[{i}]")).await?);
                }
                let mask = match mask {
                    Some(mask) => Some(blob_bytes(mask, "mask").await?),
                    None => None,
                };
                let mask_reference = match mask_reference {
                    Some(reference) => Some(blob_bytes(reference, "maskReference").await?),
                    None => None,
                };
                let blobs = EditBlobs { images, mask, mask_reference };
                let job = options.to_job(job_id, blobs, crate::pipeline::rng::random_seed)?;
                state.job.set(JobState::starting(job_id));
                send(&ToWorker::Edit(job))
            }
            .await;
            if let Err(message) = outcome
                && let Some(embed) = EMBED.with(|e| e.borrow().clone())
                && let Some(reply) = embed.take_edit(job_id)
            {
                reply.error(&message);
            }
        });
    }

    /// Cancels the edit or the load the sender asked for with this id, answering it `cancelled` within a second.
    /// A load in the worker ends with the worker (a fresh one replaces it): what was queued behind it ends too.
    fn cancel(&self, reply: &Reply) {
        let job = self.edits.borrow().iter().find(|(_, r)| r.same_request(reply)).map(|(job, _)| *job);
        if let Some(id) = job {
            if let Err(e) = send(&ToWorker::Cancel { id }) {
                reply.error(&e);
            }
            return;
        }
        let downloading = self.downloading.borrow().as_ref().is_some_and(|(_, r)| r.same_request(reply));
        if downloading {
            if let Some((_, load)) = self.downloading.replace(None) {
                loading::cancel_download(self.state);
                load.cancelled();
            }
            return;
        }
        let in_worker = self.loads.borrow().iter().any(|r| r.same_request(reply));
        if !in_worker {
            return reply.error("no running edit or load has this id");
        }
        loading::cancel_worker_load(self.state);
        let loads: Vec<Reply> = self.loads.borrow_mut().drain(..).collect();
        let edits: Vec<(u32, Reply)> = self.edits.borrow_mut().drain(..).collect();
        for other in loads.iter().chain(edits.iter().map(|(_, r)| r)) {
            if other.same_request(reply) {
                other.cancelled();
            } else {
                other.error("cancelled: the worker was restarted to stop another load");
            }
        }
    }

    fn take_edit(&self, job: u32) -> Option<Reply> {
        let mut edits = self.edits.borrow_mut();
        let at = edits.iter().position(|(id, _)| *id == job)?;
        Some(edits.remove(at).1)
    }

    fn answer(&self, event: &FromWorker) {
        match event {
            FromWorker::Progress { job: None, phase, done, total, .. } => {
                if let Some(reply) = self.loads.borrow().front() {
                    reply.post("kontext:progress", &progress_fields(phase, *done, *total));
                }
            }
            FromWorker::Progress { job: Some(job), phase, done, total, reused } => {
                if let Some((_, reply)) = self.edits.borrow().iter().find(|(id, _)| id == job) {
                    let [phase, done, total] = progress_fields(phase, *done, *total);
                    reply.post("kontext:progress", &[phase, done, total, ("reused", (*reused).into())]);
                }
            }
            FromWorker::Loaded { description, heap_bytes } => {
                if let Some(reply) = self.loads.borrow_mut().pop_front() {
                    reply.post(
                        "kontext:loaded",
                        &[
                            ("description", description.as_str().into()),
                            ("workerHeapBytes", (*heap_bytes as f64).into()),
                            ("pageHeapBytes", (js::wasm_heap_bytes() as f64).into()),
                        ],
                    );
                }
            }
            FromWorker::Error { job: None, request, message, .. } if request == "load_model" => {
                if let Some(reply) = self.loads.borrow_mut().pop_front() {
                    reply.error(message);
                }
            }
            FromWorker::Result {
                id,
                png,
                seed,
                width,
                height,
                latents,
                readbacks,
                step_readbacks,
                denoise_millis,
                ..
            } => {
                if let Some(reply) = self.take_edit(*id) {
                    match png_blob(png) {
                        Ok(image) => {
                            let mut fields: Vec<(&str, JsValue)> = vec![
                                ("image", image.into()),
                                ("seed", (*seed as f64).into()),
                                ("width", (*width as f64).into()),
                                ("height", (*height as f64).into()),
                                ("readbacks", (*readbacks as f64).into()),
                                ("stepReadbacks", (*step_readbacks as f64).into()),
                                ("denoiseMillis", (*denoise_millis).into()),
                            ];
                            if let Some(latents) = latents {
                                // [tokens × 64], row-major.
                                let shape = Array::of2(&((latents.len() / 64) as f64).into(), &64.0.into());
                                fields.push(("latents", js_sys::Float32Array::from(&latents[..]).into()));
                                fields.push(("latentsShape", shape.into()));
                            }
                            reply.post("kontext:result", &fields)
                        }
                        Err(e) => reply.error(&e),
                    }
                }
            }
            FromWorker::Cancelled { id, .. } => {
                if let Some(reply) = self.take_edit(*id) {
                    reply.cancelled();
                }
            }
            FromWorker::Error { job: Some(job), message, .. } => {
                if let Some(reply) = self.take_edit(*job) {
                    reply.error(message);
                }
            }
            FromWorker::Error { job: None, request, message, .. }
                if request == "worker" || request == WORKER_STOPPED =>
            {
                let loads: Vec<Reply> = self.loads.borrow_mut().drain(..).collect();
                let edits: Vec<(u32, Reply)> = self.edits.borrow_mut().drain(..).collect();
                for reply in loads.iter().chain(edits.iter().map(|(_, r)| r)) {
                    reply.error(message);
                }
            }
            _ => {}
        }
    }
}

fn progress_fields(phase: &str, done: u64, total: u64) -> [(&'static str, JsValue); 3] {
    [("phase", phase.into()), ("done", (done as f64).into()), ("total", (total as f64).into())]
}

/// `data` without its Blobs (`images`, `mask`, `maskReference`: Blobs do not deserialize), as a plain object.
fn without_images(data: &JsValue) -> JsValue {
    let copy = Object::assign(&Object::new(), &Object::from(data.clone()));
    for key in ["images", "mask", "maskReference"] {
        let _ = Reflect::delete_property(&copy, &key.into());
    }
    copy.into()
}

/// The bytes of the Blob `value`, the field `what` of a request.
async fn blob_bytes(value: JsValue, what: &str) -> Result<Vec<u8>, String> {
    let blob: Blob = value.dyn_into().map_err(|_| format!("{what} is not a Blob"))?;
    let buffer = JsFuture::from(blob.array_buffer()).await.map_err(js::describe)?;
    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
}

fn png_blob(png: &[u8]) -> Result<Blob, String> {
    let parts = Array::of1(&js_sys::Uint8Array::from(png));
    let options = BlobPropertyBag::new();
    options.set_type("image/png");
    Blob::new_with_u8_array_sequence_and_options(&parts, &options).map_err(js::describe)
}
