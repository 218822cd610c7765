//! The `coop` kernel path (cooperative matrices, `kernels::coop_matmul`) against its plain twin, on adapters
//! that offer cooperative matrices with f16 inputs and f32 accumulators: Mesa 26's lavapipe does (`make
//! test-coop` runs this suite on it), as do NVIDIA, AMD and Intel GPUs through Vulkan and Apple GPUs through
//! Metal. On an adapter without them every test prints `SKIPPED` with the reason and checks that forcing the path
//! is refused; the shaders' translation to SPIR-V and MSL is checked everywhere (`kernels::coop_matmul`'s tests).
#![cfg(not(target_arch = "wasm32"))]

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use half::f16;
use kontext_web::device::{self, selfcheck};
use kontext_web::formats::weights::Weights;
use kontext_web::formats::{FileSource, SafetensorsFile};
use kontext_web::formats::{GgmlType, GgufFile, dequantize};
use kontext_web::harness::bench;
use kontext_web::harness::testing::{self, TINY_TYPES, gpu, relative_error};
use kontext_web::kernels::attention::{attention, coop_attention_for, kernel_path, reference as attention_reference};
use kontext_web::kernels::coop_attention::CoopAttention;
use kontext_web::kernels::coop_matmul::TILES;
use kontext_web::kernels::path::{KernelPath, with_path};
use kontext_web::kernels::quant_matmul::{Epilogue, PackedWeight, has_kernel, matmul_coop, matmul_on_with, reference};
use kontext_web::pipeline::loader::{self, Folder};

/// Set by `make test-coop`: an adapter without the coop path fails the suite instead of skipping it.
const REQUIRE_COOP: &str = "KONTEXT_REQUIRE_COOP";

/// Held by the tests that set the process-wide kernel path ([`with_path`], [`KernelPath::choose`]), so that
/// they do not run at the same time.
fn process_wide_path() -> std::sync::MutexGuard<'static, ()> {
    static PATH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    PATH.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The reason the adapter cannot run the `coop` path, printed as a visible skip; `None` when it can.
fn skipped(test: &str) -> Option<String> {
    let why = KernelPath::Coop.missing_on(&gpu())?;
    let (_, report) = device::wgpu().unwrap();
    let line = format!("{test}: the adapter {} cannot run the coop path: {why}", report.name);
    assert!(std::env::var_os(REQUIRE_COOP).is_none(), "{REQUIRE_COOP} is set, and {line}");
    eprintln!("SKIPPED {line}");
    Some(why)
}

fn input(m: usize, k: usize, salt: u32, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(selfcheck::test_matrix(m, k, salt), [m, k]), device)
}

/// `values` `[rows, cols]` rounded to f16, as the coop kernel stages them, on the CPU.
fn rounded_to_f16(values: Vec<f32>, rows: usize, cols: usize) -> Tensor<2> {
    let values = values.into_iter().map(|v| f16::from_f32(v).to_f32()).collect();
    Tensor::from_data(TensorData::new(values, [rows, cols]), &device::cpu())
}

/// The coop kernel in each of its tiles for a `ty` weight `[n, k]` of `bytes` against the twin on x and W rounded
/// to f16, for rows that leave the tiles whole, partial and many; returns the worst relative error.
fn assert_coop_matches(ty: GgmlType, n: usize, k: usize, bytes: &[u8], bias: Option<&[f32]>, what: &str) -> f32 {
    let (gpu, cpu) = (gpu(), device::cpu());
    let packed = PackedWeight::new(ty, &[n, k], bytes, &gpu).unwrap();
    assert!(packed.is_packed(), "{what}: {ty} stays packed on wgpu");
    let w16 = rounded_to_f16(dequantize(ty, bytes, n * k).unwrap(), n, k);
    let bias_on = |d: &Device| bias.map(|b| Tensor::<1>::from_data(TensorData::new(b.to_vec(), [b.len()]), d));
    let mut worst = 0f32;
    for m in [9, 37, 64, 70, 300] {
        let x16 = rounded_to_f16(input(m, k, m as u32, &cpu).into_data().try_to_vec::<f32>().unwrap(), m, k);
        let twin = reference(x16, w16.clone(), bias_on(&cpu)).into_data().try_to_vec::<f32>().unwrap();
        for tile in TILES {
            let (got, launches) = device::launches::count_launches(|| {
                let x = input(m, k, m as u32, &gpu);
                let got = matmul_coop(x, &packed, bias_on(&gpu).as_ref(), tile, Epilogue::Plain);
                got.into_data().try_to_vec::<f32>().unwrap()
            });
            assert_eq!(got.len(), m * n, "{what}");
            let names = launches.ranked();
            let kernel = format!("_coop{}_tile{tile}_", device::coop_fragment().unwrap());
            assert!(names.iter().any(|(name, _)| name.contains(&kernel)), "{what}: no {kernel} kernel ran: {names:?}");
            // Only the order of the f32 sums differs from the twin (products of f16 values are exact in f32).
            let error = relative_error(&got, &twin);
            assert!(
                error <= 1e-4,
                "{what}: {ty} [{n}, {k}], M = {m}, tile {tile}: max |coop − twin| / max |y| = {error:.2e}"
            );
            worst = worst.max(error);
        }
    }
    eprintln!("{what}: {ty} [{n}, {k}] coop worst relative error {worst:.2e} to the twin on f16 x and W");
    worst
}

fn gguf(rel: &str) -> GgufFile {
    testing::gguf(&format!("bfl_gguf/{rel}"))
}

#[test]
fn coop_matmuls_of_every_packed_type_match_their_twin() {
    if skipped("coop_matmuls_of_every_packed_type_match_their_twin").is_some() {
        return;
    }
    let file = gguf("quant_vectors.gguf");
    let mut covered = Vec::new();
    for info in file.tensors() {
        if !has_kernel(info.ggml_type) {
            continue;
        }
        let (ty, shape, bytes) = file.raw(&info.name).unwrap();
        assert_coop_matches(ty, shape[0], shape[1], &bytes, None, &info.name);
        covered.push(ty);
    }
    for (ty, n, k, bytes) in testing::random_k_quant_weights() {
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01 - 0.5).collect();
        assert_coop_matches(ty, n, k, &bytes, Some(&bias), ty.name());
        covered.push(ty);
    }
    covered.sort();
    use GgmlType::*;
    assert_eq!(covered, [F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, BF16]);
}

#[test]
fn coop_matmuls_of_transformer_weights_and_a_control() {
    if skipped("coop_matmuls_of_transformer_weights_and_a_control").is_some() {
        return;
    }
    for kind in ["Q8_0", "Q4_0", "Q4_K_S"] {
        let file = gguf(&format!("transformer_bfl-{kind}.gguf"));
        let (ty, shape, bytes) = file.raw("double_blocks.0.img_mlp.0.weight").unwrap();
        let bias = file.read("double_blocks.0.img_mlp.0.bias").unwrap().data;
        assert_coop_matches(ty, shape[0], shape[1], &bytes, Some(&bias), kind);
    }
    // Control: the same check against a twin whose weight lost one row's values finds the difference.
    let file = gguf("transformer_bfl-Q8_0.gguf");
    let (ty, shape, bytes) = file.raw("double_blocks.0.img_mlp.0.weight").unwrap();
    let [n, k] = [shape[0], shape[1]];
    let (gpu, cpu) = (gpu(), device::cpu());
    let packed = PackedWeight::new(ty, &[n, k], &bytes, &gpu).unwrap();
    let got = matmul_on_with(input(70, k, 3, &gpu), &packed, None, KernelPath::Coop, Epilogue::Plain);
    let mut w = dequantize(ty, &bytes, n * k).unwrap();
    w[5 * k..6 * k].fill(0.0);
    let x16 = rounded_to_f16(input(70, k, 3, &cpu).into_data().try_to_vec::<f32>().unwrap(), 70, k);
    let wrong = reference(x16, rounded_to_f16(w, n, k), None).into_data().try_to_vec::<f32>().unwrap();
    let error = relative_error(&got.into_data().try_to_vec::<f32>().unwrap(), &wrong);
    assert!(error > 1e-2, "a twin missing one weight row passed: {error:.2e}");
}

#[test]
fn coop_epilogues_apply_gelu_and_the_gated_residual_add() {
    if skipped("coop_epilogues_apply_gelu_and_the_gated_residual_add").is_some() {
        return;
    }
    let (gpu, cpu) = (gpu(), device::cpu());
    let file = gguf("transformer_bfl-Q8_0.gguf");
    let (ty, shape, bytes) = file.raw("double_blocks.0.img_mlp.0.weight").unwrap();
    let [n, k] = [shape[0], shape[1]];
    let packed = PackedWeight::new(ty, &[n, k], &bytes, &gpu).unwrap();
    let dense = PackedWeight::new(ty, &[n, k], &bytes, &cpu).unwrap();
    let m = 70;
    let matrix = |rows: usize, cols: usize, salt: u32, d: &Device| {
        Tensor::<2>::from_data(TensorData::new(selfcheck::test_matrix(rows, cols, salt), [rows, cols]), d)
    };
    // On the GPU in the coop kernel with tiles `tile` wide; on the CPU (`None`) the f32 twin.
    let run = |epilogue: u8, tile: Option<usize>| {
        let d = if tile.is_some() { &gpu } else { &cpu };
        let weight = if tile.is_some() { &packed } else { &dense };
        let (residual, gate) = (matrix(m, n, 7, d), matrix(2, n, 8, d));
        let epilogue = match epilogue {
            0 => Epilogue::Plain,
            1 => Epilogue::Gelu,
            _ => Epilogue::GatedAdd { residual: &residual, gate: &gate },
        };
        let y = match tile {
            Some(tile) => matmul_coop(matrix(m, k, 11, d), weight, None, tile, epilogue),
            None => matmul_on_with(matrix(m, k, 11, d), weight, None, KernelPath::F32, epilogue),
        };
        y.into_data().try_to_vec::<f32>().unwrap()
    };
    for tile in TILES {
        let plain = run(0, Some(tile));
        for (epilogue, name) in [(1, "GELU"), (2, "gated add")] {
            let got = run(epilogue, Some(tile));
            let twin = run(epilogue, None);
            // x and W in f16 against the f32 twin.
            let error = relative_error(&got, &twin);
            assert!(error <= 5e-3, "coop {name}, tile {tile}: max |coop − f32 twin| / max |y| = {error:.2e}");
            let differs = got.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 1e-2);
            assert!(differs, "the coop {name} epilogue changed nothing (tile {tile})");
        }
    }
}

/// `[b, h, l, d]` test values on `device`, in f32, row j of each head multiplied by 1 + growth · j / l
/// ([`testing::attention_heads`]): as keys, scores that grow along the keys.
fn heads(shape: [usize; 4], salt: u32, growth: f32, device: &Device) -> Tensor<4> {
    let [b, h, l, d] = shape;
    Tensor::from_data(TensorData::new(testing::attention_heads(b * h, l, d, salt, growth), shape), device)
}

/// How many times, over all rows after their first tile of 32 keys, the coop kernel raises the maximum its
/// probabilities are taken against (a tile's maximum score, base 2, above it by more than 8) and so rescales the
/// output: the rule of `shaders/flash_attention_coop.wgsl`, on the CPU.
fn coop_rescales(q: &[f32], k: &[f32], [bh, lq, lk, d]: [usize; 4]) -> usize {
    let scale = std::f32::consts::LOG2_E / (d as f32).sqrt();
    let mut raises = 0;
    for head in 0..bh {
        for row in &q[head * lq * d..][..lq * d].chunks(d).collect::<Vec<_>>() {
            let keys = k[head * lk * d..][..lk * d].chunks(d);
            let scores: Vec<f32> =
                keys.map(|key| row.iter().zip(key).map(|(a, b)| a * b).sum::<f32>() * scale).collect();
            let mut against = f32::NEG_INFINITY;
            for (tile, chunk) in scores.chunks(32).enumerate() {
                let tile_max = chunk.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if tile_max > against + 8.0 {
                    raises += usize::from(tile > 0);
                    against = tile_max;
                }
            }
        }
    }
    raises
}

/// The coop attention of `q`, `k`, `v` shaped `[b, h, lq | lk, d]` (in f16 with `f16_heads`, keys grown by
/// `growth`, [`heads`]) against the reference on the CPU over the same values rounded to f16; the kernel generated
/// for the adapter's subgroups, or for `subgroups` wide ones ([`coop_attention_for`]). Returns the largest
/// |difference| over the largest |output|, the coop kernel that ran (if one did), and how many rescales it made
/// ([`coop_rescales`]).
fn coop_attention_error(
    shape: [usize; 5],
    f16_heads: bool,
    keys_salt: u32,
    growth: f32,
    subgroups: Option<usize>,
) -> (f32, Option<String>, usize) {
    let [b, h, lq, lk, d] = shape;
    let (gpu, cpu) = (gpu(), device::cpu());
    let on_gpu = |t: Tensor<4>| match f16_heads {
        true => t.cast(FloatDType::F16),
        false => t,
    };
    let (got, launches) = device::launches::count_launches(|| {
        let (q, k, v) = (
            on_gpu(heads([b, h, lq, d], 1, 0.0, &gpu)),
            on_gpu(heads([b, h, lk, d], 2, growth, &gpu)),
            on_gpu(heads([b, h, lk, d], 3, 0.0, &gpu)),
        );
        let out = match subgroups {
            Some(width) => coop_attention_for(width, q, k, v).unwrap(),
            None => with_path(KernelPath::Coop, || attention(q, k, v)),
        };
        out.into_data().try_to_vec::<f32>().unwrap()
    });
    let ran = launches.ranked().into_iter().map(|(name, _)| name).find(|name| name.contains("flash_attention_coop"));
    let rounded = |t: Tensor<4>| t.cast(FloatDType::F16).cast(FloatDType::F32);
    let (q, k) = (rounded(heads([b, h, lq, d], 1, 0.0, &cpu)), rounded(heads([b, h, lk, d], keys_salt, growth, &cpu)));
    let values = |t: &Tensor<4>| t.to_data().try_to_vec::<f32>().unwrap();
    let rescales = coop_rescales(&values(&q), &values(&k), [b * h, lq, lk, d]);
    let want =
        attention_reference(q, k, rounded(heads([b, h, lk, d], 3, 0.0, &cpu))).into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|v| v.is_finite()), "{shape:?}: not finite");
    (relative_error(&got, &want), ran, rescales)
}

/// Flash attention on cooperative matrices against the reference: head widths 16 to 128, query and key counts
/// that leave tiles whole, partial and many, several heads and batches, f32 and f16 heads, and scores that grow
/// along the keys so that the output is rescaled; a control with other keys is far.
#[test]
fn coop_attention_matches_the_reference() {
    if skipped("coop_attention_matches_the_reference").is_some() {
        return;
    }
    let _path = process_wide_path();
    let shapes = [
        ([1, 1, 5, 7, 16], 0.0),
        ([1, 4, 64, 32, 16], 0.0),
        ([2, 3, 70, 45, 32], 0.0),
        ([1, 2, 130, 97, 64], 0.0),
        ([1, 2, 200, 321, 128], 0.0),
        ([1, 3, 17, 40, 96], 0.0),
        ([1, 2, 70, 300, 128], 40.0),
        ([2, 1, 64, 200, 32], 60.0),
    ];
    let mut worst = 0f32;
    for (shape, growth) in shapes {
        for f16_heads in [false, true] {
            let (error, ran, rescales) = coop_attention_error(shape, f16_heads, 2, growth, None);
            eprintln!(
                "coop attention {shape:?} growth {growth} f16 heads {f16_heads}: {error:e} of the largest output, {rescales} rescales"
            );
            assert!(ran.is_some(), "{shape:?}: the coop attention kernel did not run");
            // P is rounded to f16 before P·V: about 5e-4 of each term.
            assert!(error <= 3e-3, "{shape:?} growth {growth} f16 heads {f16_heads}: {error:e}");
            // Growing scores make the kernel rescale its outputs, many times; the others never.
            assert_eq!(rescales > 50, growth > 0.0, "{shape:?} growth {growth}: {rescales} rescales");
            worst = worst.max(error);
        }
    }
    let (control, ..) = coop_attention_error([1, 2, 130, 97, 64], false, 4, 0.0, None);
    assert!(control > 20.0 * worst.max(1e-4), "other keys: {control:e} against {worst:e}");
}

/// The coop attention generated for subgroups of 32 and 64 (NVIDIA's and AMD's), whatever the adapter's: its
/// softmax then takes 2 and 4 invocations per row (on an adapter with narrower subgroups the extra ones compute
/// rows again), here with scores that grow so that it rescales; a control with other keys is far, and subgroups
/// narrower than the adapter's are refused.
#[test]
fn coop_attention_spreads_its_softmax_over_two_and_four_invocations_per_row() {
    if skipped("coop_attention_spreads_its_softmax_over_two_and_four_invocations_per_row").is_some() {
        return;
    }
    let _path = process_wide_path();
    let (fragment, adapter_width) = (device::coop_fragment().unwrap(), device::subgroup_max_size().unwrap_or(32));
    // One workgroup: on lavapipe's 8-wide subgroups a wide one computes each row 4 or 8 times.
    let shape = [1, 1, 64, 300, 64];
    let mut worst = 0f32;
    for width in [32, 64].into_iter().filter(|&width| width >= adapter_width) {
        let variant = CoopAttention::new(fragment, width, 64, false);
        let (error, ran, rescales) = coop_attention_error(shape, false, 2, 40.0, Some(width));
        eprintln!(
            "coop attention for subgroups of {width} ({} lanes per row): {ran:?}, {error:e} of the largest output, {rescales} rescales",
            variant.lanes()
        );
        let ran = ran.unwrap_or_else(|| panic!("subgroups of {width}: the coop attention kernel did not run"));
        assert!(ran.contains(&format!("_t{}_", variant.threads)), "subgroups of {width}: {ran}");
        assert!(error <= 3e-3, "subgroups of {width}: {error:e}");
        assert!(rescales > 50, "{rescales} rescales");
        worst = worst.max(error);
    }
    let (control, ..) = coop_attention_error(shape, false, 4, 40.0, Some(adapter_width.max(64)));
    assert!(control > 20.0 * worst.max(1e-4), "other keys: {control:e} against {worst:e}");
    let q = heads([1, 1, 64, 64], 1, 0.0, &gpu());
    let narrower = coop_attention_for(adapter_width / 2, q.clone(), q.clone(), q);
    assert!(narrower.is_err(), "subgroups of {} on an adapter with {adapter_width}", adapter_width / 2);
}

/// On llvmpipe one dispatch of the coop attention may cover only so many keys (its loops share a budget the
/// driver enforces silently): up to that many it runs and matches, rescaling often, beyond it the plain flash
/// kernel takes over.
#[test]
fn coop_attention_on_llvmpipe_stays_within_the_loop_budget() {
    if skipped("coop_attention_on_llvmpipe_stays_within_the_loop_budget").is_some() {
        return;
    }
    let (_, report) = device::wgpu().unwrap();
    if !report.name.contains("llvmpipe") {
        eprintln!("SKIPPED coop_attention_on_llvmpipe_stays_within_the_loop_budget: {} is not llvmpipe", report.name);
        return;
    }
    let _path = process_wide_path();
    let fragment = device::coop_fragment().unwrap();
    let variant = CoopAttention::new(fragment, device::subgroup_max_size().unwrap_or(32), 128, false);
    let keys = variant.llvmpipe_max_keys();
    for (lk, coop) in [(keys, true), (keys + 1, false)] {
        // Steeply growing scores where the coop kernel runs: rescales, its longest loops, in many tiles.
        let growth = if coop { 100.0 } else { 0.0 };
        let (error, ran, rescales) = coop_attention_error([1, 1, 64, lk, 128], false, 2, growth, None);
        eprintln!("{lk} keys (coop {ran:?}, {rescales} rescales): {error:e}");
        assert_eq!(ran.is_some(), coop, "{lk} keys");
        assert!(error <= 3e-3, "{lk} keys: {error:e}");
    }
}

#[test]
fn the_coop_path_is_chosen_where_offered_and_refused_where_not() {
    let _path = process_wide_path();
    let gpu = gpu();
    let available = KernelPath::available(&gpu);
    match KernelPath::Coop.missing_on(&gpu) {
        None => {
            // Chosen without flags on hardware; a software adapter emulates the products more slowly than the
            // plain kernels run, and takes coop only when asked.
            let software = device::software_adapter(&gpu);
            let best = if software { KernelPath::F32 } else { KernelPath::Coop };
            assert_eq!(KernelPath::auto(&gpu), best);
            assert_eq!(available[0], KernelPath::Coop);
            assert_eq!(KernelPath::choose(Some(KernelPath::Coop), &gpu).unwrap(), KernelPath::Coop);
            assert_eq!(KernelPath::for_matmul(300, &gpu), KernelPath::Coop);
            assert_eq!(KernelPath::for_matmul(8, &gpu), KernelPath::F32);
            // The attention over Flux's heads runs on cooperative matrices; the VAE's 512-wide head cannot.
            assert_eq!(kernel_path(&gpu, 300, 300, 128), KernelPath::Coop);
            assert_eq!(kernel_path(&gpu, 300, 300, 512), KernelPath::F32);
            KernelPath::choose(None, &gpu).unwrap();
            assert_eq!(KernelPath::of(&gpu), best);
        }
        Some(why) => {
            assert!(
                std::env::var_os(REQUIRE_COOP).is_none(),
                "{REQUIRE_COOP} is set, and the coop path is missing: {why}"
            );
            eprintln!("SKIPPED the coop half of this test: {why}");
            assert_eq!(KernelPath::auto(&gpu), KernelPath::F32);
            let err = KernelPath::choose(Some(KernelPath::Coop), &gpu).unwrap_err().to_string();
            assert!(err.starts_with("kernel path `coop` is not available on this adapter"), "{err}");
            assert!(!err.contains('\n'), "{err}");
            KernelPath::choose(None, &gpu).unwrap();
        }
    }
    assert!(available.contains(&KernelPath::F32));
}

/// `name` of `file` as a `D`-rank tensor on `device`, leading 1s dropped (a scalar becomes `[1]`).
fn lenient<const D: usize>(file: &SafetensorsFile, name: &str, device: &Device) -> Tensor<D> {
    let host = file.read(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut shape = if host.shape.is_empty() { vec![1] } else { host.shape.clone() };
    while shape.len() > D && shape[0] == 1 {
        shape.remove(0);
    }
    let dims: [usize; D] = shape.try_into().unwrap_or_else(|s| panic!("{name}: shape {s:?} is not rank {D}"));
    Tensor::from_data(TensorData::new(host.data, dims), device)
}

/// The tiny DiT of `pack` loaded from its `kind` GGUF on wgpu, one call on the coop path from the golden run's
/// first transformer inputs, against diffusers' output on the file's dequantized weights: the largest |difference|.
fn coop_forward_error(pack: &str, kind: &str) -> f32 {
    let gpu = gpu();
    let read = |path: String| SafetensorsFile::open(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")));
    let inputs = read(format!("{pack}/golden/golden_run.safetensors")).unwrap();
    let input = |name: &str| format!("transformer_in_0_{name}");
    let folder = Folder(format!("{pack}/FLUX.1-Kontext-dev-tiny").into());
    let file = FileSource::open(format!("{pack}/bfl_gguf/transformer_bfl-{kind}.gguf")).unwrap();
    let (flux, _) = loader::load_transformer(&folder, Some(Box::new(file)), &gpu).unwrap();
    assert!(flux.packed_linears() > 0, "{kind}: the weights stay packed");
    let guidance = inputs.contains(&input("guidance")).then(|| lenient::<1>(&inputs, &input("guidance"), &gpu));
    let (out, launches) = device::launches::count_launches(|| {
        let out = with_path(KernelPath::Coop, || {
            flux.forward(
                lenient::<3>(&inputs, &input("hidden_states"), &gpu),
                lenient::<2>(&inputs, &input("img_ids"), &gpu),
                lenient::<3>(&inputs, &input("encoder_hidden_states"), &gpu),
                lenient::<2>(&inputs, &input("txt_ids"), &gpu),
                lenient::<1>(&inputs, &input("timestep"), &gpu),
                lenient::<2>(&inputs, &input("pooled_projections"), &gpu),
                guidance,
            )
        });
        out.unwrap().into_data().try_to_vec::<f32>().unwrap()
    });
    let names = launches.ranked();
    for kernel in ["matmul_", "flash_attention_coop"] {
        let ran = names.iter().any(|(name, _)| name.contains(kernel) && name.contains("_coop"));
        assert!(ran, "{kind}: no coop {kernel} kernel ran: {names:?}");
    }
    let want = read(format!("{pack}/bfl_gguf/golden_gguf_step0.safetensors")).unwrap().read(kind).unwrap().data;
    assert_eq!(out.len(), want.len(), "{kind}");
    assert!(out.iter().all(|v| v.is_finite()), "{kind}: not finite");
    testing::max_abs_difference(&out, &want)
}

/// The tiny DiT from each quantized GGUF, committed and of the tiny-types pack (`make packs`), on the coop path
/// within the f16 path's tolerance of its golden (2e-3, as `tests/packed.rs` sets for `--precision f16`).
#[test]
fn the_tiny_dit_on_the_coop_path_matches_each_gguf_golden_within_2e_3() {
    if skipped("the_tiny_dit_on_the_coop_path_matches_each_gguf_golden_within_2e_3").is_some() {
        return;
    }
    let _path = process_wide_path();
    let pack = testing::tiny_types_pack();
    let committed = testing::repo_root().join("tests/fixtures/tiny");
    for (fixture, kinds) in
        [(committed.to_str().unwrap(), &["Q8_0", "Q4_0", "Q4_K_S"][..]), (pack.as_str(), &TINY_TYPES[..])]
    {
        for kind in kinds {
            let worst = coop_forward_error(fixture, kind);
            eprintln!("{fixture} {kind} (coop): max |diff| {worst:e}");
            assert!(worst <= 2e-3, "{fixture} {kind} (coop): max abs diff {worst:e} > 2e-3");
        }
    }
}

/// The tiny golden edit (4 steps from the golden noise, 64×80 from the golden reference) with the Q8_0 DiT on
/// `path`: its final packed latents and the decoded image, and the kernels launched.
/// Whether the DiT wrote its heads in f16 (`split_heads_f16`) and the coop attention read them so (its `_h`
/// variant): the coop path's heads, which that kernel would round to f16 itself.
fn f16_heads(launched: &[(String, usize)]) -> bool {
    let ran = |f: &dyn Fn(&str) -> bool| launched.iter().any(|(name, _)| f(name));
    ran(&|name| name.starts_with("split_heads_f16_"))
        && ran(&|name| name.starts_with("flash_attention_coop") && name.ends_with("_h"))
}

fn tiny_q8_0_edit(path: KernelPath, prompt: &str) -> (Vec<f32>, Vec<f32>, Vec<(String, usize)>) {
    use kontext_web::harness::testing::{FixtureFile, fixture, fixture_path};
    use kontext_web::pipeline::cache::CacheConfig;
    use kontext_web::pipeline::edit::{Edit, EditRequest};
    use kontext_web::pipeline::loader::{KontextModel, Overrides};
    use kontext_web::pipeline::size::Resize;
    let gpu = gpu();
    let transformer = FileSource::open(fixture("bfl_gguf/transformer_bfl-Q8_0.gguf")).unwrap();
    let overrides = Overrides { transformer: Some(Box::new(transformer)), ..Overrides::default() };
    let mut model = KontextModel::load(&Folder(fixture_path("FLUX.1-Kontext-dev-tiny")), overrides, &gpu).unwrap();
    let reference = std::fs::read(fixture("golden/reference_input.png")).unwrap();
    let request = EditRequest {
        prompt: prompt.into(),
        references: vec![kontext_web::pipeline::image::decode(&reference).unwrap()],
        size: Some((64, 80)),
        max_area: 64 * 80,
        resize: Resize::None,
        steps: 4,
        guidance: 2.5,
        seed: 0,
        cache: CacheConfig::None,
        mask: None,
    };
    let noise = FixtureFile::open("golden/golden_run.safetensors").tensor("latents_init_packed", &gpu);
    let ((latents, image), launches) = device::launches::count_launches(|| {
        with_path(path, || {
            let mut edit = Edit::prepare(&mut model, &request, Some(noise), &gpu).unwrap();
            while !edit.is_denoised() {
                pollster::block_on(edit.step()).unwrap();
            }
            let result = pollster::block_on(edit.finish()).unwrap();
            (pollster::block_on(device::read_f32(result.latents)).unwrap(), result.pixels)
        })
    });
    (latents, image, launches.ranked())
}

/// The tiny golden edit with the Q8_0 DiT on the coop path against the same edit on the f32 path: final latents
/// and image within the f16 path's tolerance of a DiT call (2e-3, `tests/packed.rs`); the coop matmul and
/// attention among the launches; another prompt's edit is far (control).
#[test]
fn the_tiny_edit_on_the_coop_path_stays_within_the_f16_tolerance_of_f32() {
    if skipped("the_tiny_edit_on_the_coop_path_stays_within_the_f16_tolerance_of_f32").is_some() {
        return;
    }
    let _path = process_wide_path();
    const PROMPT: &str = "Make the red square blue and add a small yellow sun in the sky";
    let (f32_latents, f32_image, f32_kernels) = tiny_q8_0_edit(KernelPath::F32, PROMPT);
    let (latents, image, kernels) = tiny_q8_0_edit(KernelPath::Coop, PROMPT);
    for kernel in ["matmul_", "flash_attention_coop"] {
        let ran = |names: &[(String, usize)]| names.iter().any(|(n, _)| n.contains(kernel) && n.contains("_coop"));
        assert!(ran(&kernels) && !ran(&f32_kernels), "{kernel}: {kernels:?}");
    }
    assert!(f16_heads(&kernels) && !f16_heads(&f32_kernels), "{kernels:?}\n{f32_kernels:?}");
    let worst = testing::max_abs_difference;
    assert_eq!((latents.len(), image.len()), (f32_latents.len(), f32_image.len()));
    let (latent_error, image_error) = (worst(&latents, &f32_latents), worst(&image, &f32_image));
    eprintln!("tiny Q8_0 edit, coop against f32: latents {latent_error:e}, image {image_error:e}");
    assert!(latent_error <= 2e-3 && image_error <= 2e-3, "{latent_error:e}, {image_error:e}");
    let (other, _, _) = tiny_q8_0_edit(KernelPath::Coop, "a green circle on a white wall");
    let control = worst(&other, &f32_latents);
    assert!(control > 20.0 * latent_error.max(1e-4), "another prompt: {control:e} against {latent_error:e}");
}

/// Set to run [`one_real_width_double_and_single_block_on_coop_is_within_1e_2_rms_of_f32`] at 1024² (4096 image
/// and 512 text tokens) rather than 256² (256 and 64): on a GPU; lavapipe's emulated cooperative matrices take
/// far too long for that.
const AT_1024: &str = "KONTEXT_COOP_1024";

/// A Flux at FLUX.1 [dev]'s width (3072, 24 heads of 128, T5 width 4096) with one double and one single block,
/// random Q8_0 weights as `kontext make-random` writes them, called once on the coop path and on the f32 path:
/// the outputs within 1e-2 relative RMS. At 256² by default, at 1024² with [`AT_1024`] set.
#[test]
fn one_real_width_double_and_single_block_on_coop_is_within_1e_2_rms_of_f32() {
    use kontext_web::harness::bench::{RandomFlux, medium_flux};
    use kontext_web::model::flux::Flux;
    if skipped("one_real_width_double_and_single_block_on_coop_is_within_1e_2_rms_of_f32").is_some() {
        return;
    }
    let _path = process_wide_path();
    let gpu = gpu();
    let config = medium_flux(3072, 24, 1, 1, 4096);
    let random = RandomFlux::new(&config, Some(GgmlType::Q8_0)).unwrap();
    let flux = Flux::load(&config, &random, &gpu).unwrap();
    let (n_img, n_txt, side) = match std::env::var_os(AT_1024) {
        Some(_) => (4096, 512, 64),
        None => (256, 64, 16),
    };
    let ids: Vec<f32> = (0..n_img).flat_map(|i| [0.0, (i / side) as f32, (i % side) as f32]).collect();
    let matrix = |rows: usize, cols: usize, salt: u32| {
        Tensor::<2>::from_data(TensorData::new(selfcheck::test_matrix(rows, cols, salt), [rows, cols]), &gpu)
    };
    let call = |path: KernelPath| {
        let started = std::time::Instant::now();
        let (out, launches) = device::launches::count_launches(|| {
            with_path(path, || {
                flux.forward(
                    matrix(n_img, config.in_channels, 1).unsqueeze_dim(0),
                    Tensor::from_data(TensorData::new(ids.clone(), [n_img, 3]), &gpu),
                    matrix(n_txt, config.context_in_dim, 2).unsqueeze_dim(0),
                    Tensor::zeros([n_txt, 3], &gpu),
                    Tensor::from_data(TensorData::new(vec![0.5f32], [1]), &gpu),
                    matrix(1, config.vec_in_dim, 3),
                    Some(Tensor::from_data(TensorData::new(vec![2.5f32], [1]), &gpu)),
                )
                .map(|out| out.into_data().try_to_vec::<f32>().unwrap())
            })
        });
        // The packed matmuls and the attention run coop kernels on the coop path, none on f32.
        let names = launches.ranked();
        for kernel in ["matmul_", "flash_attention_coop"] {
            let ran = names.iter().any(|(name, _)| name.contains(kernel) && name.contains("_coop"));
            assert_eq!(ran, path == KernelPath::Coop, "{path}: {kernel} {names:?}");
        }
        assert_eq!(f16_heads(&names), path == KernelPath::Coop, "{path}: {names:?}");
        let out = out.unwrap();
        eprintln!("{path}: {:.1} s", started.elapsed().as_secs_f64());
        out
    };
    let (coop, f32) = (call(KernelPath::Coop), call(KernelPath::F32));
    let relative = selfcheck::relative_rms(&coop, &f32);
    eprintln!(
        "{n_img} + {n_txt} tokens, one double + one single block at real width: relative RMS coop vs f32 {relative:.2e}"
    );
    assert!(relative <= 1e-2, "relative RMS {relative:.2e}");
    // Control: the f32 output moved by one token is far from the coop output.
    let width = f32.len() / n_img;
    let moved: Vec<f32> = f32.iter().cycle().skip(width).take(f32.len()).copied().collect();
    let control = selfcheck::relative_rms(&coop, &moved);
    assert!(control > 0.1, "the coop output is as close to the f32 output of the next token: {control:.2e}");
}

/// `kontext bench` times the coop kernels beside their twins and checks each against its twin on the same input
/// (the rows' relative RMS), so that a figure of a kernel that computes wrong is refused, not reported.
#[test]
fn the_bench_checks_each_coop_kernel_it_times() {
    if skipped("the_bench_checks_each_coop_kernel_it_times").is_some() {
        return;
    }
    let _path = process_wide_path();
    let gpu = gpu();
    let sizes = bench::Sizes::tiny().only(&["matmul".into(), "attention".into()]).unwrap();
    let report = bench::run(&gpu, "wgpu", None, sizes).unwrap();
    let matmul: Vec<f64> = report.matmul.iter().filter_map(|r| r.coop_rel_rms).collect();
    let attention: Vec<f64> = report.attention.iter().filter_map(|r| r.coop_rel_rms).collect();
    let show = |errors: &[f64]| errors.iter().map(|e| format!("{e:.1e}")).collect::<Vec<_>>().join(", ");
    eprintln!("coop against its twin in the bench: matmuls {}, attention {}", show(&matmul), show(&attention));
    assert_eq!(matmul.len(), report.matmul.len(), "every matmul row has a coop figure and its check");
    for r in &report.matmul {
        // Each tile is timed and checked; the model's (64 on a software adapter) is the row's figure.
        let tiles: Vec<usize> = r.coop_by_tile.iter().map(|t| t.tile).collect();
        assert_eq!(tiles, TILES, "{} {}×{}", r.ty, r.m, r.n);
        let model = r.coop_by_tile.iter().find(|t| Some(t.tile) == r.coop_tile).unwrap();
        assert_eq!(Some(model.gflops), r.coop_gflops);
        let worst = r.coop_by_tile.iter().map(|t| t.rel_rms).fold(0.0, f64::max);
        assert_eq!(Some(worst), r.coop_rel_rms);
    }
    assert_eq!(attention.len(), report.attention.len());
    // Not exact (f16 fragments), and within the bench's bound.
    assert!(matmul.iter().chain(&attention).all(|e| *e > 0.0 && *e <= bench::F16_REL_RMS_MAX));
    assert_eq!(report.off_reference(), Vec::<String>::new());
}
