//! The T5 v1.1 encoder (transformers' `T5EncoderModel`), whose last hidden state is FLUX's `txt` input.
//!
//! Pre-norm blocks with T5's RMS LayerNorm, unscaled attention plus a learned relative-position bias (computed
//! once from block 0's table and shared by every block), and a gated-GELU (tanh) feed-forward. No attention mask:
//! padding is attended to, as in the FLUX pipelines. Weights use transformers' names; [`LlamaCppT5Names`]
//! presents llama.cpp's GGUF names as those.

use burn::module::{Module, Param};
use burn::nn::{Embedding, RmsNorm};
use burn::tensor::activation::gelu_approximate;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::kernels::attention::biased_attention;
use crate::model::layers::{HostEmbedding, Projection};
use crate::model::scope::Scope;

use crate::formats::weights::{HostTensor, RawBlock, Weights};
use crate::{Error, Result};

/// Hyper-parameters of a T5 encoder, with transformers' `T5Config` names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    /// Rows of the token embedding (`shared`).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Width of one attention head.
    pub d_kv: usize,
    /// Width of the feed-forward hidden layer.
    pub d_ff: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Relative-position buckets (half for each direction).
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which all positions share the last bucket.
    pub relative_attention_max_distance: usize,
    /// Epsilon of the RMS norms.
    pub layer_norm_epsilon: f64,
}

/// transformers' `config.json` fields that select the feed-forward; only T5 v1.1's gated-GELU is supported.
#[derive(Deserialize)]
struct HfFeedForward {
    #[serde(default = "relu")]
    feed_forward_proj: String,
}

fn relu() -> String {
    "relu".into()
}

impl T5Config {
    /// T5 v1.1 XXL's encoder, FLUX's `text_encoder_2`
    /// (<https://huggingface.co/google/t5-v1_1-xxl/blob/main/config.json>).
    pub fn v1_1_xxl() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10240,
            num_layers: 24,
            num_heads: 64,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
        }
    }

    /// The random-weight reference in `tests/fixtures/tiny` (`text_encoder_2/config.json`).
    pub fn tiny() -> Self {
        Self {
            vocab_size: 248,
            d_model: 32,
            d_kv: 8,
            d_ff: 64,
            num_layers: 2,
            num_heads: 4,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
        }
    }

    /// Reads a transformers `text_encoder_2/config.json`; it must describe a gated-GELU (v1.1) model.
    pub fn from_hf_json(json: &str) -> Result<Self> {
        let invalid = |e: serde_json::Error| Error::Invalid(format!("T5 config.json: {e}"));
        let ff: HfFeedForward = serde_json::from_str(json).map_err(invalid)?;
        if ff.feed_forward_proj != "gated-gelu" {
            return Err(Error::Invalid(format!(
                "T5 config.json has feed_forward_proj `{}`; only T5 v1.1's `gated-gelu` is supported",
                ff.feed_forward_proj
            )));
        }
        serde_json::from_str(json).map_err(invalid)
    }

    /// The configuration from a llama.cpp T5 GGUF's metadata: `lookup` returns the number stored under a full
    /// key (`t5encoder.embedding_length`, …; `arch` is `general.architecture`, `t5encoder` or `t5`).
    /// `vocab_size` is the row count of `token_embd`. The maximum distance is not stored; llama.cpp uses 128.
    pub fn from_gguf_kv(arch: &str, lookup: impl Fn(&str) -> Option<f64>, vocab_size: usize) -> Result<Self> {
        let number = |key: &str| {
            lookup(&format!("{arch}.{key}"))
                .ok_or_else(|| Error::Invalid(format!("GGUF metadata has no `{arch}.{key}`")))
        };
        let count = |key: &str| -> Result<usize> {
            let value = number(key)?;
            if value >= 1.0 && value.fract() == 0.0 {
                Ok(value as usize)
            } else {
                Err(Error::Invalid(format!("GGUF metadata `{arch}.{key}` = {value} is not a positive count")))
            }
        };
        let layer_norm_epsilon =
            number("attention.layer_norm_epsilon").or_else(|_| number("attention.layer_norm_rms_epsilon"))?;
        Ok(Self {
            vocab_size,
            d_model: count("embedding_length")?,
            d_kv: count("attention.key_length")?,
            d_ff: count("feed_forward_length")?,
            num_layers: count("block_count")?,
            num_heads: count("attention.head_count")?,
            relative_attention_num_buckets: count("attention.relative_buckets_count")?,
            relative_attention_max_distance: 128,
            layer_norm_epsilon,
        })
    }

    /// Infers the configuration from transformers-named tensor shapes (eps 1e-6 and max distance 128, as T5).
    pub fn from_weights(weights: &dyn Weights) -> Result<Self> {
        let shape = |name: &str| weights.shape(name).ok_or_else(|| Error::Invalid(format!("missing tensor `{name}`")));
        let matrix = |name: &str| match shape(name)?.as_slice() {
            &[rows, cols] => Ok([rows, cols]),
            other => Err(Error::Invalid(format!("tensor `{name}` has shape {other:?}, expected a matrix"))),
        };
        let [vocab_size, d_model] = matrix(embedding_name(weights)?)?;
        let [relative_attention_num_buckets, num_heads] = matrix(&relative_bias_name())?;
        let [q_rows, _] = matrix("encoder.block.0.layer.0.SelfAttention.q.weight")?;
        let [d_ff, _] = matrix("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")?;
        if num_heads == 0 || !q_rows.is_multiple_of(num_heads) {
            return Err(Error::Invalid(format!("T5 attention width {q_rows} does not split into {num_heads} heads")));
        }
        let num_layers = (0..)
            .take_while(|i| weights.contains(&format!("encoder.block.{i}.layer.0.SelfAttention.q.weight")))
            .count();
        Ok(Self {
            vocab_size,
            d_model,
            d_kv: q_rows / num_heads,
            d_ff,
            num_layers,
            num_heads,
            relative_attention_num_buckets,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
        })
    }

    /// Width of all heads together.
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }
}

/// The token embedding's name: `shared.weight`, or `encoder.embed_tokens.weight` in encoder-only exports.
fn embedding_name(weights: &dyn Weights) -> Result<&'static str> {
    ["shared.weight", "encoder.embed_tokens.weight"]
        .into_iter()
        .find(|name| weights.contains(name))
        .ok_or_else(|| Error::Invalid("not a T5 encoder: no `shared.weight` or `encoder.embed_tokens.weight`".into()))
}

fn relative_bias_name() -> String {
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight".into()
}

fn rms_norm(vb: &Scope, cfg: &T5Config) -> Result<RmsNorm> {
    let gamma = vb.tensor("weight", [cfg.d_model])?;
    Ok(RmsNorm { gamma: Param::from_tensor(gamma), epsilon: cfg.layer_norm_epsilon })
}

/// T5's bidirectional relative-position bucket of `relative = key − query` (transformers'
/// `_relative_position_bucket`): exact buckets for small distances, logarithmic ones up to `max_distance`,
/// the upper half of the buckets for keys after the query. Computed in f32 as torch does.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let base = if relative > 0 { half } else { 0 };
    let distance = relative.unsigned_abs() as usize;
    let max_exact = half / 2;
    if distance < max_exact {
        return base + distance;
    }
    let log_ratio = (distance as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln();
    let large = max_exact + (log_ratio * (half - max_exact) as f32) as usize;
    base + large.min(half - 1)
}

/// Self-attention without scaling or bias terms (`layer.0.SelfAttention.{q,k,v,o}`).
#[derive(Module, Debug)]
pub struct T5Attention {
    /// `q`.
    pub q: Projection,
    /// `k`.
    pub k: Projection,
    /// `v`.
    pub v: Projection,
    /// `o`.
    pub o: Projection,
    /// Number of heads.
    pub num_heads: usize,
}

impl T5Attention {
    /// `x [b, n, d]` with `position_bias [h, n, n]` → `[b, n, d]`.
    pub fn forward(&self, x: Tensor<3>, position_bias: Tensor<3>) -> Tensor<3> {
        let [b, n, _] = x.dims();
        let heads = self.num_heads;
        let inner = self.q.d_out();
        let head_dim = inner / heads;
        let split = |t: Tensor<3>| t.reshape([b, n, heads, head_dim]).swap_dims(1, 2); // [b, h, n, dk]
        let q = split(self.q.forward(x.clone()));
        let k = split(self.k.forward(x.clone()));
        let v = split(self.v.forward(x));
        let out = biased_attention(q, k, v, position_bias, 1.0); // [b, h, n, dk]
        self.o.forward(out.swap_dims(1, 2).reshape([b, n, inner]))
    }
}

/// The gated-GELU feed-forward (`layer.1.DenseReluDense.{wi_0,wi_1,wo}`): `wo(gelu_tanh(wi_0 x) · wi_1 x)`.
#[derive(Module, Debug)]
pub struct T5DenseGatedGelu {
    /// `wi_0`, the gated branch.
    pub wi_0: Projection,
    /// `wi_1`, the linear branch.
    pub wi_1: Projection,
    /// `wo`.
    pub wo: Projection,
}

impl T5DenseGatedGelu {
    /// `[b, n, d] → [b, n, d]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = gelu_approximate(self.wi_0.forward(x.clone()));
        self.wo.forward(gate * self.wi_1.forward(x))
    }
}

/// One encoder block (`encoder.block.N`).
#[derive(Module, Debug)]
pub struct T5Block {
    /// `layer.0.layer_norm`.
    pub attention_norm: RmsNorm,
    /// `layer.0.SelfAttention`.
    pub self_attention: T5Attention,
    /// `layer.1.layer_norm`.
    pub ff_norm: RmsNorm,
    /// `layer.1.DenseReluDense`.
    pub dense_relu_dense: T5DenseGatedGelu,
}

impl T5Block {
    /// `[b, n, d] → [b, n, d]`.
    pub fn forward(&self, x: Tensor<3>, position_bias: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.self_attention.forward(self.attention_norm.forward(x), position_bias);
        x.clone() + self.dense_relu_dense.forward(self.ff_norm.forward(x))
    }
}

/// The T5 encoder stack.
#[derive(Module, Debug)]
pub struct T5Encoder {
    /// `shared` (or `encoder.embed_tokens`): `[vocab, d_model]`, kept on the host as stored; only the rows of
    /// the prompt's tokens are uploaded.
    #[module(skip)]
    pub shared: HostEmbedding,
    /// Block 0's `relative_attention_bias`: `[buckets, heads]`, shared by every block.
    pub relative_attention_bias: Embedding,
    /// `encoder.block.N`.
    pub block: Vec<T5Block>,
    /// `encoder.final_layer_norm`.
    pub final_layer_norm: RmsNorm,
    /// Distance beyond which all positions share the last bucket.
    pub relative_attention_max_distance: usize,
}

impl T5Encoder {
    /// Builds the encoder from transformers-named weights, checking every shape against `cfg`.
    pub fn load(cfg: &T5Config, weights: &dyn Weights, device: &Device) -> Result<Self> {
        if cfg.relative_attention_num_buckets < 4 {
            return Err(Error::Invalid(format!(
                "T5 needs at least 4 relative-attention buckets, the config has {}",
                cfg.relative_attention_num_buckets
            )));
        }
        let (d, inner, ff_width) = (cfg.d_model, cfg.inner_dim(), cfg.d_ff);
        let vb = Scope::new(weights, device);
        let shared = HostEmbedding::load(weights, embedding_name(weights)?, [cfg.vocab_size, d])?;
        let bias_shape = [cfg.relative_attention_num_buckets, cfg.num_heads];
        let relative_attention_bias =
            Embedding { weight: Param::from_tensor(vb.tensor(&relative_bias_name(), bias_shape)?) };
        let block = (0..cfg.num_layers)
            .map(|i| {
                let layer = vb.pp("encoder.block").pp(i).pp("layer");
                let (attention, ff) = (layer.pp(0), layer.pp(1));
                let linear = |vb: Scope, d_in, d_out| vb.linear(d_in, d_out, false);
                Ok(T5Block {
                    attention_norm: rms_norm(&attention.pp("layer_norm"), cfg)?,
                    self_attention: T5Attention {
                        q: linear(attention.pp("SelfAttention.q"), d, inner)?,
                        k: linear(attention.pp("SelfAttention.k"), d, inner)?,
                        v: linear(attention.pp("SelfAttention.v"), d, inner)?,
                        o: linear(attention.pp("SelfAttention.o"), inner, d)?,
                        num_heads: cfg.num_heads,
                    },
                    ff_norm: rms_norm(&ff.pp("layer_norm"), cfg)?,
                    dense_relu_dense: T5DenseGatedGelu {
                        wi_0: linear(ff.pp("DenseReluDense.wi_0"), d, ff_width)?,
                        wi_1: linear(ff.pp("DenseReluDense.wi_1"), d, ff_width)?,
                        wo: linear(ff.pp("DenseReluDense.wo"), ff_width, d)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = rms_norm(&vb.pp("encoder.final_layer_norm"), cfg)?;
        Ok(Self {
            shared,
            relative_attention_bias,
            block,
            final_layer_norm,
            relative_attention_max_distance: cfg.relative_attention_max_distance,
        })
    }

    /// The attention bias for `n` tokens: `[heads, n, n]`, query along rows, key along columns.
    pub fn position_bias(&self, n: usize, device: &Device) -> Tensor<3> {
        let [num_buckets, heads] = self.relative_attention_bias.weight.dims();
        let max_distance = self.relative_attention_max_distance;
        let buckets: Vec<i64> = (0..n as i64)
            .flat_map(|query| {
                (0..n as i64).map(move |key| relative_position_bucket(key - query, num_buckets, max_distance) as i64)
            })
            .collect();
        let buckets = Tensor::<1, Int>::from_data(TensorData::new(buckets, [n * n]), device);
        // [buckets, h] → [h, n·n], written contiguous so that every block binds it as it is.
        self.relative_attention_bias.weight.val().transpose().select(1, buckets).reshape([heads, n, n])
    }

    /// Token `ids` (one sequence) → last hidden state `[1, n, d_model]` after the final norm, on `device`.
    /// Errors on an id outside the vocabulary.
    pub fn forward(&self, ids: &[u32], device: &Device) -> Result<Tensor<3>> {
        let bias = self.position_bias(ids.len(), device);
        let mut x = self.shared.forward(ids, device)?;
        for block in &self.block {
            x = block.forward(x, bias.clone());
        }
        Ok(self.final_layer_norm.forward(x))
    }
}

/// llama.cpp's T5 tensor names (GGUF, `convert_hf_to_gguf.py` `T5EncoderModel`) and their transformers names;
/// `{N}` is the block index. GGUF readers reverse ggml's dims, so the shapes are transformers' as they are
/// (`attn_rel_b` included: `[buckets, heads]`).
pub const LLAMA_CPP_T5_NAMES: &[(&str, &str)] = &[
    ("token_embd.weight", "shared.weight"),
    ("enc.blk.{N}.attn_norm.weight", "encoder.block.{N}.layer.0.layer_norm.weight"),
    ("enc.blk.{N}.attn_q.weight", "encoder.block.{N}.layer.0.SelfAttention.q.weight"),
    ("enc.blk.{N}.attn_k.weight", "encoder.block.{N}.layer.0.SelfAttention.k.weight"),
    ("enc.blk.{N}.attn_v.weight", "encoder.block.{N}.layer.0.SelfAttention.v.weight"),
    ("enc.blk.{N}.attn_o.weight", "encoder.block.{N}.layer.0.SelfAttention.o.weight"),
    ("enc.blk.{N}.attn_rel_b.weight", "encoder.block.{N}.layer.0.SelfAttention.relative_attention_bias.weight"),
    ("enc.blk.{N}.ffn_norm.weight", "encoder.block.{N}.layer.1.layer_norm.weight"),
    ("enc.blk.{N}.ffn_gate.weight", "encoder.block.{N}.layer.1.DenseReluDense.wi_0.weight"),
    ("enc.blk.{N}.ffn_up.weight", "encoder.block.{N}.layer.1.DenseReluDense.wi_1.weight"),
    ("enc.blk.{N}.ffn_down.weight", "encoder.block.{N}.layer.1.DenseReluDense.wo.weight"),
    ("enc.output_norm.weight", "encoder.final_layer_norm.weight"),
];

/// `name` rewritten from the `from` pattern to the `to` pattern, when it matches (`{N}` = decimal digits).
fn rename(name: &str, from: &str, to: &str) -> Option<String> {
    match from.split_once("{N}") {
        None => (name == from).then(|| to.to_string()),
        Some((prefix, suffix)) => {
            let index = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
            (!index.is_empty() && index.bytes().all(|c| c.is_ascii_digit())).then(|| to.replace("{N}", index))
        }
    }
}

/// The transformers name of a llama.cpp T5 tensor name.
pub fn hf_name_from_llama_cpp(name: &str) -> Option<String> {
    LLAMA_CPP_T5_NAMES.iter().find_map(|(gguf, hf)| rename(name, gguf, hf))
}

/// The llama.cpp name of a transformers T5 tensor name.
pub fn llama_cpp_name_from_hf(name: &str) -> Option<String> {
    LLAMA_CPP_T5_NAMES.iter().find_map(|(gguf, hf)| rename(name, hf, gguf))
}

/// Presents weights with llama.cpp T5 names (a T5 GGUF) under transformers' names, for [`T5Encoder::load`].
/// Names outside the table pass through unchanged.
pub struct LlamaCppT5Names<W> {
    inner: W,
}

impl<W: Weights> LlamaCppT5Names<W> {
    /// Wraps `inner`, whose tensors carry llama.cpp names.
    pub fn new(inner: W) -> Self {
        Self { inner }
    }

    fn source_name(&self, name: &str) -> String {
        llama_cpp_name_from_hf(name).unwrap_or_else(|| name.to_string())
    }
}

impl<W: Weights> Weights for LlamaCppT5Names<W> {
    fn names(&self) -> Vec<String> {
        self.inner.names().into_iter().map(|n| hf_name_from_llama_cpp(&n).unwrap_or(n)).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.inner.shape(&self.source_name(name))
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        self.inner.read(&self.source_name(name))
    }

    fn raw_block(&self, name: &str) -> Option<Result<RawBlock>> {
        self.inner.raw_block(&self.source_name(name))
    }

    fn stored_type(&self, name: &str) -> Option<crate::formats::GgmlType> {
        self.inner.stored_type(&self.source_name(name))
    }
}

/// Test-only: the metadata and tensor table of a GGUF file, enough to check names and tokenizer vocabularies.
#[cfg(test)]
pub(crate) mod test_gguf {
    use std::collections::HashMap;

    /// A metadata value.
    #[derive(Debug, Clone)]
    pub(crate) enum GgufValue {
        Number(f64),
        Bool(bool),
        Text(String),
        Array(Vec<GgufValue>),
    }

    impl GgufValue {
        pub(crate) fn as_f64(&self) -> f64 {
            match self {
                Self::Number(v) => *v,
                other => panic!("not a number: {other:?}"),
            }
        }

        pub(crate) fn as_bool(&self) -> bool {
            match self {
                Self::Bool(v) => *v,
                other => panic!("not a bool: {other:?}"),
            }
        }

        pub(crate) fn as_str(&self) -> &str {
            match self {
                Self::Text(v) => v,
                other => panic!("not a string: {other:?}"),
            }
        }
    }

    /// Metadata and tensor shapes (ggml order: innermost first).
    pub(crate) struct GgufHeader {
        pub(crate) kv: HashMap<String, GgufValue>,
        pub(crate) tensors: Vec<(String, Vec<usize>)>,
    }

    struct Cursor<'a>(&'a [u8]);

    impl Cursor<'_> {
        fn bytes(&mut self, n: usize) -> &[u8] {
            let (head, tail) = self.0.split_at(n);
            self.0 = tail;
            head
        }
        fn u32(&mut self) -> u32 {
            u32::from_le_bytes(self.bytes(4).try_into().unwrap())
        }
        fn u64(&mut self) -> u64 {
            u64::from_le_bytes(self.bytes(8).try_into().unwrap())
        }
        fn string(&mut self) -> String {
            let n = self.u64() as usize;
            String::from_utf8(self.bytes(n).to_vec()).unwrap()
        }
        fn value(&mut self, kind: u32) -> GgufValue {
            let mut le = |n: usize| {
                let mut b = [0u8; 8];
                b[..n].copy_from_slice(self.bytes(n));
                b
            };
            match kind {
                0 => GgufValue::Number(le(1)[0] as f64),
                1 => GgufValue::Number(le(1)[0] as i8 as f64),
                2 => GgufValue::Number(u16::from_le_bytes(le(2)[..2].try_into().unwrap()) as f64),
                3 => GgufValue::Number(i16::from_le_bytes(le(2)[..2].try_into().unwrap()) as f64),
                4 => GgufValue::Number(u32::from_le_bytes(le(4)[..4].try_into().unwrap()) as f64),
                5 => GgufValue::Number(i32::from_le_bytes(le(4)[..4].try_into().unwrap()) as f64),
                6 => GgufValue::Number(f32::from_le_bytes(le(4)[..4].try_into().unwrap()) as f64),
                7 => GgufValue::Bool(le(1)[0] != 0),
                8 => GgufValue::Text(self.string()),
                9 => {
                    let element = self.u32();
                    let n = self.u64() as usize;
                    GgufValue::Array((0..n).map(|_| self.value(element)).collect())
                }
                10 => GgufValue::Number(u64::from_le_bytes(le(8)) as f64),
                11 => GgufValue::Number(i64::from_le_bytes(le(8)) as f64),
                12 => GgufValue::Number(f64::from_le_bytes(le(8))),
                other => panic!("GGUF value type {other}"),
            }
        }
    }

    impl GgufHeader {
        pub(crate) fn parse(bytes: &[u8]) -> Self {
            let mut c = Cursor(bytes);
            assert_eq!(c.bytes(4), b"GGUF");
            assert_eq!(c.u32(), 3);
            let (n_tensors, n_kv) = (c.u64(), c.u64());
            let kv = (0..n_kv)
                .map(|_| {
                    let key = c.string();
                    let kind = c.u32();
                    (key, c.value(kind))
                })
                .collect();
            let tensors = (0..n_tensors)
                .map(|_| {
                    let name = c.string();
                    let dims = c.u32();
                    let shape = (0..dims).map(|_| c.u64() as usize).collect();
                    let (_kind, _offset) = (c.u32(), c.u64());
                    (name, shape)
                })
                .collect();
            Self { kv, tensors }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_gguf::GgufHeader;
    use super::*;
    use crate::harness::testing::{FixtureFile, TINY, assert_data_far_apart, golden, golden_ids};
    use burn::tensor::Tolerance;

    const HF_T5: &str = "FLUX.1-Kontext-dev-tiny/text_encoder_2/model.safetensors";

    fn tiny_config() -> T5Config {
        let json =
            std::fs::read_to_string(format!("{TINY}/FLUX.1-Kontext-dev-tiny/text_encoder_2/config.json")).unwrap();
        T5Config::from_hf_json(&json).unwrap()
    }

    fn gguf_header() -> GgufHeader {
        GgufHeader::parse(&std::fs::read(format!("{TINY}/bfl_gguf/t5_encoder-F16.gguf")).unwrap())
    }

    #[test]
    fn configs_from_json_shapes_and_gguf_agree() {
        assert_eq!(tiny_config(), T5Config::tiny());
        assert_eq!(T5Config::from_weights(&FixtureFile::open(HF_T5)).unwrap(), T5Config::tiny());
        let header = gguf_header();
        let lookup = |key: &str| header.kv.get(key).map(|v| v.as_f64());
        let from_gguf = T5Config::from_gguf_kv("t5encoder", lookup, 248).unwrap();
        // GGUF stores the epsilon as f32.
        assert!((from_gguf.layer_norm_epsilon - 1e-6).abs() < 1e-12);
        assert_eq!(T5Config { layer_norm_epsilon: 1e-6, ..from_gguf }, T5Config::tiny());
        assert!(T5Config::from_gguf_kv("t5", lookup, 248).is_err());
    }

    #[test]
    fn relu_t5_configs_are_refused() {
        let json = r#"{"vocab_size": 8, "d_model": 4, "d_kv": 2, "d_ff": 8, "num_layers": 1, "num_heads": 2,
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6}"#;
        let err = T5Config::from_hf_json(json).unwrap_err().to_string();
        assert!(err.contains("gated-gelu"), "{err}");
        let gated = json.replace("{", r#"{"feed_forward_proj": "gated-gelu", "#);
        assert_eq!(T5Config::from_hf_json(&gated).unwrap().d_ff, 8);
    }

    #[test]
    fn buckets_follow_transformers() {
        // transformers' `_relative_position_bucket(bidirectional=True, num_buckets=32, max_distance=128)`.
        let expected = [
            (0, 0),
            (-1, 1),
            (1, 17),
            (-7, 7),
            (7, 23),
            (-8, 8),
            (8, 24),
            (-12, 9),
            (-16, 10),
            (-32, 12),
            (32, 28),
            (-64, 14),
            (-127, 15),
            (-128, 15),
            (500, 31),
        ];
        for (relative, bucket) in expected {
            assert_eq!(relative_position_bucket(relative, 32, 128), bucket, "relative {relative}");
        }
    }

    /// The golden prompt's T5 token ids.
    fn t5_ids() -> Vec<u32> {
        golden_ids("t5_input_ids").try_into_vec::<i64>().unwrap().into_iter().map(|id| id as u32).collect()
    }

    /// `model` encodes the golden prompt as diffusers did; the same ids in reverse order are the negative control.
    fn assert_golden_prompt_embeds(model: &T5Encoder, device: &Device) {
        let want = golden("golden_run.safetensors", "t5_prompt_embeds");
        let got = model.forward(&t5_ids(), device).unwrap().into_data();
        got.assert_approx_eq::<f32>(&want, Tolerance::absolute(1e-4));
        let reversed: Vec<u32> = t5_ids().into_iter().rev().collect();
        let control = model.forward(&reversed, device).unwrap().into_data();
        assert_data_far_apart(&control, &want, 1e-4, "T5 prompt embeddings of the ids reversed");
    }

    #[test]
    fn hf_weights_match_golden_prompt_embeds_and_block0() {
        let device = crate::device::cpu();
        let model = T5Encoder::load(&tiny_config(), &FixtureFile::open(HF_T5), &device).unwrap();
        let ids = t5_ids();
        let tolerance = Tolerance::absolute(1e-4);

        let bias = model.position_bias(ids.len(), &device);
        let block0 = model.block[0].forward(model.shared.forward(&ids, &device).unwrap(), bias);
        block0
            .into_data()
            .assert_approx_eq::<f32>(&golden("golden_text_vae_internals.safetensors", "t5_block0_out"), tolerance);
        assert_golden_prompt_embeds(&model, &device);
        let err = model.forward(&[0, 248], &device).unwrap_err().to_string();
        assert_eq!(err, "token id 248 is outside the 248-row embedding table");
    }

    /// Under a 4 KiB buffer limit the tiny model's feed-forward matrices (8 KiB in f32) are stored in two parts
    /// each, the 4 KiB attention ones whole, and the embedding stays on the host; the output still matches.
    #[test]
    fn split_weights_and_host_embedding_match_golden_under_a_tiny_limit() {
        let device = crate::device::cpu();
        let model = crate::device::with_binding_limit(4096, || {
            T5Encoder::load(&tiny_config(), &FixtureFile::open(HF_T5), &device).unwrap()
        });
        let ff = &model.block[0].dense_relu_dense;
        assert_eq!((ff.wi_0.parts.len(), ff.wo.parts.len(), model.block[0].self_attention.q.parts.len()), (2, 2, 1));
        assert_golden_prompt_embeds(&model, &device);
    }

    #[test]
    fn llama_cpp_names_map_onto_the_hf_checkpoint() {
        let header = gguf_header();
        let hf = FixtureFile::open(HF_T5);
        let mut mapped: Vec<String> = header
            .tensors
            .iter()
            .map(|(name, ggml_shape)| {
                let hf_name = hf_name_from_llama_cpp(name).unwrap_or_else(|| panic!("unmapped `{name}`"));
                assert_eq!(llama_cpp_name_from_hf(&hf_name).as_deref(), Some(name.as_str()));
                let shape: Vec<usize> = ggml_shape.iter().rev().copied().collect();
                assert_eq!(hf.shape(&hf_name), Some(shape), "{name} → {hf_name}");
                hf_name
            })
            .collect();
        let mut expected = hf.names();
        mapped.sort();
        expected.sort();
        assert_eq!(mapped, expected);
    }

    #[test]
    fn renamed_weights_load_and_match_golden() {
        /// The HF checkpoint under llama.cpp names, standing in for a GGUF reader.
        struct AsLlamaCpp(FixtureFile);
        impl Weights for AsLlamaCpp {
            fn names(&self) -> Vec<String> {
                self.0.names().iter().map(|n| llama_cpp_name_from_hf(n).unwrap()).collect()
            }
            fn shape(&self, name: &str) -> Option<Vec<usize>> {
                self.0.shape(&hf_name_from_llama_cpp(name)?)
            }
            fn read(&self, name: &str) -> Result<HostTensor> {
                let hf =
                    hf_name_from_llama_cpp(name).ok_or_else(|| Error::Invalid(format!("not llama.cpp: {name}")))?;
                self.0.read(&hf)
            }
        }
        let weights = LlamaCppT5Names::new(AsLlamaCpp(FixtureFile::open(HF_T5)));
        assert!(weights.names().contains(&"encoder.block.1.layer.1.DenseReluDense.wo.weight".to_string()));
        let device = crate::device::cpu();
        let model = T5Encoder::load(&T5Config::from_weights(&weights).unwrap(), &weights, &device).unwrap();
        assert_golden_prompt_embeds(&model, &device);
    }

    /// T5 v1.1 XXL under a 128 MiB limit: `part_rows` cuts every weight (f32 or 16-bit) into parts that fit,
    /// `wi_0` in f32 (168 MB) into two.
    #[test]
    fn xxl_weights_are_cut_into_parts_that_fit_a_128_mib_limit() {
        let limit: u64 = 128 << 20;
        let cfg = T5Config::v1_1_xxl();
        let (d, inner, ff) = (cfg.d_model as u64, cfg.inner_dim() as u64, cfg.d_ff as u64);
        for value_bytes in [4u64, 2] {
            for (d_in, d_out) in [(d, inner), (inner, d), (d, ff), (ff, d)] {
                let parts = crate::model::layers::part_rows(&[d_out as usize], d_in * value_bytes, limit).unwrap();
                assert!(parts.iter().all(|rows| rows.len() as u64 * d_in * value_bytes <= limit), "[{d_in} → {d_out}]");
                assert_eq!(parts.iter().map(|rows| rows.len() as u64).sum::<u64>(), d_out, "[{d_in} → {d_out}]");
            }
        }
        assert_eq!(
            crate::model::layers::part_rows(&[cfg.d_ff], d * 4, limit).unwrap().len(),
            2,
            "wi_0 in f32 is 168 MB"
        );
    }

    #[test]
    fn rename_needs_a_block_index() {
        assert_eq!(hf_name_from_llama_cpp("enc.blk.x.attn_q.weight"), None);
        assert_eq!(hf_name_from_llama_cpp("enc.blk..attn_q.weight"), None);
        assert_eq!(
            hf_name_from_llama_cpp("enc.blk.23.ffn_gate.weight").as_deref(),
            Some("encoder.block.23.layer.1.DenseReluDense.wi_0.weight")
        );
    }

    #[test]
    fn load_rejects_wrong_shapes() {
        let device = crate::device::cpu();
        let weights = FixtureFile::open(HF_T5);
        let err = T5Encoder::load(&T5Config { num_heads: 8, d_kv: 4, ..T5Config::tiny() }, &weights, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("relative_attention_bias"), "{err}");
        let err =
            T5Encoder::load(&T5Config { d_ff: 128, ..T5Config::tiny() }, &weights, &device).unwrap_err().to_string();
        assert!(err.contains("wi_0"), "{err}");
    }
}
