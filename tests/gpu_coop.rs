//! The `coop` kernel path (cooperative matrices, `kernels::coop_matmul`) against its plain twin, on adapters
//! that offer cooperative matrices with f16 inputs and f32 accumulators: Mesa 26's lavapipe does (`make
//! test-coop` runs this suite on it), as do NVIDIA, AMD and Intel GPUs through Vulkan and Apple GPUs through
//! Metal. On an adapter without them every test prints `SKIPPED` with the reason and checks that forcing the path
//! is refused; the shaders' translation to SPIR-V and MSL is checked everywhere (`kernels::coop_matmul`'s tests).
#![cfg(not(target_arch = "wasm32"))]

use burn::tensor::{Device, Tensor, TensorData};
use half::f16;
use kontext_web::device::{self, selfcheck};
use kontext_web::formats::weights::Weights;
use kontext_web::formats::{FileSource, SafetensorsFile};
use kontext_web::formats::{GgmlType, GgufFile, dequantize};
use kontext_web::harness::testing::{self, TINY_TYPES, gpu};
use kontext_web::kernels::path::{KernelPath, with_path};
use kontext_web::kernels::quant_matmul::{Epilogue, PackedWeight, has_kernel, matmul_on_with, reference};
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

/// The largest `|got − want|` over the largest `|want|`.
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-12);
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale
}

/// The coop kernel for a `ty` weight `[n, k]` of `bytes` against the twin on x and W rounded to f16, for rows
/// that leave the 64-row tiles whole, partial and many; returns the worst relative error.
fn assert_coop_matches(ty: GgmlType, n: usize, k: usize, bytes: &[u8], bias: Option<&[f32]>, what: &str) -> f32 {
    let (gpu, cpu) = (gpu(), device::cpu());
    let packed = PackedWeight::new(ty, &[n, k], bytes, &gpu).unwrap();
    assert!(packed.is_packed(), "{what}: {ty} stays packed on wgpu");
    let w16 = rounded_to_f16(dequantize(ty, bytes, n * k).unwrap(), n, k);
    let bias_on = |d: &Device| bias.map(|b| Tensor::<1>::from_data(TensorData::new(b.to_vec(), [b.len()]), d));
    let mut worst = 0f32;
    for m in [9, 37, 64, 70, 300] {
        let (got, launches) = device::launches::count_launches(|| {
            let got = matmul_on_with(
                input(m, k, m as u32, &gpu),
                &packed,
                bias_on(&gpu).as_ref(),
                KernelPath::Coop,
                Epilogue::Plain,
            );
            got.into_data().try_to_vec::<f32>().unwrap()
        });
        assert_eq!(got.len(), m * n, "{what}");
        let names = launches.ranked();
        assert!(names.iter().any(|(name, _)| name.contains("_coop")), "{what}: no coop kernel ran: {names:?}");
        let x16 = rounded_to_f16(input(m, k, m as u32, &cpu).into_data().try_to_vec::<f32>().unwrap(), m, k);
        let twin = reference(x16, w16.clone(), bias_on(&cpu)).into_data().try_to_vec::<f32>().unwrap();
        // Only the order of the f32 sums differs from the twin (products of f16 values are exact in f32).
        let error = relative_error(&got, &twin);
        assert!(error <= 1e-4, "{what}: {ty} [{n}, {k}], M = {m}: max |coop − twin| / max |y| = {error:.2e}");
        worst = worst.max(error);
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
    for (ty, scales) in [(GgmlType::Q5_K, &[0usize, 2][..]), (GgmlType::Q6_K, &[208][..])] {
        let (n, k) = (133, 512);
        let mut bytes = testing::pseudo_random_bytes(n * k / ty.block_size() * ty.type_size(), 0x9e37_79b9);
        for (b, block) in bytes.chunks_mut(ty.type_size()).enumerate() {
            for (i, &at) in scales.iter().enumerate() {
                block[at..at + 2].copy_from_slice(&f16::from_f32(0.0005 * (1 + (b + i) % 5) as f32).to_le_bytes());
            }
        }
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01 - 0.5).collect();
        assert_coop_matches(ty, n, k, &bytes, Some(&bias), ty.name());
        covered.push(ty);
    }
    covered.sort();
    use GgmlType::*;
    assert_eq!(covered, [F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, BF16]);
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
    let run = |epilogue: u8, d: &Device, path: KernelPath| {
        let weight = if *d == cpu { &dense } else { &packed };
        let (residual, gate) = (matrix(m, n, 7, d), matrix(2, n, 8, d));
        let epilogue = match epilogue {
            0 => Epilogue::Plain,
            1 => Epilogue::Gelu,
            _ => Epilogue::GatedAdd { residual: &residual, gate: &gate },
        };
        let y = matmul_on_with(matrix(m, k, 11, d), weight, None, path, epilogue);
        y.into_data().try_to_vec::<f32>().unwrap()
    };
    let plain = run(0, &gpu, KernelPath::Coop);
    for (epilogue, name) in [(1, "GELU"), (2, "gated add")] {
        let got = run(epilogue, &gpu, KernelPath::Coop);
        let twin = run(epilogue, &cpu, KernelPath::F32);
        // x and W in f16 against the f32 twin.
        let error = relative_error(&got, &twin);
        assert!(error <= 5e-3, "coop {name}: max |coop − f32 twin| / max |y| = {error:.2e}");
        let differs = got.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 1e-2);
        assert!(differs, "the coop {name} epilogue changed nothing");
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
            let software = kontext_web::kernels::attention::software_adapter(&gpu);
            let best = if software { KernelPath::F32 } else { KernelPath::Coop };
            assert_eq!(KernelPath::auto(&gpu), best);
            assert_eq!(available[0], KernelPath::Coop);
            assert_eq!(KernelPath::choose(Some(KernelPath::Coop), &gpu).unwrap(), KernelPath::Coop);
            assert_eq!(KernelPath::for_matmul(300, &gpu), KernelPath::Coop);
            assert_eq!(KernelPath::for_matmul(8, &gpu), KernelPath::F32);
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
    assert!(names.iter().any(|(name, _)| name.contains("_coop")), "{kind}: no coop kernel ran: {names:?}");
    let want = read(format!("{pack}/bfl_gguf/golden_gguf_step0.safetensors")).unwrap().read(kind).unwrap().data;
    assert_eq!(out.len(), want.len(), "{kind}");
    assert!(out.iter().all(|v| v.is_finite()), "{kind}: not finite");
    out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
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
        let out = with_path(path, || {
            flux.forward(
                matrix(n_img, config.in_channels, 1).unsqueeze_dim(0),
                Tensor::from_data(TensorData::new(ids.clone(), [n_img, 3]), &gpu),
                matrix(n_txt, config.context_in_dim, 2).unsqueeze_dim(0),
                Tensor::zeros([n_txt, 3], &gpu),
                Tensor::from_data(TensorData::new(vec![0.5f32], [1]), &gpu),
                matrix(1, config.vec_in_dim, 3),
                Some(Tensor::from_data(TensorData::new(vec![2.5f32], [1]), &gpu)),
            )
        });
        let out = out.unwrap().into_data().try_to_vec::<f32>().unwrap();
        eprintln!("{path}: {:.1} s", started.elapsed().as_secs_f64());
        out
    };
    let (coop, f32) = (call(KernelPath::Coop), call(KernelPath::F32));
    let rms = |v: &[f32]| (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    let diff: Vec<f32> = coop.iter().zip(&f32).map(|(a, b)| a - b).collect();
    let relative = rms(&diff) / rms(&f32);
    eprintln!(
        "{n_img} + {n_txt} tokens, one double + one single block at real width: relative RMS coop vs f32 {relative:.2e}"
    );
    assert!(coop.iter().all(|v| v.is_finite()));
    assert!(relative <= 1e-2, "relative RMS {relative:.2e}");
    // Control: the f32 output moved by one token is far from the coop output.
    let width = f32.len() / n_img;
    let moved: Vec<f32> = coop.iter().zip(f32.iter().cycle().skip(width)).map(|(a, b)| a - b).collect();
    let control = rms(&moved) / rms(&f32);
    assert!(control > 0.1, "the coop output is as close to the f32 output of the next token: {control:.2e}");
    assert!(relative > 0.0, "the two paths gave identical outputs: did the coop path run?");
}
