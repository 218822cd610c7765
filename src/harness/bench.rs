//! Benchmarks that can be rerun on any device (`kontext bench`): packed ggml matmuls with f32 and (where the
//! adapter has `shader-f16`) f16 compute against burn's f32 matmul, the flash attention kernel against the
//! materialised reference, and one DiT step of a medium random-weight Flux in f32, Q8_0 and Q4_0. Every figure
//! is a time measured here, side by side in one run; the report gives ratios so that runs on different machines
//! compare.
//!
//! Sizes, results, the random weights and the quantizers compile everywhere (the browser can reuse them); the
//! timers read back synchronously and are native only. Each timed block runs chained or distinct inputs (no
//! call can be skipped as a repeat of another) after one untimed warm-up, and ends with one small readback
//! that waits for the device.

use std::collections::BTreeMap;

use half::f16;
use serde::{Deserialize, Serialize};

use crate::formats::quant::{GgmlType, quantize_q4_0, quantize_q8_0};
use crate::formats::weights::{HostTensor, RawBlock, Weights};
use crate::kernels::path::KernelPath;
use crate::kernels::precision::Precision;
use crate::kernels::report::KernelPaths;
use crate::model::flux::config::FluxConfig;
use crate::{Error, Result};

/// How much work a run does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sizes {
    /// Name of the preset (`full`, `quick`, `tiny`).
    pub preset: String,
    /// Rows of x (tokens) for the matmuls.
    pub matmul_m: Vec<usize>,
    /// `(K, N)`: input and output features of the matmul weights.
    pub matmul_kn: Vec<(usize, usize)>,
    /// Sequence lengths for attention.
    pub attention_l: Vec<usize>,
    /// Attention heads.
    pub attention_heads: usize,
    /// Attention head width.
    pub attention_d: usize,
    /// The transformer of the DiT step.
    pub step_config: FluxConfig,
    /// Image tokens of the DiT step.
    pub step_image_tokens: usize,
    /// Text tokens of the DiT step.
    pub step_text_tokens: usize,
    /// Weights of the DiT step, one row each: `F32`, `Q8_0`, `Q4_0`; `-streamed` after one (`Q4_0-streamed`)
    /// keeps only the layers outside the blocks on the device and uploads each block as the step reaches it;
    /// `-f16` runs the packed matmuls computing in f16 (a row only where the adapter has `shader-f16`).
    pub step_weights: Vec<String>,
    /// Whether each step row is also timed through the plain-ops reference path ([`StepRow::plain_seconds`]).
    #[serde(default = "default_step_plain")]
    pub step_plain: bool,
    /// Timed calls per measurement (after one warm-up call).
    pub repeats: usize,
    /// Steps of the text-to-image edit on the step model (Q8_0, `step_image_tokens` noise tokens) timed with each
    /// of [`Sizes::cache_settings`]; 0: none.
    #[serde(default)]
    pub cache_steps: usize,
    /// Step caches timed on that edit, as `kontext edit --cache` takes them (`none` first, the baseline);
    /// `mag:…` uses the ratios a calibrating run of the same edit measures first.
    #[serde(default)]
    pub cache_settings: Vec<String>,
    /// Steps of that edit timed with a live preview drawn after every step and without, side by side
    /// ([`PreviewRow`]; on wgpu only); 0: none.
    #[serde(default)]
    pub preview_steps: usize,
}

fn default_step_plain() -> bool {
    true
}

/// The cache settings of every preset that times them: none, the app's two levels, MagCache at diffusers'
/// default threshold.
fn all_cache_settings() -> Vec<String> {
    ["none", "fbc:0.08", "fbc:0.12", "mag:0.06"].map(String::from).to_vec()
}

impl Sizes {
    /// DiT-like shapes: FLUX's width 3072 and MLP width 12288, 24 heads of 128, a 512-wide medium step model.
    pub fn full() -> Self {
        Self {
            preset: "full".into(),
            matmul_m: vec![256, 1024],
            matmul_kn: vec![(3072, 3072), (3072, 12288)],
            attention_l: vec![256, 1024, 4096],
            attention_heads: 24,
            attention_d: 128,
            step_config: medium_flux(512, 8, 4, 8, 256),
            step_image_tokens: 1024,
            step_text_tokens: 512,
            step_weights: all_step_weights(),
            step_plain: true,
            repeats: 3,
            cache_steps: 28,
            cache_settings: all_cache_settings(),
            preview_steps: 8,
        }
    }

    /// A real GPU at real scale: FLUX.1 Kontext [dev]'s DiT (random Q4_0 weights) for a 1024² edit
    /// with one 1024² reference (4,096 + 4,096 image and 512 text tokens, 8,704 in all), its attention at
    /// L = 8,704 and its largest matmuls at M = 8,704.
    pub fn gpu() -> Self {
        Self {
            preset: "gpu".into(),
            matmul_m: vec![8704],
            matmul_kn: vec![(3072, 3072), (3072, 12288)],
            attention_l: vec![1024, 4096, 8704],
            attention_heads: 24,
            attention_d: 128,
            step_config: FluxConfig::kontext_dev(),
            step_image_tokens: 8192,
            step_text_tokens: 512,
            // Each row is a load, a warm-up, a timed and a counted step (about 25 s each on an H200 in
            // December): what fits a part of a short lease. Dense f32 weights of the real DiT (48 GB) and
            // their plain-ops step would not fit it.
            step_weights: vec!["Q4_0".into(), "Q4_0-f16".into()],
            step_plain: false,
            repeats: 1,
            cache_steps: 0,
            cache_settings: Vec::new(),
            // The previews' edit would load a second copy of the real DiT: timed at the smaller presets.
            preview_steps: 0,
        }
    }

    /// [`Sizes::gpu`]'s DiT step for a 512² edit with one 512² reference (1,024 + 1,024 + 512 tokens), alone.
    pub fn gpu_512() -> Self {
        Self {
            preset: "gpu-512".into(),
            matmul_m: vec![],
            matmul_kn: vec![],
            attention_l: vec![2560],
            step_image_tokens: 2048,
            step_weights: vec!["Q4_0".into(), "Q4_0-f16".into(), "Q4_0-streamed".into()],
            repeats: 2,
            ..Self::gpu()
        }
    }

    /// Keeps only the benchmarks named in `parts` (`matmul`, `attention`, `step`, `cache`, `previews`).
    pub fn only(mut self, parts: &[String]) -> Result<Self> {
        const PARTS: [&str; 5] = ["matmul", "attention", "step", "cache", "previews"];
        if let Some(part) = parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
            return Err(Error::Invalid(format!("no benchmark `{part}`: matmul, attention, step, cache or previews")));
        }
        let keep = |name: &str| parts.iter().any(|p| p == name);
        if !keep("matmul") {
            self.matmul_kn.clear();
        }
        if !keep("attention") {
            self.attention_l.clear();
        }
        if !keep("step") {
            self.step_weights.clear();
        }
        if !keep("cache") {
            self.cache_settings.clear();
        }
        if !keep("previews") {
            self.preview_steps = 0;
        }
        Ok(self)
    }

    /// The preset called `name`: `full`, `quick`, `tiny`, `gpu` or `gpu-512`.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "full" => Ok(Self::full()),
            "quick" => Ok(Self::quick()),
            "tiny" => Ok(Self::tiny()),
            "gpu" => Ok(Self::gpu()),
            "gpu-512" => Ok(Self::gpu_512()),
            _ => Err(Error::Invalid(format!("no bench preset `{name}`: full, quick, tiny, gpu or gpu-512"))),
        }
    }

    /// A few seconds on a software device.
    pub fn quick() -> Self {
        Self {
            preset: "quick".into(),
            matmul_m: vec![64, 256],
            matmul_kn: vec![(1024, 1024), (1024, 4096)],
            attention_l: vec![256, 1024],
            attention_heads: 8,
            attention_d: 64,
            step_config: medium_flux(512, 8, 2, 4, 256),
            step_image_tokens: 256,
            step_text_tokens: 128,
            step_weights: all_step_weights(),
            step_plain: true,
            repeats: 3,
            cache_steps: 12,
            cache_settings: all_cache_settings(),
            preview_steps: 6,
        }
    }

    /// The smallest run that still exercises every path (for tests).
    pub fn tiny() -> Self {
        Self {
            preset: "tiny".into(),
            matmul_m: vec![32],
            matmul_kn: vec![(256, 256)],
            attention_l: vec![128],
            attention_heads: 2,
            attention_d: 32,
            step_config: medium_flux(128, 2, 1, 1, 64),
            step_image_tokens: 64,
            step_text_tokens: 32,
            step_weights: all_step_weights(),
            step_plain: true,
            repeats: 2,
            cache_steps: 4,
            cache_settings: all_cache_settings(),
            preview_steps: 2,
        }
    }
}

fn all_step_weights() -> Vec<String> {
    ["F32", "Q8_0", "Q8_0-f16", "Q4_0", "Q4_0-streamed"].map(String::from).to_vec()
}

/// A Flux of `hidden` width in `heads` heads with `depth` double and `single` single blocks and text tokens
/// `context` wide; the other hyper-parameters as FLUX.1 [dev].
pub fn medium_flux(hidden: usize, heads: usize, depth: usize, single: usize, context: usize) -> FluxConfig {
    FluxConfig {
        vec_in_dim: context,
        context_in_dim: context,
        hidden_size: hidden,
        num_heads: heads,
        depth,
        depth_single_blocks: single,
        axes_dim: FluxConfig::default_axes_dim(hidden / heads),
        ..FluxConfig::kontext_dev()
    }
}

/// One matmul shape and block type: `x [m, k] · Wᵀ`, `W [n, k]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatmulRow {
    /// Block type of the packed weight.
    pub ty: String,
    /// Rows of x.
    pub m: usize,
    /// Input features.
    pub k: usize,
    /// Output features.
    pub n: usize,
    /// Whether the weight stayed packed (wgpu); on other devices it is dequantized to f32.
    pub packed: bool,
    /// GFLOP/s (2·m·k·n per call) of the packed matmul with f32 activations.
    pub packed_gflops: f64,
    /// GFLOP/s of burn's f32 matmul with the dequantized weight `[k, n]`.
    pub f32_gflops: f64,
    /// `packed_gflops / f32_gflops`: above 1, the packed kernel is faster.
    pub ratio: f64,
    /// GFLOP/s of the packed matmul computing in f16 (tiles and products in f16, x and y f32, as the model
    /// calls it with `--precision f16`); `None` without `shader-f16` or packed weights.
    pub f16_gflops: Option<f64>,
    /// `f16_gflops / packed_gflops`: above 1, f16 compute beats f32 in the same kernel.
    pub f16_ratio_to_packed: Option<f64>,
    /// `f16_gflops / f32_gflops`: above 1, the f16 packed kernel beats burn's f32 matmul.
    pub f16_ratio_to_f32: Option<f64>,
    /// GFLOP/s of the packed matmul on cooperative matrices (the `coop` path: f16 fragments, f32
    /// accumulators); `None` where the adapter has none, for dense weights, and up to
    /// [`crate::kernels::coop_matmul::MIN_ROWS`] rows.
    #[serde(default)]
    pub coop_gflops: Option<f64>,
    /// `coop_gflops / packed_gflops`: above 1, the coop kernel beats the plain one in f32.
    #[serde(default)]
    pub coop_ratio_to_packed: Option<f64>,
    /// The side of the tiles the model's coop matmul of this shape takes on this device
    /// ([`crate::kernels::coop_matmul::tile_for`]), which `coop_gflops` times; `None` where no coop kernel ran.
    #[serde(default)]
    pub coop_tile: Option<usize>,
    /// The coop kernel in each of its tiles ([`crate::kernels::coop_matmul::TILES`]), where it ran.
    #[serde(default)]
    pub coop_by_tile: Vec<CoopTileRun>,
    /// Relative RMS of the f16 kernel's output against the packed kernel's in f32, for the same x.
    #[serde(default)]
    pub f16_rel_rms: Option<f64>,
    /// Relative RMS of the coop kernel's output against the packed kernel's in f32, for the same x: the worst of
    /// its tiles.
    #[serde(default)]
    pub coop_rel_rms: Option<f64>,
    /// The kernel path the model's matmul of this shape takes on this device ([`KernelPath::for_matmul`]).
    pub kernel_path: KernelPath,
}

/// The coop matmul of one shape in tiles of one side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoopTileRun {
    /// Side of the tiles of y one workgroup computes.
    pub tile: usize,
    /// GFLOP/s.
    pub gflops: f64,
    /// Relative RMS of the output against the packed kernel's in f32, for the same x.
    pub rel_rms: f64,
}

/// Attention over one sequence length: times in milliseconds per call, memory as the allocator measured it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionRow {
    /// Sequence length (queries = keys).
    #[serde(rename = "L")]
    pub l: usize,
    /// Attention heads.
    pub heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// The kernel the model's attention ran at this length ([`AttentionKernel::resolve`](crate::kernels::attention::AttentionKernel::resolve));
    /// `scores` (the reference) on devices without our kernels.
    pub model_kernel: crate::kernels::attention::AttentionKernel,
    /// The kernel path of the model's attention at this length ([`crate::kernels::attention::kernel_path`]).
    pub kernel_path: KernelPath,
    /// The model's attention.
    pub model_ms: f64,
    /// The `flash` kernel, where a flash kernel applies (wgpu, head width within its limit).
    pub flash_ms: Option<f64>,
    /// TFLOP/s of the `flash` kernel, counting `4·heads·L²·d` per call (the two products).
    pub flash_tflops: Option<f64>,
    /// The `rows` flash kernel, where a flash kernel applies.
    pub rows_ms: Option<f64>,
    /// The `coop` flash kernel (cooperative matrices), where the adapter has the `coop` path and the kernel
    /// takes these heads.
    pub coop_ms: Option<f64>,
    /// TFLOP/s of the `coop` kernel, counting `4·heads·L²·d` per call as for `flash`.
    pub coop_tflops: Option<f64>,
    /// The reference (burn's matmul and softmax on the materialised scores) in blocks of at most 128 MiB of
    /// scores.
    pub reference_ms: f64,
    /// `reference_ms / flash_ms`: above 1, the flash kernel is faster.
    pub flash_speedup: Option<f64>,
    /// Bytes of intermediates of a flash kernel (`h·L·(d + 2)·4`: output and softmax statistics), computed.
    pub flash_bytes: u64,
    /// Bytes of the whole score matrix (`h·L²·4`), computed; the reference holds one block of it (and as much
    /// again for its softmax) at a time.
    pub reference_bytes: u64,
    /// Device memory the `flash` kernel's first call added to the allocator's pools (on wgpu), its peak
    /// working memory rounded up to the allocator's pages.
    pub flash_peak_bytes: Option<u64>,
    /// The same for the `rows` flash kernel.
    pub rows_peak_bytes: Option<u64>,
    /// The same for the `coop` flash kernel.
    pub coop_peak_bytes: Option<u64>,
    /// The same for the reference.
    pub reference_peak_bytes: Option<u64>,
    /// Relative RMS of the model's attention against the reference, on the same q, k and v.
    #[serde(default)]
    pub model_rel_rms: f64,
    /// The same for the `flash` kernel.
    #[serde(default)]
    pub flash_rel_rms: Option<f64>,
    /// The same for the `rows` kernel.
    #[serde(default)]
    pub rows_rel_rms: Option<f64>,
    /// The same for the `coop` kernel.
    #[serde(default)]
    pub coop_rel_rms: Option<f64>,
}

/// One edit of [`Sizes::cache_steps`] steps with one step cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheRow {
    /// The cache, as `kontext edit --cache` takes it.
    pub cache: String,
    /// Steps of the edit.
    pub steps: usize,
    /// DiT evaluations done: steps that ran every block (a First-Block-Cache step that reused the cache still
    /// ran the first block).
    pub evaluations: usize,
    /// Steps (0-based) that reused the cache.
    pub reused_steps: Vec<usize>,
    /// Seconds for all the steps.
    pub seconds: f64,
    /// The first row's seconds (no cache) over this row's.
    pub speedup: f64,
}

/// The step caches' edit (without a cache) timed with a live preview drawn after every step and without, side by
/// side in one run, as the app's worker runs it: after each step it waits for the queue to finish (no readback),
/// and with previews it first draws the latents on a texture the size of the output image with the display pass
/// ([`crate::kernels::display`]; a fixed colour projection, since the edit has no VAE to fit one to).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviewRow {
    /// Steps of each edit.
    pub steps: usize,
    /// Seconds per step without previews.
    pub seconds_per_step_off: f64,
    /// Seconds per step with a preview after every step.
    pub seconds_per_step_on: f64,
    /// `on / off − 1`: what the previews cost per step.
    pub overhead: f64,
    /// Buffers read back during the steps of the edit with previews (0: the previews read nothing back).
    pub step_readbacks_on: u64,
    /// Buffers read back during the steps of the edit without previews.
    pub step_readbacks_off: u64,
    /// Buffers read back by the whole edit with previews: the final latents.
    pub readbacks_on: u64,
}

/// One DiT step with one kind of weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    /// `F32`, `Q8_0` or `Q4_0`.
    pub weights: String,
    /// Whether the blocks were uploaded as the step reached them ([`crate::model::flux::Flux::forward_streaming`]).
    #[serde(default)]
    pub streamed: bool,
    /// Activations of the packed matmuls in this row.
    #[serde(default = "default_precision")]
    pub precision: Precision,
    /// The kernel path of the step's packed matmuls ([`KernelPath::for_matmul`] over the step's tokens).
    pub kernel_path: KernelPath,
    /// Linear layers kept in ggml blocks on the device (when loaded whole).
    pub packed_linears: usize,
    /// Bytes the weights occupy on the device between steps.
    pub device_bytes: u64,
    /// The device allocator's most reserved bytes over the load and the timed steps, on wgpu.
    #[serde(default)]
    pub peak_device_bytes: Option<u64>,
    /// Seconds per transformer call.
    pub seconds: f64,
    /// `seconds / seconds of F32` (1 when no F32 row came first): below 1, faster than f32.
    pub ratio_to_f32: f64,
    /// Seconds per transformer call of the same model through the plain-ops reference path (our kernels off,
    /// [`crate::kernels::with_plain_ops`]: weights dequantized to dense f32, burn's ops, attention on
    /// materialised scores), timed after every row; `None` where the step ran no kernel of ours (the CPU), for
    /// f16 rows and when [`Sizes::step_plain`] is off.
    #[serde(default)]
    pub plain_seconds: Option<f64>,
    /// `plain_seconds / seconds`: above 1, our kernels are faster than the plain ops.
    #[serde(default)]
    pub speedup_over_plain: Option<f64>,
    /// Kernel launches (ours and burn's, [`crate::device::launches`]) of one transformer call, counted after
    /// the timed calls; `None` where the backend launches no kernels (the CPU).
    #[serde(default)]
    pub dispatches_per_step: Option<usize>,
    /// Activation bytes our kernels bound in that call ([`crate::kernels::count_activation_bytes`]: per launch,
    /// every binding but weights and parameters, counted once); burn's own launches are not counted (there are
    /// `dispatches_per_step − activation_launches_per_step` of them).
    #[serde(default)]
    pub activation_bytes_per_step: Option<u64>,
    /// Launches of ours in that call, whose bindings `activation_bytes_per_step` counts.
    #[serde(default)]
    pub activation_launches_per_step: Option<usize>,
    /// [`activation_bytes_minimum`] of the step.
    #[serde(default)]
    pub activation_bytes_minimum: u64,
    /// Kernel launches of the first double block within the step, by kernel; empty when streamed or not
    /// counted.
    #[serde(default)]
    pub double_block_kernels: Vec<(String, usize)>,
    /// Kernel launches of the first single block within the step, by kernel.
    #[serde(default)]
    pub single_block_kernels: Vec<(String, usize)>,
}

fn default_precision() -> Precision {
    Precision::F32
}

impl StepRow {
    /// Launches of one double block, when counted.
    pub fn dispatches_per_double_block(&self) -> Option<usize> {
        (!self.double_block_kernels.is_empty()).then(|| self.double_block_kernels.iter().map(|(_, n)| n).sum())
    }

    /// Launches of one single block, when counted.
    pub fn dispatches_per_single_block(&self) -> Option<usize> {
        (!self.single_block_kernels.is_empty()).then(|| self.single_block_kernels.iter().map(|(_, n)| n).sum())
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `cpu` or `wgpu`.
    pub backend: String,
    /// The adapter's name, on wgpu.
    pub adapter: Option<String>,
    /// Activations of the packed matmuls in the DiT step ([`Precision::of`] the device).
    pub precision: Precision,
    /// The kernel path of each operation under the run's choice ([`KernelPaths::of`] the device).
    pub kernels: KernelPaths,
    /// Whether burn's own kernels (its f32 matmul baseline among them) ran autotuned: builds with the `autotune`
    /// feature, as benchmarks should be; without it burn's matmul is its untuned default.
    #[serde(default)]
    pub burn_autotune: bool,
    /// What was run.
    pub sizes: Sizes,
    /// Packed against f32 matmuls.
    pub matmul: Vec<MatmulRow>,
    /// Flash against reference attention.
    pub attention: Vec<AttentionRow>,
    /// Whether the attention bytes are computed from the shapes (always, for now) rather than measured.
    pub attention_bytes_computed: bool,
    /// One DiT step per kind of weights.
    pub step: Vec<StepRow>,
    /// Kernel launches of one double block in a DiT step, ours and burn's, from the step row of the model
    /// as people run it ([`Report::counted_step`]).
    pub dispatches_per_double_block: Option<usize>,
    /// Kernel launches of one single block in that step.
    pub dispatches_per_single_block: Option<usize>,
    /// Activation bytes our kernels bound in that step ([`StepRow::activation_bytes_per_step`]).
    pub activation_bytes_per_step: Option<u64>,
    /// The step's activation bytes if each activation were written once and read once
    /// ([`activation_bytes_minimum`]).
    pub activation_bytes_minimum: Option<u64>,
    /// One edit on the step model with each step cache.
    #[serde(default)]
    pub cache: Vec<CacheRow>,
    /// That edit with previews and without ([`Sizes::preview_steps`]; wgpu only).
    #[serde(default)]
    pub previews: Option<PreviewRow>,
}

/// The largest relative RMS a kernel computing in f32 may have against its reference in a benchmark.
pub const F32_REL_RMS_MAX: f64 = 1e-4;
/// The same for kernels computing in f16 or on cooperative matrices (f16 products, f32 sums).
pub const F16_REL_RMS_MAX: f64 = 1e-2;

impl Report {
    /// Assembles a report, taking the block launch counts from [`Report::counted_step`] and the precision and
    /// kernel paths from `device` under the process-wide choice.
    pub fn new(
        backend: &str,
        adapter: Option<String>,
        device: &burn::tensor::Device,
        sizes: Sizes,
        matmul: Vec<MatmulRow>,
        attention: Vec<AttentionRow>,
        step: Vec<StepRow>,
    ) -> Self {
        let counted = Self::counted_step(&step);
        Self {
            backend: backend.into(),
            adapter,
            precision: Precision::of(device),
            kernels: KernelPaths::of(device),
            burn_autotune: cfg!(feature = "autotune"),
            dispatches_per_double_block: counted.and_then(StepRow::dispatches_per_double_block),
            dispatches_per_single_block: counted.and_then(StepRow::dispatches_per_single_block),
            activation_bytes_per_step: counted.and_then(|r| r.activation_bytes_per_step),
            activation_bytes_minimum: counted.map(|r| r.activation_bytes_minimum),
            sizes,
            matmul,
            attention,
            attention_bytes_computed: true,
            step,
            cache: Vec::new(),
            previews: None,
        }
    }

    /// Every kernel of the run whose output was further from its reference than it may be (relative RMS above
    /// [`F32_REL_RMS_MAX`] computing in f32, above [`F16_REL_RMS_MAX`] in f16 or on cooperative matrices), one
    /// line each: a figure of such a kernel says nothing.
    pub fn off_reference(&self) -> Vec<String> {
        let mut off = Vec::new();
        let mut check = |what: String, rel_rms: Option<f64>, max: f64| {
            // A NaN is off too.
            if let Some(rel_rms) = rel_rms.filter(|e| e.is_nan() || *e > max) {
                off.push(format!("{what}: relative RMS {rel_rms:.2e} to its reference (at most {max:.0e})"));
            }
        };
        for r in &self.matmul {
            let shape = format!("{} matmul {}×{}→{}", r.ty, r.m, r.k, r.n);
            check(format!("{shape}, f16"), r.f16_rel_rms, F16_REL_RMS_MAX);
            check(format!("{shape}, coop"), r.coop_rel_rms, F16_REL_RMS_MAX);
        }
        for r in &self.attention {
            let model_max = if r.kernel_path == KernelPath::F32 { F32_REL_RMS_MAX } else { F16_REL_RMS_MAX };
            let at = format!("attention at L = {}", r.l);
            check(format!("{at}, the model's ({})", r.model_kernel.name()), Some(r.model_rel_rms), model_max);
            check(format!("{at}, flash"), r.flash_rel_rms, F32_REL_RMS_MAX);
            check(format!("{at}, rows"), r.rows_rel_rms, F32_REL_RMS_MAX);
            check(format!("{at}, coop"), r.coop_rel_rms, F16_REL_RMS_MAX);
        }
        off
    }

    /// The step row whose launches stand for the model as people run it: the first with packed weights loaded
    /// whole (quantized files are what people hold), else the first counted one.
    pub fn counted_step(step: &[StepRow]) -> Option<&StepRow> {
        let counted = |r: &&StepRow| !r.double_block_kernels.is_empty();
        step.iter().filter(counted).find(|r| r.packed_linears > 0).or_else(|| step.iter().find(counted))
    }
}

/// The bytes one DiT call of `config` over `n_img` image and `n_txt` text tokens moves if each activation (f32) is
/// written once and read once: the call's inputs, the embedders' outputs, per double block the normalised and
/// modulated input, q, k, v, the attention, its projection, the residual, the MLP's normalised input, its hidden
/// layer (after GELU) and its output, and the block's output (N·(10·hidden + mlp) values for N tokens), per
/// single block the normalised input, q, k, v, the attention, the MLP's hidden layer, `linear2`'s output and the
/// block's output (N·(7·hidden + mlp)), then the final layer's normalised input and its output.
pub fn activation_bytes_minimum(config: &FluxConfig, n_img: usize, n_txt: usize) -> u64 {
    let (h, mlp, n) = (config.hidden_size, config.mlp_hidden(), n_img + n_txt);
    let values = n_img * config.in_channels + n_txt * config.context_in_dim // inputs
        + n * h // img_in and txt_in
        + config.depth * n * (10 * h + mlp)
        + config.depth_single_blocks * n * (7 * h + mlp)
        + n_img * (h + config.in_channels); // final layer
    2 * (values * size_of::<f32>()) as u64
}

/// Q4_K blocks with random nibbles, 6-bit scales and mins (scale 10⁻³, min 5·10⁻⁴): `n·k / 256` blocks of a
/// valid weight, for speed measurements only.
pub fn random_q4_k(n_values: usize, salt: u32) -> Result<Vec<u8>> {
    let ty = GgmlType::Q4_K;
    if !n_values.is_multiple_of(ty.block_size()) {
        return Err(Error::Invalid(format!("{n_values} values are not whole Q4_K blocks of 256")));
    }
    let mut bytes = Vec::with_capacity(n_values / ty.block_size() * ty.type_size());
    for block in 0..n_values / ty.block_size() {
        bytes.extend(f16::from_f32(1e-3).to_le_bytes());
        bytes.extend(f16::from_f32(5e-4).to_le_bytes());
        bytes.extend((0..ty.type_size() - 4).map(|i| hash(block * ty.type_size() + i, salt) as u8));
    }
    Ok(bytes)
}

fn hash(i: usize, salt: u32) -> u32 {
    (i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt.wrapping_mul(40_503)) >> 8
}

/// Values in `[-scale, scale]` from a hash of the index (no random generator needed).
fn values(n: usize, salt: u32, scale: f32) -> Vec<f32> {
    (0..n).map(|i| ((hash(i, salt) % 2001) as f32 / 1000.0 - 1.0) * scale).collect()
}

/// Random BFL-named weights for a [`FluxConfig`]: linear weights uniform in `±1/√fan_in`, biases in `±0.01`,
/// norm scales 1. With a block type, linear weights also come as ggml blocks ([`Weights::raw_block`]),
/// quantized from the same values, so layers load packed on wgpu.
///
/// Quantized blocks are made once per role (the name without its block index) and shared by every block of
/// that role, so a real-scale DiT is ready in seconds; speed does not depend on the values.
pub struct RandomFlux {
    shapes: BTreeMap<String, Vec<usize>>,
    quantized: Option<GgmlType>,
    blocks_by_role: std::sync::Mutex<BTreeMap<String, Vec<u8>>>,
}

impl RandomFlux {
    /// Every tensor of a BFL Flux checkpoint for `config`; `quantized` is `None`, `Some(Q8_0)` or `Some(Q4_0)`.
    pub fn new(config: &FluxConfig, quantized: Option<GgmlType>) -> Result<Self> {
        if let Some(ty) = quantized.filter(|ty| ![GgmlType::Q8_0, GgmlType::Q4_0].contains(ty)) {
            return Err(Error::Invalid(format!("random weights quantize to Q8_0 or Q4_0, not {ty}")));
        }
        Ok(Self { shapes: bfl_shapes(config), quantized, blocks_by_role: Default::default() })
    }
}

/// Names and shapes of a BFL Flux checkpoint for `config`.
pub fn bfl_shapes(config: &FluxConfig) -> BTreeMap<String, Vec<usize>> {
    let (h, mlp, hd) = (config.hidden_size, config.mlp_hidden(), config.head_dim());
    let mut shapes = BTreeMap::new();
    let mut linear = |prefix: String, d_in: usize, d_out: usize| {
        shapes.insert(format!("{prefix}.weight"), vec![d_out, d_in]);
        shapes.insert(format!("{prefix}.bias"), vec![d_out]);
    };
    linear("img_in".into(), config.in_channels, h);
    linear("txt_in".into(), config.context_in_dim, h);
    let mut embedders = vec![("time_in", 256), ("vector_in", config.vec_in_dim)];
    if config.guidance_embed {
        embedders.push(("guidance_in", 256));
    }
    for (name, d_in) in embedders {
        linear(format!("{name}.in_layer"), d_in, h);
        linear(format!("{name}.out_layer"), h, h);
    }
    for i in 0..config.depth {
        for stream in ["img", "txt"] {
            let p = format!("double_blocks.{i}.{stream}");
            linear(format!("{p}_mod.lin"), h, 6 * h);
            linear(format!("{p}_attn.qkv"), h, 3 * h);
            linear(format!("{p}_attn.proj"), h, h);
            linear(format!("{p}_mlp.0"), h, mlp);
            linear(format!("{p}_mlp.2"), mlp, h);
        }
    }
    for i in 0..config.depth_single_blocks {
        let p = format!("single_blocks.{i}");
        linear(format!("{p}.linear1"), h, 3 * h + mlp);
        linear(format!("{p}.linear2"), h + mlp, h);
        linear(format!("{p}.modulation.lin"), h, 3 * h);
    }
    linear("final_layer.linear".into(), h, config.in_channels);
    linear("final_layer.adaLN_modulation.1".into(), h, 2 * h);
    let mut norms = Vec::new();
    for i in 0..config.depth {
        norms.extend(["img_attn", "txt_attn"].map(|s| format!("double_blocks.{i}.{s}.norm")));
    }
    norms.extend((0..config.depth_single_blocks).map(|i| format!("single_blocks.{i}.norm")));
    for norm in norms {
        for which in ["query_norm", "key_norm"] {
            shapes.insert(format!("{norm}.{which}.scale"), vec![hd]);
        }
    }
    shapes
}

impl Weights for RandomFlux {
    fn names(&self) -> Vec<String> {
        self.shapes.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.shapes.get(name).cloned()
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        let shape = self.shape(name).ok_or_else(|| Error::Invalid(format!("missing tensor `{name}`")))?;
        let n = shape.iter().product();
        let salt = name.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
        let data = match shape.as_slice() {
            _ if name.ends_with(".scale") => vec![1.0; n],
            [_, d_in] => values(n, salt, 1.0 / (*d_in as f32).sqrt()),
            _ => values(n, salt, 0.01),
        };
        HostTensor::new(shape, data)
    }

    fn raw_block(&self, name: &str) -> Option<Result<RawBlock>> {
        let ty = self.quantized?;
        let shape = self.shape(name)?;
        if shape.len() != 2 || !shape[1].is_multiple_of(ty.block_size()) {
            return None;
        }
        let role: String = name.split('.').filter(|part| part.parse::<usize>().is_err()).collect::<Vec<_>>().join(".");
        let cached = self.blocks_by_role.lock().ok()?.get(&role).cloned();
        if let Some(bytes) = cached {
            return Some(Ok((ty, shape, bytes)));
        }
        Some(self.read(name).and_then(|t| {
            let bytes = match ty {
                GgmlType::Q8_0 => quantize_q8_0(&t.data)?,
                _ => quantize_q4_0(&t.data)?,
            };
            if let Ok(mut cache) = self.blocks_by_role.lock() {
                cache.insert(role, bytes.clone());
            }
            Ok((ty, t.shape, bytes))
        }))
    }
}

/// Writes a random-weight BFL Flux of `config` as a GGUF file, as the DiT files people hold are laid out (city96's
/// Flux GGUFs): every linear weight in `ty` blocks (`Q8_0` or `Q4_0`; [`RandomFlux`]'s values), biases and norm
/// scales in F32. Streams one tensor at a time; returns the bytes written. `kontext make-random`.
pub fn write_random_flux(out: &mut impl std::io::Write, config: &FluxConfig, ty: GgmlType) -> Result<u64> {
    use crate::formats::gguf_writer::{MetadataValue, TensorEntry, write_gguf};
    let random = RandomFlux::new(config, Some(ty))?;
    let tensors: Vec<TensorEntry> = (random.shapes.iter())
        .map(|(name, shape)| {
            let quantized = shape.len() == 2 && shape[1].is_multiple_of(ty.block_size());
            TensorEntry {
                name: name.clone(),
                ggml_type: if quantized { ty } else { GgmlType::F32 },
                shape: shape.clone(),
            }
        })
        .collect();
    let metadata = [
        ("general.architecture", MetadataValue::String("flux".into())),
        ("general.name", MetadataValue::String(format!("random-weight Flux, {ty} (kontext make-random)"))),
    ];
    write_gguf(out, &metadata, &tensors, |i| {
        let tensor = &tensors[i];
        match tensor.ggml_type {
            GgmlType::F32 => Ok(random.read(&tensor.name)?.data.iter().flat_map(|v| v.to_le_bytes()).collect()),
            _ => {
                let raw = random
                    .raw_block(&tensor.name)
                    .ok_or_else(|| Error::Invalid(format!("no blocks for `{}`", tensor.name)))?;
                Ok(raw?.2)
            }
        }
    })
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::time::Instant;

    use burn::tensor::{Device, FloatDType, Tensor, TensorData};

    use super::*;
    use crate::device::launches::{Launches, count_launches};
    use crate::device::selfcheck::relative_rms;
    use crate::kernels::attention::{KernelTiming, bench_attention};
    use crate::kernels::coop_matmul;
    use crate::kernels::display::{Display, Picture, Projection, TextureTarget};
    use crate::kernels::quant_matmul::{Epilogue, PackedWeight, matmul_at, matmul_coop};
    use crate::kernels::{ActivationBytes, count_activation_bytes};
    use crate::model::flux::rope::Rope;
    use crate::model::flux::{Flux, Layers, Modulations};
    use crate::pipeline::cache::{CacheConfig, StepCache};
    use crate::pipeline::kontext::{self, Conditioning, KontextDenoiser, References, TextConditioning};

    /// Waits for `t` (and everything queued before it) by reading back one value, cast to f32: timed with a
    /// one-value f16 readback instead, the f16 kernels measured impossible rates (10⁵ GFLOP/s) on lavapipe.
    fn finish<const D: usize>(t: Tensor<D>) -> f32 {
        let n = t.shape().num_elements();
        let first = t.reshape([n]).narrow(0, 0, 1).cast(FloatDType::F32);
        first.into_data().try_to_vec::<f32>().map(|v| v[0]).unwrap_or(f32::NAN)
    }

    /// Seconds per call of `run(i)` over `repeats` calls, after the untimed call `run(0)`; `run` returns what
    /// to wait for.
    fn time<const D: usize>(repeats: usize, run: impl FnMut(usize) -> Tensor<D>) -> f64 {
        timed(repeats, run, finish).0
    }

    /// [`time`], and the untimed call's output read back whole.
    fn time_and_read<const D: usize>(repeats: usize, run: impl FnMut(usize) -> Tensor<D>) -> (f64, Vec<f32>) {
        timed(repeats, run, |y| y.into_data().try_to_vec::<f32>().unwrap_or_default())
    }

    /// [`time`], with `warm_up` waiting for the untimed call's output and giving what it returns.
    fn timed<const D: usize, T>(
        repeats: usize,
        mut run: impl FnMut(usize) -> Tensor<D>,
        warm_up: impl FnOnce(Tensor<D>) -> T,
    ) -> (f64, T) {
        let first = warm_up(run(0));
        let start = Instant::now();
        let mut last = None;
        for i in 1..=repeats {
            last = Some(run(i));
        }
        if let Some(last) = last {
            finish(last);
        }
        (start.elapsed().as_secs_f64() / repeats.max(1) as f64, first)
    }

    /// Packed Q8_0, Q4_0, Q4_K and F16 matmuls with f32 and (where available) f16 compute against burn's f32
    /// matmul for every shape of `sizes`. The F16 rows' coop figures stand beside burn/cubecl's own f16 CMMA
    /// matmul at the same shapes (`tests/cmma`, in `make bench-gpu`).
    pub fn bench_matmul(device: &Device, sizes: &Sizes) -> Result<Vec<MatmulRow>> {
        let f16 = Precision::f16_available(device);
        let coop = KernelPath::Coop.missing_on(device).is_none();
        let mut rows = Vec::new();
        for &(k, n) in &sizes.matmul_kn {
            let dense = values(n * k, 7, 1.0 / (k as f32).sqrt());
            let weights = [
                (GgmlType::Q8_0, quantize_q8_0(&dense)?),
                (GgmlType::Q4_0, quantize_q4_0(&dense)?),
                (GgmlType::Q4_K, random_q4_k(n * k, 7)?),
                (GgmlType::F16, dense.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect()),
            ];
            let transposed: Vec<f32> = (0..k * n).map(|i| dense[(i % n) * k + i / n]).collect();
            let w_f32 = Tensor::<2>::from_data(TensorData::new(transposed, [k, n]), device); // [k, n]
            for &m in &sizes.matmul_m {
                let flops = 2.0 * (m * k * n) as f64 / 1e9;
                let xs: Vec<Tensor<2>> = (0..=sizes.repeats)
                    .map(|salt| Tensor::from_data(TensorData::new(values(m * k, salt as u32, 1.0), [m, k]), device))
                    .collect();
                let f32_s = time(sizes.repeats, |i| xs[i].clone().matmul(w_f32.clone()));
                for (ty, bytes) in &weights {
                    let w = PackedWeight::new(*ty, &[n, k], bytes, device)?;
                    // Each variant's untimed output for the first x is checked against the packed kernel's in f32.
                    let (packed_s, plain) =
                        time_and_read(sizes.repeats, |i| matmul_at(xs[i].clone(), &w, None, Precision::F32));
                    let off_plain = |(seconds, output): (f64, Vec<f32>)| (seconds, relative_rms(&output, &plain));
                    let f16_run = (f16 && w.is_packed()).then(|| {
                        off_plain(time_and_read(sizes.repeats, |i| matmul_at(xs[i].clone(), &w, None, Precision::F16)))
                    });
                    let coop_tile = (coop && w.is_packed() && m > coop_matmul::MIN_ROWS)
                        .then(|| coop_matmul::tile_for(m, n, crate::device::software_adapter(device)));
                    let coop_runs: Vec<(usize, (f64, f64))> = match coop_tile {
                        Some(_) => (coop_matmul::TILES.into_iter())
                            .map(|tile| {
                                let on_coop = |i: usize| matmul_coop(xs[i].clone(), &w, None, tile, Epilogue::Plain);
                                (tile, off_plain(time_and_read(sizes.repeats, on_coop)))
                            })
                            .collect(),
                        None => Vec::new(),
                    };
                    let (f16_s, f16_rel_rms) = (f16_run.map(|(s, _)| s), f16_run.map(|(_, e)| e));
                    let coop_s = coop_runs.iter().find(|(tile, _)| Some(*tile) == coop_tile).map(|(_, (s, _))| *s);
                    let coop_rel_rms = coop_runs.iter().map(|(_, (_, e))| *e).reduce(f64::max);
                    let coop_by_tile = (coop_runs.iter())
                        .map(|&(tile, (s, rel_rms))| CoopTileRun { tile, gflops: flops / s, rel_rms })
                        .collect();
                    rows.push(MatmulRow {
                        ty: ty.to_string(),
                        m,
                        k,
                        n,
                        packed: w.is_packed(),
                        packed_gflops: flops / packed_s,
                        f32_gflops: flops / f32_s,
                        ratio: f32_s / packed_s,
                        f16_gflops: f16_s.map(|s| flops / s),
                        f16_ratio_to_packed: f16_s.map(|s| packed_s / s),
                        f16_ratio_to_f32: f16_s.map(|s| f32_s / s),
                        coop_gflops: coop_s.map(|s| flops / s),
                        coop_ratio_to_packed: coop_s.map(|s| packed_s / s),
                        coop_tile,
                        coop_by_tile,
                        f16_rel_rms,
                        coop_rel_rms,
                        kernel_path: match w.is_packed() {
                            true => KernelPath::for_matmul(m, device),
                            false => KernelPath::F32,
                        },
                    });
                }
            }
        }
        Ok(rows)
    }

    /// The attention of the models, each flash kernel and the reference at each length of `sizes`.
    pub fn bench_attention_rows(device: &Device, sizes: &Sizes) -> Vec<AttentionRow> {
        let (h, d) = (sizes.attention_heads, sizes.attention_d);
        let ms = |t: KernelTiming| t.seconds * 1e3;
        bench_attention(device, &sizes.attention_l, d, h)
            .into_iter()
            .map(|t| AttentionRow {
                l: t.l,
                heads: h,
                head_dim: d,
                model_kernel: t.model_kernel,
                kernel_path: crate::kernels::attention::kernel_path(device, t.l, t.l, d),
                model_ms: ms(t.model),
                flash_ms: t.flash.map(ms),
                flash_tflops: t.flash.map(|f| 4.0 * (h * t.l * t.l * d) as f64 / f.seconds / 1e12),
                rows_ms: t.rows.map(ms),
                coop_ms: t.coop.map(ms),
                coop_tflops: t.coop.map(|c| 4.0 * (h * t.l * t.l * d) as f64 / c.seconds / 1e12),
                reference_ms: ms(t.reference),
                flash_speedup: t.flash.map(|f| t.reference.seconds / f.seconds),
                flash_bytes: (h * t.l * (d + 2) * size_of::<f32>()) as u64,
                reference_bytes: (h * t.l * t.l * size_of::<f32>()) as u64,
                flash_peak_bytes: t.flash.and_then(|f| f.peak_bytes),
                rows_peak_bytes: t.rows.and_then(|r| r.peak_bytes),
                coop_peak_bytes: t.coop.and_then(|c| c.peak_bytes),
                reference_peak_bytes: t.reference.peak_bytes,
                model_rel_rms: t.model.rel_rms,
                flash_rel_rms: t.flash.map(|f| f.rel_rms),
                rows_rel_rms: t.rows.map(|r| r.rel_rms),
                coop_rel_rms: t.coop.map(|c| c.rel_rms),
            })
            .collect()
    }

    /// One transformer call of `sizes.step_config` with random weights in f32, Q8_0 and Q4_0; each call's
    /// output is the next call's image input.
    pub fn bench_step(device: &Device, sizes: &Sizes) -> Result<Vec<StepRow>> {
        let config = &sizes.step_config;
        let (n_img, n_txt) = (sizes.step_image_tokens, sizes.step_text_tokens);
        let side = (n_img as f64).sqrt().ceil() as usize;
        let img_ids: Vec<f32> = (0..n_img).flat_map(|i| [0.0, (i / side) as f32, (i % side) as f32]).collect();
        let axes = config.axes_dim.len();
        let img_ids = Tensor::<2>::from_data(TensorData::new(img_ids, [n_img, axes]), device);
        let txt_ids = Tensor::<2>::zeros([n_txt, axes], device);
        let img = Tensor::<3>::from_data(
            TensorData::new(values(n_img * config.in_channels, 1, 1.0), [1, n_img, config.in_channels]),
            device,
        );
        let txt = Tensor::<3>::from_data(
            TensorData::new(values(n_txt * config.context_in_dim, 2, 1.0), [1, n_txt, config.context_in_dim]),
            device,
        );
        let y =
            Tensor::<2>::from_data(TensorData::new(values(config.vec_in_dim, 3, 1.0), [1, config.vec_in_dim]), device);
        let timesteps = Tensor::<1>::from_data(TensorData::new(vec![0.5f32], [1]), device);
        let guidance =
            config.guidance_embed.then(|| Tensor::<1>::from_data(TensorData::new(vec![2.5f32], [1]), device));

        // Loads the model from `random` (its blocks streamed from it when `streamed`), then times chained steps as
        // an edit runs them: the RoPE angles once, then each step; `sample` runs after the load and each step.
        let run_steps = |random: &RandomFlux, streamed: bool, sample: &mut dyn FnMut(&str)| -> Result<TimedSteps> {
            let flux = Flux::load_deferring(config, random, streamed.then_some(Layers::Blocks), device)?;
            let modulations = flux.modulations(flux.conditioning(timesteps.clone(), y.clone(), guidance.clone())?)?;
            sample("load");
            let rope = flux.rope(txt_ids.clone(), img_ids.clone())?;
            let stream: Option<&dyn Weights> = if streamed { Some(random) } else { None };
            let mut x = img.clone();
            let mut failure = None;
            let seconds = time(sizes.repeats, |_| {
                match flux.forward_rotated(x.clone(), txt.clone(), &rope, &modulations, stream) {
                    Ok(out) => x = out,
                    Err(e) => failure = Some(e),
                }
                sample("step");
                x.clone()
            });
            failure.map_or(Ok(TimedSteps { flux, modulations, rope, x, seconds }), Err)
        };

        let mut rows: Vec<StepRow> = Vec::new();
        // Rows to time again through the plain ops, after all others so that the dense weights they load do
        // not sit in the allocator's pools while the others' peaks are measured: (row, weights, streamed).
        let mut plain = Vec::new();
        for weights in &sizes.step_weights {
            let (name, streamed) = match weights.strip_suffix("-streamed") {
                Some(name) => (name, true),
                None => (weights.as_str(), false),
            };
            let (name, precision) = match name.strip_suffix("-f16") {
                Some(_) if !Precision::f16_available(device) => continue,
                Some(name) => (name, Precision::F16),
                None => (name, Precision::F32),
            };
            let quantized = match name {
                "F32" => None,
                "Q8_0" => Some(GgmlType::Q8_0),
                "Q4_0" => Some(GgmlType::Q4_0),
                other => return Err(Error::Invalid(format!("step weights are F32, Q8_0 or Q4_0, not {other}"))),
            };
            crate::device::release_free_pages(device);
            let mut meter = crate::device::MemoryMeter::default();
            let random = RandomFlux::new(config, quantized)?;
            let stream: Option<&dyn Weights> = if streamed { Some(&random) } else { None };
            let mut fast = || -> Result<(f64, StepLaunches, usize, u64)> {
                let t = run_steps(&random, streamed, &mut |phase| meter.sample(device, phase))?;
                let one_step = || t.flux.forward_rotated(t.x.clone(), txt.clone(), &t.rope, &t.modulations, stream);
                let launches =
                    count_step_launches(&t.flux, &t.modulations, &t.rope, (n_img, n_txt), streamed, one_step)?;
                let (packed_linears, device_bytes) = (t.flux.packed_linears(), t.flux.device_bytes() as u64);
                Ok((t.seconds, launches, packed_linears, device_bytes))
            };
            let (seconds, launches, packed_linears, device_bytes) = match precision {
                Precision::F16 => crate::kernels::path::with_path(KernelPath::SubgroupF16, fast)?,
                Precision::F32 => fast()?,
            };
            let (dispatches_per_step, activations, double_block_kernels, single_block_kernels) = launches;
            crate::device::release_free_pages(device);

            let ran_kernels = packed_linears > 0 || dispatches_per_step.is_some();
            if sizes.step_plain && precision == Precision::F32 && ran_kernels {
                plain.push((rows.len(), quantized, streamed));
            }
            crate::device::release_free_pages(device);
            let f32_seconds = rows.first().filter(|r| r.weights == "F32").map_or(seconds, |r| r.seconds);
            rows.push(StepRow {
                weights: quantized.map_or("F32".into(), |ty| ty.to_string()),
                streamed,
                precision: match precision {
                    Precision::F16 => Precision::F16,
                    Precision::F32 => Precision::of(device),
                },
                kernel_path: match (precision, packed_linears) {
                    (_, 0) => KernelPath::F32,
                    (Precision::F16, _) => KernelPath::SubgroupF16,
                    (Precision::F32, _) => KernelPath::for_matmul(n_img + n_txt, device),
                },
                packed_linears,
                device_bytes,
                peak_device_bytes: meter.peak_bytes,
                seconds,
                ratio_to_f32: seconds / f32_seconds,
                plain_seconds: None,
                speedup_over_plain: None,
                dispatches_per_step,
                activation_bytes_per_step: activations.map(|a| a.bytes),
                activation_launches_per_step: activations.map(|a| a.launches as usize),
                activation_bytes_minimum: activation_bytes_minimum(config, n_img, n_txt),
                double_block_kernels,
                single_block_kernels,
            });
        }
        // The same steps with our kernels off: weights dequantized to dense f32, burn's ops only.
        for (row, quantized, streamed) in plain {
            let random = RandomFlux::new(config, quantized)?;
            let seconds = crate::kernels::with_plain_ops(|| run_steps(&random, streamed, &mut |_| {}))?.seconds;
            crate::device::release_free_pages(device);
            rows[row].plain_seconds = Some(seconds);
            rows[row].speedup_over_plain = Some(seconds / rows[row].seconds);
        }
        Ok(rows)
    }

    /// Runs every benchmark of `sizes` on `device`.
    pub fn run(device: &Device, backend: &str, adapter: Option<String>, sizes: Sizes) -> Result<Report> {
        let matmul = bench_matmul(device, &sizes)?;
        let attention = bench_attention_rows(device, &sizes);
        let step = bench_step(device, &sizes)?;
        let cache = bench_cache(device, &sizes)?;
        let previews = bench_previews(device, &sizes)?;
        Ok(Report { cache, previews, ..Report::new(backend, adapter, device, sizes, matmul, attention, step) })
    }

    /// A text-to-image edit on the step model with Q8_0 weights (random text conditioning, noise and weights):
    /// what [`bench_cache`] and [`bench_previews`] time.
    struct BenchEdit {
        flux: Flux,
        conditioning: Conditioning,
        noise: Tensor<3>,
        /// Latent pixels per side.
        latent_side: usize,
        device: Device,
    }

    /// What one [`BenchEdit::run`] measured.
    struct EditRun {
        cache: StepCache,
        /// Seconds of all its steps.
        seconds: f64,
        /// Buffers read back during the steps, and by the whole edit.
        step_readbacks: u64,
        readbacks: u64,
    }

    /// Where [`BenchEdit::run`] draws a preview after each step.
    struct PreviewScreen {
        gpu: crate::device::GpuHandles,
        display: Display,
        target: TextureTarget,
    }

    impl BenchEdit {
        fn new(sizes: &Sizes, steps: usize, device: &Device) -> Result<Self> {
            let config = &sizes.step_config;
            let side = (sizes.step_image_tokens as f64).sqrt() as usize;
            let random = RandomFlux::new(config, Some(GgmlType::Q8_0))?;
            let flux = Flux::load(config, &random, device)?;
            let n_txt = sizes.step_text_tokens;
            let text = TextConditioning {
                t5: Tensor::from_data(
                    TensorData::new(values(n_txt * config.context_in_dim, 4, 1.0), [1, n_txt, config.context_in_dim]),
                    device,
                ),
                pooled: Tensor::from_data(
                    TensorData::new(values(config.vec_in_dim, 5, 1.0), [1, config.vec_in_dim]),
                    device,
                ),
            };
            let noise = Tensor::<3>::from_data(
                TensorData::new(values(side * side * config.in_channels, 6, 1.0), [1, side * side, config.in_channels]),
                device,
            );
            let sigmas = kontext::sampler(noise.clone(), steps).step_sigmas().to_vec();
            let conditioning =
                Conditioning::new(&flux, text, References::none(), 2 * side, 2 * side, 2.5, &sigmas, device)?;
            Ok(Self { flux, conditioning, noise, latent_side: 2 * side, device: device.clone() })
        }

        /// Runs the edit for `steps` steps with `cache`; `wait` waits for the queue after each step (as the app
        /// does) and `previews` draws each step's latents first. Ends with the final latents read back.
        fn run(
            &self,
            steps: usize,
            cache: CacheConfig,
            wait: bool,
            previews: Option<&PreviewScreen>,
        ) -> Result<EditRun> {
            let mut sampler = kontext::sampler(self.noise.clone(), steps);
            let mut cache = StepCache::new(cache, steps);
            let readbacks_before = crate::device::readbacks();
            let start = Instant::now();
            while !sampler.is_done() {
                let mut denoiser = KontextDenoiser {
                    flux: &self.flux,
                    conditioning: &self.conditioning,
                    streamed: None,
                    cache: &mut cache,
                };
                futures_lite::future::block_on(sampler.step(&mut denoiser))?;
                if let Some(screen) = previews {
                    let (width, height) = (self.latent_side, self.latent_side);
                    let picture =
                        Picture::Latents { packed: sampler.latents(), width, height, projection: &PREVIEW_PROJECTION };
                    screen.display.draw(&screen.gpu, picture, &screen.target.view, screen.target.size)?;
                }
                if wait {
                    futures_lite::future::block_on(crate::device::queue_done(&self.device))?;
                }
            }
            let step_readbacks = crate::device::readbacks() - readbacks_before;
            futures_lite::future::block_on(crate::device::read_f32(sampler.into_latents()))?;
            let seconds = start.elapsed().as_secs_f64();
            Ok(EditRun { cache, seconds, step_readbacks, readbacks: crate::device::readbacks() - readbacks_before })
        }
    }

    /// The colour map of the bench's previews: each colour a mix of the first channels around grey.
    const PREVIEW_PROJECTION: Projection = {
        let mut projection = [[0.0; 17]; 3];
        let mut c = 0;
        while c < 3 {
            projection[c][c] = 0.25;
            projection[c][c + 3] = -0.125;
            projection[c][16] = 0.5;
            c += 1;
        }
        projection
    };

    /// A text-to-image edit of [`Sizes::cache_steps`] steps on the step model with Q8_0 weights (random text
    /// conditioning, noise and weights), once per [`Sizes::cache_settings`], side by side; a calibrating run of
    /// the same edit first measures the ratios the `mag:` settings use.
    pub fn bench_cache(device: &Device, sizes: &Sizes) -> Result<Vec<CacheRow>> {
        let steps = sizes.cache_steps;
        if steps == 0 || sizes.cache_settings.is_empty() {
            return Ok(Vec::new());
        }
        let edit = BenchEdit::new(sizes, steps, device)?;
        // The first edit, a warm-up, is not timed.
        edit.run(steps, CacheConfig::None, false, None)?;
        let ratios = edit.run(steps, CacheConfig::Calibrate, false, None)?.cache.measured_ratios().to_vec();
        let mut rows: Vec<CacheRow> = Vec::new();
        for setting in &sizes.cache_settings {
            let EditRun { cache, seconds, .. } =
                edit.run(steps, CacheConfig::parse(setting)?.with_ratios(ratios.clone()), false, None)?;
            let reused_steps = cache.reused_steps().to_vec();
            let baseline = rows.first().map_or(seconds, |r| r.seconds);
            rows.push(CacheRow {
                cache: setting.clone(),
                steps,
                evaluations: steps - reused_steps.len(),
                reused_steps,
                seconds,
                speedup: baseline / seconds,
            });
        }
        Ok(rows)
    }

    /// The edit of [`bench_cache`], [`Sizes::preview_steps`] long, without previews and with one after every
    /// step, each waiting for the queue after every step, side by side after an untimed warm-up; `None` on the
    /// CPU or without preview steps.
    pub fn bench_previews(device: &Device, sizes: &Sizes) -> Result<Option<PreviewRow>> {
        let steps = sizes.preview_steps;
        if steps == 0 || !matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(_)) {
            return Ok(None);
        }
        let edit = BenchEdit::new(sizes, steps, device)?;
        let gpu = crate::device::wgpu_handles()?;
        // The output image's size: 8 pixels per latent pixel.
        let side = (edit.latent_side * 8) as u32;
        let screen = PreviewScreen {
            display: Display::new(&gpu, TextureTarget::FORMAT),
            target: TextureTarget::new(&gpu, (side, side)),
            gpu,
        };
        edit.run(steps, CacheConfig::None, true, Some(&screen))?;
        let off = edit.run(steps, CacheConfig::None, true, None)?;
        let on = edit.run(steps, CacheConfig::None, true, Some(&screen))?;
        let per_step = |run: &EditRun| run.seconds / steps as f64;
        Ok(Some(PreviewRow {
            steps,
            seconds_per_step_off: per_step(&off),
            seconds_per_step_on: per_step(&on),
            overhead: per_step(&on) / per_step(&off) - 1.0,
            step_readbacks_on: on.step_readbacks,
            step_readbacks_off: off.step_readbacks,
            readbacks_on: on.readbacks,
        }))
    }

    /// A model loaded for the step and timed ([`bench_step`]): what the launch counts run on.
    struct TimedSteps {
        flux: Flux,
        modulations: Modulations,
        rope: Rope,
        /// The last step's output.
        x: Tensor<3>,
        seconds: f64,
    }

    /// What [`count_step_launches`] counted: launches of one step and the activation bytes our kernels bound in
    /// it, and the launches of one double and one single block by kernel.
    type StepLaunches = (Option<usize>, Option<ActivationBytes>, Vec<(String, usize)>, Vec<(String, usize)>);

    /// Launches of one step (`step`) and of the first double and single block within it, after the timed steps
    /// (so that autotuning is over); `None`/empty where nothing launches (the CPU) and, for the blocks, when
    /// they stream. The blocks run on hidden states of the step's shapes, with the step's
    /// modulations and RoPE angles.
    fn count_step_launches(
        flux: &Flux,
        modulations: &Modulations,
        rope: &Rope,
        tokens: (usize, usize),
        streamed: bool,
        step: impl Fn() -> Result<Tensor<3>>,
    ) -> Result<StepLaunches> {
        // The timed steps ran every shape here (autotuning is over). The readback that waits for the outputs
        // launches a kernel of its own: it runs after the count.
        let count = |run: &dyn Fn() -> Result<Vec<Tensor<3>>>| -> Result<Launches> {
            let (outputs, launches) = count_launches(run);
            outputs?.into_iter().for_each(|t| _ = finish(t));
            Ok(launches)
        };
        let ((output, activations), per_step) = count_launches(|| count_activation_bytes(&step));
        finish(output?);
        if per_step.total() == 0 {
            return Ok((None, None, Vec::new(), Vec::new()));
        }
        let (n_img, n_txt) = tokens;
        let device = rope.cos.device();
        let hidden = flux.config.hidden_size;
        let states = |n: usize, salt: u32| {
            Tensor::<3>::from_data(TensorData::new(values(n * hidden, salt, 1.0), [1, n, hidden]), &device)
        };
        let (img, txt, joint) = (states(n_img, 4), states(n_txt, 5), states(n_txt + n_img, 6));
        let (double, single) = match (streamed, flux.double_blocks.first(), flux.single_blocks.first()) {
            (false, Some(double), Some(single)) => {
                let double = count(&|| {
                    let (img, txt) = double.forward(img.clone(), txt.clone(), &modulations.double[0], rope)?;
                    Ok(vec![img, txt])
                })?;
                // As in the step's chain of single blocks: the input normalised by the block before, the next
                // block's LayerNorm in this one's residual add.
                let m = &modulations.single[0];
                let normed = m.norm_modulate(joint.clone());
                let single = count(&|| {
                    let next = (&m.shift, &m.scale);
                    let (x, normed) = single.forward_normed(joint.clone(), normed.clone(), m, rope, next)?;
                    Ok(vec![x, normed])
                })?;
                (double.ranked(), single.ranked())
            }
            _ => (Vec::new(), Vec::new()),
        };
        Ok((Some(per_step.total()), Some(activations), double, single))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu;
    use crate::model::flux::Flux;

    #[test]
    fn random_weights_load_as_a_flux_of_their_config() {
        let config = Sizes::tiny().step_config;
        let flux = Flux::load(&config, &RandomFlux::new(&config, Some(GgmlType::Q8_0)).unwrap(), &cpu()).unwrap();
        assert_eq!((flux.double_blocks.len(), flux.single_blocks.len()), (1, 1));
        let weights = RandomFlux::new(&config, Some(GgmlType::Q4_0)).unwrap();
        let (ty, shape, bytes) = weights.raw_block("img_in.weight").unwrap().unwrap();
        assert_eq!((ty, shape.as_slice(), bytes.len()), (GgmlType::Q4_0, &[128, 64][..], 128 * 2 * 18));
        assert!(weights.raw_block("img_in.bias").is_none());
        let err = RandomFlux::new(&config, Some(GgmlType::Q6_K)).err().unwrap().to_string();
        assert_eq!(err, "random weights quantize to Q8_0 or Q4_0, not Q6_K");
    }

    #[test]
    fn the_minimum_counts_each_activation_twice() {
        // hidden 128, MLP 512, 64 channels in and 64 text features, one block of each kind; 64 + 32 tokens:
        // inputs 4096 + 2048, embedders 96·128, double 96·1792, single 96·1408, final 64·192 values.
        let config = Sizes::tiny().step_config;
        let values = 4096 + 2048 + 12_288 + 172_032 + 135_168 + 12_288;
        assert_eq!(activation_bytes_minimum(&config, 64, 32), 2 * 4 * values);
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn kernels_off_their_reference_are_named() {
        let sizes = Sizes::tiny().only(&["matmul".into(), "attention".into()]).unwrap();
        let mut report = run(&cpu(), "cpu", None, sizes).unwrap();
        assert_eq!(report.off_reference(), Vec::<String>::new());
        assert_eq!(report.attention[0].model_rel_rms, 0.0, "on the CPU the model's attention is the reference");
        // Controls: a coop matmul at 2e-2, a flash kernel that gave NaN, an f32-path attention at 2e-4.
        report.matmul[1].coop_rel_rms = Some(2e-2);
        report.attention[0].flash_rel_rms = Some(f64::NAN);
        report.attention[0].model_rel_rms = 2e-4;
        assert_eq!(
            report.off_reference(),
            [
                "Q4_0 matmul 32×256→256, coop: relative RMS 2.00e-2 to its reference (at most 1e-2)",
                "attention at L = 128, the model's (scores): relative RMS 2.00e-4 to its reference (at most 1e-4)",
                "attention at L = 128, flash: relative RMS NaN to its reference (at most 1e-4)",
            ]
        );
    }

    #[test]
    fn random_q4_k_blocks_dequantize_to_finite_values() {
        let bytes = random_q4_k(512, 1).unwrap();
        let values = crate::formats::dequantize(GgmlType::Q4_K, &bytes, 512).unwrap();
        assert!(values.iter().all(|v| v.is_finite() && v.abs() < 1.0));
        assert!(random_q4_k(100, 1).is_err());
    }
}
