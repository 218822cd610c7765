//! The layers the networks share, built from named [`Weights`] with every shape checked against what the config
//! expects: [`Projection`] (a linear layer, dense or packed ggml blocks, split to fit the device's buffers, with
//! runtime LoRA updates [`LowRank`] on top), [`HostEmbedding`] (a token table kept on the host) and the LoRA data
//! they take ([`LayerUpdate`], [`LoraAdapter`]). Modules reach these through [`crate::model::scope::Scope`].

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};

use crate::device::{faults, max_binding_bytes};
use crate::formats::weights::{HostTensor, Weights};
use crate::formats::{GgmlType, dequantize};
use crate::kernels::quant_matmul::{self, Epilogue, PackedLinear, PackedWeight, keeps_blocks};
use crate::kernels::repack::Layout;
use crate::kernels::{fused, packs_on};
use crate::{Error, Result};

/// Reads `name`, failing with a message naming the tensor when it is missing or its shape is not `shape`.
pub(crate) fn host(weights: &dyn Weights, name: &str, shape: &[usize]) -> Result<HostTensor> {
    let found = weights
        .shape(name)
        .ok_or_else(|| Error::Invalid(format!("missing tensor `{name}` (expected shape {shape:?})")))?;
    check_shape(name, shape, &found)?;
    let tensor = weights.read(name)?;
    check_shape(name, shape, &tensor.shape)?;
    Ok(tensor)
}

fn check_shape(name: &str, expected: &[usize], found: &[usize]) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::Invalid(format!("tensor `{name}` has shape {found:?}, expected {expected:?}")))
    }
}

/// A tensor of known rank, uploaded to `device`.
pub(crate) fn tensor<const D: usize>(
    weights: &dyn Weights,
    name: &str,
    shape: [usize; D],
    device: &Device,
) -> Result<Tensor<D>> {
    let host = host(weights, name, &shape)?;
    let tensor = Tensor::from_data(TensorData::new(host.data, shape), device);
    dispatch_uploads(device)?;
    Ok(tensor)
}

/// Dispatches the uploads the device has queued. The GPU backends batch work, holding each queued upload's
/// host bytes until dispatch: without this, a load would keep dozens of tensors in WebAssembly memory at once.
pub(crate) fn dispatch_uploads(device: &Device) -> Result<()> {
    device.flush().map_err(|e| Error::Gpu(format!("uploading weights failed: {e:?}")))
}

/// The base weight of a linear layer as loaded: dense f32 weights, or ggml blocks kept packed on the GPU.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum BaseWeight {
    /// burn's [`Linear`] (weight transposed to `[d_in, d_out]`).
    Dense(Linear),
    /// The file's ggml blocks, dequantized inside the matmul ([`PackedLinear`]).
    Packed(PackedLinear),
    /// Freed from the device to save memory; must be loaded again before use.
    Released(ReleasedWeight),
}

/// What remains of a released weight: its shape.
#[derive(Module, Debug)]
pub struct ReleasedWeight {
    /// Input features.
    #[module(skip)]
    pub d_in: usize,
    /// Output features.
    #[module(skip)]
    pub d_out: usize,
}

/// A low-rank adapter on one linear layer: adds `x · Aᵀ · Bᵀ` to the outputs of each of its blocks, both
/// products in the packed matmul kernels (an F32 weight is one more block type to them), so an adapter adds no
/// pipeline per shape. Each rank is padded with zeros to whole K tiles of the kernels, which leaves the product
/// unchanged.
#[derive(Module, Debug)]
pub struct LowRank {
    /// The adapter whose factors these are.
    #[module(skip)]
    pub adapter: AdapterId,
    /// One per [`UpdateBlock`], in the order of their rows.
    pub blocks: Vec<LowRankBlock>,
}

/// One [`UpdateBlock`] on the device.
#[derive(Module, Debug)]
pub struct LowRankBlock {
    /// The first output row it changes.
    #[module(skip)]
    pub start: usize,
    /// `A`, `[rank, d_in]`.
    pub down: PackedWeight,
    /// `B` times the adapter's strength, `[rows, rank]`, cut where the layer's segments (q, k, v, …) meet, so
    /// that a forward of one segment computes only its own rows.
    pub up: Vec<PackedWeight>,
}

impl LowRankBlock {
    /// Output rows it changes.
    fn rows(&self) -> usize {
        self.up.iter().map(|up| up.n).sum()
    }
}

impl LowRank {
    /// Uploads `update` of `adapter` at `strength`, each block's `up` cut where the row ranges `segments` of the
    /// layer's outputs meet. Errors when the segments do not cover the outputs, or a factor would not fit one of
    /// the device's buffers.
    pub fn new(
        adapter: AdapterId,
        update: &LayerUpdate,
        strength: f32,
        segments: &[Range<usize>],
        device: &Device,
    ) -> Result<Self> {
        if segments.iter().map(Range::len).sum::<usize>() != update.d_out {
            return Err(Error::Invalid(format!("an update of {} outputs on segments {segments:?}", update.d_out)));
        }
        let limit = max_binding_bytes(device);
        let blocks = update.blocks.iter().map(|block| {
            let (rank, d_in) = (block.rank(), update.d_in);
            let padded = padded_rank(rank);
            let widest = block.rows.len().max(d_in);
            if (padded * widest * size_of::<f32>()) as u64 > limit {
                return Err(Error::Invalid(format!(
                    "a LoRA factor of rank {rank} over {widest} features takes {} bytes, more than this device's \
                     {limit}-byte buffer limit",
                    padded * widest * size_of::<f32>()
                )));
            }
            let mut down = block.down.data.clone();
            down.resize(padded * d_in, 0.0); // [rank, d_in] → [padded, d_in]
            let up_piece = |rows: Range<usize>| {
                let mut piece = vec![0.0f32; rows.len() * padded]; // [rows, padded]
                let source = block.up.data[(rows.start - block.rows.start) * rank..].chunks_exact(rank);
                for (row, values) in piece.chunks_exact_mut(padded).zip(source) {
                    for (to, &from) in row.iter_mut().zip(values) {
                        *to = from * strength;
                    }
                }
                f32_weight(&piece, [rows.len(), padded], device)
            };
            let pieces = segments
                .iter()
                .map(|segment| segment.start.max(block.rows.start)..segment.end.min(block.rows.end))
                .filter(|rows| !rows.is_empty());
            Ok(LowRankBlock {
                start: block.rows.start,
                down: f32_weight(&down, [padded, d_in], device)?,
                up: pieces.map(up_piece).collect::<Result<_>>()?,
            })
        });
        Ok(Self { adapter, blocks: blocks.collect::<Result<_>>()? })
    }

    /// `[..., d_in] → [..., columns.len()]`: the adapter's outputs in `columns` (zeros in rows no block changes),
    /// with each block's `x · Aᵀ` taken from `low` (one per block) or computed into it.
    fn forward_columns<const D: usize>(
        &self,
        x: &Tensor<D>,
        low: &[OnceCell<Tensor<2>>],
        columns: Range<usize>,
    ) -> Tensor<D> {
        let dims = x.dims();
        let d_in = dims[D - 1];
        let tokens = dims[..D - 1].iter().product();
        let x = x.clone().reshape([tokens, d_in]);
        let zeros = |len: usize| Tensor::<2>::zeros([tokens, len], &x.device());
        let mut outputs = Vec::new();
        let mut done = columns.start;
        for (block, low) in self.blocks.iter().zip(low) {
            let (start, end) = (block.start.max(columns.start), (block.start + block.rows()).min(columns.end));
            if start >= end {
                continue;
            }
            if done < start {
                outputs.push(zeros(start - done));
            }
            let low = low.get_or_init(|| quant_matmul::matmul(x.clone(), &block.down, None)); // [tokens, padded rank]
            let mut offset = block.start;
            for up in &block.up {
                let (from, to) = (start.max(offset), end.min(offset + up.n));
                if from < to {
                    let y = quant_matmul::matmul(low.clone(), up, None); // [tokens, up.n]
                    outputs.push(match to - from == up.n {
                        true => y,
                        false => y.narrow(1, from - offset, to - from),
                    });
                }
                offset += up.n;
            }
            done = end;
        }
        if done < columns.end {
            outputs.push(zeros(columns.end - done));
        }
        let y = match outputs.len() {
            1 => outputs.remove(0),
            _ => Tensor::cat(outputs, 1),
        };
        let mut out_dims = dims;
        out_dims[D - 1] = columns.len();
        y.reshape(out_dims)
    }

    /// Bytes the factors occupy on their device.
    pub fn device_bytes(&self) -> usize {
        let block =
            |b: &LowRankBlock| b.down.device_bytes() + b.up.iter().map(PackedWeight::device_bytes).sum::<usize>();
        self.blocks.iter().map(block).sum()
    }
}

/// The multiple a [`LowRank`]'s rank is padded to: the packed kernels' K tile.
const RANK_TILE: usize = 32;

/// The rank a [`LowRank`] stores for an update of `rank`.
fn padded_rank(rank: usize) -> usize {
    rank.max(1).next_multiple_of(RANK_TILE)
}

/// An f32 matrix `[n, k]` uploaded as an F32 [`PackedWeight`] ([`PackedWeight::from_f32`]), counted as uploaded
/// weights ([`faults::note_upload`]).
fn f32_weight(values: &[f32], shape: [usize; 2], device: &Device) -> Result<PackedWeight> {
    let weight = PackedWeight::from_f32(values, shape, device)?;
    faults::note_upload(device, size_of_val(values) as u64);
    dispatch_uploads(device)?;
    Ok(weight)
}

impl BaseWeight {
    /// Output features.
    fn d_out(&self) -> usize {
        match self {
            Self::Dense(linear) => linear.weight.dims()[1],
            Self::Packed(linear) => linear.weight.n,
            Self::Released(shape) => shape.d_out,
        }
    }

    /// `[..., d_in] → [..., len]`: output features `start..start + len`. A dense weight is narrowed before the
    /// matmul; a packed one computes all its outputs and keeps the range (loading stores a fused layer's
    /// segments as separate parts on limited devices, so that the range is usually the whole part).
    fn forward_columns<const D: usize>(&self, x: Tensor<D>, start: usize, len: usize) -> Tensor<D> {
        match self {
            Self::Dense(linear) if start == 0 && len == self.d_out() => linear.forward(x),
            Self::Dense(linear) => {
                let y = x.matmul(linear.weight.val().narrow(1, start, len).unsqueeze());
                match &linear.bias {
                    Some(bias) => y + bias.val().narrow(0, start, len).unsqueeze(),
                    None => y,
                }
            }
            Self::Packed(linear) if start == 0 && len == self.d_out() => linear.forward(x),
            Self::Packed(linear) => linear.forward(x).narrow(D - 1, start, len),
            Self::Released(_) => panic!("a released layer was used: its owner must load it again first"),
        }
    }
}

/// A linear layer `y = x · Wᵀ + b + Σ x · Aᵀ · Bᵀ · s`: the base weight as loaded, plus any LoRA adapters applied
/// at runtime (never merged into the base, so packed weights stay packed and adapters come and go freely).
#[derive(Module, Debug)]
pub struct Projection {
    /// The checkpoint's weight and bias as consecutive row ranges along `d_out` ([`part_rows`]): one part on
    /// devices without a binding limit.
    pub parts: Vec<BaseWeight>,
    /// Active low-rank adapters, empty without LoRA.
    pub adapters: Vec<LowRank>,
    /// The output segments of a fused layer (q, k, v, …), as loaded: kept to load it again the same way.
    #[module(skip)]
    pub segments: Vec<usize>,
    /// Whether the checkpoint has a bias for it.
    #[module(skip)]
    pub bias: bool,
}

impl Projection {
    fn new(parts: Vec<BaseWeight>, segments: &[usize], bias: bool) -> Self {
        Self { parts, adapters: Vec::new(), segments: segments.to_vec(), bias }
    }

    /// `[..., d_in] → [..., d_out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_columns(x, 0..self.d_out())
    }

    /// `[..., d_in] → [..., columns.len()]`: only the output features in `columns` ([`ProjectionInput::columns`]).
    pub fn forward_columns<const D: usize>(&self, x: Tensor<D>, columns: Range<usize>) -> Tensor<D> {
        self.input(x).columns(columns)
    }

    /// `x` as this layer's input, for computing its outputs a few columns at a time (the q, k and v of a fused
    /// qkv): each adapter computes its `x · Aᵀ` once, for every range that needs it.
    pub fn input<const D: usize>(&self, x: Tensor<D>) -> ProjectionInput<'_, D> {
        let low =
            self.adapters.iter().map(|adapter| adapter.blocks.iter().map(|_| OnceCell::new()).collect()).collect();
        ProjectionInput { projection: self, x, low }
    }

    /// `gelu_tanh(self.forward(x))`: in the matmul's epilogue where the layer is one packed part without
    /// adapters, else a GELU launch after it.
    pub fn forward_gelu(&self, x: Tensor<3>) -> Tensor<3> {
        match self.single_packed() {
            Some(linear) => linear.forward_with(x, Epilogue::Gelu),
            None => fused::gelu_tanh(self.forward(x)),
        }
    }

    /// `residual + gate · self.forward(x)` with `x` `[b, n, in]`, `residual` `[b, n, out]` and `gate`
    /// `[b, 1, out]` (a block's gated residual add): in the matmul's epilogue where the layer is one packed
    /// part without adapters, else a gated-add launch after it.
    pub fn forward_gated_add(&self, x: Tensor<3>, residual: Tensor<3>, gate: Tensor<3>) -> Tensor<3> {
        let ([b, n, _], out) = (x.dims(), self.d_out());
        let fits = residual.dims() == [b, n, out] && gate.dims() == [b, 1, out];
        match self.single_packed() {
            Some(linear) if fits => {
                let (residual, gate) = (residual.reshape([b * n, out]), gate.reshape([b, out]));
                linear.forward_with(x, Epilogue::GatedAdd { residual: &residual, gate: &gate })
            }
            _ => fused::gated_add(residual, gate, self.forward(x)),
        }
    }

    /// The layer's one packed part, where it has no other part and no adapter: what an epilogue can run in.
    fn single_packed(&self) -> Option<&PackedLinear> {
        match self.parts.as_slice() {
            [BaseWeight::Packed(linear)] if self.adapters.is_empty() && linear.weight.is_packed() => Some(linear),
            _ => None,
        }
    }

    /// Input features.
    pub fn d_in(&self) -> usize {
        match &self.parts[0] {
            BaseWeight::Dense(linear) => linear.weight.dims()[0],
            BaseWeight::Packed(linear) => linear.weight.k,
            BaseWeight::Released(shape) => shape.d_in,
        }
    }

    /// Output features.
    pub fn d_out(&self) -> usize {
        self.parts.iter().map(BaseWeight::d_out).sum()
    }

    /// The row ranges along `d_out` of the outputs a fused layer concatenates ([`Projection::segments`]: q, k, v,
    /// …; one range for a plain layer), whether its weight is on the device or released.
    pub fn segment_ranges(&self) -> Vec<Range<usize>> {
        let mut start = 0;
        self.segments
            .iter()
            .filter(|&&rows| rows > 0)
            .map(|&rows| {
                start += rows;
                start - rows..start
            })
            .collect()
    }

    /// Whether the weight stays in ggml blocks on the device.
    pub fn is_packed(&self) -> bool {
        self.parts.iter().all(|part| matches!(part, BaseWeight::Packed(_)))
    }

    /// Bytes the base weight and bias occupy on their device (adapters excluded).
    pub fn device_bytes(&self) -> usize {
        let part_bytes = |part: &BaseWeight| match part {
            BaseWeight::Dense(linear) => linear.num_params() * size_of::<f32>(),
            BaseWeight::Packed(linear) => linear.device_bytes(),
            BaseWeight::Released(_) => 0,
        };
        self.parts.iter().map(part_bytes).sum()
    }

    /// Bytes the adapters' factors occupy on their device.
    pub fn adapter_bytes(&self) -> usize {
        self.adapters.iter().map(LowRank::device_bytes).sum()
    }

    /// Whether the base weight was freed ([`Projection::release`]).
    pub fn is_released(&self) -> bool {
        self.parts.iter().any(|part| matches!(part, BaseWeight::Released(_)))
    }

    /// Frees the base weight from the device (adapters stay); [`Projection::forward`] must not be called until
    /// [`Projection::reload`].
    pub fn release(&mut self) {
        self.parts = vec![BaseWeight::Released(ReleasedWeight { d_in: self.d_in(), d_out: self.d_out() })];
    }

    /// Loads the base weight `{prefix}.weight` (and its bias) again from `weights`, keeping the adapters.
    pub fn reload(&mut self, weights: &dyn Weights, prefix: &str, device: &Device) -> Result<()> {
        self.parts = fused_linear(weights, prefix, self.d_in(), &self.segments, self.bias, device)?.parts;
        Ok(())
    }
}

/// A [`Projection`]'s input `[..., d_in]` ([`Projection::input`]), with each adapter block's `x · Aᵀ`
/// (`[tokens, padded rank]`) once some range of columns has needed it.
pub struct ProjectionInput<'a, const D: usize> {
    projection: &'a Projection,
    x: Tensor<D>,
    /// Per adapter, per block.
    low: Vec<Vec<OnceCell<Tensor<2>>>>,
}

impl<const D: usize> ProjectionInput<'_, D> {
    /// The input.
    pub fn x(&self) -> &Tensor<D> {
        &self.x
    }

    /// `[..., columns.len()]`: the output features in `columns` (one segment of a fused projection, such as the
    /// q of a qkv), computed part by part and concatenated, plus the adapters' updates of those columns.
    pub fn columns(&self, columns: Range<usize>) -> Tensor<D> {
        let mut outputs = Vec::new();
        let mut offset = 0;
        for part in &self.projection.parts {
            let rows = part.d_out();
            let (start, end) = (columns.start.max(offset), columns.end.min(offset + rows));
            if start < end {
                outputs.push(part.forward_columns(self.x.clone(), start - offset, end - start));
            }
            offset += rows;
        }
        let y = match outputs.len() {
            1 => outputs.remove(0),
            _ => Tensor::cat(outputs, D - 1),
        };
        let adapters = self.projection.adapters.iter().zip(&self.low);
        adapters.fold(y, |y, (adapter, low)| y + adapter.forward_columns(&self.x, low, columns.clone()))
    }
}

/// The row ranges along `d_out` in which a weight of `segments` (row counts of the outputs a fused layer
/// concatenates, e.g. `[h, h, h, mlp]` for q, k, v and the MLP input) and `row_bytes` device bytes per row is
/// stored on a device whose buffers hold at most `limit` bytes. Unlimited devices (`u64::MAX`, the CPU) keep the
/// weight whole; limited ones (wgpu) store every segment apart, so that a forward may compute one segment
/// alone, and cut a segment over the limit into equal row ranges that fit. Errors when one row does not fit.
pub fn part_rows(segments: &[usize], row_bytes: u64, limit: u64) -> Result<Vec<Range<usize>>> {
    let total: usize = segments.iter().sum();
    if limit == u64::MAX {
        #[allow(clippy::single_range_in_vec_init)] // one part: all the rows
        return Ok(vec![0..total]);
    }
    // Packed parts are uploaded as whole u32 words.
    let max_rows = ((limit / 4 * 4) / row_bytes.max(1)) as usize;
    if max_rows == 0 {
        return Err(Error::Invalid(format!(
            "one row of a weight takes {row_bytes} bytes, more than this device's {limit}-byte buffer limit"
        )));
    }
    let mut parts = Vec::new();
    let mut start = 0;
    for &segment in segments.iter().filter(|&&s| s > 0) {
        let pieces = segment.div_ceil(max_rows);
        let rows = segment.div_ceil(pieces);
        let end = start + segment;
        while start < end {
            parts.push(start..(start + rows).min(end));
            start += rows;
        }
        start = end;
    }
    Ok(parts)
}

/// A PyTorch `Linear` stored as `{prefix}.weight` `[d_out, d_in]` (and `{prefix}.bias` `[d_out]`), see
/// [`fused_linear`].
#[cfg(test)]
pub(crate) fn linear(
    weights: &dyn Weights,
    prefix: &str,
    d_in: usize,
    d_out: usize,
    bias: bool,
    device: &Device,
) -> Result<Projection> {
    fused_linear(weights, prefix, d_in, &[d_out], bias, device)
}

/// A PyTorch `Linear` `{prefix}.weight` `[Σ segments, d_in]` (and `{prefix}.bias`) whose outputs concatenate
/// `segments` (q, k, v, …): packed when the weights hold it in ggml blocks that [`keeps_blocks`] keeps on
/// `device`, else as burn's [`Linear`] with its weight transposed to `[d_in, d_out]`; stored in the row ranges
/// [`part_rows`] chooses for the device's [`max_binding_bytes`].
pub(crate) fn fused_linear(
    weights: &dyn Weights,
    prefix: &str,
    d_in: usize,
    segments: &[usize],
    bias: bool,
    device: &Device,
) -> Result<Projection> {
    let d_out: usize = segments.iter().sum();
    let name = format!("{prefix}.weight");
    let limit = max_binding_bytes(device);
    let has_bias = bias;
    let read_bias = || bias.then(|| host(weights, &format!("{prefix}.bias"), &[d_out])).transpose();
    let bias_part = |bias: &Option<HostTensor>, rows: &Range<usize>| {
        bias.as_ref()
            .map(|b| Tensor::<1>::from_data(TensorData::new(b.data[rows.clone()].to_vec(), [rows.len()]), device))
    };
    if let Some(raw) = packs_on(device).then(|| weights.raw_block(&name)).flatten() {
        let (ty, shape, bytes) = raw?;
        check_shape(&name, &[d_out, d_in], &shape)?;
        if keeps_blocks(ty, &shape, device) {
            let bias = read_bias()?;
            let row_bytes = d_in / ty.block_size() * ty.type_size();
            let parts = part_rows(segments, row_bytes as u64, limit)
                .map_err(|e| Error::Invalid(format!("tensor `{name}`: {e}")))?
                .into_iter()
                .map(|rows| {
                    let part = &bytes[rows.start * row_bytes..rows.end * row_bytes];
                    let weight = PackedWeight::new(ty, &[rows.len(), d_in], part, device)
                        .map_err(|e| Error::Invalid(format!("tensor `{name}`: {e}")))?;
                    dispatch_uploads(device)?;
                    Ok(BaseWeight::Packed(PackedLinear::new(weight, bias_part(&bias, &rows))?))
                })
                .collect::<Result<_>>()?;
            return Ok(Projection::new(parts, segments, has_bias));
        }
    }
    let weight = host(weights, &name, &[d_out, d_in])?;
    let bias = read_bias()?;
    let parts = part_rows(segments, (d_in * size_of::<f32>()) as u64, limit)
        .map_err(|e| Error::Invalid(format!("tensor `{name}`: {e}")))?
        .into_iter()
        .map(|rows| {
            let mut transposed = vec![0.0f32; rows.len() * d_in];
            for (o, row) in weight.data[rows.start * d_in..rows.end * d_in].chunks_exact(d_in).enumerate() {
                for (i, &value) in row.iter().enumerate() {
                    transposed[i * rows.len() + o] = value;
                }
            }
            let weight = Tensor::<2>::from_data(TensorData::new(transposed, [d_in, rows.len()]), device);
            let bias = bias_part(&bias, &rows).map(Param::from_tensor);
            dispatch_uploads(device)?;
            Ok(BaseWeight::Dense(Linear { weight: Param::from_tensor(weight), bias }))
        })
        .collect::<Result<_>>()?;
    Ok(Projection::new(parts, segments, has_bias))
}

/// [`fused_linear`] left on the host: the shapes are checked against the header and nothing is uploaded until
/// [`Projection::reload`].
pub(crate) fn deferred_linear(
    weights: &dyn Weights,
    prefix: &str,
    d_in: usize,
    segments: &[usize],
    bias: bool,
) -> Result<Projection> {
    let d_out: usize = segments.iter().sum();
    let name = format!("{prefix}.weight");
    let found = weights
        .shape(&name)
        .ok_or_else(|| Error::Invalid(format!("missing tensor `{name}` (expected shape {:?})", [d_out, d_in])))?;
    check_shape(&name, &[d_out, d_in], &found)?;
    if bias {
        let name = format!("{prefix}.bias");
        let found = weights
            .shape(&name)
            .ok_or_else(|| Error::Invalid(format!("missing tensor `{name}` (expected shape {:?})", [d_out])))?;
        check_shape(&name, &[d_out], &found)?;
    }
    Ok(Projection::new(vec![BaseWeight::Released(ReleasedWeight { d_in, d_out })], segments, bias))
}

/// The device bytes of the tensors of `weights` that `include` accepts once loaded on `device`, from their
/// headers only: repacked blocks ([`Layout::bytes`]) where [`keeps_blocks`] keeps them packed, f32 values
/// otherwise.
pub fn planned_device_bytes(weights: &dyn Weights, device: &Device, include: impl Fn(&str) -> bool) -> u64 {
    weights.names().iter().filter(|name| include(name)).map(|name| tensor_device_bytes(weights, name, device)).sum()
}

/// The device bytes of the tensor `name` once loaded on `device` (see [`planned_device_bytes`]); 0 when missing.
pub fn tensor_device_bytes(weights: &dyn Weights, name: &str, device: &Device) -> u64 {
    let Some(shape) = weights.shape(name) else { return 0 };
    let values = shape.iter().product::<usize>() as u64;
    match weights.stored_type(name) {
        Some(ty) if keeps_blocks(ty, &shape, device) => {
            Layout::new(ty, shape[0], shape[1]).map_or(0, |layout| layout.bytes() as u64)
        }
        _ => values * size_of::<f32>() as u64,
    }
}

/// An embedding table kept on the host in its stored form (f32, f16, bf16 or ggml blocks): only the rows of
/// the tokens looked up are dequantized and uploaded, so a table larger than any GPU buffer (T5's
/// 32128 × 4096) never becomes one.
#[derive(Debug, Clone)]
pub struct HostEmbedding {
    ty: GgmlType,
    rows: usize,
    dim: usize,
    bytes: Arc<Vec<u8>>,
}

impl HostEmbedding {
    /// Reads the table `name` `[rows, dim]` as stored ([`Weights::raw_block`]), or as f32 from sources that
    /// only produce f32.
    pub fn load(weights: &dyn Weights, name: &str, [rows, dim]: [usize; 2]) -> Result<Self> {
        if let Some(raw) = weights.raw_block(name) {
            let (ty, shape, bytes) = raw?;
            check_shape(name, &[rows, dim], &shape)?;
            if ty.can_dequantize() && dim.is_multiple_of(ty.block_size()) {
                return Ok(Self { ty, rows, dim, bytes: Arc::new(bytes) });
            }
        }
        let table = host(weights, name, &[rows, dim])?;
        let bytes = table.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(Self { ty: GgmlType::F32, rows, dim, bytes: Arc::new(bytes) })
    }

    /// Rows and width, `[rows, dim]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.rows, self.dim]
    }

    /// The rows of `ids` (one sequence) as `[1, n, dim]` on `device`.
    pub fn forward(&self, ids: &[u32], device: &Device) -> Result<Tensor<3>> {
        let row_bytes = self.dim / self.ty.block_size() * self.ty.type_size();
        let mut values = Vec::with_capacity(ids.len() * self.dim);
        for &id in ids {
            let row = id as usize;
            if row >= self.rows {
                return Err(Error::Invalid(format!("token id {id} is outside the {}-row embedding table", self.rows)));
            }
            values.extend(dequantize(self.ty, &self.bytes[row * row_bytes..(row + 1) * row_bytes], self.dim)?);
        }
        Ok(Tensor::from_data(TensorData::new(values, [1, ids.len(), self.dim]), device))
    }
}

/// Part of a layer's update: the output rows `rows` get `x · Aᵀ · Bᵀ`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateBlock {
    /// The output rows it changes.
    pub rows: Range<usize>,
    /// `A`, `[rank, d_in]`.
    pub down: HostTensor,
    /// `B` with alpha / rank folded in, `[rows.len(), rank]`.
    pub up: HostTensor,
}

impl UpdateBlock {
    /// Its rank.
    pub fn rank(&self) -> usize {
        self.down.shape[0]
    }
}

/// One layer's update, ready to apply: blocks over disjoint output rows, in their order — one for a pair of
/// factors over the whole layer (kohya's fused qkv), one for each fused part with factors of its own (diffusers'
/// q, k and v), so that no factor holds zeros for the others' rows.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerUpdate {
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
    /// The blocks, by their first row.
    pub blocks: Vec<UpdateBlock>,
}

impl LayerUpdate {
    /// The total rank (of all blocks).
    pub fn rank(&self) -> usize {
        self.blocks.iter().map(UpdateBlock::rank).sum()
    }

    /// Bytes its [`LowRank`] takes on a device: each block's factors in f32 at the padded rank.
    pub fn device_bytes(&self) -> usize {
        let block = |b: &UpdateBlock| padded_rank(b.rank()) * (self.d_in + b.rows.len()) * size_of::<f32>();
        self.blocks.iter().map(block).sum()
    }

    /// `Σ B · A` over the blocks, `[d_out, d_in]` (for tests and inspection).
    pub fn delta(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.d_out * self.d_in];
        for block in &self.blocks {
            let rank = block.rank();
            for (o, up) in block.rows.clone().zip(block.up.data.chunks_exact(rank)) {
                for (r, &u) in up.iter().enumerate() {
                    let down = &block.down.data[r * self.d_in..][..self.d_in];
                    for (to, &d) in out[o * self.d_in..][..self.d_in].iter_mut().zip(down) {
                        *to += u * d;
                    }
                }
            }
        }
        out
    }
}

/// Tells adapters apart for the device: [`crate::model::flux::Flux::set_adapters`] keeps the factors it uploaded
/// while the adapters with the same ids at the same strengths are asked for again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdapterId(u64);

impl AdapterId {
    /// An id that no adapter of this process has had before.
    pub fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// A LoRA file resolved against a model: one [`LayerUpdate`] per BFL layer it adapts.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapter {
    /// Fresh for every file read ([`AdapterId::fresh`]); a clone shares it, as it shares the factors.
    pub id: AdapterId,
    /// The file's name, for messages and recipes.
    pub label: String,
    /// BFL layer name → its update.
    pub layers: BTreeMap<String, LayerUpdate>,
    /// Text-encoder tensors in the file, which are not applied.
    pub ignored_text_encoder_tensors: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu;
    use burn::tensor::Tolerance;

    struct One(HostTensor);

    impl Weights for One {
        fn names(&self) -> Vec<String> {
            vec!["lin.weight".into()]
        }
        fn shape(&self, name: &str) -> Option<Vec<usize>> {
            (name == "lin.weight").then(|| self.0.shape.clone())
        }
        fn read(&self, _name: &str) -> Result<HostTensor> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn linear_matches_pytorch_convention() {
        // PyTorch weight [out 3, in 2]: y = x Wᵀ.
        let w = One(HostTensor::new(vec![3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap());
        let device = cpu();
        let lin = linear(&w, "lin", 2, 3, false, &device).unwrap();
        assert!(!lin.is_packed());
        assert_eq!((lin.d_in(), lin.device_bytes()), (2, 6 * 4));
        let y = lin.forward(Tensor::<2>::from_data(TensorData::new(vec![1.0f32, -1.0], [1, 2]), &device));
        y.into_data().assert_eq(&TensorData::new(vec![-1.0f32, -1.0, -1.0], [1, 3]), false);
    }

    /// A `[7, 64]` weight with bias, values spread over ±1.
    fn seven_by_64() -> crate::formats::safetensors::SafetensorsFile {
        let weight: Vec<f32> = (0..7 * 64).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let bias: Vec<f32> = (0..7).map(|i| i as f32 / 4.0 - 0.5).collect();
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let file = crate::formats::safetensors::tests::build(
            &[("lin.weight", "F32", vec![7, 64], bytes(&weight)), ("lin.bias", "F32", vec![7], bytes(&bias))],
            None,
        );
        crate::formats::safetensors::SafetensorsFile::open(file).unwrap()
    }

    #[test]
    fn part_rows_keep_segments_apart_and_fit_the_limit() {
        assert_eq!(part_rows(&[3, 4], 256, u64::MAX).unwrap(), std::iter::once(0..7).collect::<Vec<_>>());
        assert_eq!(part_rows(&[3, 4], 256, 1 << 20).unwrap(), [0..3, 3..7]);
        // 1000 bytes hold 3 rows of 256: a segment of 7 becomes 3 equal-as-possible parts.
        assert_eq!(part_rows(&[7], 256, 1000).unwrap(), [0..3, 3..6, 6..7]);
        assert_eq!(part_rows(&[2, 7], 256, 1024).unwrap(), [0..2, 2..6, 6..9]);
        // Packed rows of 18 bytes: 5 rows are 90 bytes, 92 as whole words, over a 91-byte limit that holds 4.
        assert_eq!(part_rows(&[5], 18, 91).unwrap(), [0..3, 3..5]);
        assert!(part_rows(&[5], 256, 255).unwrap_err().to_string().contains("256 bytes"));
    }

    #[test]
    fn a_split_projection_equals_the_whole_one() {
        let device = cpu();
        let weights = seven_by_64();
        let whole = linear(&weights, "lin", 64, 7, true, &device).unwrap();
        // Rows of 256 bytes, 512-byte limit: segments [3, 4] → [0..2, 2..3, 3..5, 5..7].
        let split = crate::device::with_binding_limit(512, || {
            fused_linear(&weights, "lin", 64, &[3, 4], true, &device).unwrap()
        });
        assert_eq!((whole.parts.len(), split.parts.len()), (1, 4));
        assert_eq!((split.d_in(), split.d_out(), split.device_bytes()), (64, 7, whole.device_bytes()));
        let x: Vec<f32> = (0..5 * 64).map(|i| ((i * 13) % 29) as f32 / 14.0 - 1.0).collect();
        let x = Tensor::<3>::from_data(TensorData::new(x, [1, 5, 64]), &device);
        let expected = whole.forward(x.clone()).into_data();
        split.forward(x.clone()).into_data().assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
        // Columns 1..6 straddle three parts; the whole projection narrows its weight.
        let cols = |p: &Projection| p.forward_columns(x.clone(), 1..6).into_data();
        let expected = whole.forward(x.clone()).narrow(2, 1, 5).into_data();
        cols(&split).assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
        cols(&whole).assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
    }

    /// On the CPU (dense factors) and on wgpu (the factors in the packed kernels, ranks 3 and 5 padded to 32),
    /// every column range of a two-segment layer with two blocks (rows 0..2, and 5..14 across the segments'
    /// boundary at 7; rows 2..5 and 14..16 unchanged) equals `x · (Σ B · A)ᵀ · strength` in plain tensor ops,
    /// the blocks' `x · Aᵀ` computed by the first range and reused by the others.
    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn a_low_rank_update_equals_its_product_in_plain_ops_for_any_columns() {
        let ramp = |len: usize, step: usize| (0..len).map(|i| ((i * step) % 31) as f32 / 15.0 - 1.0).collect();
        let (d_in, d_out, tokens) = (64, 16, 9);
        let block = |rows: Range<usize>, rank: usize, salt: usize| UpdateBlock {
            down: HostTensor::new(vec![rank, d_in], ramp(rank * d_in, 7 + salt)).unwrap(),
            up: HostTensor::new(vec![rows.len(), rank], ramp(rows.len() * rank, 11 + salt)).unwrap(),
            rows,
        };
        let update = LayerUpdate { d_in, d_out, blocks: vec![block(0..2, 3, 0), block(5..14, 5, 2)] };
        let x = ramp(tokens * d_in, 13);
        for device in [cpu(), crate::harness::testing::gpu()] {
            let lora = LowRank::new(AdapterId::fresh(), &update, 0.5, &[0..7, 7..16], &device).unwrap();
            let low: Vec<OnceCell<Tensor<2>>> = lora.blocks.iter().map(|_| OnceCell::new()).collect();
            let second = &lora.blocks[1];
            assert_eq!(second.down.is_packed(), packs_on(&device));
            let pieces: Vec<[usize; 2]> = second.up.iter().map(|up| [up.n, up.k]).collect();
            assert_eq!((second.start, second.down.n, pieces), (5, 32, vec![[2, 32], [7, 32]]));
            assert_eq!(lora.device_bytes(), update.device_bytes());
            let x = Tensor::<3>::from_data(TensorData::new(x.clone(), [1, tokens, d_in]), &device);
            let delta = Tensor::<2>::from_data(TensorData::new(update.delta(), [d_out, d_in]), &device);
            let expected = x.clone().matmul(delta.transpose().unsqueeze()) * 0.5;
            for columns in [0..16, 7..16, 3..12, 0..7, 2..5, 14..16] {
                let want = expected.clone().narrow(2, columns.start, columns.len()).into_data();
                let got = lora.forward_columns(&x, &low, columns.clone()).into_data();
                got.assert_approx_eq::<f32>(&want, Tolerance::absolute(1e-4));
                assert!(low.iter().all(|low| low.get().is_some()), "the first range covers both blocks");
            }
        }
        let mismatched =
            LowRank::new(AdapterId::fresh(), &update, 1.0, &[0..7, 7..15], &cpu()).unwrap_err().to_string();
        assert_eq!(mismatched, "an update of 16 outputs on segments [0..7, 7..15]");
    }

    #[test]
    fn host_embedding_dequantizes_only_the_rows_looked_up() {
        let device = cpu();
        let values: Vec<f32> = (0..4 * 32).map(|i| ((i * 7) % 23) as f32 / 8.0 - 1.0).collect();
        let f16s: Vec<u8> = values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
        let bf16s: Vec<u8> = values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
        let file = crate::formats::safetensors::SafetensorsFile::open(crate::formats::safetensors::tests::build(
            &[("h", "F16", vec![4, 32], f16s), ("b", "BF16", vec![4, 32], bf16s)],
            None,
        ))
        .unwrap();
        for name in ["h", "b"] {
            let table = HostEmbedding::load(&file, name, [4, 32]).unwrap();
            assert_eq!((table.ty, table.bytes.len()), (if name == "h" { GgmlType::F16 } else { GgmlType::BF16 }, 256));
            let stored = file.read(name).unwrap().data;
            let expected: Vec<f32> =
                [2usize, 0, 2].iter().flat_map(|&r| stored[r * 32..(r + 1) * 32].to_vec()).collect();
            let rows = table.forward(&[2, 0, 2], &device).unwrap();
            rows.into_data().assert_eq(&TensorData::new(expected, [1, 3, 32]), false);
        }
        let err = HostEmbedding::load(&file, "h", [4, 16]).unwrap_err().to_string();
        assert_eq!(err, "tensor `h` has shape [4, 32], expected [4, 16]");
    }

    #[test]
    fn wrong_shape_and_missing_tensor_are_named() {
        let w = One(HostTensor::new(vec![3, 2], vec![0.0; 6]).unwrap());
        let device = cpu();
        let err = linear(&w, "lin", 3, 3, false, &device).unwrap_err().to_string();
        assert_eq!(err, "tensor `lin.weight` has shape [3, 2], expected [3, 3]");
        let err = linear(&w, "lin", 2, 3, true, &device).unwrap_err().to_string();
        assert_eq!(err, "missing tensor `lin.bias` (expected shape [3])");
    }
}
