//! wasm tests in headless Chromium's page (WebGPU on SwiftShader, its device opened with the worker's request):
//! the browser probe, and our WGSL kernels on the browser's WebGPU compared with their plain-tensor twins on the
//! CPU backend. The browser's WGSL compiler is stricter than the native one (uniformity analysis, limits), so
//! every kernel family runs here too.
#![cfg(target_arch = "wasm32")]

use burn::tensor::{Tensor, TensorData};
use half::f16;
use kontext_web::device::{self, selfcheck};
use kontext_web::formats::GgmlType;
use kontext_web::harness::{kernel_checks, testing};
use kontext_web::kernels::quant_matmul::{PackedWeight, matmul};
use kontext_web::kernels::{self, latent};
use kontext_web::web::probe::{self, WebGpu};
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen(module = "/www/device-request.js")]
extern "C" {
    /// The worker's device request (`www/device-request.js`), installed in this page's global scope.
    #[wasm_bindgen(js_name = extendDeviceRequests)]
    fn extend_device_requests(scope: &JsValue);
}

/// The WebGPU device, opened as the worker opens it: with `subgroups` (and subgroup matrices) added to wgpu's
/// request where the adapter has them.
async fn gpu() -> burn::tensor::Device {
    extend_device_requests(&js_sys::global());
    device::wgpu_async().await.expect("WebGPU device").0
}

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
    let gpu = gpu().await;
    let shape = [2, 16, 6, 10];
    let values = selfcheck::test_matrix(1, shape.iter().product(), 3);
    let on_gpu = kernels::pack::pack(Tensor::<4>::from_data(TensorData::new(values.clone(), shape), &gpu));
    let reference = latent::pack(Tensor::<4>::from_data(TensorData::new(values, shape), &device::cpu()));
    let got = device::read_f32(on_gpu).await.unwrap();
    let expected = device::read_f32(reference).await.unwrap();
    assert_eq!(got, expected);
}

/// The `flash` attention kernel in the CPU adapters' layouts, the plain GPU one and the subgroup one compiles
/// under the browser's WGSL rules (its uniformity analysis included) and equals the reference on the CPU
/// backend, with head widths that are and are not a multiple of 4; keys in another order must not
/// ([`kernel_checks::assert_flash_layouts`]). Every layout runs: the device has subgroups.
#[wasm_bindgen_test]
async fn flash_attention_on_webgpu_equals_the_reference_in_each_layout() {
    let (report, skipped) = kernel_checks::assert_flash_layouts(&gpu().await).await;
    console_log!("flash attention on WebGPU ({skipped} layouts skipped):\n{report}");
    // Chromium's SwiftShader has subgroups (of 4), which the worker's device request adds.
    assert_eq!(skipped, 0, "{report}");
}

/// Every fused DiT kernel (`kernels::fused`) compiles under the browser's WGSL rules (barriers in uniform
/// control flow, no writable buffer bound twice) and equals its plain-ops twin (what `fused::*` runs on the CPU
/// backend); the same kernel given a wrong input does not.
#[wasm_bindgen_test]
async fn fused_kernels_on_webgpu_equal_their_twins() {
    use kontext_web::kernels::fused::{self, HeadInput, RopeTables};
    let gpu = gpu().await;
    let cpu = device::cpu();
    let tensor = |shape: [usize; 3], salt: u32, device: &burn::tensor::Device| {
        let values = selfcheck::test_matrix(1, shape.iter().product(), salt).into_iter().map(|x| 2.0 * x).collect();
        Tensor::<3>::from_data(TensorData::new(values, shape), device)
    };
    let mut report = Vec::new();
    // (what, on WebGPU, on the CPU, on WebGPU with a wrong input), each flattened.
    let mut cases: Vec<(&str, Tensor<3>, Tensor<3>, Tensor<3>)> = Vec::new();
    let (x, row, y) = ([2, 37, 130], [2, 1, 130], [2, 37, 130]);
    let norm = |d: &burn::tensor::Device, swap: bool| {
        let (shift, scale) = (tensor(row, 2, d), tensor(row, 3, d));
        let (shift, scale) = if swap { (scale, shift) } else { (shift, scale) };
        fused::layer_norm_modulate(tensor(x, 1, d), shift, scale, 1e-6)
    };
    cases.push(("layer_norm_modulate", norm(&gpu, false), norm(&cpu, false), norm(&gpu, true)));
    let residual = |d: &burn::tensor::Device, sign: f32, which: usize| {
        let (sum, normed) = fused::residual_layer_norm_modulate(
            tensor(x, 1, d),
            tensor(row, 4, d) * sign,
            tensor(y, 5, d),
            tensor(row, 2, d),
            tensor(row, 3, d),
            1e-6,
        );
        [sum, normed][which].clone()
    };
    for (which, what) in [(0, "residual_layer_norm_modulate sum"), (1, "residual_layer_norm_modulate normed")] {
        cases.push((what, residual(&gpu, 1.0, which), residual(&cpu, 1.0, which), residual(&gpu, -1.0, which)));
    }
    let gated = |d: &burn::tensor::Device, sign: f32| {
        fused::gated_add(tensor(x, 1, d), tensor(row, 4, d) * sign, tensor(y, 5, d))
    };
    cases.push(("gated_add", gated(&gpu, 1.0), gated(&cpu, 1.0), gated(&gpu, -1.0)));
    let gelu = |d: &burn::tensor::Device, scale: f32| fused::gelu_tanh(tensor(x, 1, d) * scale);
    cases.push(("gelu_tanh", gelu(&gpu, 3.0), gelu(&cpu, 3.0), gelu(&gpu, 3.1)));
    // Heads: two streams of 5 and 9 tokens, 2 heads of 16, normalised and rotated; merged back.
    let heads = |d: &burn::tensor::Device, swap: bool| {
        let part = |n: usize, salt: u32| HeadInput {
            x: tensor([1, n, 32], salt, d),
            norm_scale: Some(tensor([1, 1, 16], salt + 10, d).reshape([16]) + 1.5),
        };
        let parts = if swap { vec![part(9, 2), part(5, 1)] } else { vec![part(5, 1), part(9, 2)] };
        // The same tables on both devices (the browser's own cos of large angles is less precise).
        let angles: Vec<f32> = selfcheck::test_matrix(1, 14 * 8, 7).into_iter().map(|a| 28.0 * a).collect();
        let table = |f: fn(f32) -> f32| {
            Tensor::<4>::from_data(TensorData::new(angles.iter().map(|&a| f(a)).collect::<Vec<_>>(), [1, 1, 14, 8]), d)
        };
        let (cos, sin) = (table(f32::cos), table(f32::sin));
        fused::split_heads(parts, 2, Some(RopeTables { cos: &cos, sin: &sin }), 1e-6).unwrap()
    };
    let flat = |t: Tensor<4>| t.reshape([1, 2 * 14, 16]);
    cases.push(("split_heads", flat(heads(&gpu, false)), flat(heads(&cpu, false)), flat(heads(&gpu, true))));
    let merged =
        |d: &burn::tensor::Device, flip: bool| {
            let attention = tensor([2, 14, 16], 8, d).reshape([1, 2, 14, 16]);
            let attention = if flip { attention.flip([2]) } else { attention };
            let (txt, img) = fused::merge_heads_split(attention.clone(), 5);
            let beside = fused::merged_heads_beside_gelu(attention, 2..9, tensor([1, 7, 12], 9, d));
            Tensor::cat(vec![txt.reshape([1, 5 * 32]), img.reshape([1, 9 * 32]), beside.reshape([1, 7 * 44])], 1)
                .reshape([1, 1, 5 * 32 + 9 * 32 + 7 * 44])
        };
    cases.push((
        "merge_heads_split + merged_heads_beside_gelu",
        merged(&gpu, false),
        merged(&cpu, false),
        merged(&gpu, true),
    ));
    for (what, ours, expected, control) in cases {
        let (ours, expected, control) = (
            device::read_f32(ours).await.unwrap(),
            device::read_f32(expected).await.unwrap(),
            device::read_f32(control).await.unwrap(),
        );
        let max_diff = |a: &[f32]| testing::max_abs_difference(a, &expected);
        let (worst, moved) = (max_diff(&ours), max_diff(&control));
        assert!(worst <= 2e-5, "{what}: max |kernel − twin| = {worst:e}");
        assert!(moved > 1e-3, "{what}: the control is within {moved:e}");
        report.push(format!("{what}: max |diff| {worst:e}, control {moved:e}"));
    }
    console_log!("fused kernels on WebGPU:\n{}", report.join("\n"));
}

/// `n` rows of `k` values in ggml blocks of `ty` (Q8_0: an f16 scale and 32 signed bytes; Q4_0: an f16 scale and
/// 32 nibbles, value = (nibble − 8) · scale), with scales and values varying by row and block.
fn synthetic_blocks(ty: GgmlType, n: usize, k: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for row in 0..n {
        for block in 0..k / 32 {
            let scale = f16::from_f32(0.002 * (1 + (row * 7 + block * 3) % 11) as f32);
            bytes.extend(scale.to_le_bytes());
            let value = |i: usize| (row * 31 + block * 17 + i * 13) % 251;
            match ty {
                GgmlType::Q8_0 => bytes.extend((0..32).map(|i| (value(i) as i32 - 125) as i8 as u8)),
                GgmlType::Q4_0 => {
                    bytes.extend((0..16).map(|i| (value(i) % 16) as u8 | ((value(i + 16) % 16) as u8) << 4))
                }
                other => panic!("no synthetic {other} blocks"),
            }
        }
    }
    bytes
}

/// Each packed-matmul kernel (the matrix-vector one for few rows, the tiled one, the wide one from 256 rows)
/// compiles under the browser's WGSL rules and equals the same blocks dequantized and multiplied on the CPU.
#[wasm_bindgen_test]
async fn packed_quant_matmuls_on_webgpu_equal_their_reference_twin() {
    let gpu = gpu().await;
    let (n, k) = (128, 64);
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0] {
        let bytes = synthetic_blocks(ty, n, k);
        let packed = PackedWeight::new(ty, &[n, k], &bytes, &gpu).unwrap();
        assert!(packed.is_packed(), "{ty} stays packed on WebGPU");
        let dense = PackedWeight::new(ty, &[n, k], &bytes, &device::cpu()).unwrap();
        for m in [1, 6, 70, 300] {
            let x = |d| Tensor::<2>::from_data(TensorData::new(selfcheck::test_matrix(m, k, m as u32), [m, k]), d);
            let got = device::read_f32(matmul(x(&gpu), &packed, None)).await.unwrap();
            let want = device::read_f32(matmul(x(&device::cpu()), &dense, None)).await.unwrap();
            assert_eq!(got.len(), m * n, "{ty} M = {m}");
            let worst = testing::max_abs_difference(&got, &want);
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!(worst <= 1e-4 * scale.max(1.0), "{ty} M = {m}: max |kernel − reference| = {worst:e}");
        }
    }
}

/// Every ggml type of the quantization vectors (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, F16, BF16, F32) loads on the
/// browser's WebGPU, packed where a kernel exists, and multiplies like gguf-py's dequantized values: with f32
/// activations, and with f16 ones where the adapter has `shader-f16` (the output says which ran; SwiftShader has
/// none, so there the f16 check is reported as skipped).
#[wasm_bindgen_test]
async fn every_quant_vector_type_multiplies_on_webgpu_like_its_golden() {
    let gpu = gpu().await;
    let gguf = include_bytes!("fixtures/tiny/bfl_gguf/quant_vectors.gguf").to_vec();
    let expected = include_bytes!("fixtures/tiny/bfl_gguf/quant_vectors_expected.safetensors").to_vec();
    let report = kernel_checks::assert_quant_vectors_at_each_precision(gguf, expected, &gpu).await;
    console_log!("quantization vectors in the page: {report}");
}
