//! Scaled dot-product attention `softmax(q·kᵀ / √d)·v` over `[b, heads, L, d]`: online-softmax WGSL kernels
//! (memory O(L·d), never an L×L buffer) on wgpu, and their reference twin in plain tensor ops ([`reference`],
//! the materialised scores) everywhere else.
//!
//! Four ways on wgpu, chosen by [`AttentionKernel::current`]: `scores` (the reference in blocks whose scores
//! stay within [`SCORE_BLOCK_BYTES`], through burn's matmul and softmax), and three flash kernels: `flash`
//! (`shaders/flash_attention.wgsl`, unrolled for a compile-time head width in a layout chosen for the adapter,
//! [`super::flash`]), `rows` (`shaders/flash_attention_rows.wgsl`, one query row per invocation, its
//! accumulator in a per-invocation array) and `coop` (`shaders/flash_attention_coop.wgsl`, on cooperative
//! matrices, [`super::coop_attention`]). The default, `auto`, runs `coop` where the kernel path is `coop` and the
//! heads fit it, else what measured fastest: `flash` on CPU adapters (lavapipe), and on GPUs (measured on an H200
//! before `flash` existed) `scores` where a block holds whole heads and `rows` otherwise. `kontext bench` times
//! them side by side; the README has the figures.
//!
//! The text encoders' attention has an additive bias on its scores (T5's relative-position bias, CLIP's causal
//! mask): on wgpu [`biased_attention`] runs it on the `flash` kernel with the bias bound beside the keys, so no
//! burn matmul is compiled or run for it and no score buffer exists.

use burn::cubecl::prelude::CubeCount;
use burn::tensor::activation::softmax;
use burn::tensor::{DType, FloatDType, Tensor};

use super::coop_attention::CoopAttention;
use super::flash::{Adapter, FlashLayout, FlashShape};
use super::path::KernelPath;
use super::{LLVMPIPE_LOOP_BUDGET, WgslKernel, cube_tensor, cube_tensor_of, grid, params, tensor_from_handle};
use crate::device::{is_software_adapter, software_adapter};
use crate::{Error, Result};

const FLASH_ROWS: WgslKernel =
    WgslKernel::fixed("flash_attention_rows", include_str!("../../shaders/flash_attention_rows.wgsl"));

/// Environment variable that picks the attention natively: `auto` (the default), `scores`, `rows`, `flash` or
/// `coop`.
pub const KERNEL_ENV: &str = "KONTEXT_ATTENTION";

/// Largest score block `[heads, rows, lk]` of the `scores` path, in bytes: WebGPU's default storage binding.
pub const SCORE_BLOCK_BYTES: usize = 128 << 20;

/// How attention runs on wgpu.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKernel {
    /// `Coop` where it runs; else on CPU adapters `Flash`; on GPUs `Scores` where one block of
    /// [`SCORE_BLOCK_BYTES`] holds at least one head's whole score matrix, `Rows` otherwise (where blocks of query
    /// rows would re-read a head's keys and values once per block). Each is what measured fastest there
    /// (`kontext bench`, the README).
    Auto,
    /// The reference in blocks of at most [`SCORE_BLOCK_BYTES`] of scores ([`blocked_reference`]).
    Scores,
    /// The flash kernel with one query row per invocation (`shaders/flash_attention_rows.wgsl`).
    Rows,
    /// The flash kernel unrolled for a compile-time head width and shaped for the adapter
    /// (`shaders/flash_attention.wgsl`, [`super::flash`]).
    Flash,
    /// The flash kernel on cooperative matrices ([`super::coop_attention`]), where the kernel path is `coop`
    /// and the heads fit it; elsewhere what `auto` would run.
    Coop,
}

impl AttentionKernel {
    /// [`KERNEL_ENV`] where set (natively), else [`AttentionKernel::Auto`].
    ///
    /// Panics on a value that names no kernel, so that a typo never measures the wrong one.
    pub fn current() -> Self {
        #[cfg(not(target_arch = "wasm32"))]
        if let Ok(name) = std::env::var(KERNEL_ENV) {
            return match name.trim() {
                "auto" => Self::Auto,
                "scores" => Self::Scores,
                "rows" => Self::Rows,
                "flash" => Self::Flash,
                "coop" => Self::Coop,
                other => panic!("{KERNEL_ENV}={other}: the attention kernels are auto, scores, rows, flash and coop"),
            };
        }
        Self::Auto
    }

    /// The name [`KERNEL_ENV`] takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Scores => "scores",
            Self::Rows => "rows",
            Self::Flash => "flash",
            Self::Coop => "coop",
        }
    }

    /// The kernel that runs for `lq` queries and `lk` keys on a `software` (CPU) adapter or a GPU, where the
    /// `coop` kernel can run or not: [`AttentionKernel::Auto`] and [`AttentionKernel::Coop`] resolved as they
    /// say, with blocks of `score_block_bytes`; every other kernel is itself.
    pub fn resolve(self, lq: usize, lk: usize, score_block_bytes: usize, software: bool, coop: bool) -> Self {
        match self {
            Self::Auto | Self::Coop if coop => Self::Coop,
            Self::Auto | Self::Coop if software => Self::Flash,
            Self::Auto | Self::Coop if lq.saturating_mul(lk).saturating_mul(size_of::<f32>()) <= score_block_bytes => {
                Self::Scores
            }
            Self::Auto | Self::Coop => Self::Rows,
            kernel => kernel,
        }
    }
}

/// Query rows per workgroup of the `rows` kernel (`ROWS` in its shader).
const ROWS_PER_GROUP: usize = 64;
/// vec4s per key or value tile of the `rows` kernel (`TILE_VECS` in its shader).
const ROWS_TILE_VECS: usize = 480;
/// Most keys per tile of the `rows` kernel (`KEYS_MAX` in its shader).
const ROWS_KEYS_MAX: usize = 64;

/// Widest head the `flash` kernel takes (the VAE's single 512-wide head among them); wider heads use
/// [`reference`].
pub const HEAD_DIM_MAX: usize = 512;

/// Widest head the `rows` kernel takes (`HEAD_VECS_MAX` in its shader); wider heads take `flash`.
const ROWS_HEAD_DIM_MAX: usize = 256;

/// Attention as the models use it: through [`AttentionKernel::current`] where a flash kernel applies (wgpu,
/// head width at most [`HEAD_DIM_MAX`], tiles that fit the workgroup memory), [`reference`] otherwise.
///
/// `q` `[b, h, lq, d]`, `k` `[b, h, lk, d]`, `v` `[b, h, lk, d]` → `[b, h, lq, d]`; no mask. The inputs are f32,
/// or f16 (the heads of a model computing in f16): the `flash` kernel reads those as they are, every other
/// path casts them to f32 first. The result is f32.
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    attention_with(AttentionKernel::current(), q, k, v)
}

/// [`attention`] through `kernel`.
/// With our kernels off ([`super::with_plain_ops`]), the reference in bounded blocks of scores.
pub fn attention_with(kernel: AttentionKernel, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    if super::plain_ops() {
        let block = SCORE_BLOCK_BYTES.min(crate::device::max_binding_bytes(&q.device()) as usize);
        return blocked_reference(widened(q), widened(k), widened(v), block);
    }
    gpu_attention(kernel, q.clone(), k.clone(), v.clone())
        .unwrap_or_else(|_| reference(widened(q), widened(k), widened(v)))
}

/// `t` in f32: cast where it is f16.
fn widened(t: Tensor<4>) -> Tensor<4> {
    match t.dtype() {
        DType::F16 => t.cast(FloatDType::F32),
        _ => t,
    }
}

/// Whether [`attention`] on `device` takes the `flash` kernel for `lq` queries and `lk` keys of width `d`, the
/// one plain kernel that reads f16 heads as they are (the others would widen them again). The model writes f16
/// heads where [`kernel_path`] is not `f32`: this kernel computing in f16, or the `coop` kernel.
pub fn reads_f16_heads(device: &burn::tensor::Device, lq: usize, lk: usize, d: usize) -> bool {
    if !super::packs_on(device) || super::plain_ops() || d > HEAD_DIM_MAX {
        return false;
    }
    kernel_on(device, lq, lk, d) == AttentionKernel::Flash
}

/// The kernel path [`attention`] takes on `device` for `lq` queries and `lk` keys of width `d`: `coop` where it
/// runs the kernel on cooperative matrices, `subgroup-f16` where its kernel reads f16 heads, else `f32`.
pub fn kernel_path(device: &burn::tensor::Device, lq: usize, lk: usize, d: usize) -> KernelPath {
    let ours = super::packs_on(device) && !super::plain_ops() && d <= HEAD_DIM_MAX;
    match (ours.then(|| kernel_on(device, lq, lk, d)), KernelPath::plain(device)) {
        (Some(AttentionKernel::Coop), _) => KernelPath::Coop,
        (Some(AttentionKernel::Flash), KernelPath::SubgroupF16) => KernelPath::SubgroupF16,
        _ => KernelPath::F32,
    }
}

/// The kernel [`attention`] runs on the wgpu `device` for `lq` queries and `lk` keys of width `d` (heads up to
/// [`HEAD_DIM_MAX`]).
pub fn kernel_on(device: &burn::tensor::Device, lq: usize, lk: usize, d: usize) -> AttentionKernel {
    let block = SCORE_BLOCK_BYTES.min(crate::device::max_binding_bytes(device) as usize);
    let coop = coop_variant(device, lk, d, false, None).is_some();
    kernel_for(AttentionKernel::current(), lq, lk, d, block, software_adapter(device), coop)
}

/// The `coop` kernel for `lk` keys of width `d` (in f16 with `f16_inputs`) on `device`, generated for the
/// adapter's subgroups or, forced, for `subgroups` (then whatever the process-wide kernel path): where the path
/// is `coop` and the kernel takes these heads, on llvmpipe within the keys one dispatch may cover.
fn coop_variant(
    device: &burn::tensor::Device,
    lk: usize,
    d: usize,
    f16_inputs: bool,
    subgroups: Option<usize>,
) -> Option<CoopAttention> {
    let fragment = crate::device::coop_fragment()?;
    let path_is_coop = subgroups.is_some() || KernelPath::of(device) == KernelPath::Coop;
    if !super::packs_on(device) || super::plain_ops() || !path_is_coop || !CoopAttention::takes(d) {
        return None;
    }
    let subgroup_max = subgroups.unwrap_or_else(|| crate::device::subgroup_max_size().unwrap_or(32));
    let variant = CoopAttention::new(fragment, subgroup_max, d, f16_inputs);
    (!crate::device::llvmpipe(device) || lk <= variant.llvmpipe_max_keys()).then_some(variant)
}

/// The kernel `kernel` resolves to ([`AttentionKernel::resolve`]) for heads of width `d`: heads wider than the
/// `rows` kernel takes go to `flash`.
fn kernel_for(
    kernel: AttentionKernel,
    lq: usize,
    lk: usize,
    d: usize,
    block: usize,
    software: bool,
    coop: bool,
) -> AttentionKernel {
    match kernel.resolve(lq, lk, block, software, coop) {
        AttentionKernel::Rows if d > ROWS_HEAD_DIM_MAX => AttentionKernel::Flash,
        kernel => kernel,
    }
}

/// Device memory the `auto` attention adds on a GPU for `heads` heads of `lq` queries and `lk` keys where it
/// takes the `scores` path, with blocks of [`SCORE_BLOCK_BYTES`] within `max_binding_bytes`: one block of scores
/// and its softmax; 0 where it runs a flash kernel. (On CPU adapters it runs the flash kernel: this bounds it.)
pub fn auto_score_bytes(heads: usize, lq: usize, lk: usize, max_binding_bytes: u64) -> u64 {
    let block = SCORE_BLOCK_BYTES.min(usize::try_from(max_binding_bytes).unwrap_or(usize::MAX));
    let head_scores = lq.saturating_mul(lk).saturating_mul(size_of::<f32>());
    match AttentionKernel::Auto.resolve(lq, lk, block, false, false) {
        AttentionKernel::Scores => 2 * (block / head_scores.max(1)).clamp(1, heads.max(1)) as u64 * head_scores as u64,
        _ => 0,
    }
}

/// The reference computed for blocks of query rows (of one or more heads) whose scores fit `max_score_bytes`,
/// so that its memory stays bounded at any length: the same values as [`reference`] (each row's softmax sees
/// all of its keys).
pub fn blocked_reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, max_score_bytes: usize) -> Tensor<4> {
    let [b, h, lq, d] = q.dims();
    let lk = k.dims()[2];
    let heads = b * h;
    let rows_fit = (max_score_bytes / (lk * size_of::<f32>())).max(1);
    let (heads_per_block, rows_per_block) = match rows_fit >= lq {
        true => ((rows_fit / lq).min(heads), lq),
        false => (1, rows_fit),
    };
    if heads_per_block == heads && rows_per_block == lq {
        return reference(q, k, v);
    }
    let (q, k, v) = (q.reshape([1, heads, lq, d]), k.reshape([1, heads, lk, d]), v.reshape([1, heads, lk, d]));
    let head_blocks = (0..heads).step_by(heads_per_block).map(|first| {
        let n = heads_per_block.min(heads - first);
        let (q, k, v) = (q.clone().narrow(1, first, n), k.clone().narrow(1, first, n), v.clone().narrow(1, first, n));
        let row_blocks = (0..lq).step_by(rows_per_block).map(|row| {
            reference(q.clone().narrow(2, row, rows_per_block.min(lq - row)), k.clone(), v.clone()) // [1, n, rows, d]
        });
        Tensor::cat(row_blocks.collect(), 2)
    });
    Tensor::cat(head_blocks.collect(), 1).reshape([b, h, lq, d])
}

/// The materialised `softmax(q·kᵀ / √d)·v`: the kernel's reference twin, with a `[b, h, lq, lk]` score buffer.
pub fn reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let d = q.dims()[3];
    let scores = q.matmul(k.transpose()) * (1.0 / (d as f64).sqrt()); // [b, h, lq, lk]
    softmax(scores, 3).matmul(v)
}

/// `softmax(q·kᵀ·scale + bias)·v`: attention with an additive bias on its scores, as the text encoders have it
/// (T5's relative-position bias, unscaled; CLIP's causal mask, `f32::MIN` above the diagonal, scaled by 1/√d).
/// `q` `[b, h, lq, d]`, `k` and `v` `[b, h, lk, d]`, `bias` `[h or 1, lq, lk]` (the same for every batch and,
/// with one, for every head) → `[b, h, lq, d]` in f32.
///
/// On wgpu the `flash` kernel adds the bias to its f32 scores, keys and values streamed as [`attention`]'s are
/// (no score buffer); elsewhere, or with our kernels off, [`biased_reference`].
///
/// Panics where the bias has another shape.
pub fn biased_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, bias: Tensor<3>, scale: f32) -> Tensor<4> {
    let ([_, h, lq, _], lk) = (q.dims(), k.dims()[2]);
    let [bias_heads, rows, keys] = bias.dims();
    assert!(
        (bias_heads == 1 || bias_heads == h) && (rows, keys) == (lq, lk),
        "an attention bias {:?} for {h} heads of {lq} queries and {lk} keys",
        bias.dims()
    );
    if !super::plain_ops() {
        let biased = ScoreBias { bias: bias.clone(), scale };
        if let Ok(out) = run(AttentionKernel::Flash, Forced::Nothing, Some(biased), q.clone(), k.clone(), v.clone()) {
            return out;
        }
    }
    biased_reference(widened(q), widened(k), widened(v), bias, scale)
}

/// The materialised `softmax(q·kᵀ·scale + bias)·v` with `bias` `[h or 1, lq, lk]`: [`biased_attention`]'s
/// reference twin.
pub fn biased_reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, bias: Tensor<3>, scale: f32) -> Tensor<4> {
    let scores = q.matmul(k.transpose()) * scale as f64 + bias.unsqueeze::<4>(); // [b, h, lq, lk]
    softmax(scores, 3).matmul(v)
}

/// [`biased_attention`]'s bias on the scores, and the scale of `q·kᵀ`.
struct ScoreBias {
    /// `[h or 1, lq, lk]`.
    bias: Tensor<3>,
    scale: f32,
}

/// The flash kernel: one pass, keys and values streamed through workgroup memory in tiles.
///
/// Errors, without touching the GPU, when the tensors are not burn wgpu f32 tensors, when the shapes do not
/// agree (`q` `[b, h, lq, d]`, `k` and `v` `[b, h, lk, d]`), when a dimension is zero, when `d` exceeds
/// [`HEAD_DIM_MAX`], or when no tiles fit the device's workgroup memory.
pub fn flash_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Result<Tensor<4>> {
    gpu_attention(AttentionKernel::Flash, q, k, v)
}

/// Attention on wgpu through `kernel`, with [`flash_attention`]'s checks: the flash kernels, or for
/// [`AttentionKernel::Scores`] [`blocked_reference`] within [`SCORE_BLOCK_BYTES`] and the binding limit, or
/// for [`AttentionKernel::Auto`] the one of those two it names for these shapes.
pub fn gpu_attention(kernel: AttentionKernel, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Result<Tensor<4>> {
    run(kernel, Forced::Nothing, None, q, k, v)
}

/// The `flash` kernel in `layout` rather than the adapter's own, with [`flash_attention`]'s checks; an error
/// where the adapter cannot run that layout (several invocations per row without subgroups of that size).
pub fn flash_attention_in(layout: FlashLayout, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Result<Tensor<4>> {
    run(AttentionKernel::Flash, Forced::Layout(layout), None, q, k, v)
}

/// The `coop` kernel as generated for subgroups of `subgroup_max` invocations rather than the adapter's
/// ([`CoopAttention::new`]), with [`flash_attention`]'s checks: its workgroup is four such subgroups, so its
/// softmax takes 1, 2 or 4 invocations per row ([`CoopAttention::lanes`]); on an adapter with narrower subgroups
/// the extra ones compute rows again. Tests run every variant real adapters take on any adapter with the path.
/// An error where `subgroup_max` is narrower than the adapter's subgroups (four would not cover the rows) or
/// wider than [`crate::device::COOP_SUBGROUP_MAX`], where the adapter has no cooperative matrices, or where the
/// kernel does not take these heads or (on llvmpipe) this many keys.
pub fn coop_attention_for(subgroup_max: usize, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Result<Tensor<4>> {
    run(AttentionKernel::Coop, Forced::CoopSubgroups(subgroup_max), None, q, k, v)
}

/// A kernel variant a caller takes over the one the adapter would.
#[derive(Clone, Copy)]
enum Forced {
    Nothing,
    /// The `flash` kernel's layout.
    Layout(FlashLayout),
    /// The subgroup width the `coop` kernel is generated for; the `coop` kernel or an error.
    CoopSubgroups(usize),
}

/// Attention through `kernel` (in the variant `forced`); with a `bias`, always the `flash` kernel.
fn run(
    kernel: AttentionKernel,
    forced: Forced,
    bias: Option<ScoreBias>,
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
) -> Result<Tensor<4>> {
    let [b, h, lq, d] = q.dims();
    let lk = k.dims()[2];
    if k.dims() != [b, h, lk, d] || v.dims() != [b, h, lk, d] {
        return Err(Error::Invalid(format!(
            "attention: query {:?}, key {:?} and value {:?} do not agree (expected [b, h, L, d] with one b, h, d)",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    let indexable = b * h * lq.max(lk) * d <= u32::MAX as usize;
    if [b, h, lq, lk, d].contains(&0) || d > HEAD_DIM_MAX || !indexable {
        return Err(Error::Invalid(format!(
            "flash attention takes non-empty shapes under 2³² values with head width at most {HEAD_DIM_MAX}, not query {:?} and key {:?}",
            q.dims(),
            k.dims()
        )));
    }
    let not_wgpu = || Error::Invalid("flash attention runs on burn's wgpu backend with f32 or f16 tensors only".into());
    let device = q.device();
    let score_block_bytes = SCORE_BLOCK_BYTES.min(crate::device::max_binding_bytes(&device) as usize);
    let software = software_adapter(&device);
    let all_f16 = [&q, &k, &v].iter().all(|t| t.dtype() == DType::F16);
    let coop_subgroups = match forced {
        Forced::CoopSubgroups(width) => Some(width),
        _ => None,
    };
    let coop = coop_variant(&device, lk, d, all_f16, coop_subgroups).filter(|_| bias.is_none());
    if let Some(width) = coop_subgroups {
        let adapter_width = crate::device::subgroup_max_size().unwrap_or(0);
        if width < adapter_width || width > crate::device::COOP_SUBGROUP_MAX as usize {
            return Err(Error::Invalid(format!(
                "the coop attention for subgroups of {width}: its four subgroups must cover its rows, so from the adapter's {adapter_width} to {}",
                crate::device::COOP_SUBGROUP_MAX
            )));
        }
        if coop.is_none() {
            return Err(Error::Invalid(format!(
                "the coop attention needs cooperative matrices, heads of 16 to {} in steps of 16 and (on llvmpipe) keys within one dispatch, not {lk} keys of width {d}",
                super::coop_attention::HEAD_DIM_MAX
            )));
        }
    }
    let kernel = match bias {
        Some(_) => AttentionKernel::Flash,
        None => kernel_for(kernel, lq, lk, d, score_block_bytes, software, coop.is_some()),
    };
    if kernel == AttentionKernel::Scores {
        if !super::packs_on(&device) {
            return Err(not_wgpu());
        }
        return Ok(blocked_reference(widened(q), widened(k), widened(v), score_block_bytes));
    }
    // f16 inputs go to the `flash` and `coop` kernels as they are, to `rows` widened.
    let f16_inputs = matches!(kernel, AttentionKernel::Flash | AttentionKernel::Coop) && all_f16;
    let bound = |t: Tensor<4>| {
        match f16_inputs {
            true => cube_tensor_of(t, DType::F16),
            false => cube_tensor(widened(t)),
        }
        .ok()
    };
    let (Some(q), Some(k), Some(v)) = (bound(q), bound(k), bound(v)) else { return Err(not_wgpu()) };
    let (scale, bias) = match bias {
        Some(ScoreBias { bias, scale }) => {
            let per_head = bias.dims()[0] > 1;
            (scale, Some((cube_tensor(bias).map_err(|_| not_wgpu())?, per_head)))
        }
        None => ((1.0 / (d as f64).sqrt()) as f32, None),
    };

    let client = &q.client;
    let out = client.empty(b * h * lq * d * size_of::<f32>());
    if let (AttentionKernel::Coop, Some(variant)) = (kernel, coop) {
        let (x, y) = grid(b * h * lq.div_ceil(super::coop_attention::ROWS));
        let shape = [(b * h) as u32, lq as u32, lk as u32, scale.to_bits()];
        let buffers = vec![
            q.handle.clone().binding(),
            k.handle.clone().binding(),
            v.handle.clone().binding(),
            out.clone().binding(),
        ];
        super::dispatch(client, variant.kernel(), CubeCount::Static(x, y, 1), buffers, params(&shape), &[]);
        return Ok(tensor_from_handle(&q, out, [b, h, lq, d]));
    }
    let stats = client.empty(b * h * lq * 2 * size_of::<f32>());
    let llvmpipe = crate::device::llvmpipe(&device);
    let (shader, rows_per_group, keys_per_dispatch) = match kernel {
        AttentionKernel::Auto | AttentionKernel::Scores | AttentionKernel::Coop => {
            unreachable!("resolved and returned above")
        }
        AttentionKernel::Rows => (FLASH_ROWS, ROWS_PER_GROUP, rows_llvmpipe_keys_per_dispatch(d)),
        AttentionKernel::Flash => {
            let adapter = adapter_of(client);
            let layout = match forced {
                Forced::Layout(layout) => layout,
                _ => FlashLayout::for_adapter(adapter, d)?,
            };
            let shape = FlashShape::new(d, HEAD_DIM_MAX, layout, adapter, f16_inputs)?;
            let shape = if bias.is_some() { shape.with_bias() } else { shape };
            (shape.kernel(), shape.rows(), shape.llvmpipe_keys_per_dispatch())
        }
    };
    let keys_per_dispatch = if llvmpipe { keys_per_dispatch } else { lk };
    let (x, y) = grid(b * h * lq.div_ceil(rows_per_group));
    for begin in (0..lk).step_by(keys_per_dispatch) {
        let end = (begin + keys_per_dispatch).min(lk);
        let per_head = bias.as_ref().is_some_and(|(_, per_head)| *per_head) as u32;
        let shape = [
            (b * h) as u32,
            lq as u32,
            lk as u32,
            d as u32,
            scale.to_bits(),
            begin as u32,
            end as u32,
            h as u32,
            per_head,
        ];
        let mut buffers = vec![
            q.handle.clone().binding(),
            k.handle.clone().binding(),
            v.handle.clone().binding(),
            out.clone().binding(),
            stats.clone().binding(),
        ];
        buffers.extend(bias.as_ref().map(|(bias, _)| bias.handle.clone().binding()));
        super::dispatch(client, shader, CubeCount::Static(x, y, 1), buffers, params(&shape), &[]);
    }
    Ok(tensor_from_handle(&q, out, [b, h, lq, d]))
}

/// What the flash kernel's shape depends on, from the adapter behind `client`.
fn adapter_of(client: &burn::cubecl::prelude::Client) -> Adapter {
    let properties = client.properties();
    Adapter {
        software: is_software_adapter(&properties.identity.name),
        subgroup_min: crate::device::subgroup_min_size(),
        shared_bytes: properties.hardware.max_shared_memory_size,
    }
}

/// Keys in one tile of the `rows` kernel for heads of width `d`.
fn rows_keys_per_tile(d: usize) -> usize {
    ROWS_KEYS_MAX.min(ROWS_TILE_VECS / d.div_ceil(4))
}

/// Keys per dispatch of the `rows` kernel that keep one invocation within [`LLVMPIPE_LOOP_BUDGET`] loop
/// iterations, counting one more iteration than runs for every loop (its exit test), for heads of width `d`.
fn rows_llvmpipe_keys_per_dispatch(d: usize) -> usize {
    let (d4, keys) = (d.div_ceil(4), rows_keys_per_tile(d));
    // Tile load, then per key: score (d4 + 1), max and exp (2), and per tile: the loops' exits and the
    // accumulator update (d4 · (keys + 1)).
    let per_tile = (keys * d4).div_ceil(ROWS_PER_GROUP) + keys * (2 * d4 + 4) + 2 * d4 + 8;
    // Query, state and output loops.
    let per_dispatch = 3 * (d4 + 1) + 4;
    (LLVMPIPE_LOOP_BUDGET - per_dispatch) / per_tile * keys
}

/// Times, on `device`, for self-attention over each length in `lengths` with `heads` heads of width `d`
/// (batch 1): [`attention`] as the model runs it, the reference in blocks of at most [`SCORE_BLOCK_BYTES`] of
/// scores ([`blocked_reference`]: the reference itself where one block holds all heads), and on wgpu each flash
/// kernel, `flash` and `rows`, and `coop` where it runs. Each timing is [`BENCH_REPEATS`] chained calls (the output becomes the next
/// query, so no call can be skipped as a repeat) and one readback, after one untimed warm-up call that
/// compiles the kernels, measures the memory it adds to the allocator's pools and is compared with the
/// reference's.
///
/// Native only: it reads back synchronously.
#[cfg(not(target_arch = "wasm32"))]
pub fn bench_attention(
    device: &burn::tensor::Device,
    lengths: &[usize],
    d: usize,
    heads: usize,
) -> Vec<AttentionTiming> {
    use burn::tensor::TensorData;

    // `into_data` may hand back lazy storage: only reading the values waits for the device.
    let read_back = |x: Tensor<4>| x.into_data().try_to_vec::<f32>().unwrap_or_default();
    let reserved = || device.memory_pool_usage().map(|usage| usage.bytes_reserved);
    // The first, untimed call's output is compared with `want` (the reference's, or none for the reference).
    let time = |run: &dyn Fn(Tensor<4>, Tensor<4>, Tensor<4>) -> Tensor<4>, qkv: &[Tensor<4>; 3], want: &[f32]| {
        let [q, k, v] = qkv.clone();
        device.memory_cleanup();
        let before = reserved();
        let first = read_back(run(q.clone(), k.clone(), v.clone()));
        let peak_bytes = before.zip(reserved()).map(|(before, after)| after.saturating_sub(before));
        let start = std::time::Instant::now();
        let mut x = q;
        for _ in 0..BENCH_REPEATS {
            x = run(x, k.clone(), v.clone());
        }
        read_back(x);
        let seconds = start.elapsed().as_secs_f64() / BENCH_REPEATS as f64;
        let rel_rms = crate::device::selfcheck::relative_rms(&first, if want.is_empty() { &first } else { want });
        (KernelTiming { seconds, peak_bytes, rel_rms }, first)
    };
    let score_block_bytes = SCORE_BLOCK_BYTES.min(crate::device::max_binding_bytes(device) as usize);
    let flash_applies = crate::kernels::packs_on(device) && d <= HEAD_DIM_MAX;
    lengths
        .iter()
        .map(|&l| {
            let shape = [1, heads, l, d];
            let qkv = [1, 2, 3].map(|salt| {
                let values = crate::device::selfcheck::test_matrix(heads * l, d, salt);
                Tensor::<4>::from_data(TensorData::new(values, shape), device)
            });
            let (reference, want) = time(&|q, k, v| blocked_reference(q, k, v, score_block_bytes), &qkv, &[]);
            let timed = |run: &dyn Fn(Tensor<4>, Tensor<4>, Tensor<4>) -> Tensor<4>| time(run, &qkv, &want).0;
            let [flash, rows] = [AttentionKernel::Flash, AttentionKernel::Rows]
                .map(|kernel| flash_applies.then(|| timed(&|q, k, v| attention_with(kernel, q, k, v))));
            let coop = super::path::with_path(KernelPath::Coop, || {
                let runs = coop_variant(device, l, d, false, None).is_some();
                runs.then(|| timed(&|q, k, v| attention_with(AttentionKernel::Coop, q, k, v)))
            });
            AttentionTiming {
                l,
                model: timed(&attention),
                model_kernel: match flash_applies {
                    true => kernel_on(device, l, l, d),
                    false => AttentionKernel::Scores,
                },
                flash,
                rows,
                coop,
                reference,
            }
        })
        .collect()
}

/// One kernel's figures in [`bench_attention`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelTiming {
    /// Seconds per call.
    pub seconds: f64,
    /// Device memory its first call added to the allocator's pools, on backends that report pools.
    pub peak_bytes: Option<u64>,
    /// Relative RMS of its first call's output against the reference's ([`crate::device::selfcheck::relative_rms`];
    /// 0 for the reference itself).
    pub rel_rms: f64,
}

/// One sequence length of [`bench_attention`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionTiming {
    /// Sequence length.
    pub l: usize,
    /// [`attention`], as the model runs it.
    pub model: KernelTiming,
    /// The kernel [`attention`] ran (`scores` stands for the reference on devices without our kernels).
    pub model_kernel: AttentionKernel,
    /// The `flash` kernel, where a flash kernel applies (wgpu, heads up to [`HEAD_DIM_MAX`]).
    pub flash: Option<KernelTiming>,
    /// The `rows` kernel, where a flash kernel applies.
    pub rows: Option<KernelTiming>,
    /// The `coop` kernel, where the adapter has the `coop` path and the kernel takes these heads.
    pub coop: Option<KernelTiming>,
    /// The reference, in blocks of at most [`SCORE_BLOCK_BYTES`] of scores.
    pub reference: KernelTiming,
}

/// Calls per timing in [`bench_attention`].
pub const BENCH_REPEATS: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu;
    use burn::tensor::{TensorData, Tolerance};

    #[test]
    fn reference_is_softmax_of_scaled_scores_times_values() {
        let device = cpu();
        // d = 4, scale 1/2; one query, two keys with scores 2·1/2 = 1 and 0.
        let q = Tensor::<4>::from_data(TensorData::new(vec![1f32, 1.0, 0.0, 0.0], [1, 1, 1, 4]), &device);
        let k =
            Tensor::from_data(TensorData::new(vec![1f32, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0], [1, 1, 2, 4]), &device);
        let v =
            Tensor::from_data(TensorData::new(vec![1f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0], [1, 1, 2, 4]), &device);
        let w = std::f32::consts::E / (std::f32::consts::E + 1.0);
        let expected = TensorData::new(vec![w, 0.0, 0.0, 2.0 * (1.0 - w)], [1, 1, 1, 4]);
        reference(q, k, v).into_data().assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-6));
    }

    #[test]
    fn the_kernel_refuses_cpu_tensors_and_bad_shapes_and_attention_falls_back() {
        let device = cpu();
        let t = |shape: [usize; 4]| {
            let n = shape.iter().product();
            Tensor::<4>::from_data(TensorData::new(crate::device::selfcheck::test_matrix(1, n, 3), shape), &device)
        };
        let err = flash_attention(t([1, 2, 5, 8]), t([1, 2, 7, 8]), t([1, 2, 7, 8])).unwrap_err().to_string();
        assert_eq!(err, "flash attention runs on burn's wgpu backend with f32 or f16 tensors only");
        let err = flash_attention(t([1, 2, 5, 8]), t([1, 2, 7, 8]), t([1, 2, 6, 8])).unwrap_err().to_string();
        assert!(err.starts_with("attention: query [1, 2, 5, 8], key [1, 2, 7, 8] and value [1, 2, 6, 8]"), "{err}");
        let err = flash_attention(t([1, 1, 2, 600]), t([1, 1, 2, 600]), t([1, 1, 2, 600])).unwrap_err().to_string();
        assert!(err.contains("head width at most 512"), "{err}");
        let ours = attention(t([1, 2, 5, 8]), t([1, 2, 7, 8]), t([1, 2, 7, 8]));
        ours.into_data().assert_approx_eq::<f32>(
            &reference(t([1, 2, 5, 8]), t([1, 2, 7, 8]), t([1, 2, 7, 8])).into_data(),
            Tolerance::absolute(0.0),
        );
    }

    #[test]
    fn auto_takes_the_scores_where_a_block_holds_a_whole_head() {
        let block = SCORE_BLOCK_BYTES;
        // 24 heads of the 512² edit (2,560 tokens) and of the 1024² edit (8,704 tokens) with 128 MiB blocks.
        assert_eq!(AttentionKernel::Auto.resolve(2560, 2560, block, false, false), AttentionKernel::Scores);
        assert_eq!(AttentionKernel::Auto.resolve(4096, 4096, block, false, false), AttentionKernel::Scores);
        assert_eq!(AttentionKernel::Auto.resolve(8704, 8704, block, false, false), AttentionKernel::Rows);
        assert_eq!(AttentionKernel::Auto.resolve(usize::MAX, 2, block, false, false), AttentionKernel::Rows);
        assert_eq!(AttentionKernel::Flash.resolve(1, 1, block, false, false), AttentionKernel::Flash);
        assert_eq!(AttentionKernel::Scores.resolve(8704, 8704, block, true, false), AttentionKernel::Scores);
        // CPU adapters: the flash kernel at every length (it measured fastest on lavapipe from L = 256).
        assert_eq!(AttentionKernel::Auto.resolve(256, 256, block, true, false), AttentionKernel::Flash);
        // Where the coop kernel runs, auto and coop take it; where it does not, coop is what auto would run.
        for software in [false, true] {
            assert_eq!(AttentionKernel::Auto.resolve(8704, 8704, block, software, true), AttentionKernel::Coop);
            assert_eq!(AttentionKernel::Coop.resolve(8704, 8704, block, software, true), AttentionKernel::Coop);
            assert_eq!(AttentionKernel::Flash.resolve(8704, 8704, block, software, true), AttentionKernel::Flash);
        }
        assert_eq!(AttentionKernel::Coop.resolve(256, 256, block, true, false), AttentionKernel::Flash);
        assert_eq!(AttentionKernel::Coop.resolve(8704, 8704, block, false, false), AttentionKernel::Rows);
        assert!(
            crate::device::is_software("llvmpipe (LLVM 15.0.6, 256 bits)")
                && crate::device::is_software("SwiftShader Device (Subzero)")
        );
        assert!(!crate::device::is_software("NVIDIA H200"));
        // 2,560² scores are 25 MiB a head: five heads fit a 128 MiB block, twice for the softmax.
        assert_eq!(auto_score_bytes(24, 2560, 2560, 2 << 30), 2 * 5 * 2560 * 2560 * 4);
        assert_eq!(auto_score_bytes(2, 2560, 2560, 2 << 30), 2 * 2 * 2560 * 2560 * 4);
        assert_eq!(auto_score_bytes(24, 8704, 8704, 2 << 30), 0);
        assert_eq!(auto_score_bytes(24, 2560, 2560, 16 << 20), 0);
    }

    #[test]
    fn rows_kernel_llvmpipe_dispatches_take_whole_tiles_within_the_loop_budget() {
        assert_eq!([16, 32, 128, 256].map(rows_keys_per_tile), [64, 60, 15, 7]);
        for d in [1, 16, 30, 32, 100, 128, 256] {
            let (keys, per_tile, d4) = (rows_llvmpipe_keys_per_dispatch(d), rows_keys_per_tile(d), d.div_ceil(4));
            assert!(keys >= per_tile && keys.is_multiple_of(per_tile), "d {d}: {keys} keys");
            // Every loop of the shader, with one extra iteration each for its exit test.
            let tiles = keys / per_tile;
            let tile_loops = (per_tile * d4).div_ceil(ROWS_PER_GROUP)
                + 1
                + per_tile * (d4 + 2)
                + 1
                + per_tile
                + 1
                + d4 * (per_tile + 2)
                + 1;
            assert!(3 * (d4 + 1) + tiles * (tile_loops + 1) < LLVMPIPE_LOOP_BUDGET, "d {d}: {keys} keys");
        }
    }
}
