//! The page's handle on the inference worker: spawns `worker.js`, sends [`ToWorker`], delivers every
//! [`FromWorker`] (and worker crashes, as [`FromWorker::Error`]) to one callback.
//!
//! A module worker only listens once its wasm is loaded; messages posted before then would be lost, so
//! requests wait in a queue until the worker says [`FromWorker::Ready`].

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use web_sys::{ErrorEvent, MessageEvent, OffscreenCanvas, Worker, WorkerOptions, WorkerType};

use crate::web::canvas::{self, DisplayChoice};
use crate::web::protocol::{FromWorker, ToWorker};

use crate::store::js;

/// The `request` of the [`FromWorker::Error`] that reports a worker that stopped (a panic, a trap, a lost GPU
/// device that made burn panic): it answers nothing more and must be replaced.
pub const WORKER_STOPPED: &str = "worker_stopped";

/// A message for the worker and the objects it transfers.
type Pending = (JsValue, js_sys::Array);

/// A running worker. Dropping it terminates the worker.
pub struct WorkerClient {
    worker: Worker,
    /// Requests posted before the worker was ready, with what each transfers; `None` once it is.
    queue: Rc<RefCell<Option<Vec<Pending>>>>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_error: Closure<dyn FnMut(ErrorEvent)>,
}

impl WorkerClient {
    /// Starts `worker.js` (a module worker next to the page) and routes its messages to `on_event`.
    pub fn spawn(on_event: impl Fn(FromWorker) + 'static) -> Result<Self, String> {
        let options = WorkerOptions::new();
        options.set_type(WorkerType::Module);
        let worker = Worker::new_with_options("./worker.js", &options).map_err(js::describe)?;
        let on_event = Rc::new(on_event);
        let queue: Rc<RefCell<Option<Vec<Pending>>>> = Rc::new(RefCell::new(Some(Vec::new())));
        let on_message = {
            let (on_event, queue, worker) = (on_event.clone(), queue.clone(), worker.clone());
            Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
                let message = serde_wasm_bindgen::from_value(event.data()).unwrap_or_else(|e| FromWorker::Error {
                    job: None,
                    request: "worker".into(),
                    message: format!("unreadable message from the worker: {e}"),
                });
                if message == FromWorker::Ready {
                    for (message, transfer) in queue.borrow_mut().take().unwrap_or_default() {
                        let _ = worker.post_message_with_transfer(&message, &transfer);
                    }
                }
                on_event(message)
            })
        };
        let on_error = Closure::<dyn FnMut(ErrorEvent)>::new(move |event: ErrorEvent| {
            event.prevent_default();
            on_event(FromWorker::Error {
                job: None,
                request: WORKER_STOPPED.into(),
                message: format!("the worker stopped: {}", event.message()),
            })
        });
        worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        Ok(Self { worker, queue, _on_message: on_message, _on_error: on_error })
    }

    /// Posts a request (queued until the worker is ready); the answer arrives through the callback given to
    /// [`WorkerClient::spawn`].
    pub fn send(&self, request: &ToWorker) -> Result<(), String> {
        self.post(js::to_message(request)?, js_sys::Array::new())
    }

    /// Hands the worker the result canvas, transferred (see [`crate::web::canvas`]), to be drawn on as `choice`
    /// asks.
    pub fn attach_canvas(&self, canvas: &OffscreenCanvas, choice: DisplayChoice) -> Result<(), String> {
        self.post(canvas::attach_message(canvas, choice), js_sys::Array::of1(canvas))
    }

    fn post(&self, message: JsValue, transfer: js_sys::Array) -> Result<(), String> {
        if let Some(pending) = self.queue.borrow_mut().as_mut() {
            pending.push((message, transfer));
            return Ok(());
        }
        self.worker.post_message_with_transfer(&message, &transfer).map_err(js::describe)
    }
}

impl Drop for WorkerClient {
    fn drop(&mut self) {
        self.worker.terminate();
    }
}
