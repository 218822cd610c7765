//! The Flux DiT (FLUX.1 [dev] / Kontext [dev]) with BFL's checkpoint names
//! (<https://github.com/black-forest-labs/flux/blob/main/src/flux/model.py>, `modules/layers.py`).
//!
//! Text tokens and image tokens (noise, then any reference tokens) first run through double-stream blocks
//! (separate weights per stream, one joint attention), then through single-stream blocks over the
//! concatenation `[txt, img]`. Every block is modulated by one conditioning vector per sample, built from the
//! timestep, the distilled guidance and the pooled CLIP vector; [`Flux::modulations`] computes all of a step's
//! modulation values at once, so a pipeline may compute them ahead of the denoising loop.
//!
//! Shapes in the field docs are the checkpoint's (PyTorch `[out, in]`); every linear layer is a [`Projection`]:
//! dense, or the file's ggml blocks kept packed on the GPU.

pub mod config;
pub mod embeddings;
pub mod infer;
pub mod lora;
pub mod remap;
pub mod rope;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::silu;

use config::FluxConfig;
use embeddings::{MlpEmbedder, TIME_FACTOR, TIMESTEP_FEATURES, timestep_embedding};
use std::collections::HashMap;

use std::ops::Range;

use crate::device::max_binding_bytes;
use crate::formats::weights::Weights;
use crate::kernels::fused::{self, HeadInput};
use crate::kernels::path::KernelPath;
use crate::model::layers::{AdapterId, LoraAdapter};
use crate::model::layers::{LowRank, Projection, ProjectionInput};
use crate::model::scope::Scope;
use crate::{Error, Result};
use rope::Rope;

/// Epsilon of every LayerNorm and RMSNorm of the model.
const NORM_EPS: f64 = 1e-6;

/// Scaled dot-product attention `softmax(q·kᵀ / √d)·v` over `[b, heads, n, d]`: memory-bounded on wgpu,
/// the materialised reference elsewhere ([`crate::kernels::attention::attention`]).
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    crate::kernels::attention::attention(q, k, v)
}

/// One stream's input to the joint attention: its normalised, modulated tokens as the input of its q/k/v
/// projection (the first `3·hidden` outputs, `(K H D)`), and its QK-norm.
struct StreamQkv<'a> {
    input: ProjectionInput<'a, 3>,
    norm: &'a QkNorm,
}

/// q, k and v of the streams joined along the tokens (in the order given), each `[b, heads, Σn, d]`: q and k
/// RMS-normalised with each stream's norm and rotated by `rope` (which covers every token), v as projected.
/// Computed one at a time so that no `[b, n, 3·hidden]` buffer exists; each of the three head layouts is one
/// kernel for both streams on wgpu ([`fused::split_heads`]).
fn joint_qkv(streams: &[StreamQkv], hidden: usize, heads: usize, rope: &Rope) -> Result<[Tensor<4>; 3]> {
    let project = |s: &StreamQkv, i: usize| s.input.columns(i * hidden..(i + 1) * hidden);
    let norm_scale = |s: &StreamQkv, i: usize| match i {
        0 => Some(s.norm.query_norm.scale.val()),
        1 => Some(s.norm.key_norm.scale.val()),
        _ => None,
    };
    // The heads are f16 wherever the attention reads them so: the `coop` kernel (which would round them to f16
    // itself) and, computing in f16, the `flash` kernel.
    let tokens = streams.iter().map(|s| s.input.x().dims()[1]).sum();
    let f16 = streams.first().is_some_and(|s| {
        crate::kernels::attention::kernel_path(&s.input.x().device(), tokens, tokens, hidden / heads) != KernelPath::F32
    });
    let heads_of = |i: usize| {
        let parts = streams.iter().map(|s| HeadInput { x: project(s, i), norm_scale: norm_scale(s, i) }).collect();
        let rope = (i < 2).then(|| rope.tables());
        match f16 {
            true => fused::split_heads_f16(parts, heads, rope, NORM_EPS),
            false => fused::split_heads(parts, heads, rope, NORM_EPS),
        }
    };
    Ok([heads_of(0)?, heads_of(1)?, heads_of(2)?])
}

/// Tokens per chunk such that a `[batch, tokens, width]` f32 activation fits `limit` bytes (at least one).
pub fn token_chunk(batch: usize, width: usize, limit: u64) -> usize {
    let token_bytes = (batch * width * size_of::<f32>()).max(1) as u64;
    usize::try_from(limit / token_bytes).unwrap_or(usize::MAX).max(1)
}

/// `f(chunk, tokens)` over consecutive token ranges of `x` (`[b, n, …]`), each small enough that an activation
/// `[b, tokens, width]` fits the device's buffer limit ([`max_binding_bytes`]), concatenated along the tokens;
/// one call when all tokens fit. For the token-wise layers (MLPs), whose widest activation is `width`.
fn for_token_chunks(x: Tensor<3>, width: usize, f: impl Fn(Tensor<3>, Range<usize>) -> Tensor<3>) -> Tensor<3> {
    let [b, n, _] = x.dims();
    let chunk = token_chunk(b, width, max_binding_bytes(&x.device()));
    if chunk >= n {
        return f(x, 0..n);
    }
    let outputs = (0..n)
        .step_by(chunk)
        .map(|start| {
            let len = chunk.min(n - start);
            f(x.clone().narrow(1, start, len), start..start + len)
        })
        .collect();
    Tensor::cat(outputs, 1)
}

/// RMSNorm over the last axis with a learned scale (BFL `RMSNorm`).
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `scale` `[head_dim]`.
    pub scale: Param<Tensor<1>>,
}

impl RmsNorm {
    fn load(vb: Scope, dim: usize) -> Result<Self> {
        Ok(Self { scale: Param::from_tensor(vb.tensor("scale", [dim])?) })
    }

    /// Normalises `[b, heads, n, d]` over `d`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        fused::reference::rms_norm(x, self.scale.val(), NORM_EPS)
    }
}

/// The RMSNorms of queries and keys (BFL `QKNorm`).
#[derive(Module, Debug)]
pub struct QkNorm {
    /// `query_norm`.
    pub query_norm: RmsNorm,
    /// `key_norm`.
    pub key_norm: RmsNorm,
}

impl QkNorm {
    fn load(vb: Scope, head_dim: usize) -> Result<Self> {
        Ok(Self {
            query_norm: RmsNorm::load(vb.pp("query_norm"), head_dim)?,
            key_norm: RmsNorm::load(vb.pp("key_norm"), head_dim)?,
        })
    }
}

/// Shift, scale and gate of one modulated sub-layer, each `[b, 1, hidden]`.
#[derive(Debug, Clone)]
pub struct ModulationOut {
    /// Added after scaling.
    pub shift: Tensor<3>,
    /// Applied as `1 + scale`.
    pub scale: Tensor<3>,
    /// Multiplies the sub-layer's output before the residual add.
    pub gate: Tensor<3>,
}

impl ModulationOut {
    /// `(1 + scale) · LayerNorm(x) + shift` (one kernel on wgpu).
    pub fn norm_modulate(&self, x: Tensor<3>) -> Tensor<3> {
        fused::layer_norm_modulate(x, self.shift.clone(), self.scale.clone(), NORM_EPS)
    }

    /// `x + gate · y`, the gated residual add (one kernel on wgpu).
    fn gated_add(&self, x: Tensor<3>, y: Tensor<3>) -> Tensor<3> {
        fused::gated_add(x, self.gate.clone(), y)
    }

    /// `(x + gate · y, next.norm_modulate(x + gate · y))`: this sub-layer's residual add and the next one's
    /// input (one kernel on wgpu).
    fn gated_add_norm(&self, x: Tensor<3>, y: Tensor<3>, next: &ModulationOut) -> (Tensor<3>, Tensor<3>) {
        let (gate, shift, scale) = (self.gate.clone(), next.shift.clone(), next.scale.clone());
        fused::residual_layer_norm_modulate(x, gate, y, shift, scale, NORM_EPS)
    }
}

/// The adaLN projection of the conditioning vector (BFL `Modulation`): `lin(silu(vec))` cut into
/// `[shift, scale, gate]` once (single blocks) or twice (double blocks).
#[derive(Module, Debug)]
pub struct Modulation {
    /// `lin` `[multiplier·3·hidden, hidden]`.
    pub lin: Projection,
}

impl Modulation {
    fn load(vb: Scope, hidden: usize, double: bool) -> Result<Self> {
        let width = if double { 6 * hidden } else { 3 * hidden };
        Ok(Self { lin: vb.pp("lin").linear(hidden, width, true)? })
    }

    /// `[b, hidden]` → one [`ModulationOut`] per three chunks.
    pub fn forward(&self, vec: Tensor<2>) -> Vec<ModulationOut> {
        let out = self.lin.forward(silu(vec)).unsqueeze_dim::<3>(1); // [b, 1, multiplier·3·hidden]
        let chunks = out.dims()[2] / self.lin.d_in();
        let mut parts = out.chunk(chunks, 2).into_iter();
        let mut mods = Vec::new();
        while let (Some(shift), Some(scale), Some(gate)) = (parts.next(), parts.next(), parts.next()) {
            mods.push(ModulationOut { shift, scale, gate });
        }
        mods
    }
}

/// Fused qkv projection, QK-norm and output projection of one stream (BFL `SelfAttention`).
#[derive(Module, Debug)]
pub struct SelfAttention {
    /// `qkv` `[3·hidden, hidden]`.
    pub qkv: Projection,
    /// `norm.{query,key}_norm`.
    pub norm: QkNorm,
    /// `proj` `[hidden, hidden]`.
    pub proj: Projection,
}

impl SelfAttention {
    fn load(vb: Scope, config: &FluxConfig) -> Result<Self> {
        let hidden = config.hidden_size;
        let qkv = [hidden; 3];
        Ok(Self {
            qkv: vb.pp("qkv").fused_linear(hidden, &qkv, config.qkv_bias)?,
            norm: QkNorm::load(vb.pp("norm"), config.head_dim())?,
            proj: vb.pp("proj").linear(hidden, hidden, true)?,
        })
    }

    /// This stream's part of the joint attention for its normalised, modulated tokens `x`.
    fn stream(&self, x: Tensor<3>) -> StreamQkv<'_> {
        StreamQkv { input: self.qkv.input(x), norm: &self.norm }
    }
}

/// The GELU(tanh) MLP of one stream of a double block (`{img,txt}_mlp`).
#[derive(Module, Debug)]
pub struct Mlp {
    /// Checkpoint key `…_mlp.0`: `[mlp_hidden, hidden]`.
    pub layer_0: Projection,
    /// Checkpoint key `…_mlp.2`: `[hidden, mlp_hidden]`.
    pub layer_2: Projection,
}

impl Mlp {
    fn load(vb: Scope, config: &FluxConfig) -> Result<Self> {
        let (hidden, mlp) = (config.hidden_size, config.mlp_hidden());
        Ok(Self { layer_0: vb.pp("0").linear(hidden, mlp, true)?, layer_2: vb.pp("2").linear(mlp, hidden, true)? })
    }

    /// `residual + gate · mlp(x)`: `x` and `residual` `[b, n, hidden]`, `gate` `[b, 1, hidden]`, in token chunks
    /// whose `[b, chunk, mlp_hidden]` activation fits; the GELU and the gated add run in the matmuls' epilogues
    /// where the layers allow ([`Projection::forward_gelu`], [`Projection::forward_gated_add`]).
    fn forward_gated_add(&self, x: Tensor<3>, residual: Tensor<3>, gate: &Tensor<3>) -> Tensor<3> {
        let n = x.dims()[1];
        for_token_chunks(x, self.layer_0.d_out(), |x, tokens| {
            let residual = match tokens.len() == n {
                true => residual.clone(),
                false => residual.clone().narrow(1, tokens.start, tokens.len()),
            };
            self.layer_2.forward_gated_add(self.layer_0.forward_gelu(x), residual, gate.clone())
        })
    }
}

/// Modulation values of one double block: attention and MLP sub-layers of both streams.
#[derive(Debug, Clone)]
pub struct DoubleModulation {
    /// Image stream, before attention.
    pub img_attn: ModulationOut,
    /// Image stream, before the MLP.
    pub img_mlp: ModulationOut,
    /// Text stream, before attention.
    pub txt_attn: ModulationOut,
    /// Text stream, before the MLP.
    pub txt_mlp: ModulationOut,
}

/// A block with separate weights for text and image tokens and one joint attention (BFL `DoubleStreamBlock`).
#[derive(Module, Debug)]
pub struct DoubleStreamBlock {
    /// `img_mod`.
    pub img_mod: Modulation,
    /// `img_attn`.
    pub img_attn: SelfAttention,
    /// `img_mlp`.
    pub img_mlp: Mlp,
    /// `txt_mod`.
    pub txt_mod: Modulation,
    /// `txt_attn`.
    pub txt_attn: SelfAttention,
    /// `txt_mlp`.
    pub txt_mlp: Mlp,
    /// Attention heads.
    pub num_heads: usize,
}

impl DoubleStreamBlock {
    fn load(vb: Scope, config: &FluxConfig) -> Result<Self> {
        let hidden = config.hidden_size;
        Ok(Self {
            img_mod: Modulation::load(vb.pp("img_mod"), hidden, true)?,
            img_attn: SelfAttention::load(vb.pp("img_attn"), config)?,
            img_mlp: Mlp::load(vb.pp("img_mlp"), config)?,
            txt_mod: Modulation::load(vb.pp("txt_mod"), hidden, true)?,
            txt_attn: SelfAttention::load(vb.pp("txt_attn"), config)?,
            txt_mlp: Mlp::load(vb.pp("txt_mlp"), config)?,
            num_heads: config.num_heads,
        })
    }

    /// Its linear layers with their checkpoint keys under the block.
    fn layers(&self) -> [(&'static str, &Projection); 10] {
        [
            ("img_mod.lin", &self.img_mod.lin),
            ("img_attn.qkv", &self.img_attn.qkv),
            ("img_attn.proj", &self.img_attn.proj),
            ("img_mlp.0", &self.img_mlp.layer_0),
            ("img_mlp.2", &self.img_mlp.layer_2),
            ("txt_mod.lin", &self.txt_mod.lin),
            ("txt_attn.qkv", &self.txt_attn.qkv),
            ("txt_attn.proj", &self.txt_attn.proj),
            ("txt_mlp.0", &self.txt_mlp.layer_0),
            ("txt_mlp.2", &self.txt_mlp.layer_2),
        ]
    }

    /// [`DoubleStreamBlock::layers`], mutable.
    fn layers_mut(&mut self) -> [(&'static str, &mut Projection); 10] {
        [
            ("img_mod.lin", &mut self.img_mod.lin),
            ("img_attn.qkv", &mut self.img_attn.qkv),
            ("img_attn.proj", &mut self.img_attn.proj),
            ("img_mlp.0", &mut self.img_mlp.layer_0),
            ("img_mlp.2", &mut self.img_mlp.layer_2),
            ("txt_mod.lin", &mut self.txt_mod.lin),
            ("txt_attn.qkv", &mut self.txt_attn.qkv),
            ("txt_attn.proj", &mut self.txt_attn.proj),
            ("txt_mlp.0", &mut self.txt_mlp.layer_0),
            ("txt_mlp.2", &mut self.txt_mlp.layer_2),
        ]
    }

    /// This block's modulation values for the conditioning vector `vec` (`[b, hidden]`).
    pub fn modulations(&self, vec: Tensor<2>) -> DoubleModulation {
        let [img_attn, img_mlp]: [ModulationOut; 2] = self.img_mod.forward(vec.clone()).try_into().expect("6 chunks");
        let [txt_attn, txt_mlp]: [ModulationOut; 2] = self.txt_mod.forward(vec).try_into().expect("6 chunks");
        DoubleModulation { img_attn, img_mlp, txt_attn, txt_mlp }
    }

    /// `img` `[b, n_img, hidden]`, `txt` `[b, n_txt, hidden]`; `rope` covers `[txt, img]`.
    pub fn forward(
        &self,
        img: Tensor<3>,
        txt: Tensor<3>,
        m: &DoubleModulation,
        rope: &Rope,
    ) -> Result<(Tensor<3>, Tensor<3>)> {
        let (n_txt, n_img) = (txt.dims()[1], img.dims()[1]);
        let streams = [
            self.txt_attn.stream(m.txt_attn.norm_modulate(txt.clone())),
            self.img_attn.stream(m.img_attn.norm_modulate(img.clone())),
        ];
        let [q, k, v] = joint_qkv(&streams, self.img_attn.proj.d_out(), self.num_heads, rope)?; // [b, h, n_txt + n_img, d]
        let (txt_attn, img_attn) = fused::merge_heads_split(attention(q, k, v), n_txt); // [b, n_*, hidden]
        debug_assert_eq!(img_attn.dims()[1], n_img);

        let (img, img_normed) = m.img_attn.gated_add_norm(img, self.img_attn.proj.forward(img_attn), &m.img_mlp);
        let img = self.img_mlp.forward_gated_add(img_normed, img, &m.img_mlp.gate);
        let (txt, txt_normed) = m.txt_attn.gated_add_norm(txt, self.txt_attn.proj.forward(txt_attn), &m.txt_mlp);
        let txt = self.txt_mlp.forward_gated_add(txt_normed, txt, &m.txt_mlp.gate);
        Ok((img, txt))
    }
}

/// A block over the joint `[txt, img]` sequence with a fused qkv + MLP input projection (BFL
/// `SingleStreamBlock`).
#[derive(Module, Debug)]
pub struct SingleStreamBlock {
    /// `linear1` `[3·hidden + mlp_hidden, hidden]`: q, k, v and the MLP input.
    pub linear1: Projection,
    /// `linear2` `[hidden, hidden + mlp_hidden]`: over `[attention, gelu(mlp)]`.
    pub linear2: Projection,
    /// `norm.{query,key}_norm`.
    pub norm: QkNorm,
    /// `modulation`.
    pub modulation: Modulation,
    /// Attention heads.
    pub num_heads: usize,
    /// Width of the transformer.
    pub hidden_size: usize,
}

impl SingleStreamBlock {
    fn load(vb: Scope, config: &FluxConfig) -> Result<Self> {
        let (hidden, mlp) = (config.hidden_size, config.mlp_hidden());
        let segments = [hidden, hidden, hidden, mlp]; // q, k, v, MLP input
        Ok(Self {
            linear1: vb.pp("linear1").fused_linear(hidden, &segments, true)?,
            linear2: vb.pp("linear2").linear(hidden + mlp, hidden, true)?,
            norm: QkNorm::load(vb.pp("norm"), config.head_dim())?,
            modulation: Modulation::load(vb.pp("modulation"), hidden, false)?,
            num_heads: config.num_heads,
            hidden_size: hidden,
        })
    }

    /// Its linear layers with their checkpoint keys under the block.
    fn layers(&self) -> [(&'static str, &Projection); 3] {
        [("linear1", &self.linear1), ("linear2", &self.linear2), ("modulation.lin", &self.modulation.lin)]
    }

    /// [`SingleStreamBlock::layers`], mutable.
    fn layers_mut(&mut self) -> [(&'static str, &mut Projection); 3] {
        [("linear1", &mut self.linear1), ("linear2", &mut self.linear2), ("modulation.lin", &mut self.modulation.lin)]
    }

    /// This block's modulation values for `vec` (`[b, hidden]`).
    pub fn modulations(&self, vec: Tensor<2>) -> ModulationOut {
        self.modulation.forward(vec).remove(0)
    }

    /// `x` `[b, n_txt + n_img, hidden]`. q, k and v are computed for all tokens, one at a time; the MLP input,
    /// GELU and `linear2` in token chunks whose `[b, chunk, hidden + mlp_hidden]` input of `linear2` fits.
    pub fn forward(&self, x: Tensor<3>, m: &ModulationOut, rope: &Rope) -> Result<Tensor<3>> {
        let update = self.update(m.norm_modulate(x.clone()), rope)?;
        Ok(m.gated_add(x, update))
    }

    /// [`SingleStreamBlock::forward`] for `x` already normalised and modulated (`normed`, by the block before),
    /// returning the block's output and its normalised input to the next sub-layer, modulated with `next`'s
    /// `(shift, scale)`: in a chain of blocks each LayerNorm runs in the residual add before it.
    pub fn forward_normed(
        &self,
        x: Tensor<3>,
        normed: Tensor<3>,
        m: &ModulationOut,
        rope: &Rope,
        next: (&Tensor<3>, &Tensor<3>),
    ) -> Result<(Tensor<3>, Tensor<3>)> {
        let update = self.update(normed, rope)?;
        let (gate, shift, scale) = (m.gate.clone(), next.0.clone(), next.1.clone());
        Ok(fused::residual_layer_norm_modulate(x, gate, update, shift, scale, NORM_EPS))
    }

    /// What the block adds to `x` before its gate: `linear2([attention, gelu(mlp)])` of the normalised,
    /// modulated `normed`.
    fn update(&self, normed: Tensor<3>, rope: &Rope) -> Result<Tensor<3>> {
        let (hidden, width) = (self.hidden_size, self.linear1.d_out());
        let stream = StreamQkv { input: self.linear1.input(normed.clone()), norm: &self.norm };
        let [q, k, v] = joint_qkv(std::slice::from_ref(&stream), hidden, self.num_heads, rope)?;
        let attn = attention(q, k, v); // [b, heads, n, d]
        let n = normed.dims()[1];
        let out = for_token_chunks(normed, width - 2 * hidden, |normed, tokens| {
            let mlp = match tokens.len() == n {
                true => stream.input.columns(3 * hidden..width),
                false => self.linear1.forward_columns(normed, 3 * hidden..width),
            };
            // over [b, chunk, hidden + mlp_hidden]: the chunk's attention beside gelu(mlp)
            self.linear2.forward(fused::merged_heads_beside_gelu(attn.clone(), tokens, mlp))
        });
        Ok(out)
    }
}

/// The output projection with its own adaLN (BFL `LastLayer`).
#[derive(Module, Debug)]
pub struct LastLayer {
    /// `linear` `[in_channels, hidden]`.
    pub linear: Projection,
    /// Checkpoint key `adaLN_modulation.1` `[2·hidden, hidden]`, halves `[shift, scale]`.
    pub ada_ln_modulation: Projection,
}

impl LastLayer {
    /// `(shift, scale)`, each `[b, 1, hidden]`.
    pub fn modulations(&self, vec: Tensor<2>) -> (Tensor<3>, Tensor<3>) {
        let out = self.ada_ln_modulation.forward(silu(vec)).unsqueeze_dim::<3>(1);
        let [shift, scale]: [Tensor<3>; 2] = out.chunk(2, 2).try_into().expect("2 chunks");
        (shift, scale)
    }
}

/// Every modulation value of one denoising step, for all blocks (see [`Flux::modulations`]).
#[derive(Debug, Clone)]
pub struct Modulations {
    /// One per double block.
    pub double: Vec<DoubleModulation>,
    /// One per single block.
    pub single: Vec<ModulationOut>,
    /// Shift of the final layer, `[b, 1, hidden]`.
    pub final_shift: Tensor<3>,
    /// Scale of the final layer, `[b, 1, hidden]`.
    pub final_scale: Tensor<3>,
}

impl ModulationOut {
    /// The values of sample `i` of a batch, `[1, 1, hidden]` each.
    fn sample(&self, i: usize) -> Self {
        let row = |t: &Tensor<3>| t.clone().narrow(0, i, 1);
        Self { shift: row(&self.shift), scale: row(&self.scale), gate: row(&self.gate) }
    }
}

impl Modulations {
    /// The modulations of sample `i` of a batch ([`Flux::schedule_modulations`] batches the steps).
    pub fn sample(&self, i: usize) -> Self {
        Self {
            double: (self.double.iter())
                .map(|m| DoubleModulation {
                    img_attn: m.img_attn.sample(i),
                    img_mlp: m.img_mlp.sample(i),
                    txt_attn: m.txt_attn.sample(i),
                    txt_mlp: m.txt_mlp.sample(i),
                })
                .collect(),
            single: self.single.iter().map(|m| m.sample(i)).collect(),
            final_shift: self.final_shift.clone().narrow(0, i, 1),
            final_scale: self.final_scale.clone().narrow(0, i, 1),
        }
    }
}

/// A set of the DiT's linear layers, by checkpoint key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layers {
    /// Every linear layer.
    All,
    /// The modulation layers: the timestep, guidance and pooled-text embedders, every block's `*_mod.lin` /
    /// `modulation.lin` and the final `adaLN_modulation`.
    Modulation,
    /// Every layer but the modulation layers: what denoising uses once the modulations are computed.
    Core,
    /// The blocks' other linear layers (attention, MLP, `linear1`/`linear2`): what streams block by block.
    Blocks,
    /// [`Layers::Core`] outside the blocks (`img_in`, `txt_in`, `final_layer.linear`): what stays while blocks
    /// stream.
    Unstreamed,
}

impl Layers {
    /// Whether the layer with checkpoint key `name` belongs to the set.
    pub fn contains(self, name: &str) -> bool {
        let modulation = ["time_in.", "vector_in.", "guidance_in."].iter().any(|p| name.starts_with(p))
            || ["_mod.lin", "modulation.lin", "adaLN_modulation.1"].iter().any(|s| name.ends_with(s));
        let block = name.starts_with("double_blocks.") || name.starts_with("single_blocks.");
        match self {
            Self::All => true,
            Self::Modulation => modulation,
            Self::Core => !modulation,
            Self::Blocks => !modulation && block,
            Self::Unstreamed => !modulation && !block,
        }
    }
}

/// The Flux transformer; field names are BFL's checkpoint keys.
#[derive(Module, Debug)]
pub struct Flux {
    /// `img_in` `[hidden, in_channels]`.
    pub img_in: Projection,
    /// `txt_in` `[hidden, context_in_dim]`.
    pub txt_in: Projection,
    /// `time_in`: timestep features → hidden.
    pub time_in: MlpEmbedder,
    /// `vector_in`: pooled CLIP vector → hidden.
    pub vector_in: MlpEmbedder,
    /// `guidance_in`: guidance features → hidden, for guidance-distilled models.
    pub guidance_in: Option<MlpEmbedder>,
    /// `double_blocks.N`.
    pub double_blocks: Vec<DoubleStreamBlock>,
    /// `single_blocks.N`.
    pub single_blocks: Vec<SingleStreamBlock>,
    /// `final_layer`.
    pub final_layer: LastLayer,
    /// The hyper-parameters the weights were checked against.
    #[module(skip)]
    pub config: FluxConfig,
    /// The adapters whose factors the projections hold, with their strengths ([`Flux::set_adapters`]).
    #[module(skip)]
    active_adapters: Vec<(AdapterId, f32)>,
}

impl Flux {
    /// Builds the model from BFL-named `weights`, checking every tensor's shape against `config`.
    pub fn load(config: &FluxConfig, weights: &dyn Weights, device: &Device) -> Result<Self> {
        Self::load_deferring(config, weights, None, device)
    }

    /// [`Flux::load`] leaving the linear layers of `deferred` on the host (their shapes checked) until
    /// [`Flux::reload`] or a streamed forward ([`Flux::forward_streaming`]) uploads them.
    pub fn load_deferring(
        config: &FluxConfig,
        weights: &dyn Weights,
        deferred: Option<Layers>,
        device: &Device,
    ) -> Result<Self> {
        validate(config)?;
        let defer = |name: &str| deferred.is_some_and(|layers| layers.contains(name));
        let vb = Scope::deferring(weights, device, &defer);
        let hidden = config.hidden_size;
        for (kind, depth, probe) in [
            ("double_blocks", config.depth, "img_mod.lin.weight"),
            ("single_blocks", config.depth_single_blocks, "linear1.weight"),
        ] {
            if weights.contains(&format!("{kind}.{depth}.{probe}")) {
                return Err(Error::Invalid(format!(
                    "the weights have more than {depth} `{kind}` (found `{kind}.{depth}.{probe}`): they do not fit this config"
                )));
            }
        }
        if !config.guidance_embed && weights.contains("guidance_in.in_layer.weight") {
            return Err(Error::Invalid(
                "the weights have a guidance embedding (`guidance_in`) but the config has `guidance_embed: false`"
                    .into(),
            ));
        }
        Ok(Self {
            img_in: vb.pp("img_in").linear(config.in_channels, hidden, true)?,
            txt_in: vb.pp("txt_in").linear(config.context_in_dim, hidden, true)?,
            time_in: MlpEmbedder::load(vb.pp("time_in"), TIMESTEP_FEATURES, hidden)?,
            vector_in: MlpEmbedder::load(vb.pp("vector_in"), config.vec_in_dim, hidden)?,
            guidance_in: match config.guidance_embed {
                true => Some(MlpEmbedder::load(vb.pp("guidance_in"), TIMESTEP_FEATURES, hidden)?),
                false => None,
            },
            double_blocks: (0..config.depth)
                .map(|i| DoubleStreamBlock::load(vb.pp("double_blocks").pp(i), config))
                .collect::<Result<_>>()?,
            single_blocks: (0..config.depth_single_blocks)
                .map(|i| SingleStreamBlock::load(vb.pp("single_blocks").pp(i), config))
                .collect::<Result<_>>()?,
            final_layer: LastLayer {
                linear: vb.pp("final_layer").pp("linear").linear(hidden, config.in_channels, true)?,
                ada_ln_modulation: vb.pp("final_layer").pp("adaLN_modulation.1").linear(hidden, 2 * hidden, true)?,
            },
            config: config.clone(),
            active_adapters: Vec::new(),
        })
    }

    /// Every linear layer with its checkpoint key (`double_blocks.0.img_attn.qkv`), in checkpoint order.
    pub fn named_projections(&self) -> Vec<(String, &Projection)> {
        let mut all = vec![("img_in".to_string(), &self.img_in), ("txt_in".to_string(), &self.txt_in)];
        let embedders = [
            ("time_in", Some(&self.time_in)),
            ("vector_in", Some(&self.vector_in)),
            ("guidance_in", self.guidance_in.as_ref()),
        ];
        for (name, embedder) in embedders {
            if let Some(embedder) = embedder {
                all.extend([
                    (format!("{name}.in_layer"), &embedder.in_layer),
                    (format!("{name}.out_layer"), &embedder.out_layer),
                ]);
            }
        }
        for (i, block) in self.double_blocks.iter().enumerate() {
            all.extend(block.layers().map(|(name, p)| (format!("double_blocks.{i}.{name}"), p)));
        }
        for (i, block) in self.single_blocks.iter().enumerate() {
            all.extend(block.layers().map(|(name, p)| (format!("single_blocks.{i}.{name}"), p)));
        }
        all.push(("final_layer.linear".to_string(), &self.final_layer.linear));
        all.push(("final_layer.adaLN_modulation.1".to_string(), &self.final_layer.ada_ln_modulation));
        all
    }

    /// [`Flux::named_projections`], mutable.
    fn named_projections_mut(&mut self) -> Vec<(String, &mut Projection)> {
        let mut all = vec![("img_in".to_string(), &mut self.img_in), ("txt_in".to_string(), &mut self.txt_in)];
        let embedders = [
            ("time_in", Some(&mut self.time_in)),
            ("vector_in", Some(&mut self.vector_in)),
            ("guidance_in", self.guidance_in.as_mut()),
        ];
        for (name, embedder) in embedders {
            if let Some(embedder) = embedder {
                all.push((format!("{name}.in_layer"), &mut embedder.in_layer));
                all.push((format!("{name}.out_layer"), &mut embedder.out_layer));
            }
        }
        for (i, block) in self.double_blocks.iter_mut().enumerate() {
            all.extend(block.layers_mut().map(|(name, p)| (format!("double_blocks.{i}.{name}"), p)));
        }
        for (i, block) in self.single_blocks.iter_mut().enumerate() {
            all.extend(block.layers_mut().map(|(name, p)| (format!("single_blocks.{i}.{name}"), p)));
        }
        all.push(("final_layer.linear".to_string(), &mut self.final_layer.linear));
        all.push(("final_layer.adaLN_modulation.1".to_string(), &mut self.final_layer.ada_ln_modulation));
        all
    }

    /// Every linear layer, in checkpoint order.
    pub fn projections(&self) -> Vec<&Projection> {
        self.named_projections().into_iter().map(|(_, p)| p).collect()
    }

    /// The checkpoint key of every linear layer, in the order of [`Flux::projections`].
    pub fn projection_names(&self) -> Vec<String> {
        self.named_projections().into_iter().map(|(name, _)| name).collect()
    }

    /// Whether a linear layer only computes modulations (timestep/guidance/text embedders, the blocks'
    /// `*_mod.lin` / `modulation.lin` and the final `adaLN_modulation`): 3.3 B of Kontext dev's 11.9 B parameters,
    /// needed only to compute [`Modulations`], which depend on the step and the prompt, never on the tokens.
    pub fn is_modulation_layer(name: &str) -> bool {
        Layers::Modulation.contains(name)
    }

    /// Frees the weights of `layers` from the device (adapters stay); returns whether any was there.
    pub fn release(&mut self, layers: Layers) -> bool {
        let mut freed = false;
        for (name, projection) in self.named_projections_mut() {
            if layers.contains(&name) && !projection.is_released() {
                projection.release();
                freed = true;
            }
        }
        freed
    }

    /// Whether some layer of `layers` is not on the device.
    pub fn is_released(&self, layers: Layers) -> bool {
        self.named_projections().iter().any(|(name, p)| layers.contains(name) && p.is_released())
    }

    /// Loads every released layer of `layers` again from the weights the model was built from.
    pub fn reload(&mut self, layers: Layers, weights: &dyn Weights, device: &Device) -> Result<()> {
        for (name, projection) in self.named_projections_mut() {
            if layers.contains(&name) && projection.is_released() {
                projection.reload(weights, &name, device)?;
            }
        }
        Ok(())
    }

    /// Frees the modulation layers' weights from the device (after every step's [`Modulations`] have been
    /// computed); [`Flux::reload_modulation_weights`] brings them back.
    pub fn release_modulation_weights(&mut self) {
        self.release(Layers::Modulation);
    }

    /// Whether [`Flux::release_modulation_weights`] freed them.
    pub fn modulation_weights_released(&self) -> bool {
        self.is_released(Layers::Modulation)
    }

    /// Loads released modulation layers again from the weights the model was built from.
    pub fn reload_modulation_weights(&mut self, weights: &dyn Weights, device: &Device) -> Result<()> {
        self.reload(Layers::Modulation, weights, device)
    }

    /// Makes `adapters` (each with its strength, 1.0: as trained) the active LoRA adapters; those at strength 0
    /// are left out, and an empty list removes every adapter. The base weights stay as loaded.
    ///
    /// The factors on the device stay when the same adapters ([`LoraAdapter::id`]) at the same strengths are
    /// active already. Otherwise the active factors are freed before the new ones are uploaded, so that the
    /// device never holds both (a failed upload leaves no adapter active). Returns whether anything changed.
    pub fn set_adapters(&mut self, adapters: &[(&LoraAdapter, f32)], device: &Device) -> Result<bool> {
        self.set_adapters_reporting(adapters, device, &mut |_, _| {})
    }

    /// [`Flux::set_adapters`], calling `report(done, total)` as it uploads the layers' factors: `(0, total)`
    /// first, then after each layer of each adapter (never when nothing is uploaded).
    pub fn set_adapters_reporting(
        &mut self,
        adapters: &[(&LoraAdapter, f32)],
        device: &Device,
        report: &mut dyn FnMut(usize, usize),
    ) -> Result<bool> {
        let names = self.projection_names();
        let shapes: HashMap<&str, [usize; 2]> =
            names.iter().map(String::as_str).zip(self.projections().iter().map(|p| [p.d_out(), p.d_in()])).collect();
        for (adapter, _) in adapters {
            for (layer, update) in &adapter.layers {
                let Some(&[d_out, d_in]) = shapes.get(layer.as_str()) else {
                    return Err(Error::Invalid(format!("LoRA {}: this model has no layer `{layer}`", adapter.label)));
                };
                if update.d_in != d_in || update.d_out != d_out {
                    return Err(Error::Invalid(format!(
                        "LoRA {}: `{layer}` is [{d_out}, {d_in}] but the adapter is for [{}, {}]",
                        adapter.label, update.d_out, update.d_in
                    )));
                }
            }
        }
        let wanted: Vec<(AdapterId, f32)> = lora::active(adapters).map(|(adapter, s)| (adapter.id, s)).collect();
        if wanted == self.active_adapters {
            return Ok(false);
        }
        self.remove_adapters();
        let total: usize = lora::active(adapters).map(|(adapter, _)| adapter.layers.len()).sum();
        let mut done = 0;
        let mut upload = |flux: &mut Flux| -> Result<()> {
            if total > 0 {
                report(0, total);
            }
            for (name, projection) in flux.named_projections_mut() {
                let segments = projection.segment_ranges();
                for (adapter, strength) in lora::active(adapters) {
                    let Some(update) = adapter.layers.get(&name) else { continue };
                    let low_rank =
                        LowRank::new(adapter.id, update, strength, &segments, device).map_err(|e| match e {
                            Error::Invalid(why) => Error::Invalid(format!("LoRA {}: `{name}`: {why}", adapter.label)),
                            other => other,
                        })?;
                    projection.adapters.push(low_rank);
                    done += 1;
                    report(done, total);
                }
            }
            Ok(())
        };
        if let Err(e) = upload(self) {
            self.remove_adapters();
            return Err(e);
        }
        self.active_adapters = wanted;
        Ok(true)
    }

    /// Frees the factors of adapter `id` where it is active, keeping the others'; whether it was active. The app
    /// calls it when a LoRA is removed, so that its factors do not wait on the device for the next edit.
    pub fn release_adapter(&mut self, id: AdapterId) -> bool {
        if !self.active_adapters.iter().any(|&(active, _)| active == id) {
            return false;
        }
        self.active_adapters.retain(|&(active, _)| active != id);
        for (_, projection) in self.named_projections_mut() {
            projection.adapters.retain(|low_rank| low_rank.adapter != id);
        }
        true
    }

    /// Frees every adapter's factors.
    fn remove_adapters(&mut self) {
        self.active_adapters.clear();
        self.named_projections_mut().into_iter().for_each(|(_, projection)| projection.adapters.clear());
    }

    /// Linear layers whose weights stay in ggml blocks on the device.
    pub fn packed_linears(&self) -> usize {
        self.projections().into_iter().filter(|p| p.is_packed()).count()
    }

    /// Bytes the weights occupy on the device: f32 parameters, plus the blocks and biases of packed layers and
    /// the factors of LoRA adapters.
    pub fn device_bytes(&self) -> usize {
        let packed: usize = self.projections().iter().filter(|p| p.is_packed()).map(|p| p.device_bytes()).sum();
        self.num_params() * size_of::<f32>() + packed + self.adapter_bytes()
    }

    /// Bytes the active LoRA adapters' factors occupy on the device ([`Flux::set_adapters`]).
    pub fn adapter_bytes(&self) -> usize {
        self.projections().iter().map(|p| p.adapter_bytes()).sum()
    }

    /// The conditioning vector `[b, hidden]` from the timesteps σ (`[b]`, in [0, 1]), the pooled text vector `y`
    /// (`[b, vec_in_dim]`) and, for guidance-distilled models, the guidance (`[b]`, e.g. 2.5). Timestep and
    /// guidance are multiplied by 1000 here, as in BFL and diffusers (whose pipeline passes `t / 1000`).
    pub fn conditioning(&self, timesteps: Tensor<1>, y: Tensor<2>, guidance: Option<Tensor<1>>) -> Result<Tensor<2>> {
        if self.modulation_weights_released() {
            return Err(Error::Invalid(
                "the modulation weights were released from the device: reload them first".into(),
            ));
        }
        let [b] = timesteps.dims();
        expect_dims("y (pooled text vector)", &y.dims(), &[b, self.config.vec_in_dim])?;
        let mut vec = self.time_in.forward(timestep_embedding(timesteps, TIMESTEP_FEATURES, TIME_FACTOR));
        if let Some(guidance_in) = &self.guidance_in {
            let guidance = guidance.ok_or_else(|| {
                Error::Invalid("this model is guidance-distilled ([dev]): a guidance value is required".into())
            })?;
            expect_dims("guidance", &guidance.dims(), &[b])?;
            vec = vec + guidance_in.forward(timestep_embedding(guidance, TIMESTEP_FEATURES, TIME_FACTOR));
        }
        Ok(vec + self.vector_in.forward(y))
    }

    /// Every block's modulation values for the conditioning vector `vec` (`[b, hidden]`). They depend on the
    /// step only, not on the tokens.
    pub fn modulations(&self, vec: Tensor<2>) -> Result<Modulations> {
        if self.modulation_weights_released() {
            return Err(Error::Invalid(
                "the modulation weights were released from the device: reload them first".into(),
            ));
        }
        let (final_shift, final_scale) = self.final_layer.modulations(vec.clone());
        Ok(Modulations {
            double: self.double_blocks.iter().map(|block| block.modulations(vec.clone())).collect(),
            single: self.single_blocks.iter().map(|block| block.modulations(vec.clone())).collect(),
            final_shift,
            final_scale,
        })
    }

    /// The modulations of every step of a denoising schedule (`sigmas`: the σ of each step) for one sample
    /// (`y` `[1, vec_in_dim]`), computed before the loop so that the modulation weights can be released during
    /// it. All steps run as one batch: each modulation weight is read once for the whole schedule.
    pub fn schedule_modulations(
        &self,
        sigmas: &[f32],
        y: Tensor<2>,
        guidance: Option<f32>,
    ) -> Result<Vec<Modulations>> {
        let steps = sigmas.len();
        if steps == 0 {
            return Ok(Vec::new());
        }
        expect_dims("y (pooled text vector)", &y.dims(), &[1, self.config.vec_in_dim])?;
        let device = y.device();
        let timesteps = Tensor::<1>::from_data(TensorData::new(sigmas.to_vec(), [steps]), &device);
        let guidance = guidance.map(|g| Tensor::<1>::from_data(TensorData::new(vec![g; steps], [steps]), &device));
        let batch = self.modulations(self.conditioning(timesteps, y.repeat_dim(0, steps), guidance)?)?; // [steps, 1, …]
        Ok((0..steps).map(|step| batch.sample(step)).collect())
    }

    /// Predicts the velocity of every image token.
    ///
    /// - `img` `[b, n_img, in_channels]`: packed noise tokens, then any reference tokens; `img_ids` `[n_img, 3]`.
    /// - `txt` `[b, n_txt, context_in_dim]`: T5 tokens; `txt_ids` `[n_txt, 3]` (zeros).
    /// - `timesteps` `[b]`: σ in [0, 1]; `y` `[b, vec_in_dim]`: pooled CLIP; `guidance` `[b]` for [dev] models.
    ///
    /// Returns `[b, n_img, in_channels]` for all image tokens, reference tokens included.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        img: Tensor<3>,
        img_ids: Tensor<2>,
        txt: Tensor<3>,
        txt_ids: Tensor<2>,
        timesteps: Tensor<1>,
        y: Tensor<2>,
        guidance: Option<Tensor<1>>,
    ) -> Result<Tensor<3>> {
        let vec = self.conditioning(timesteps, y, guidance)?;
        self.forward_modulated(img, img_ids, txt, txt_ids, &self.modulations(vec)?)
    }

    /// [`Flux::forward`] with the step's modulation values computed beforehand by [`Flux::modulations`].
    pub fn forward_modulated(
        &self,
        img: Tensor<3>,
        img_ids: Tensor<2>,
        txt: Tensor<3>,
        txt_ids: Tensor<2>,
        modulations: &Modulations,
    ) -> Result<Tensor<3>> {
        self.forward_streaming(img, img_ids, txt, txt_ids, modulations, None)
    }

    /// [`Flux::forward_modulated`] for a model whose blocks may be released ([`Layers::Blocks`]): each such block
    /// is uploaded from `weights` just before it runs and freed after, so that one block's weights are on the
    /// device at a time.
    pub fn forward_streaming(
        &self,
        img: Tensor<3>,
        img_ids: Tensor<2>,
        txt: Tensor<3>,
        txt_ids: Tensor<2>,
        modulations: &Modulations,
        weights: Option<&dyn Weights>,
    ) -> Result<Tensor<3>> {
        let axes = self.config.axes_dim.len();
        expect_dims("img_ids", &img_ids.dims(), &[img.dims()[1], axes])?;
        expect_dims("txt_ids", &txt_ids.dims(), &[txt.dims()[1], axes])?;
        let rope = self.rope(txt_ids, img_ids)?;
        self.forward_rotated(img, txt, &rope, modulations, weights)
    }

    /// The RoPE angles of the text tokens at `txt_ids` (`[n_txt, axes]`) followed by the image tokens at
    /// `img_ids` (`[n_img, axes]`): the same for every step of an edit ([`Flux::forward_rotated`]).
    pub fn rope(&self, txt_ids: Tensor<2>, img_ids: Tensor<2>) -> Result<Rope> {
        Rope::new(Tensor::cat(vec![txt_ids, img_ids], 0), &self.config.axes_dim, self.config.theta)
    }

    /// [`Flux::forward_streaming`] with the RoPE angles of the text and image tokens computed beforehand by
    /// [`Flux::rope`].
    pub fn forward_rotated(
        &self,
        img: Tensor<3>,
        txt: Tensor<3>,
        rope: &Rope,
        modulations: &Modulations,
        weights: Option<&dyn Weights>,
    ) -> Result<Tensor<3>> {
        self.check_inputs(&img, &txt, rope, modulations)?;
        let (img, txt) = self.embed_streams(img, txt);
        Ok(self.blocks_from(0, img, txt, rope, modulations, weights)?.1)
    }

    /// Checks the shapes [`Flux::forward_rotated`] takes.
    pub fn check_inputs(&self, img: &Tensor<3>, txt: &Tensor<3>, rope: &Rope, modulations: &Modulations) -> Result<()> {
        let config = &self.config;
        let [b, n_img, _] = img.dims();
        let n_txt = txt.dims()[1];
        expect_dims("img", &img.dims(), &[b, n_img, config.in_channels])?;
        expect_dims("txt", &txt.dims(), &[b, n_txt, config.context_in_dim])?;
        expect_dims("rope", &rope.cos.dims()[..3], &[1, 1, n_txt + n_img])?;
        expect_dims("modulations", &modulations.final_shift.dims(), &[b, 1, config.hidden_size])?;
        if modulations.double.len() != self.double_blocks.len() || modulations.single.len() != self.single_blocks.len()
        {
            return Err(Error::Invalid("the modulations were computed for a different model".into()));
        }
        Ok(())
    }

    /// The image and text streams `[b, n, hidden]` after their input projections.
    pub fn embed_streams(&self, img: Tensor<3>, txt: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        (self.img_in.forward(img), self.txt_in.forward(txt))
    }

    /// Double block `index` on the streams: `(img, txt)` after it.
    pub fn double_block(
        &self,
        index: usize,
        img: Tensor<3>,
        txt: Tensor<3>,
        rope: &Rope,
        modulations: &Modulations,
        weights: Option<&dyn Weights>,
    ) -> Result<(Tensor<3>, Tensor<3>)> {
        let device = img.device();
        let block = on_device(&self.double_blocks[index], &format!("double_blocks.{index}"), weights, &device)?;
        block.forward(img, txt, &modulations.double[index], rope)
    }

    /// The double blocks from `first` on and every single block, then the final layer: `(the image stream after
    /// the last block [b, n_img, hidden], the velocity of every image token [b, n_img, in_channels])`.
    pub fn blocks_from(
        &self,
        first: usize,
        mut img: Tensor<3>,
        mut txt: Tensor<3>,
        rope: &Rope,
        modulations: &Modulations,
        weights: Option<&dyn Weights>,
    ) -> Result<(Tensor<3>, Tensor<3>)> {
        let (n_txt, n_img) = (txt.dims()[1], img.dims()[1]);
        for i in first..self.double_blocks.len() {
            (img, txt) = self.double_block(i, img, txt, rope, modulations, weights)?;
        }
        let device = img.device();
        let mut x = Tensor::cat(vec![txt, img], 1); // [b, n_txt + n_img, hidden]
        // Each single block's LayerNorm runs in the residual add of the block before it; the last block's
        // residual add normalises for the final layer.
        let final_norm = (&modulations.final_shift, &modulations.final_scale);
        let (shift, scale) = modulations.single.first().map_or(final_norm, |m| (&m.shift, &m.scale));
        let mut normed = fused::layer_norm_modulate(x.clone(), shift.clone(), scale.clone(), NORM_EPS);
        for (i, (block, m)) in self.single_blocks.iter().zip(&modulations.single).enumerate() {
            let next = modulations.single.get(i + 1).map_or(final_norm, |m| (&m.shift, &m.scale));
            let block = on_device(block, &format!("single_blocks.{i}"), weights, &device)?;
            (x, normed) = block.forward_normed(x, normed, m, rope, next)?;
        }
        let velocity = self.final_layer.linear.forward(normed.narrow(1, n_txt, n_img));
        Ok((x.narrow(1, n_txt, n_img), velocity))
    }

    /// The final layer on an image stream `[b, n_img, hidden]` (as [`Flux::blocks_from`] returns it): the
    /// velocity of every image token `[b, n_img, in_channels]`.
    pub fn final_layer_of(&self, img: Tensor<3>, modulations: &Modulations) -> Tensor<3> {
        let (shift, scale) = (modulations.final_shift.clone(), modulations.final_scale.clone());
        self.final_layer.linear.forward(fused::layer_norm_modulate(img, shift, scale, NORM_EPS))
    }
}

/// A block's linear layers with their checkpoint keys under the block.
trait BlockLayers: Clone {
    fn layers_of(&self) -> Vec<(&'static str, &Projection)>;
    fn layers_of_mut(&mut self) -> Vec<(&'static str, &mut Projection)>;
}

impl BlockLayers for DoubleStreamBlock {
    fn layers_of(&self) -> Vec<(&'static str, &Projection)> {
        self.layers().into()
    }
    fn layers_of_mut(&mut self) -> Vec<(&'static str, &mut Projection)> {
        self.layers_mut().into()
    }
}

impl BlockLayers for SingleStreamBlock {
    fn layers_of(&self) -> Vec<(&'static str, &Projection)> {
        self.layers().into()
    }
    fn layers_of_mut(&mut self) -> Vec<(&'static str, &mut Projection)> {
        self.layers_mut().into()
    }
}

/// `block` (checkpoint key `prefix`) as a forward pass needs it: itself when its layers are on the device, else
/// a copy with its released [`Layers::Blocks`] layers uploaded from `weights`, freed with the copy.
fn on_device<'b, B: BlockLayers>(
    block: &'b B,
    prefix: &str,
    weights: Option<&dyn Weights>,
    device: &Device,
) -> Result<std::borrow::Cow<'b, B>> {
    if !block.layers_of().iter().any(|(_, p)| p.is_released()) {
        return Ok(std::borrow::Cow::Borrowed(block));
    }
    let mut copy = block.clone();
    for (name, projection) in copy.layers_of_mut() {
        let key = format!("{prefix}.{name}");
        if projection.is_released() && Layers::Blocks.contains(&key) {
            let weights = weights.ok_or_else(|| {
                Error::Invalid(format!("`{key}` is not on the device and no weights were given to stream it"))
            })?;
            projection.reload(weights, &key, device)?;
        }
    }
    Ok(std::borrow::Cow::Owned(copy))
}

fn validate(config: &FluxConfig) -> Result<()> {
    let heads = config.num_heads;
    if heads == 0 || !config.hidden_size.is_multiple_of(heads) {
        return Err(Error::Invalid(format!(
            "hidden_size {} is not divisible by num_heads {heads}",
            config.hidden_size
        )));
    }
    let rope_width: usize = config.axes_dim.iter().sum();
    if rope_width != config.head_dim() {
        return Err(Error::Invalid(format!(
            "the RoPE axes {:?} sum to {rope_width}, but the head width is {}",
            config.axes_dim,
            config.head_dim()
        )));
    }
    if let Some(odd) = config.axes_dim.iter().find(|&&d| d % 2 == 1) {
        return Err(Error::Invalid(format!("RoPE axis width {odd} in {:?} is odd", config.axes_dim)));
    }
    Ok(())
}

fn expect_dims(what: &str, found: &[usize], expected: &[usize]) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(Error::Invalid(format!("`{what}` has shape {found:?}, expected {expected:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu;
    use crate::harness::testing::{FixtureFile, assert_data_far_apart, max_abs_difference_of_data};
    use crate::model::flux::remap::DiffusersAsBfl;
    use burn::tensor::Tolerance;

    const BFL: &str = "bfl_gguf/transformer_bfl.safetensors";
    const DIFFUSERS: &str = "FLUX.1-Kontext-dev-tiny/transformer/diffusion_pytorch_model.safetensors";

    fn assert_close<const D: usize>(what: &str, ours: Tensor<D>, golden: Tensor<D>) {
        let (ours, golden) = (ours.into_data(), golden.into_data());
        let diff = max_abs_difference_of_data(&ours, &golden);
        eprintln!("{what}: max |diff| {diff:e}");
        ours.assert_approx_eq::<f32>(&golden, Tolerance::absolute(1e-4));
    }

    /// Runs transformer call `call` of the golden run and compares the full output; the next call's golden output
    /// is the negative control.
    fn check_call(model: &Flux, run: &FixtureFile, call: usize, device: &Device) {
        let first = |key: &str| format!("transformer_in_0_{key}");
        let out = model
            .forward(
                run.tensor(&format!("transformer_in_{call}_hidden_states"), device),
                run.tensor(&first("img_ids"), device),
                run.tensor(&first("encoder_hidden_states"), device),
                run.tensor(&first("txt_ids"), device),
                run.tensor(&format!("transformer_in_{call}_timestep"), device),
                run.tensor(&first("pooled_projections"), device),
                Some(run.tensor(&first("guidance"), device)),
            )
            .unwrap();
        let next: Tensor<3> = run.tensor(&format!("transformer_out_{}", (call + 1) % 4), device);
        assert_data_far_apart(
            &out.clone().into_data(),
            &next.into_data(),
            1e-4,
            &format!("call {call} against the next"),
        );
        assert_close(&format!("transformer_out_{call}"), out, run.tensor(&format!("transformer_out_{call}"), device));
    }

    #[test]
    fn bfl_weights_match_diffusers_on_all_four_calls() {
        let device = cpu();
        let model = Flux::load(&FluxConfig::tiny(), &FixtureFile::open(BFL), &device).unwrap();
        let run = FixtureFile::open("golden/golden_run.safetensors");
        // The pipeline passes σ = t/1000 (call 0: 1.0); the model multiplies timestep and guidance by 1000.
        let sigma: Tensor<1> = run.tensor("transformer_in_0_timestep", &device);
        sigma.into_data().assert_eq(&TensorData::new(vec![1.0f32], [1]), false);
        for call in 0..4 {
            check_call(&model, &run, call, &device);
        }
    }

    #[test]
    fn diffusers_weights_through_remap_match() {
        let device = cpu();
        let weights = DiffusersAsBfl::new(FixtureFile::open(DIFFUSERS));
        let model = Flux::load(&FluxConfig::tiny(), &weights, &device).unwrap();
        check_call(&model, &FixtureFile::open("golden/golden_run.safetensors"), 0, &device);
    }

    #[test]
    fn remapped_diffusers_tensors_equal_the_bfl_file() {
        let bfl = FixtureFile::open(BFL);
        let remapped = DiffusersAsBfl::new(FixtureFile::open(DIFFUSERS));
        let (mut ours, mut theirs) = (remapped.names(), bfl.names());
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs);
        for name in &theirs {
            assert_eq!(remapped.shape(name), bfl.shape(name), "{name}");
            assert_eq!(remapped.read(name).unwrap(), bfl.read(name).unwrap(), "{name}");
        }
    }

    /// The schedule's modulations, computed as one batch, equal each step's computed alone; a neighbouring
    /// step's do not.
    #[test]
    fn batched_schedule_modulations_equal_each_step_alone() {
        let device = cpu();
        let model = Flux::load(&FluxConfig::tiny(), &FixtureFile::open(BFL), &device).unwrap();
        let y = Tensor::<2>::from_data(
            TensorData::new(vec![0.3f32; model.config.vec_in_dim], [1, model.config.vec_in_dim]),
            &device,
        );
        let sigmas = [1.0f32, 0.6, 0.25];
        let batched = model.schedule_modulations(&sigmas, y.clone(), Some(3.5)).unwrap();
        assert_eq!(batched.len(), 3);
        for (step, &sigma) in sigmas.iter().enumerate() {
            let one = |v: f32| Tensor::<1>::from_data(TensorData::new(vec![v], [1]), &device);
            let alone = model.modulations(model.conditioning(one(sigma), y.clone(), Some(one(3.5))).unwrap()).unwrap();
            let values = |m: &Modulations| {
                let mut parts = vec![m.final_shift.clone(), m.final_scale.clone(), m.single[0].gate.clone()];
                parts.extend([m.double[0].img_attn.shift.clone(), m.double[0].txt_mlp.scale.clone()]);
                Tensor::cat(parts, 2).into_data()
            };
            let expected = values(&alone);
            values(&batched[step]).assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-6));
            let neighbour = values(&batched[(step + 1) % 3]);
            let diff = max_abs_difference_of_data(&neighbour, &expected);
            assert!(diff > 1e-3, "step {step}: the neighbouring step's modulations are within {diff}");
        }
        assert!(model.schedule_modulations(&[], y, Some(3.5)).unwrap().is_empty());
    }

    /// Step 0 internals against diffusers' hooks, to localise a mismatch.
    #[test]
    fn step0_internals_match() {
        let device = cpu();
        let model = Flux::load(&FluxConfig::tiny(), &FixtureFile::open(BFL), &device).unwrap();
        let run = FixtureFile::open("golden/golden_run.safetensors");
        let golden = FixtureFile::open("golden/golden_transformer_step0.safetensors");
        let input = |key: &str| format!("transformer_in_0_{key}");

        let vec = model
            .conditioning(
                run.tensor(&input("timestep"), &device),
                run.tensor(&input("pooled_projections"), &device),
                Some(run.tensor(&input("guidance"), &device)),
            )
            .unwrap();
        assert_close("temb", vec.clone(), golden.tensor("temb", &device));
        let m = model.modulations(vec).unwrap();

        let img = model.img_in.forward(run.tensor(&input("hidden_states"), &device));
        let txt = model.txt_in.forward(run.tensor(&input("encoder_hidden_states"), &device));
        assert_close("x_embedder_out", img.clone(), golden.tensor("x_embedder_out", &device));
        assert_close("context_embedder_out", txt.clone(), golden.tensor("context_embedder_out", &device));

        let ids =
            Tensor::cat(vec![run.tensor::<2>(&input("txt_ids"), &device), run.tensor(&input("img_ids"), &device)], 0);
        let rope = Rope::new(ids, &model.config.axes_dim, model.config.theta).unwrap();
        let [n, pairs] = [556, 8];
        let every_other = |t: Tensor<2>| t.reshape([n, pairs, 2]).narrow(2, 0, 1).reshape([1, 1, n, pairs]);
        assert_close("rope_cos", rope.cos.clone(), every_other(golden.tensor("rope_cos", &device)));
        assert_close("rope_sin", rope.sin.clone(), every_other(golden.tensor("rope_sin", &device)));

        let (mut img, mut txt) = (img, txt);
        for (i, (block, bm)) in model.double_blocks.iter().zip(&m.double).enumerate() {
            let norm1 = bm.img_attn.norm_modulate(img.clone());
            assert_close(
                &format!("double_{i}_norm1_img_out"),
                norm1,
                golden.tensor(&format!("double_{i}_norm1_img_out"), &device),
            );
            (img, txt) = block.forward(img, txt, bm, &rope).unwrap();
            assert_close(
                &format!("double_{i}_img_out"),
                img.clone(),
                golden.tensor(&format!("double_{i}_img_out"), &device),
            );
            assert_close(
                &format!("double_{i}_txt_out"),
                txt.clone(),
                golden.tensor(&format!("double_{i}_txt_out"), &device),
            );
        }
        let n_txt = txt.dims()[1];
        let mut x = Tensor::cat(vec![txt, img], 1);
        for (i, (block, sm)) in model.single_blocks.iter().zip(&m.single).enumerate() {
            x = block.forward(x, sm, &rope).unwrap();
            let golden_x = Tensor::cat(
                vec![
                    golden.tensor(&format!("single_{i}_txt_out"), &device),
                    golden.tensor(&format!("single_{i}_img_out"), &device),
                ],
                1,
            );
            assert_close(&format!("single_{i}_out"), x.clone(), golden_x);
        }
        let img = x.narrow(1, n_txt, 44);
        let normed = crate::kernels::fused::layer_norm_modulate(img, m.final_shift, m.final_scale, NORM_EPS);
        assert_close("norm_out_out", normed.clone(), golden.tensor("norm_out_out", &device));
        assert_close("proj_out_out", model.final_layer.linear.forward(normed), golden.tensor("proj_out_out", &device));
    }

    /// Under a 32 KiB buffer limit the tiny model stores its fused and MLP weights in parts and runs its MLPs in
    /// token chunks (25 tokens of `[hidden + mlp]` = 320 values); the output equals the golden and the
    /// unlimited run.
    #[test]
    fn split_weights_and_token_chunks_match_the_golden_and_the_whole_run() {
        let device = cpu();
        let run = FixtureFile::open("golden/golden_run.safetensors");
        let whole = Flux::load(&FluxConfig::tiny(), &FixtureFile::open(BFL), &device).unwrap();
        let forward = |model: &Flux| {
            let input = |key: &str| format!("transformer_in_0_{key}");
            model
                .forward(
                    run.tensor(&input("hidden_states"), &device),
                    run.tensor(&input("img_ids"), &device),
                    run.tensor(&input("encoder_hidden_states"), &device),
                    run.tensor(&input("txt_ids"), &device),
                    run.tensor(&input("timestep"), &device),
                    run.tensor(&input("pooled_projections"), &device),
                    Some(run.tensor(&input("guidance"), &device)),
                )
                .unwrap()
        };
        let limit = 32 << 10;
        assert_eq!(token_chunk(1, 64 + 256, limit), 25);
        let (split, chunked) = crate::device::with_binding_limit(limit, || {
            let model = Flux::load(&FluxConfig::tiny(), &FixtureFile::open(BFL), &device).unwrap();
            let out = forward(&model);
            (model, out)
        });
        // linear1 [448, 64]: q, k, v (16 KiB each) and the MLP input (64 KiB) cut in two; img_mlp.0 likewise.
        assert_eq!(split.single_blocks[0].linear1.parts.len(), 5);
        assert_eq!(split.double_blocks[0].img_mlp.layer_0.parts.len(), 2);
        assert_eq!(split.double_blocks[0].img_attn.qkv.parts.len(), 3);
        assert_eq!(whole.single_blocks[0].linear1.parts.len(), 1);
        assert_close("chunked vs golden", chunked.clone(), run.tensor("transformer_out_0", &device));
        let next: Tensor<3> = run.tensor("transformer_out_1", &device);
        assert_data_far_apart(&chunked.clone().into_data(), &next.into_data(), 1e-4, "chunked against call 1");
        let diff: f32 = (chunked - forward(&whole)).abs().max().into_scalar();
        assert!(diff <= 1e-5, "chunked vs whole: max |diff| {diff:e}");
    }

    /// Device bytes of one part of `rows` rows of `row_bytes`, as uploaded (packed parts in whole u32 words).
    fn part_bytes(rows: usize, row_bytes: u64) -> u64 {
        (rows as u64 * row_bytes).div_ceil(4) * 4
    }

    /// Kontext [dev] at 1024² with a 1024² reference under WebGPU's default 128 MiB binding: every weight part,
    /// in every storage type, and every activation the forward creates fits; the unchunked `linear1` output
    /// would not. Arithmetic only.
    #[test]
    fn kontext_dev_buffers_at_1024_fit_a_128_mib_limit() {
        use crate::formats::GgmlType;
        let limit: u64 = 128 << 20;
        let cfg = FluxConfig::kontext_dev();
        let (h, mlp, c) = (cfg.hidden_size, cfg.mlp_hidden(), cfg.in_channels);
        let mut layers: Vec<(usize, Vec<usize>)> = vec![
            (c, vec![h]),
            (cfg.context_in_dim, vec![h]),
            (TIMESTEP_FEATURES, vec![h]),
            (cfg.vec_in_dim, vec![h]),
            (h, vec![h]),
            (h, vec![6 * h]),
            (h, vec![h, h, h]),
            (h, vec![mlp]),
            (mlp, vec![h]),
            (h, vec![h, h, h, mlp]),
            (h + mlp, vec![h]),
            (h, vec![3 * h]),
            (h, vec![c]),
            (h, vec![2 * h]),
        ];
        layers.sort();
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K] {
            for (d_in, segments) in &layers {
                let row_bytes = (d_in / ty.block_size() * ty.type_size()) as u64;
                let parts = crate::model::layers::part_rows(segments, row_bytes, limit).unwrap();
                assert_eq!(parts.last().unwrap().end, segments.iter().sum::<usize>());
                for rows in parts {
                    let bytes = part_bytes(rows.len(), row_bytes);
                    assert!(bytes <= limit, "{ty} [{d_in} → {segments:?}] part {rows:?}: {bytes} bytes");
                }
            }
        }
        // linear1 in f32 (264 MB) and f16 (132 MB) is over the limit whole; its MLP input alone in f32 too.
        let linear1 =
            |row_bytes: u64| crate::model::layers::part_rows(&[h, h, h, mlp], row_bytes, limit).unwrap().len();
        assert_eq!((linear1(h as u64 * 4), linear1(h as u64 * 2)), (5, 4));

        let (n_txt, n_img) = (512, 2 * (1024 / 16) * (1024 / 16));
        let l = n_txt + n_img;
        let value = size_of::<f32>() as u64;
        assert!((l * (3 * h + mlp)) as u64 * value > limit, "unchunked, linear1's output would not fit");
        // Whole-sequence activations: x, its norm, q, k, v (each one segment), attention output, residuals.
        assert!((l * h) as u64 * value <= limit);
        assert!((n_txt * cfg.context_in_dim + n_img * c) as u64 * value <= limit, "txt and img inputs");
        // Token chunks: single blocks' [chunk, hidden + mlp] input of linear2, double blocks' [chunk, mlp].
        for width in [h + mlp, mlp] {
            let chunk = token_chunk(1, width, limit);
            assert!(chunk < l && (chunk * width) as u64 * value <= limit, "{width}: {chunk} tokens");
        }
        assert_eq!(token_chunk(1, h + mlp, limit), 2184);
    }

    #[test]
    fn token_chunks_cover_every_token_once() {
        let device = cpu();
        let x = Tensor::<3>::from_data(TensorData::new((0..2 * 7 * 3).map(|v| v as f32).collect(), [2, 7, 3]), &device);
        // 2 × 3 × 3 values of 4 bytes fit 72 bytes: chunks of 3, 3 and 1 tokens.
        let ranges = std::cell::RefCell::new(Vec::new());
        let out = crate::device::with_binding_limit(72, || {
            for_token_chunks(x.clone(), 3, |chunk, tokens| {
                ranges.borrow_mut().push(tokens);
                chunk * 2.0
            })
        });
        assert_eq!(ranges.into_inner(), [0..3, 3..6, 6..7]);
        out.into_data().assert_eq(&(x * 2.0).into_data(), true);
        assert_eq!((token_chunk(1, 1 << 20, 16), token_chunk(1, 1, u64::MAX)), (1, (u64::MAX / 4) as usize));
    }

    #[test]
    fn config_mismatches_are_named() {
        let device = cpu();
        let weights = FixtureFile::open(BFL);
        let wider = FluxConfig { hidden_size: 128, axes_dim: vec![8, 8, 16], ..FluxConfig::tiny() };
        let err = Flux::load(&wider, &weights, &device).unwrap_err().to_string();
        assert_eq!(err, "tensor `img_in.weight` has shape [64, 64], expected [128, 64]");
        let shallow = FluxConfig { depth: 1, ..FluxConfig::tiny() };
        let err = Flux::load(&shallow, &weights, &device).unwrap_err().to_string();
        assert!(err.starts_with("the weights have more than 1 `double_blocks`"), "{err}");
        let bad_axes = FluxConfig { axes_dim: vec![4, 4, 4], ..FluxConfig::tiny() };
        let err = Flux::load(&bad_axes, &weights, &device).unwrap_err().to_string();
        assert_eq!(err, "the RoPE axes [4, 4, 4] sum to 12, but the head width is 16");
    }

    #[test]
    fn missing_guidance_is_an_error() {
        let device = cpu();
        let model = Flux::load(&FluxConfig::tiny(), &FixtureFile::open(BFL), &device).unwrap();
        let t = Tensor::<1>::ones([1], &device);
        let err = model.conditioning(t, Tensor::zeros([1, 32], &device), None).unwrap_err().to_string();
        assert_eq!(err, "this model is guidance-distilled ([dev]): a guidance value is required");
    }
}
