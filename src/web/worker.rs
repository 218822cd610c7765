//! The inference worker's side: receives [`ToWorker`] messages, runs them on the GPU, answers with
//! [`FromWorker`]. Runs in a module Web Worker (`www/worker.js`) so the page never freezes.

use std::cell::Cell;

use wasm_bindgen::prelude::*;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use crate::protocol::{FromWorker, ToWorker};
use crate::{device, selfcheck};

thread_local! {
    static STARTED: Cell<bool> = const { Cell::new(false) };
}

/// Installs the message handler and announces readiness. Called once by `worker.js`.
pub fn start() {
    console_error_panic_hook::set_once();
    if STARTED.with(|s| s.replace(true)) {
        return;
    }
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(|event: MessageEvent| {
        match serde_wasm_bindgen::from_value::<ToWorker>(event.data()) {
            Ok(request) => wasm_bindgen_futures::spawn_local(handle(request)),
            Err(e) => post(&FromWorker::Error { message: format!("the worker did not understand a message: {e}") }),
        }
    });
    scope.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    post(&FromWorker::Ready);
}

/// Runs one request to completion and posts its answer.
pub async fn answer(request: ToWorker) -> FromWorker {
    match request {
        ToWorker::SelfCheck { size } => {
            let started = js_sys::Date::now();
            let outcome = async {
                let (device, _) = device::wgpu_async().await?;
                selfcheck::matmul_check(&device, size).await
            }
            .await;
            match outcome {
                Ok(check) => FromWorker::SelfCheck { check, millis: js_sys::Date::now() - started },
                Err(e) => FromWorker::Error { message: e.to_string() },
            }
        }
    }
}

async fn handle(request: ToWorker) {
    post(&answer(request).await);
}

fn post(message: &FromWorker) {
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let serializer = serde_wasm_bindgen::Serializer::json_compatible();
    match serde::Serialize::serialize(message, &serializer) {
        Ok(value) => {
            let _ = scope.post_message(&value);
        }
        Err(e) => web_sys::console::error_1(&format!("unserialisable worker message: {e}").into()),
    }
}
