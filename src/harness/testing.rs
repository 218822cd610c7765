//! Test support shared by the unit tests (`crate::harness::testing`) and the integration tests
//! (`kontext_web::harness::testing`): the committed fixtures (`tests/fixtures/tiny`) read through the real
//! readers, as [`Weights`] and as golden tensors on a device; the wgpu device; the `kontext` CLI run from the
//! repository root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::prelude::*;

use crate::Result;
use crate::formats::SafetensorsFile;
use crate::formats::weights::{HostTensor, Weights};
#[cfg(not(target_arch = "wasm32"))]
use crate::formats::{FileSource, GgufFile};

/// The tiny reference fixtures.
pub const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny");

/// Path of a file under `tests/fixtures/tiny/`.
pub fn fixture(relative: &str) -> String {
    format!("{TINY}/{relative}")
}

/// A fresh directory under the system temp dir, removed on drop.
#[cfg(not(target_arch = "wasm32"))]
pub struct TempDir(PathBuf);

#[cfg(not(target_arch = "wasm32"))]
impl TempDir {
    /// A new empty directory whose name starts `kontext-{name}-`, unique to this process and call.
    pub fn new(name: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kontext-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self(dir)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// `file` in the directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    /// `file` in the directory, as an argument.
    pub fn arg(&self, file: &str) -> String {
        self.path(file).to_str().expect("a UTF-8 temp dir").to_string()
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The repository root (fixture paths in CLI arguments are relative to it).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Path of a file under `tests/fixtures/tiny/`.
pub fn fixture_path(relative: &str) -> PathBuf {
    Path::new(TINY).join(relative)
}

/// A test pack that `make packs` generates outside the clone (`tests/fixtures/generator/README.md`): the folder
/// named by the environment variable `env`, else `~/.cache/kontext-web/packs/{name}`. Panics, naming the command
/// that makes it, when it holds no goldens.
#[cfg(not(target_arch = "wasm32"))]
pub fn generated_pack(env: &str, name: &str) -> String {
    let dir = std::env::var(env)
        .unwrap_or_else(|_| format!("{}/.cache/kontext-web/packs/{name}", std::env::var("HOME").unwrap_or_default()));
    assert!(
        Path::new(&dir).join("golden/golden_run.safetensors").exists(),
        "no {name} pack in {dir}: run `make packs`"
    );
    dir
}

/// The tiny Kontext of [`TINY`] with its DiT as a GGUF of every type the reader supports
/// (`bfl_gguf/transformer_bfl-{type}.gguf` and the key of its step-0 golden; `make packs`, `KONTEXT_TINY_TYPES`).
/// K-quant rows that are not whole 256-value super-blocks fall back as llama-quantize's do (Q4_K to Q5_0, Q5_K
/// to Q5_1, Q6_K to Q8_0).
#[cfg(not(target_arch = "wasm32"))]
pub fn tiny_types_pack() -> String {
    generated_pack("KONTEXT_TINY_TYPES", "tiny_types")
}

/// A tiny Kontext with widths the committed configs lack (`tests/fixtures/generator/odd_widths.json`: heads of 48,
/// T5 attention narrower than its model, five CLIP heads, uneven VAE channels, a portrait reference for a
/// landscape output), with its goldens, Q8_0 and Q4_0 transformer GGUFs and an F16 T5 GGUF (`make packs`,
/// `KONTEXT_ODD_WIDTHS`).
#[cfg(not(target_arch = "wasm32"))]
pub fn odd_widths_pack() -> String {
    generated_pack("KONTEXT_ODD_WIDTHS", "odd_widths")
}

/// The transformer GGUF types of [`tiny_types_pack`].
pub const TINY_TYPES: [&str; 10] = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"];

/// A fixture safetensors file, read through a file source.
#[cfg(not(target_arch = "wasm32"))]
pub fn safetensors(relative: &str) -> SafetensorsFile {
    let path = fixture_path(relative);
    SafetensorsFile::open(FileSource::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fixture GGUF file, read through a file source.
#[cfg(not(target_arch = "wasm32"))]
pub fn gguf(relative: &str) -> GgufFile {
    let path = fixture_path(relative);
    GgufFile::open(FileSource::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The float tensor `name` of `weights` as a `D`-rank tensor on `device`.
pub fn tensor<const D: usize>(weights: &dyn Weights, name: &str, device: &Device) -> Tensor<D> {
    let host = weights.read(name).unwrap_or_else(|e| panic!("`{name}`: {e}"));
    let shape: [usize; D] = host.shape.try_into().unwrap_or_else(|s| panic!("`{name}` has shape {s:?}"));
    Tensor::from_data(TensorData::new(host.data, shape), device)
}

/// burn's wgpu device: a real GPU, or Mesa lavapipe on a machine without one.
#[cfg(not(target_arch = "wasm32"))]
pub fn gpu() -> Device {
    crate::device::wgpu().expect("a wgpu adapter (lavapipe: apt-get install mesa-vulkan-drivers)").0
}

/// Runs the `kontext` binary `bin` (`env!("CARGO_BIN_EXE_kontext")` in an integration test) with `args` in the
/// repository root.
pub fn run_kontext(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).current_dir(repo_root()).output().expect("cannot start kontext")
}

/// `len` pseudo-random bytes (xorshift32 from `seed`, which must not be 0), for synthetic ggml blocks.
pub fn pseudo_random_bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

/// `heads` heads of `len` rows of width `d` (`[heads · len, d]` row-major) of [`crate::device::selfcheck::test_matrix`]
/// values from `salt`, row j of each head multiplied by 1 + growth · j / len: as keys, attention scores that grow
/// along the sequence with `growth` (so that a flash kernel's running maximum keeps rising), as they are with 0.
pub fn attention_heads(heads: usize, len: usize, d: usize, salt: u32, growth: f32) -> Vec<f32> {
    let mut values = crate::device::selfcheck::test_matrix(heads * len, d, salt);
    for (row, values) in values.chunks_mut(d).enumerate() {
        let ramp = 1.0 + growth * (row % len) as f32 / len as f32;
        values.iter_mut().for_each(|v| *v *= ramp);
    }
    values
}

/// The largest |got − want| over paired values, of outputs of the same length.
pub fn max_abs_difference(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
}

/// [`max_abs_difference`] of two tensors' values (any float dtype, read as f32), of the same shape.
pub fn max_abs_difference_of_data(got: &TensorData, want: &TensorData) -> f32 {
    assert_eq!(got.shape(), want.shape());
    max_abs_difference(&got.iter::<f32>().collect::<Vec<_>>(), &want.iter::<f32>().collect::<Vec<_>>())
}

/// [`max_abs_difference_of_data`] of two tensors, read back.
pub fn max_abs_difference_of<const D: usize>(got: Tensor<D>, want: Tensor<D>) -> f32 {
    max_abs_difference_of_data(&got.into_data(), &want.into_data())
}

/// A parity test's negative control: `got` differs from `control` (what a wrong result would give: another
/// step's golden, the output for another input) by more than ten times `atol` somewhere, so the comparison within
/// `atol` that `got` passed can fail.
pub fn assert_far_apart(got: &[f32], control: &[f32], atol: f32, what: &str) {
    let worst = max_abs_difference(got, control);
    assert!(worst > 10.0 * atol, "{what}: the control is within {worst:e}, not beyond ten times {atol:e}");
    eprintln!("{what} (control): max |diff| {worst:.2e}");
}

/// [`assert_far_apart`] of two tensors' values (any float dtype, read as f32), of the same shape.
pub fn assert_data_far_apart(got: &TensorData, control: &TensorData, atol: f32, what: &str) {
    assert_eq!(got.shape(), control.shape(), "{what}: shape");
    let values = |data: &TensorData| data.iter::<f32>().collect::<Vec<_>>();
    assert_far_apart(&values(got), &values(control), atol, what);
}

/// [`max_abs_difference`] relative to the largest |want|, for outputs of the same length.
pub fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-12);
    max_abs_difference(got, want) / scale
}

/// The K-quants the quantization vectors lack, as `(type, n, k, blocks)` weights `[133, 512]`: Q5_K and Q6_K blocks
/// of random codes whose f16 scales (`d`, `dmin` of Q5_K; `d` of Q6_K) are small, so that products stay in f16's
/// range as the coop kernels need.
pub fn random_k_quant_weights() -> Vec<(crate::formats::GgmlType, usize, usize, Vec<u8>)> {
    use crate::formats::GgmlType;
    let (n, k) = (133, 512);
    [(GgmlType::Q5_K, &[0usize, 2][..]), (GgmlType::Q6_K, &[208][..])]
        .into_iter()
        .map(|(ty, scales)| {
            let mut bytes = pseudo_random_bytes(n * k / ty.block_size() * ty.type_size(), 0x9e37_79b9);
            for (b, block) in bytes.chunks_mut(ty.type_size()).enumerate() {
                for (i, &at) in scales.iter().enumerate() {
                    let scale = half::f16::from_f32(0.0005 * (1 + (b + i) % 5) as f32);
                    block[at..at + 2].copy_from_slice(&scale.to_le_bytes());
                }
            }
            (ty, n, k, bytes)
        })
        .collect()
}

/// A fixture safetensors file, held in memory.
pub struct FixtureFile(SafetensorsFile);

impl FixtureFile {
    /// Reads `tests/fixtures/tiny/{relative}`.
    pub fn open(relative: &str) -> Self {
        let path = fixture(relative);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Self(SafetensorsFile::open(bytes).unwrap_or_else(|e| panic!("{path}: {e}")))
    }

    /// The float tensor `name` as a `D`-rank tensor on `device`.
    pub fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        tensor(self, name, device)
    }

    /// The bytes of the u8 tensor `name`.
    pub fn bytes(&self, name: &str) -> Vec<u8> {
        let info = self.0.tensor(name).unwrap_or_else(|| panic!("no tensor `{name}`"));
        assert_eq!(info.dtype, "U8", "`{name}` is not u8");
        self.0.raw(name).unwrap().to_vec()
    }

    /// The int64 tensor `name` (token ids).
    pub fn ids(&self, name: &str) -> TensorData {
        let info = self.0.tensor(name).unwrap_or_else(|| panic!("no tensor `{name}`"));
        assert_eq!(info.dtype, "I64", "`{name}` is not int64");
        let bytes = self.0.raw(name).unwrap();
        let ids: Vec<i64> = bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
        TensorData::new(ids, info.shape.clone())
    }
}

impl Weights for FixtureFile {
    fn names(&self) -> Vec<String> {
        self.0.names()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.0.shape(name)
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        self.0.read(name)
    }
}

/// The float tensor `key` of `tests/fixtures/tiny/golden/{file}`.
pub fn golden(file: &str, key: &str) -> TensorData {
    let tensor = FixtureFile::open(&format!("golden/{file}")).read(key).unwrap();
    TensorData::new(tensor.data, tensor.shape)
}

/// The masked edit of case `case` of `golden/golden_inpaint_meta.json` (`tests/fixtures/generator/inpaint_golden.py`)
/// as a request on the golden reference image: 96×64 at its own size, 6 steps, guidance 2.5 (the golden's noise is
/// `noise` of `golden/golden_inpaint.safetensors`).
pub fn golden_masked_request(case: &str) -> crate::pipeline::edit::EditRequest {
    use crate::pipeline::{cache::CacheConfig, image, mask::MaskedEdit, size::Resize};
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("golden/golden_inpaint_meta.json")).unwrap()).unwrap();
    let entry = &meta["cases"][case];
    let png = |name: &str| image::decode(&std::fs::read(fixture(&format!("golden/{name}"))).unwrap()).unwrap();
    crate::pipeline::edit::EditRequest {
        prompt: meta["call"]["prompt"].as_str().unwrap().into(),
        references: vec![png("reference_input.png")],
        size: None,
        max_area: 96 * 64,
        resize: Resize::None,
        steps: meta["call"]["num_inference_steps"].as_u64().unwrap() as usize,
        guidance: meta["call"]["guidance_scale"].as_f64().unwrap() as f32,
        seed: 0,
        cache: CacheConfig::None,
        mask: Some(MaskedEdit {
            mask: png(entry["mask"].as_str().unwrap()),
            strength: entry["strength"].as_f64().unwrap(),
            crop_padding: entry["padding_mask_crop"].as_u64().map(|p| p as u32),
            reference: entry["image_reference"].as_str().map(png),
        }),
    }
}

/// The int64 tensor `key` of `golden/golden_run.safetensors`.
pub fn golden_ids(key: &str) -> TensorData {
    FixtureFile::open("golden/golden_run.safetensors").ids(key)
}

/// The tiny reference VAE's configuration (its `vae/config.json`).
pub fn tiny_vae_config() -> crate::model::vae::config::VaeConfig {
    let json = include_str!("../../tests/fixtures/tiny/FLUX.1-Kontext-dev-tiny/vae/config.json");
    crate::model::vae::config::VaeConfig::from_diffusers_json(json).unwrap()
}

/// The tiny reference VAE on `device`.
pub fn tiny_vae(device: &Device) -> crate::model::vae::Vae {
    let weights = FixtureFile::open("FLUX.1-Kontext-dev-tiny/vae/diffusion_pytorch_model.safetensors");
    crate::model::vae::Vae::load(&tiny_vae_config(), &weights, device).unwrap()
}
