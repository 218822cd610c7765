//! The wasm build on Dawn, Chromium's WebGPU implementation, where the adapter offers subgroup matrices: node
//! in the Debian 13 root with npm `webgpu` as `navigator.gpu` and the worker's device request
//! (`www/device-request.js`) installed first (`tests/coop/dawn-node.sh`, run by `make test-coop`). wgpu's WebGPU
//! backend opens the device, the kernels in Chromium's dialect compile in Tint and run on lavapipe's emulated
//! products: the browser's coop path end to end, minus the browser's page and worker around it. The adapter also
//! has `shader-f16`, which Chromium's SwiftShader lacks, so the f16 kernels run here too, and the flash
//! attention's subgroup layouts on its subgroups of 8.
#![cfg(target_arch = "wasm32")]

use burn::tensor::{Tensor, TensorData};
use kontext_web::device::{self, browser_grant};
use kontext_web::formats::SafetensorsFile;
use kontext_web::formats::weights::Weights;
use kontext_web::harness::kernel_checks;
use kontext_web::harness::testing::max_abs_difference;
use kontext_web::kernels::path::KernelPath;
use kontext_web::pipeline::loader::{self, MemoryFiles};
use kontext_web::web::protocol::{FromWorker, ToWorker};
use kontext_web::web::worker;
use wasm_bindgen_test::*;

macro_rules! tiny {
    ($path:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny/", $path)).as_slice()
    };
}

/// The worker's own self-check on this adapter: its report names `coop` among the paths (the grant reached
/// `report_of`), and keeps `f32` as the choice on a software adapter, as `KernelPath::auto` says.
#[wasm_bindgen_test]
async fn the_worker_reports_the_coop_path_where_the_browser_grants_subgroup_matrices() {
    let (gpu, _) = device::wgpu_async().await.expect("WebGPU device");
    KernelPath::choose(None, &gpu).unwrap();
    match worker::answer(ToWorker::SelfCheck { size: 48 }).await {
        FromWorker::SelfCheck { check, kernels, .. } => {
            assert!(check.passed, "{check:?}");
            let subgroups = browser_grant::subgroups().expect("the device request recorded its subgroups");
            let granted = browser_grant::subgroup_matrices().expect("the device request recorded subgroup matrices");
            console_log!("granted: {subgroups:?}, {granted:?}");
            assert_eq!(device::subgroup_min_size(), Some(subgroups.subgroup_min_size as usize));
            assert_eq!(device::coop_fragment(), granted.coop_fragment().map(|side| side as usize));
            let kernels = kernels.expect("the self-check names the kernel paths");
            console_log!("kernel paths in the worker: {kernels:?}");
            assert_eq!(kernels.available, KernelPath::ALL.to_vec(), "{kernels:?}");
            assert_eq!(kernels.chosen, KernelPath::F32, "a software adapter takes coop only on request");
            assert_eq!(kernels.subgroup_size, Some(subgroups.subgroup_min_size as usize), "{kernels:?}");
        }
        other => panic!("unexpected answer: {other:?}"),
    }
}

/// The tiny DiT of each committed quantized GGUF (Q8_0, Q4_0, Q4_K_S) on `path`, one call from the golden run's
/// first transformer inputs each, against diffusers' output on the file's dequantized weights: per file, the
/// largest |difference|, that of the same call with the text tokens negated (the control), and the kernels
/// launched.
async fn tiny_dit_on(path: KernelPath) -> Vec<(&'static str, f32, f32, Vec<(String, usize)>)> {
    let (gpu, _) = device::wgpu_async().await.expect("WebGPU device");
    assert_eq!(KernelPath::choose(Some(path), &gpu).unwrap_or_else(|e| panic!("{path}: {e}")), path);
    let ggufs = [
        ("Q8_0", tiny!("bfl_gguf/transformer_bfl-Q8_0.gguf")),
        ("Q4_0", tiny!("bfl_gguf/transformer_bfl-Q4_0.gguf")),
        ("Q4_K_S", tiny!("bfl_gguf/transformer_bfl-Q4_K_S.gguf")),
    ];
    let inputs = SafetensorsFile::open(tiny!("golden/golden_run.safetensors").to_vec()).unwrap();
    let input = |name: &str| {
        let host = inputs.read(&format!("transformer_in_0_{name}")).unwrap();
        TensorData::new(host.data, host.shape)
    };
    let golden = SafetensorsFile::open(tiny!("bfl_gguf/golden_gguf_step0.safetensors").to_vec()).unwrap();
    let mut results = Vec::new();
    for (kind, gguf) in ggufs {
        let mut files = MemoryFiles::default();
        let config = tiny!("FLUX.1-Kontext-dev-tiny/transformer/config.json");
        files.0.insert("transformer/config.json".into(), std::sync::Arc::new(config.to_vec()));
        let (flux, _) = loader::load_transformer(&files, Some(Box::new(gguf.to_vec())), &gpu).unwrap();
        assert!(flux.packed_linears() > 0, "{kind}: the weights stay packed");
        let call = |text_sign: f32| {
            device::launches::count_launches(|| {
                flux.forward(
                    Tensor::from_data(input("hidden_states"), &gpu),
                    Tensor::from_data(input("img_ids"), &gpu),
                    Tensor::<3>::from_data(input("encoder_hidden_states"), &gpu) * text_sign,
                    Tensor::from_data(input("txt_ids"), &gpu),
                    Tensor::from_data(input("timestep"), &gpu),
                    Tensor::from_data(input("pooled_projections"), &gpu),
                    Some(Tensor::from_data(input("guidance"), &gpu)),
                )
            })
        };
        let (out, launches) = call(1.0);
        let out = device::read_f32(out.unwrap()).await.unwrap();
        let want = golden.read(kind).unwrap().data;
        assert_eq!(out.len(), want.len(), "{kind}");
        assert!(out.iter().all(|v| v.is_finite()), "{kind} on {path}: not finite");
        let worst = |got: &[f32]| max_abs_difference(got, &want);
        let (control, _) = call(-1.0);
        let control = worst(&device::read_f32(control.unwrap()).await.unwrap());
        let error = worst(&out);
        console_log!("tiny {kind} DiT on {path}: max |diff| {error:e}; negated text {control:e}");
        results.push((kind, error, control, launches.ranked()));
    }
    results
}

/// The tiny DiT on the coop path within the f16 path's tolerance of each golden (2e-3, as `tests/gpu_coop.rs` sets
/// natively), Chromium's coop matmul and attention (`_sm`) among the launches; the negated text far from it.
#[wasm_bindgen_test]
async fn the_tiny_dit_on_chromiums_coop_kernels_matches_each_gguf_golden() {
    for (kind, error, control, names) in tiny_dit_on(KernelPath::Coop).await {
        for kernel in ["matmul_", "flash_attention_coop"] {
            let chromiums = |name: &str| name.contains(kernel) && name.contains("_coop") && name.contains("_sm");
            assert!(
                names.iter().any(|(name, _)| chromiums(name)),
                "{kind}: no coop {kernel} kernel in Chromium's dialect ran: {names:?}"
            );
        }
        assert!(error <= 2e-3, "{kind}: max |diff| {error:e} > 2e-3");
        assert!(control > 20.0 * error.max(1e-4), "{kind}, negated text: {control:e} against {error:e}");
    }
}

/// The tiny DiT on the `subgroup-f16` path (the plain kernels computing in f16, flash attention on f16 heads with
/// the granted subgroups; SwiftShader has no `shader-f16`, so no browser here ran them before) within 2e-3 of each
/// golden, as `tests/packed.rs` sets for `--precision f16`; the f16 matmul and attention among the launches, no
/// coop kernel; the negated text far from it.
#[wasm_bindgen_test]
async fn the_tiny_dit_on_the_f16_kernels_matches_each_gguf_golden() {
    for (kind, error, control, names) in tiny_dit_on(KernelPath::SubgroupF16).await {
        let ran = |f: &dyn Fn(&str) -> bool| names.iter().any(|(name, _)| f(name));
        assert!(ran(&|name| name.starts_with("matmul_") && name.contains("_f16")), "{kind}: {names:?}");
        assert!(ran(&|name| name.starts_with("flash_attention_d") && name.ends_with("_h")), "{kind}: {names:?}");
        assert!(!ran(&|name| name.contains("_coop")), "{kind}: {names:?}");
        assert!(error <= 2e-3, "{kind}: max |diff| {error:e} > 2e-3");
        assert!(control > 20.0 * error.max(1e-4), "{kind}, negated text: {control:e} against {error:e}");
    }
}

/// Every ggml type of the quantization vectors multiplies like gguf-py's dequantized values with f32 and, on this
/// adapter with `shader-f16`, f16 activations ([`kernel_checks::assert_quant_vectors_at_each_precision`]): neither
/// skipped.
#[wasm_bindgen_test]
async fn every_quant_vector_type_multiplies_like_its_golden_in_f32_and_f16() {
    let (gpu, _) = device::wgpu_async().await.expect("WebGPU device");
    KernelPath::choose(None, &gpu).unwrap();
    let gguf = tiny!("bfl_gguf/quant_vectors.gguf").to_vec();
    let expected = tiny!("bfl_gguf/quant_vectors_expected.safetensors").to_vec();
    let report = kernel_checks::assert_quant_vectors_at_each_precision(gguf, expected, &gpu).await;
    console_log!("quantization vectors on Dawn: {report}");
    assert!(!report.contains("SKIPPED"), "{report}");
}

/// The flash attention in each of its layouts, the subgroup ones among them, compiled by Tint for a device
/// granted subgroups by the worker's request ([`kernel_checks::assert_flash_layouts`]): none skipped.
#[wasm_bindgen_test]
async fn flash_attention_in_each_layout_with_the_granted_subgroups() {
    let (gpu, _) = device::wgpu_async().await.expect("WebGPU device");
    let (report, skipped) = kernel_checks::assert_flash_layouts(&gpu).await;
    console_log!("flash attention on Dawn ({skipped} layouts skipped):\n{report}");
    assert_eq!(skipped, 0, "{report}");
}
