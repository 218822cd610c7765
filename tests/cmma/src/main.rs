//! burn/cubecl's own matmul and attention in f16 on a Vulkan device through cubecl's SPIR-V compiler, which runs
//! them on cooperative matrices (CMMA) where the device lists their sizes: the figures `make bench-gpu` sets beside
//! `kontext bench`'s coop rows. burn's autotune picks the fastest of its kernels per shape, CMMA ones among them,
//! as any burn user on that card would get.
//!
//! Each row names the kernels burn's autotune chose for it (`autotuned`, from cubecl's autotune log) and says
//! whether one of them is a CMMA kernel (`cmma`).
//!
//! Every row is checked against the same operation in f32 on the same device (relative RMS within
//! [`TOLERANCE`]) and against a control (the f16 result beside f32 of other inputs, which must differ); a failed
//! check exits with 1 after printing the JSON.
//!
//! Usage: `burn-cmma [--quick] [--require-cmma]`: by default FLUX.1 Kontext [dev]'s shapes at 1024² (matmuls at
//! M = 8,704 and attention at L = 1,024, 4,096 and 8,704 in 24 heads of 128); `--quick`, shapes a software device
//! runs in seconds. `--require-cmma` exits with 1 where cubecl lists no cooperative-matrix size for the device (it
//! fell back to WGSL, or the device has none).

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::DispatchDevice;
use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
use burn::cubecl::prelude::DeviceProperties;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use serde_json::{Value, json};

/// Relative RMS of an f16 result against f32 that a row must stay within (the coop path's block tolerance).
const TOLERANCE: f64 = 1e-2;
/// Relative RMS the control must exceed: the f16 result of other inputs is no approximation of these.
const CONTROL_MIN: f64 = 0.5;

struct Shapes {
    /// Matmuls `[m, k] · [k, n]`.
    matmuls: Vec<(usize, usize, usize)>,
    /// Attention lengths (queries = keys).
    attention_l: Vec<usize>,
    heads: usize,
    head_dim: usize,
    /// Timed calls per figure, after one untimed call (which autotunes).
    repeats: usize,
}

impl Shapes {
    /// FLUX.1 Kontext [dev] at 1024² with one 1024² reference: 8,704 tokens, width 3,072, MLP 12,288, 24 heads
    /// of 128 (the `gpu` preset of `kontext bench`).
    fn kontext_1024() -> Self {
        Self {
            matmuls: vec![(8704, 3072, 3072), (8704, 3072, 12288)],
            attention_l: vec![1024, 4096, 8704],
            heads: 24,
            head_dim: 128,
            repeats: 5,
        }
    }

    fn quick() -> Self {
        Self { matmuls: vec![(256, 128, 192)], attention_l: vec![128], heads: 2, head_dim: 64, repeats: 1 }
    }
}

/// Deterministic values in `[-scale, scale)`.
fn values(len: usize, seed: u32, scale: f32) -> Vec<f32> {
    (0..len as u32)
        .map(|i| {
            let mut x = i.wrapping_mul(0x9E37_79B9) ^ seed.wrapping_mul(0x85EB_CA6B);
            x ^= x >> 15;
            x = x.wrapping_mul(0x2C1B_3C6D);
            x ^= x >> 12;
            (x as f32 / u32::MAX as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor<const D: usize>(shape: [usize; D], seed: u32, scale: f32, device: &Device) -> Tensor<D> {
    let len = shape.iter().product();
    Tensor::from_data(TensorData::new(values(len, seed, scale), shape), device)
}

fn to_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(FloatDType::F32).into_data().try_to_vec::<f32>().expect("an f32 tensor reads back as f32")
}

/// `‖a − b‖ / ‖b‖`.
fn relative_rms(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// Seconds per call of `run`, over `repeats` calls after an untimed one.
fn seconds_per_call<const D: usize>(device: &Device, repeats: usize, run: impl Fn() -> Tensor<D>) -> f64 {
    drop(run());
    device.sync().expect("the device finishes the warm-up call");
    let start = Instant::now();
    for _ in 0..repeats {
        drop(run());
    }
    device.sync().expect("the device finishes the timed calls");
    start.elapsed().as_secs_f64() / repeats as f64
}

/// What cubecl knows of `device` (in this build every device is a cubecl one: wgpu).
fn properties(device: &Device) -> DeviceProperties {
    let DispatchDevice::Cube(cube) = device.as_dispatch();
    cube.client().properties().clone()
}

/// The cooperative-matrix sizes cubecl registered for the device (none where it fell back to WGSL).
fn cmma_sizes(properties: &DeviceProperties) -> Vec<String> {
    (properties.features.matmul.cmma.iter())
        .map(|c| format!("{:?}×{:?}→{:?} {}×{}×{}", c.a_type, c.b_type, c.cd_type, c.m, c.n, c.k))
        .collect()
}

/// One row's check: within [`TOLERANCE`] of f32, and the control beyond [`CONTROL_MIN`].
fn checked(row: &mut Value, rel_rms: f64, control: f64) -> bool {
    row["rel_rms_to_f32"] = json!(rel_rms);
    row["control_rel_rms"] = json!(control);
    rel_rms <= TOLERANCE && control >= CONTROL_MIN
}

/// cubecl's autotune log, where each tuning decision is a line `Fastest result NAME-KEY. …`.
struct AutotuneLog {
    path: PathBuf,
    read: usize,
}

impl AutotuneLog {
    /// Sends cubecl's autotune decisions (tuned afresh: no persistent cache) to a file of this process. Must run
    /// before the first device is opened.
    fn install() -> Self {
        let path = std::env::temp_dir().join(format!("burn-cmma-autotune-{}.log", std::process::id()));
        let mut config = CubeClRuntimeConfig::default();
        config.autotune.logger.file = Some(path.clone());
        config.autotune.disable_cache = true;
        CubeClRuntimeConfig::set(config);
        Self { path, read: 0 }
    }

    /// The kernels chosen since the last call.
    fn chosen_since(&mut self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let new = text.get(self.read..).unwrap_or_default();
        self.read = text.len();
        (new.lines())
            .filter_map(|line| line.strip_prefix("Fastest result "))
            .filter_map(|rest| rest.split_once('-').map(|(name, _key)| name.to_string()))
            .collect()
    }

    /// Names the kernels chosen since the last call in `row`, and whether one runs on cooperative matrices.
    fn annotate(&mut self, row: &mut Value) {
        let chosen = self.chosen_since();
        row["cmma"] = json!(chosen.iter().any(|name| name.contains("cmma") || name.contains("accelerated")));
        row["autotuned"] = json!(chosen);
    }
}

fn matmul_row(
    device: &Device,
    (m, k, n): (usize, usize, usize),
    repeats: usize,
    log: &mut AutotuneLog,
) -> (Value, bool) {
    let x = tensor([m, k], 1, 1.0, device);
    let w = tensor([k, n], 2, 1.0 / (k as f32).sqrt(), device);
    let other_x = tensor([m, k], 3, 1.0, device);
    let (x16, w16, other16) =
        (x.clone().cast(FloatDType::F16), w.clone().cast(FloatDType::F16), other_x.cast(FloatDType::F16));
    let seconds = seconds_per_call(device, repeats, || x16.clone().matmul(w16.clone()));
    let mut row = json!({ "op": "matmul", "m": m, "k": k, "n": n, "dtype": "f16" });
    log.annotate(&mut row);
    let f16_out = to_f32(x16.matmul(w16.clone()));
    let f32_out = to_f32(x.matmul(w));
    let control = to_f32(other16.matmul(w16));
    log.chosen_since(); // the f32 reference's
    let flops = 2.0 * (m * k * n) as f64;
    row["ms"] = json!(seconds * 1e3);
    row["tflops"] = json!(flops / seconds / 1e12);
    let ok = checked(&mut row, relative_rms(&f16_out, &f32_out), relative_rms(&control, &f32_out));
    (row, ok)
}

fn attention_row(device: &Device, shapes: &Shapes, l: usize, log: &mut AutotuneLog) -> (Value, bool) {
    let shape = [1, shapes.heads, l, shapes.head_dim]; // [batch, heads, tokens, head_dim]
    let [q, k, v] = [11, 12, 13].map(|seed| tensor(shape, seed, 1.0, device));
    let other_v = tensor(shape, 14, 1.0, device);
    let half = |t: &Tensor<4>| t.clone().cast(FloatDType::F16);
    let (q16, k16, v16, other16) = (half(&q), half(&k), half(&v), half(&other_v));
    let sdpa =
        |q: Tensor<4>, k: Tensor<4>, v: Tensor<4>| attention(q, k, v, None, None, AttentionModuleOptions::default());
    let seconds = seconds_per_call(device, shapes.repeats, || sdpa(q16.clone(), k16.clone(), v16.clone()));
    let (heads, head_dim) = (shapes.heads, shapes.head_dim);
    let mut row = json!({ "op": "attention", "L": l, "heads": heads, "head_dim": head_dim, "dtype": "f16" });
    log.annotate(&mut row);
    let f16_out = to_f32(sdpa(q16.clone(), k16.clone(), v16));
    let f32_out = to_f32(sdpa(q, k, v));
    let control = to_f32(sdpa(q16, k16, other16));
    log.chosen_since(); // the f32 reference's
    let flops = 4.0 * (heads * l * l * head_dim) as f64;
    row["ms"] = json!(seconds * 1e3);
    row["tflops"] = json!(flops / seconds / 1e12);
    let ok = checked(&mut row, relative_rms(&f16_out, &f32_out), relative_rms(&control, &f32_out));
    (row, ok)
}

fn main() {
    let flag = |name: &str| std::env::args().any(|a| a == name);
    let (quick, require_cmma) = (flag("--quick"), flag("--require-cmma"));
    let shapes = if quick { Shapes::quick() } else { Shapes::kontext_1024() };
    let mut log = AutotuneLog::install();
    let device = Device::vulkan(Default::default());
    let (mut rows, mut all_ok) = (Vec::new(), true);
    let mut record = |(row, ok): (Value, bool)| {
        eprintln!("{row}");
        rows.push(row);
        all_ok &= ok;
    };
    for &shape in &shapes.matmuls {
        record(matmul_row(&device, shape, shapes.repeats, &mut log));
    }
    for &l in &shapes.attention_l {
        record(attention_row(&device, &shapes, l, &mut log));
    }
    let _ = std::fs::remove_file(&log.path);
    let properties = properties(&device);
    let (adapter, sizes) = (&properties.identity.name, cmma_sizes(&properties));
    let report = json!({
        "implementation": "burn 0.22.1 / cubecl 0.11 on Vulkan through SPIR-V, autotuned, f16 inputs",
        "adapter": adapter,
        "cmma_sizes": sizes,
        "tolerance": TOLERANCE,
        "rows": rows,
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("the report is JSON"));
    if require_cmma && sizes.is_empty() {
        eprintln!("burn-cmma: cubecl lists no cooperative-matrix size for {adapter}");
        std::process::exit(1);
    }
    if !all_ok {
        eprintln!("burn-cmma: a row is beyond {TOLERANCE} relative RMS of f32, or its control is not");
        std::process::exit(1);
    }
}
