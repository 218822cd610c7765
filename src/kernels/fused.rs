//! The DiT's elementwise and row-wise work, each in one WGSL kernel instead of a chain of burn ops:
//!
//! - [`layer_norm_modulate`]: LayerNorm and the adaLN shift/scale (`shaders/layer_norm_modulate.wgsl`);
//! - [`gelu_tanh`] (`shaders/gelu_tanh.wgsl`);
//! - [`gated_add`]: the gated residual add (`shaders/gated_add.wgsl`);
//! - [`residual_layer_norm_modulate`]: the gated residual add and the next sub-layer's LayerNorm and
//!   modulation (`shaders/residual_layer_norm_modulate.wgsl`);
//! - [`split_heads`]: q, k or v of one or more streams into the attention's head layout, with the QK RMS-norm
//!   and RoPE on the way (`shaders/split_heads.wgsl`);
//! - [`merge_heads_split`] and [`merged_heads_beside_gelu`]: the attention's output back to token-major rows,
//!   cut into the streams or written beside the single block's MLP activation (`shaders/merge_heads.wgsl`).
//!
//! Our own kernels rather than burn's fusion: burn fuses only its own ops, and stops at every custom kernel
//! (our packed matmuls and flash attention sit between every pair of these), while these are each one pass
//! over data the matmuls just wrote. [`reference`] holds the plain-ops twins, used on other devices and
//! compared with the kernels in `tests/gpu_fused.rs`.

use std::ops::Range;

use burn::backend::wgpu::CubeTensor;
use burn::cubecl::prelude::{Client, CubeCount};
use burn::cubecl::server::BufferBinding;
use burn::tensor::{DType, FloatDType, Tensor};

use super::{
    Params, WgslKernel, cube_tensor, dispatch, grid, launch_1d, packs_on, params, tensor_from_handle,
    tensor_from_handle_of,
};
use crate::{Error, Result};

/// The row reduction the row kernels call (`shaders/row_sum.wgsl`).
const ROW_SUM: &str = include_str!("../../shaders/row_sum.wgsl");
const LAYER_NORM_MODULATE: &str = include_str!("../../shaders/layer_norm_modulate.wgsl");
const RESIDUAL_LAYER_NORM_MODULATE: &str = include_str!("../../shaders/residual_layer_norm_modulate.wgsl");
const SPLIT_HEADS: &str = include_str!("../../shaders/split_heads.wgsl");
const F32_HEADS: &str = "alias OUT = f32;\nfn to_out(v: f32) -> OUT { return v; }\n";
const F16_HEADS: &str =
    "enable f16;\nalias OUT = f16;\nfn to_out(v: f32) -> OUT { return OUT(clamp(v, -65504.0, 65504.0)); }\n";
const GELU_TANH: WgslKernel = WgslKernel::fixed(
    "gelu_tanh",
    concat!(include_str!("../../shaders/gelu.wgsl"), include_str!("../../shaders/gelu_tanh.wgsl")),
);
const GATED_ADD: WgslKernel = WgslKernel::fixed("gated_add", include_str!("../../shaders/gated_add.wgsl"));
const MERGE_HEADS: WgslKernel = WgslKernel::fixed("merge_heads", include_str!("../../shaders/merge_heads.wgsl"));
/// Invocations per workgroup of the row kernels: `LANES · ROWS`.
const ROW_KERNEL_THREADS: usize = 256;

/// Lanes per row for rows of `values` values a lane takes about four of: a power of two from `fewest` to `most`.
/// Narrow rows share a workgroup, so a software device passes fewer barriers for the same arithmetic.
fn lanes_for(values: usize, fewest: usize, most: usize) -> usize {
    values.div_ceil(4).next_power_of_two().clamp(fewest, most)
}

/// The row kernel `name` (`source`, after `prelude`) with `lanes` invocations per row and the row reduction it
/// calls.
fn row_kernel(name: &str, prelude: &str, source: &str, lanes: usize) -> WgslKernel {
    WgslKernel::generated(format!("{name}_l{lanes}"), || {
        let (rows, chunk) = (ROW_KERNEL_THREADS / lanes, lanes.min(16));
        format!(
            "{prelude}const LANES: u32 = {lanes}u;\nconst ROWS: u32 = {rows}u;\nconst CHUNK: u32 = {chunk}u;\n{source}{ROW_SUM}"
        )
    })
}

/// Whether every tensor, given by its device and element type, is an f32 tensor on wgpu, so that the kernels
/// take them.
fn on_kernels(tensors: impl IntoIterator<Item = (burn::tensor::Device, DType)>) -> bool {
    tensors.into_iter().all(|(device, dtype)| packs_on(&device) && dtype == DType::F32)
}

/// The device and element type of `t`, for [`on_kernels`].
fn placed<const D: usize>(t: &Tensor<D>) -> (burn::tensor::Device, DType) {
    (t.device(), t.dtype())
}

/// Binds a tensor already known to be a wgpu f32 tensor ([`on_kernels`]).
fn bound<const D: usize>(t: Tensor<D>) -> CubeTensor {
    cube_tensor(t).unwrap_or_else(|_| unreachable!("checked by on_kernels"))
}

fn index(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::Invalid(format!("{what} {n} is past the kernels' 32-bit indexing")))
}

/// `LayerNorm(x) · (1 + scale) + shift` over the last axis (no affine parameters, `eps` inside the root):
/// `x` `[b, n, w]`, `shift` and `scale` `[b, 1, w]`.
pub fn layer_norm_modulate(x: Tensor<3>, shift: Tensor<3>, scale: Tensor<3>, eps: f64) -> Tensor<3> {
    let [b, n, w] = x.dims();
    let rows_fit = shift.dims() == [b, 1, w] && scale.dims() == [b, 1, w];
    if !on_kernels([placed(&x), placed(&shift), placed(&scale)]) || !rows_fit || index(b * n * w, "size").is_err() {
        return reference::layer_norm_modulate(x, shift, scale, eps);
    }
    let (x, shift, scale) = (bound(x), bound(shift), bound(scale));
    let client = &x.client;
    let out = client.empty(b * n * w * size_of::<f32>());
    let dims = params(&[(b * n) as u32, w as u32, n as u32, (eps as f32).to_bits()]);
    let buffers = [&x.handle, &shift.handle, &scale.handle, &out].map(|h| h.clone().binding()).to_vec();
    let lanes = lanes_for(w, 8, ROW_KERNEL_THREADS);
    let kernel = row_kernel("layer_norm_modulate", "", LAYER_NORM_MODULATE, lanes);
    launch(client, kernel, grid((b * n).div_ceil(ROW_KERNEL_THREADS / lanes)), buffers, dims);
    tensor_from_handle(&x, out, [b, n, w])
}

/// GELU with the tanh approximation (PyTorch `GELU(approximate="tanh")`), elementwise.
pub fn gelu_tanh(x: Tensor<3>) -> Tensor<3> {
    let dims = x.dims();
    let n = dims.iter().product::<usize>();
    if !on_kernels([placed(&x)]) || index(n, "size").is_err() {
        return reference::gelu_tanh(x);
    }
    let x = bound(x);
    let out = x.client.empty(n * size_of::<f32>());
    let width = dims[2] as u32;
    let values = params(&[n as u32, width, width, 0]);
    launch_1d(&x.client, GELU_TANH, n, [&x.handle, &out].map(|h| h.clone().binding()).to_vec(), values);
    tensor_from_handle(&x, out, dims)
}

/// The gated residual add `x + gate · y`: `x` and `y` `[b, n, w]`, `gate` `[b, 1, w]`.
pub fn gated_add(x: Tensor<3>, gate: Tensor<3>, y: Tensor<3>) -> Tensor<3> {
    let [b, n, w] = x.dims();
    let fits = index(b * n * w, "size").is_ok() && gate.dims() == [b, 1, w] && y.dims() == [b, n, w];
    if !on_kernels([placed(&x), placed(&gate), placed(&y)]) || !fits {
        return reference::gated_add(x, gate, y);
    }
    let (x, gate, y) = (bound(x), bound(gate), bound(y));
    let values = b * n * w;
    let out = x.client.empty(values * size_of::<f32>());
    let dims = params(&[values as u32, w as u32, n as u32]);
    let buffers = [&x.handle, &gate.handle, &y.handle, &out].map(|h| h.clone().binding()).to_vec();
    launch_1d(&x.client, GATED_ADD, values, buffers, dims);
    tensor_from_handle(&x, out, [b, n, w])
}

/// One stream's part of [`split_heads`]: a projection's output and the scale of its RMS-norm, if any.
#[derive(Debug, Clone)]
pub struct HeadInput {
    /// `[b, n, heads·d]`.
    pub x: Tensor<3>,
    /// `[d]`: normalise each head vector by its root mean square, then scale by this.
    pub norm_scale: Option<Tensor<1>>,
}

/// The RoPE angles of every token of the joined parts: cosines and sines, each `[1, 1, n, d / 2]`.
#[derive(Debug, Clone, Copy)]
pub struct RopeTables<'a> {
    /// Cosines.
    pub cos: &'a Tensor<4>,
    /// Sines.
    pub sin: &'a Tensor<4>,
}

/// The parts, in order along the tokens, as `[b, heads, n_1 + n_2 + …, d]`: each head vector RMS-normalised
/// where its part has a norm scale (`eps` inside the root), then rotated by `rope` where given. One kernel per
/// two parts on wgpu.
pub fn split_heads(parts: Vec<HeadInput>, heads: usize, rope: Option<RopeTables>, eps: f64) -> Result<Tensor<4>> {
    split_heads_as(parts, heads, rope, eps, false)
}

/// [`split_heads`] into an f16 tensor (computed in f32, clamped to f16's ±65504 and rounded once as stored): the
/// f16 inputs of the `flash` and `coop` attention kernels. Needs `shader-f16` on wgpu
/// ([`super::precision::Precision::f16_available`]); elsewhere the reference, clamped and cast.
pub fn split_heads_f16(parts: Vec<HeadInput>, heads: usize, rope: Option<RopeTables>, eps: f64) -> Result<Tensor<4>> {
    split_heads_as(parts, heads, rope, eps, true)
}

fn split_heads_as(
    parts: Vec<HeadInput>,
    heads: usize,
    rope: Option<RopeTables>,
    eps: f64,
    f16_out: bool,
) -> Result<Tensor<4>> {
    let first = parts.first().ok_or_else(|| Error::Invalid("split_heads needs at least one part".into()))?;
    let [b, _, width] = first.x.dims();
    if heads == 0 || !width.is_multiple_of(heads) {
        return Err(Error::Invalid(format!("width {width} does not split into {heads} heads")));
    }
    let d = width / heads;
    let total: usize = parts.iter().map(|p| p.x.dims()[1]).sum();
    for part in &parts {
        let [pb, _, pw] = part.x.dims();
        if (pb, pw) != (b, width) || part.norm_scale.as_ref().is_some_and(|s| s.dims() != [d]) {
            return Err(Error::Invalid(format!(
                "split_heads parts disagree: {:?} (norm {:?}) against [{b}, _, {width}] of {heads} heads",
                part.x.dims(),
                part.norm_scale.as_ref().map(|s| s.dims())
            )));
        }
    }
    if let Some(rope) = rope
        && (rope.cos.dims() != [1, 1, total, d / 2] || rope.sin.dims() != rope.cos.dims() || d % 2 == 1)
    {
        return Err(Error::Invalid(format!(
            "RoPE tables {:?} do not rotate {total} tokens of heads {d} wide",
            rope.cos.dims()
        )));
    }
    let inputs = (parts.iter()).flat_map(|p| [Some(placed(&p.x)), p.norm_scale.as_ref().map(placed)]).flatten();
    let tables = rope.into_iter().flat_map(|rope| [placed(rope.cos), placed(rope.sin)]);
    let f16_missing = f16_out && !super::precision::Precision::f16_available(&first.x.device());
    if !on_kernels(inputs.chain(tables)) || index(b * heads * total * d, "size").is_err() || f16_missing {
        let heads = reference::split_heads(parts, heads, rope, eps);
        let f16_max = half::f16::MAX.to_f32();
        return Ok(if f16_out { heads.clamp(-f16_max, f16_max).cast(FloatDType::F16) } else { heads });
    }

    let like = bound(first.x.clone());
    let client = like.client.clone();
    // Bindings a launch does not read get a buffer of their own: WebGPU refuses a writable buffer bound twice.
    let unread = || client.empty(size_of::<f32>());
    let (cos, sin) = match rope {
        Some(rope) => (bound(rope.cos.clone()).handle, bound(rope.sin.clone()).handle),
        None => (unread(), unread()),
    };
    let (name, prelude, dtype, value_bytes) = match f16_out {
        true => ("split_heads_f16", F16_HEADS, DType::F16, size_of::<half::f16>()),
        false => ("split_heads", F32_HEADS, DType::F32, size_of::<f32>()),
    };
    let lanes = lanes_for(d.div_ceil(2), 8, 32);
    let kernel = row_kernel(name, prelude, SPLIT_HEADS, lanes);
    // Bindings are whole 4-byte words.
    let out = client.empty((b * heads * total * d * value_bytes).next_multiple_of(4));
    let mut offset = 0;
    let mut parts = parts.into_iter().peekable();
    while let Some(a) = parts.next() {
        let b_part = parts.next();
        let tokens = [Some(&a), b_part.as_ref()].map(|p| p.map_or(0, |p| p.x.dims()[1]));
        let flags = a.norm_scale.is_some() as u32
            | (b_part.as_ref().is_some_and(|p| p.norm_scale.is_some()) as u32) << 1
            | (rope.is_some() as u32) << 2;
        let scale = |p: Option<&HeadInput>| match p.and_then(|p| p.norm_scale.clone()) {
            Some(scale) => bound(scale).handle,
            None => unread(),
        };
        let (scale_a, scale_b) = (scale(Some(&a)), scale(b_part.as_ref()));
        let x_a = bound(a.x).handle;
        let x_b = b_part.map_or_else(unread, |p| bound(p.x).handle);
        let dims = [b, tokens[0], tokens[1], heads, d, total, offset].map(|v| v as u32);
        let dims = params(&[&dims[..], &[flags, (eps as f32).to_bits()]].concat());
        let (gx, gy) = grid((b * (tokens[0] + tokens[1]) * heads).div_ceil(ROW_KERNEL_THREADS / lanes));
        let buffers = [&x_a, &x_b, &scale_a, &scale_b, &cos, &sin, &out].map(|h| h.clone().binding()).to_vec();
        launch(&client, kernel, (gx, gy), buffers, dims);
        offset += tokens[0] + tokens[1];
    }
    Ok(tensor_from_handle_of(&like, out, [b, heads, total, d], dtype))
}

/// The attention's output `[b, heads, n, d]` back to token-major rows `[b, n, heads·d]`, cut after `split`
/// tokens: `(rows of the first split tokens, rows of the rest)` (the text and image streams of a double block);
/// `0 < split < n`.
pub fn merge_heads_split(attention: Tensor<4>, split: usize) -> (Tensor<3>, Tensor<3>) {
    let [b, heads, n, d] = attention.dims();
    if !on_kernels([placed(&attention)]) || index(b * heads * n * d, "size").is_err() {
        return reference::merge_heads_split(attention, split);
    }
    let src = bound(attention);
    let client = &src.client;
    let width = heads * d;
    let (first, rest) = (client.empty(b * split * width * 4), client.empty(b * (n - split) * width * 4));
    let dims = params(&[b, heads, n, d, 0, n, split, width, 0].map(|v| v as u32));
    let buffers = [&src.handle, &first, &rest].map(|h| h.clone().binding()).to_vec();
    launch_1d(client, MERGE_HEADS, b * n * width, buffers, dims);
    (tensor_from_handle(&src, first, [b, split, width]), tensor_from_handle(&src, rest, [b, n - split, width]))
}

/// A single block's input to `linear2` for the tokens `tokens` of the attention's output `[b, heads, n, d]`
/// and their MLP activation `mlp` `[b, tokens.len(), w]`: `[b, tokens.len(), heads·d + w]`, the merged heads
/// beside `gelu_tanh(mlp)`, written in place by two kernels on wgpu.
pub fn merged_heads_beside_gelu(attention: Tensor<4>, tokens: Range<usize>, mlp: Tensor<3>) -> Tensor<3> {
    let [b, heads, n, d] = attention.dims();
    let [_, len, w] = mlp.dims();
    let width = heads * d + w;
    let fits = tokens.end <= n && len == tokens.len() && index(b * n.max(len) * width.max(heads * d), "size").is_ok();
    if !on_kernels([placed(&attention), placed(&mlp)]) || !fits {
        return reference::merged_heads_beside_gelu(attention, tokens, mlp);
    }
    let (src, mlp) = (bound(attention), bound(mlp));
    let client = &src.client;
    let out = client.empty(b * len * width * size_of::<f32>());
    let unread = client.empty(size_of::<f32>());
    let merge = params(&[b, heads, n, d, tokens.start, len, len, width, 0].map(|v| v as u32));
    let buffers = [&src.handle, &out, &unread].map(|h| h.clone().binding()).to_vec();
    launch_1d(client, MERGE_HEADS, b * len * heads * d, buffers, merge);
    let gelu = params(&[b * len * w, w, width, heads * d].map(|v| v as u32));
    launch_1d(client, GELU_TANH, b * len * w, [&mlp.handle, &out].map(|h| h.clone().binding()).to_vec(), gelu);
    tensor_from_handle(&src, out, [b, len, width])
}

/// `(x + gate · y, LayerNorm(x + gate · y) · (1 + scale) + shift)`: a gated residual add and the next
/// sub-layer's normalised, modulated input, in one kernel on wgpu. `x` and `y` `[b, n, w]`, the others
/// `[b, 1, w]`.
pub fn residual_layer_norm_modulate(
    x: Tensor<3>,
    gate: Tensor<3>,
    y: Tensor<3>,
    shift: Tensor<3>,
    scale: Tensor<3>,
    eps: f64,
) -> (Tensor<3>, Tensor<3>) {
    let [b, n, w] = x.dims();
    let rows_fit = [&gate, &shift, &scale].iter().all(|t| t.dims() == [b, 1, w]) && y.dims() == [b, n, w];
    let tensors = [&x, &gate, &y, &shift, &scale].map(placed);
    if !on_kernels(tensors) || !rows_fit || index(b * n * w, "size").is_err() {
        return reference::residual_layer_norm_modulate(x, gate, y, shift, scale, eps);
    }
    let [x, gate, y, shift, scale] = [x, gate, y, shift, scale].map(bound);
    let client = &x.client;
    let (sum, normed) = (client.empty(b * n * w * 4), client.empty(b * n * w * 4));
    let dims = params(&[(b * n) as u32, w as u32, n as u32, (eps as f32).to_bits()]);
    let buffers = [&x.handle, &gate.handle, &y.handle, &shift.handle, &scale.handle, &sum, &normed]
        .map(|h| h.clone().binding())
        .to_vec();
    let lanes = lanes_for(w, 8, ROW_KERNEL_THREADS);
    let kernel = row_kernel("residual_layer_norm_modulate", "", RESIDUAL_LAYER_NORM_MODULATE, lanes);
    launch(client, kernel, grid((b * n).div_ceil(ROW_KERNEL_THREADS / lanes)), buffers, dims);
    (tensor_from_handle(&x, sum, [b, n, w]), tensor_from_handle(&x, normed, [b, n, w]))
}

/// Launches `kernel` on `groups` workgroups.
fn launch(client: &Client, kernel: WgslKernel, groups: (u32, u32), buffers: Vec<BufferBinding>, params: Params) {
    dispatch(client, kernel, CubeCount::Static(groups.0, groups.1, 1), buffers, params, &[]);
}

/// The plain-ops twins of the kernels: the path on devices other than wgpu and the reference in tests.
pub mod reference {
    use std::ops::Range;

    use burn::tensor::Tensor;

    use super::{HeadInput, RopeTables};

    /// LayerNorm over the last axis without affine parameters.
    pub fn layer_norm(x: Tensor<3>, eps: f64) -> Tensor<3> {
        let centered = x.clone() - x.mean_dim(2);
        let var = centered.clone().square().mean_dim(2);
        centered / (var + eps).sqrt()
    }

    /// [`super::layer_norm_modulate`] in plain ops.
    pub fn layer_norm_modulate(x: Tensor<3>, shift: Tensor<3>, scale: Tensor<3>, eps: f64) -> Tensor<3> {
        layer_norm(x, eps) * (scale + 1.0) + shift
    }

    /// [`super::gelu_tanh`] in plain ops.
    pub fn gelu_tanh(x: Tensor<3>) -> Tensor<3> {
        const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
        let inner = (x.clone() + x.clone() * x.clone() * x.clone() * 0.044715) * SQRT_2_OVER_PI;
        x * (inner.tanh() + 1.0) * 0.5
    }

    /// [`super::gated_add`] in plain ops.
    pub fn gated_add(x: Tensor<3>, gate: Tensor<3>, y: Tensor<3>) -> Tensor<3> {
        x + gate * y
    }

    /// RMSNorm of `[b, heads, n, d]` over `d` with a learned `scale` `[d]`.
    pub fn rms_norm(x: Tensor<4>, scale: Tensor<1>, eps: f64) -> Tensor<4> {
        let rms = (x.clone().square().mean_dim(3) + eps).sqrt();
        x / rms * scale.reshape([1, 1, 1, -1])
    }

    /// Rotates the adjacent channel pairs of `x` (`[b, heads, n, d]`) by the angles of its `n` tokens.
    pub fn rotate_pairs(x: Tensor<4>, rope: RopeTables) -> Tensor<4> {
        let [b, h, n, d] = x.dims();
        let x = x.reshape([b, h, n, d / 2, 2]);
        let x0 = x.clone().narrow(4, 0, 1).reshape([b, h, n, d / 2]);
        let x1 = x.narrow(4, 1, 1).reshape([b, h, n, d / 2]);
        let (cos, sin) = (rope.cos.clone(), rope.sin.clone());
        let out0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
        let out1 = x0 * sin + x1 * cos;
        Tensor::stack::<5>(vec![out0, out1], 4).reshape([b, h, n, d]) // [b, h, n, d/2, 2] → [b, h, n, d]
    }

    /// [`super::residual_layer_norm_modulate`] in plain ops.
    pub fn residual_layer_norm_modulate(
        x: Tensor<3>,
        gate: Tensor<3>,
        y: Tensor<3>,
        shift: Tensor<3>,
        scale: Tensor<3>,
        eps: f64,
    ) -> (Tensor<3>, Tensor<3>) {
        let sum = gated_add(x, gate, y);
        (sum.clone(), layer_norm_modulate(sum, shift, scale, eps))
    }

    /// `[b, heads, n, d]` → `[b, n, heads·d]`.
    pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
        let [b, h, n, d] = x.dims();
        x.swap_dims(1, 2).reshape([b, n, h * d])
    }

    /// [`super::merge_heads_split`] in plain ops.
    pub fn merge_heads_split(attention: Tensor<4>, split: usize) -> (Tensor<3>, Tensor<3>) {
        let merged = merge_heads(attention);
        let n = merged.dims()[1];
        (merged.clone().narrow(1, 0, split), merged.narrow(1, split, n - split))
    }

    /// [`super::merged_heads_beside_gelu`] in plain ops.
    pub fn merged_heads_beside_gelu(attention: Tensor<4>, tokens: Range<usize>, mlp: Tensor<3>) -> Tensor<3> {
        let attention = merge_heads(attention).narrow(1, tokens.start, tokens.len());
        Tensor::cat(vec![attention, gelu_tanh(mlp)], 2)
    }

    /// [`super::split_heads`] in plain ops (shapes checked by the caller).
    pub fn split_heads(parts: Vec<HeadInput>, heads: usize, rope: Option<RopeTables>, eps: f64) -> Tensor<4> {
        let parts = parts
            .into_iter()
            .map(|HeadInput { x, norm_scale }| {
                let [b, n, width] = x.dims();
                let x = x.reshape([b, n, heads, width / heads]).swap_dims(1, 2); // [b, heads, n, d]
                match norm_scale {
                    Some(scale) => rms_norm(x, scale, eps),
                    None => x,
                }
            })
            .collect();
        let joined = Tensor::cat(parts, 2); // [b, heads, Σn, d]
        match rope {
            Some(rope) => rotate_pairs(joined, rope),
            None => joined,
        }
    }
}
