//! wasm test inside a dedicated Web Worker, where inference runs: burn opens WebGPU there and a matmul
//! equals the CPU result. Read back only through async APIs.
#![cfg(target_arch = "wasm32")]

use kontext_web::harness::kernel_checks;
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

/// The quantization vectors' every ggml type on WebGPU inside the worker, as in the page (`tests/web.rs`), with f32
/// and (where the adapter has `shader-f16`) f16 compute; the output says which ran.
#[wasm_bindgen_test]
async fn every_quant_vector_type_multiplies_on_webgpu_in_the_worker_like_its_golden() {
    let (gpu, _) = kontext_web::device::wgpu_async().await.expect("WebGPU device");
    let gguf = include_bytes!("fixtures/tiny/bfl_gguf/quant_vectors.gguf").to_vec();
    let expected = include_bytes!("fixtures/tiny/bfl_gguf/quant_vectors_expected.safetensors").to_vec();
    let report = kernel_checks::assert_quant_vectors_at_each_precision(gguf, expected, &gpu).await;
    console_log!("quantization vectors in the worker: {report}");
}
