//! Quantized GGUF transformers stay in ggml blocks on wgpu (lavapipe without a GPU): the weights hold about
//! the file's bytes on the device, the linear layers are packed, and `kontext forward` still matches the
//! golden of each GGUF (`bfl_gguf/golden_gguf_step0.safetensors`, of the committed files and of the tiny-types pack
//! with every type the reader supports): within 1e-4 computing in f32, within 2e-3 computing in f16 (f16 matmul
//! tiles and attention heads; lavapipe has `shader-f16`); on the CPU every layer stays dense.

#![cfg(not(target_arch = "wasm32"))]
use std::path::{Path, PathBuf};
use std::process::Output;

use kontext_web::harness::testing::{self, TINY_TYPES, repo_root as root, run_kontext, tiny_types_pack};
use safetensors::{Dtype, SafeTensors};

const TINY_MODEL: &str = "tests/fixtures/tiny/FLUX.1-Kontext-dev-tiny";
const GGUF_DIR: &str = "tests/fixtures/tiny/bfl_gguf";
const QUANTIZED: [&str; 3] = ["Q8_0", "Q4_0", "Q4_K_S"];

fn run_ok(args: &[&str]) -> Output {
    let output = run_kontext(env!("CARGO_BIN_EXE_kontext"), args);
    assert!(output.status.success(), "kontext {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    output
}

/// `kontext inspect FILE --load --backend BACKEND --json`.
fn inspect_loaded(file: &str, backend: &str) -> serde_json::Value {
    let out = run_ok(&["inspect", file, "--load", "--backend", backend, "--model", TINY_MODEL, "--json"]);
    serde_json::from_slice(&out.stdout).expect("inspect prints JSON")
}

fn number(report: &serde_json::Value, key: &str) -> u64 {
    report[key].as_u64().unwrap_or_else(|| panic!("no `{key}` in {report}"))
}

/// `(shape, values)` of an F32 (or I64, converted) tensor of a safetensors file.
fn read(path: impl AsRef<Path>, key: &str) -> (Vec<usize>, Vec<f32>) {
    let path = root().join(path);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let view = file.tensor(key).unwrap_or_else(|e| panic!("{}: {key}: {e}", path.display()));
    let values = match view.dtype() {
        Dtype::F32 => view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        Dtype::I64 => view.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
        other => panic!("{}: {key} is {other:?}", path.display()),
    };
    (view.shape().to_vec(), values)
}

/// Golden transformer call 0 (`transformer_in_0_*` of the pack's `golden/golden_run.safetensors`) as a
/// `kontext forward --inputs` file.
fn write_forward_inputs(path: &Path, pack: &str) {
    let names =
        ["hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "guidance", "img_ids", "txt_ids"];
    let tensors: Vec<(&str, Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|name| {
            let (shape, values) =
                read(format!("{pack}/golden/golden_run.safetensors"), &format!("transformer_in_0_{name}"));
            (*name, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect();
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            (*name, safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data).unwrap())
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kontext-packed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn quantized_weights_hold_their_file_bytes_on_wgpu_and_stay_dense_on_cpu() {
    let pack = tiny_types_pack();
    let committed = QUANTIZED.iter().map(|kind| (kind, format!("{GGUF_DIR}/transformer_bfl-{kind}.gguf")));
    let generated = TINY_TYPES.iter().filter(|kind| kind.starts_with('Q'));
    for (kind, file) in
        committed.chain(generated.map(|kind| (kind, format!("{pack}/bfl_gguf/transformer_bfl-{kind}.gguf"))))
    {
        let gpu = inspect_loaded(&file, "wgpu");
        let (file_bytes, device_bytes) = (number(&gpu, "file_bytes"), number(&gpu, "device_bytes"));
        eprintln!("{kind}: file {file_bytes} B, wgpu {device_bytes} B, {} packed", number(&gpu, "packed_linears"));
        assert!(
            device_bytes as f64 <= 1.05 * file_bytes as f64,
            "{kind}: {device_bytes} B on wgpu for a {file_bytes} B file"
        );
        assert!(number(&gpu, "packed_linears") > 0, "{kind}: no packed linear on wgpu");

        let cpu = inspect_loaded(&file, "cpu");
        assert_eq!(number(&cpu, "packed_linears"), 0, "{kind}: packed on the CPU");
        assert_eq!(number(&cpu, "file_bytes"), file_bytes);
        assert!(number(&cpu, "device_bytes") > device_bytes, "{kind}: dequantized weights are larger than blocks");
    }
}

/// `kontext forward --backend wgpu --precision PRECISION` with each quantized GGUF against its golden: the committed
/// ones and every type of the tiny-types pack. The control: the golden output of the next call (other latents and
/// timestep) differs from each by more than ten times the tolerance.
fn forward_matches_each_gguf_golden(precision: &str, tolerance: f32) {
    let dir = temp_dir(&format!("forward-{precision}"));
    let pack = tiny_types_pack();
    for (fixture, kinds) in [("tests/fixtures/tiny", &QUANTIZED[..]), (pack.as_str(), &TINY_TYPES[..])] {
        let inputs = dir.join("inputs.safetensors");
        write_forward_inputs(&inputs, fixture);
        let next_call = read(format!("{fixture}/golden/golden_run.safetensors"), "transformer_out_1");
        for kind in kinds {
            let transformer = format!("{fixture}/bfl_gguf/transformer_bfl-{kind}.gguf");
            let out = dir.join(format!("out-{kind}.safetensors"));
            run_ok(&[
                "forward",
                "--backend",
                "wgpu",
                "--precision",
                precision,
                "--model",
                &format!("{fixture}/FLUX.1-Kontext-dev-tiny"),
                "--transformer",
                &transformer,
                "--inputs",
                inputs.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ]);
            let (got, want) =
                (read(&out, "out"), read(format!("{fixture}/bfl_gguf/golden_gguf_step0.safetensors"), kind));
            assert_eq!(got.0, want.0, "{transformer}: shape");
            assert!(got.1.iter().all(|v| v.is_finite()), "{transformer}: not finite");
            let worst = testing::max_abs_difference(&got.1, &want.1);
            eprintln!("{transformer} ({precision}): max |diff| {worst:e}");
            assert!(worst <= tolerance, "{transformer} ({precision}): max abs diff {worst:e} > {tolerance:e}");
            testing::assert_far_apart(
                &got.1,
                &next_call.1,
                tolerance,
                &format!("{transformer} ({precision}), next call"),
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn forward_with_packed_weights_on_wgpu_matches_each_gguf_golden() {
    forward_matches_each_gguf_golden("f32", 1e-4);
}

#[test]
fn forward_computing_in_f16_on_wgpu_matches_each_gguf_golden_within_2e_3() {
    forward_matches_each_gguf_golden("f16", 2e-3);
}

/// A LoRA on the packed Q8_0 base: applied at runtime beside the packed matmul, equal to the golden made with the
/// dequantized weights plus the merged delta; the base's golden without the LoRA is not (the control).
#[test]
fn forward_with_a_lora_on_packed_q8_0_matches_its_golden() {
    let dir = temp_dir("lora");
    let inputs = dir.join("inputs.safetensors");
    write_forward_inputs(&inputs, "tests/fixtures/tiny");
    for (strength, key) in [("1.0", "Q8_0_w100"), ("0.5", "Q8_0_w050")] {
        let out = dir.join(format!("out-{key}.safetensors"));
        let lora = format!("tests/fixtures/tiny/lora/lora_diffusers.safetensors:{strength}");
        run_ok(&[
            "forward",
            "--backend",
            "wgpu",
            "--precision",
            "f32",
            "--model",
            TINY_MODEL,
            "--transformer",
            &format!("{GGUF_DIR}/transformer_bfl-Q8_0.gguf"),
            "--lora",
            &lora,
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let (got, want) = (read(&out, "out"), read("tests/fixtures/tiny/lora/golden_lora_gguf_step0.safetensors", key));
        assert_eq!(got.0, want.0, "{key}: shape");
        let worst = testing::max_abs_difference(&got.1, &want.1);
        eprintln!("{key}: max |diff| {worst:e}");
        assert!(worst <= 1e-4, "{key}: max abs diff {worst:e} > 1e-4");
        let base = read(format!("{GGUF_DIR}/golden_gguf_step0.safetensors"), "Q8_0");
        testing::assert_far_apart(&got.1, &base.1, 1e-4, &format!("{key} against the base without the LoRA"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kontext make-random` writes the bench's random-weight Flux as a GGUF that `kontext inspect` recognises with
/// the preset's config and that loads packed on wgpu into the same model as the bench's in-memory weights:
/// equal outputs, where the file of the other block type differs.
#[test]
fn make_random_writes_the_bench_model_as_a_gguf() {
    use burn::tensor::{Tensor, TensorData};
    use kontext_web::device::selfcheck::test_matrix;
    use kontext_web::formats::gguf::GgufFile;
    use kontext_web::formats::quant::GgmlType;
    use kontext_web::harness::bench::{RandomFlux, Sizes};
    use kontext_web::harness::testing::gpu;
    use kontext_web::model::flux::Flux;

    let dir = std::env::temp_dir().join(format!("kontext-make-random-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |ty: &str| dir.join(format!("random-{ty}.gguf"));
    for ty in ["Q8_0", "Q4_0"] {
        let out = file(ty);
        let printed = run_ok(&["make-random", "--preset", "tiny", "--type", ty, "--out", out.to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&printed.stdout).contains("bytes"), "{printed:?}");
    }
    let report = run_ok(&["inspect", file("Q8_0").to_str().unwrap(), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let config = Sizes::tiny().step_config;
    assert_eq!(report["architecture"], "flux", "{report}");
    assert_eq!(report["config"]["hidden_size"].as_u64(), Some(config.hidden_size as u64), "{report}");
    assert_eq!(report["config"]["depth_single_blocks"].as_u64(), Some(config.depth_single_blocks as u64));

    let device = gpu();
    let n_img = 16;
    let values = |n: usize, salt: u32| test_matrix(1, n, salt);
    let forward = |flux: &Flux| -> Vec<f32> {
        let axes = config.axes_dim.len();
        let img_ids: Vec<f32> = (0..n_img).flat_map(|i| [0.0, (i / 4) as f32, (i % 4) as f32]).collect();
        let img = TensorData::new(values(n_img * config.in_channels, 1), [1, n_img, config.in_channels]);
        let txt = TensorData::new(values(8 * config.context_in_dim, 2), [1, 8, config.context_in_dim]);
        let y = TensorData::new(values(config.vec_in_dim, 3), [1, config.vec_in_dim]);
        let out = flux
            .forward(
                Tensor::from_data(img, &device),
                Tensor::from_data(TensorData::new(img_ids, [n_img, axes]), &device),
                Tensor::from_data(txt, &device),
                Tensor::zeros([8, axes], &device),
                Tensor::from_data(TensorData::new(vec![0.7f32], [1]), &device),
                Tensor::from_data(y, &device),
                Some(Tensor::from_data(TensorData::new(vec![2.5f32], [1]), &device)),
            )
            .unwrap();
        out.into_data().iter::<f32>().collect()
    };
    let in_memory =
        forward(&Flux::load(&config, &RandomFlux::new(&config, Some(GgmlType::Q8_0)).unwrap(), &device).unwrap());
    let from_file = |ty: &str| {
        let gguf = GgufFile::open(std::fs::read(file(ty)).unwrap()).unwrap();
        let flux = Flux::load(&config, &gguf, &device).unwrap();
        assert!(flux.packed_linears() > 0, "{ty}: the file's blocks stay packed");
        forward(&flux)
    };
    let max_diff = testing::max_abs_difference;
    let (same, other) = (max_diff(&from_file("Q8_0"), &in_memory), max_diff(&from_file("Q4_0"), &in_memory));
    eprintln!("make-random Q8_0 file against the in-memory Q8_0 model: {same:e}; the Q4_0 file: {other:e}");
    assert!(same <= 1e-6, "{same}");
    assert!(other > 1e-3, "{other}");
    std::fs::remove_dir_all(&dir).ok();
}
