//! wasm tests in headless Chromium's page (WebGPU on SwiftShader): the browser probe, and our WGSL kernels
//! on the browser's WebGPU compared with their plain-tensor twins on the CPU backend.
#![cfg(target_arch = "wasm32")]

use burn::tensor::{Tensor, TensorData};
use kontext_web::device::{self, selfcheck};
use kontext_web::kernels::{self, latent};
use kontext_web::web::probe::{self, WebGpu};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
async fn the_probe_finds_a_webgpu_adapter_and_storage() {
    let report = probe::probe().await;
    let WebGpu::Available(adapter) = report.webgpu else { panic!("no WebGPU: {:?}", report.webgpu) };
    assert!(adapter.max_buffer_size >= (256 << 20) as f64, "{adapter:?}");
    assert!(adapter.max_storage_buffer_binding_size >= (128 << 20) as f64, "{adapter:?}");
    let storage = report.storage.expect("navigator.storage");
    assert!(storage.quota.unwrap_or(0.0) > 0.0, "{storage:?}");
}

#[wasm_bindgen_test]
async fn pack_kernel_on_webgpu_equals_its_reference_twin() {
    let (gpu, _) = device::wgpu_async().await.expect("WebGPU device");
    let shape = [2, 16, 6, 10];
    let values = selfcheck::test_matrix(1, shape.iter().product(), 3);
    let on_gpu = kernels::pack::pack(Tensor::<4>::from_data(TensorData::new(values.clone(), shape), &gpu));
    let reference = latent::pack(Tensor::<4>::from_data(TensorData::new(values, shape), &device::cpu()));
    let got = device::read_f32(on_gpu).await.unwrap();
    let expected = device::read_f32(reference).await.unwrap();
    assert_eq!(got, expected);
}
