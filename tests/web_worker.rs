//! wasm test inside a dedicated Web Worker, where inference runs: burn opens WebGPU there and a matmul
//! equals the CPU result. Read back only through async APIs.
#![cfg(target_arch = "wasm32")]

use kontext_web::web::protocol::{FromWorker, ToWorker};
use kontext_web::web::worker;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_dedicated_worker);

#[wasm_bindgen_test]
async fn the_worker_opens_webgpu_and_its_matmul_equals_the_cpu() {
    match worker::answer(ToWorker::SelfCheck { size: 48 }).await {
        FromWorker::SelfCheck { check, millis } => {
            assert!(check.passed, "{check:?}");
            assert!(millis > 0.0);
        }
        other => panic!("unexpected answer: {other:?}"),
    }
}
