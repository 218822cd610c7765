//! The CLIP text encoder (transformers' `CLIPTextModel`), whose pooled output is FLUX's `vec` input.
//!
//! Pre-norm transformer with a causal mask; the pooled vector is the final-norm hidden state at the first
//! end-of-text token (the largest id). Weights use transformers' names, with or without the `text_model.`
//! prefix; `text_projection.weight` may be present and is ignored (FLUX uses `pooler_output`).

use burn::module::{Module, Param};
use burn::nn::{Embedding, LayerNorm, LayerNormConfig};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::{Bool, Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::formats::weights::Weights;
use crate::kernels::attention::biased_attention;
use crate::model::layers::{HostEmbedding, Projection};
use crate::model::scope::Scope;
use crate::{Error, Result};

/// Head width of every OpenAI CLIP text tower (ViT-B/L/H/bigG), used when only weights are at hand.
pub const CLIP_HEAD_DIM: usize = 64;

/// The MLP activation of a CLIP text encoder (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipActivation {
    /// `x · sigmoid(1.702 x)`, OpenAI's CLIP (and FLUX's CLIP-L).
    QuickGelu,
    /// The exact (erf) GELU, used by the LAION/bigG towers.
    Gelu,
}

/// Hyper-parameters of a CLIP text encoder, with transformers' `CLIPTextConfig` names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    /// Token embedding rows.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP hidden layer.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Position embedding rows, the longest token sequence (77).
    pub max_position_embeddings: usize,
    /// Epsilon of every LayerNorm.
    pub layer_norm_eps: f64,
    /// MLP activation.
    pub hidden_act: ClipActivation,
}

impl ClipTextConfig {
    /// CLIP ViT-L/14's text tower, FLUX's `text_encoder`
    /// (<https://huggingface.co/openai/clip-vit-large-patch14/blob/main/config.json>, `text_config`).
    pub fn clip_l() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            layer_norm_eps: 1e-5,
            hidden_act: ClipActivation::QuickGelu,
        }
    }

    /// The random-weight reference in `tests/fixtures/tiny` (`text_encoder/config.json`).
    pub fn tiny() -> Self {
        Self {
            vocab_size: 4096,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            max_position_embeddings: 77,
            layer_norm_eps: 1e-5,
            hidden_act: ClipActivation::QuickGelu,
        }
    }

    /// Reads a transformers `text_encoder/config.json` (`CLIPTextConfig`; other keys are ignored).
    pub fn from_hf_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| Error::Invalid(format!("CLIP text config.json: {e}")))
    }

    /// Infers the configuration from tensor shapes alone. Head count is not visible in the shapes, so it is
    /// `hidden_size / head_dim` ([`CLIP_HEAD_DIM`] for OpenAI's towers); eps 1e-5 and quick-GELU as in CLIP-L.
    pub fn from_weights(weights: &dyn Weights, head_dim: usize) -> Result<Self> {
        let prefix = key_prefix(weights)?;
        let shape = |name: &str| {
            weights
                .shape(&format!("{prefix}{name}"))
                .ok_or_else(|| Error::Invalid(format!("missing tensor `{prefix}{name}`")))
        };
        let token = shape("embeddings.token_embedding.weight")?;
        let position = shape("embeddings.position_embedding.weight")?;
        let fc1 = shape("encoder.layers.0.mlp.fc1.weight")?;
        let (&[vocab_size, hidden_size], &[max_position_embeddings, _], &[intermediate_size, _]) =
            (token.as_slice(), position.as_slice(), fc1.as_slice())
        else {
            return Err(Error::Invalid(format!(
                "CLIP embeddings/fc1 are not matrices: {token:?}, {position:?}, {fc1:?}"
            )));
        };
        if head_dim == 0 || !hidden_size.is_multiple_of(head_dim) {
            return Err(Error::Invalid(format!("CLIP width {hidden_size} is not a multiple of head width {head_dim}")));
        }
        let num_hidden_layers = (0..)
            .take_while(|i| weights.contains(&format!("{prefix}encoder.layers.{i}.self_attn.q_proj.weight")))
            .count();
        Ok(Self {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads: hidden_size / head_dim,
            max_position_embeddings,
            layer_norm_eps: 1e-5,
            hidden_act: ClipActivation::QuickGelu,
        })
    }
}

/// `text_model.` when the weights carry transformers' full prefix, `` when they do not.
fn key_prefix(weights: &dyn Weights) -> Result<&'static str> {
    ["text_model.", ""]
        .into_iter()
        .find(|prefix| weights.contains(&format!("{prefix}embeddings.token_embedding.weight")))
        .ok_or_else(|| {
            Error::Invalid("not a CLIP text encoder: no `text_model.embeddings.token_embedding.weight`".into())
        })
}

fn layer_norm(vb: Scope, cfg: &ClipTextConfig) -> Result<LayerNorm> {
    let d = cfg.hidden_size;
    let mut norm = LayerNormConfig::new(d).with_epsilon(cfg.layer_norm_eps).init(vb.device());
    norm.gamma = Param::from_tensor(vb.tensor("weight", [d])?);
    norm.beta = Some(Param::from_tensor(vb.tensor("bias", [d])?));
    Ok(norm)
}

/// Token and position embeddings (`embeddings.*`).
#[derive(Module, Debug)]
pub struct ClipEmbeddings {
    /// `token_embedding`: `[vocab, hidden]`, kept on the host as stored (CLIP-L's is 152 MB in f32, more than a
    /// 128 MiB GPU binding); only the rows of the prompt's tokens are uploaded.
    #[module(skip)]
    pub token_embedding: HostEmbedding,
    /// `position_embedding`: `[max_positions, hidden]`.
    pub position_embedding: Embedding,
}

/// Multi-head self-attention with a causal mask (`self_attn.*`).
#[derive(Module, Debug)]
pub struct ClipAttention {
    /// `q_proj`.
    pub q_proj: Projection,
    /// `k_proj`.
    pub k_proj: Projection,
    /// `v_proj`.
    pub v_proj: Projection,
    /// `out_proj`.
    pub out_proj: Projection,
    /// Number of heads.
    pub num_heads: usize,
}

impl ClipAttention {
    /// `x [b, n, d]`, `causal [1, n, n]` (`f32::MIN` above the diagonal, 0 elsewhere) → `[b, n, d]`.
    pub fn forward(&self, x: Tensor<3>, causal: Tensor<3>) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let heads = self.num_heads;
        let head_dim = d / heads;
        let split = |t: Tensor<3>| t.reshape([b, n, heads, head_dim]).swap_dims(1, 2); // [b, h, n, hd]
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let out = biased_attention(q, k, v, causal, (head_dim as f32).powf(-0.5)); // [b, h, n, hd]
        self.out_proj.forward(out.swap_dims(1, 2).reshape([b, n, d]))
    }
}

/// The two-layer MLP (`mlp.fc1`, `mlp.fc2`).
#[derive(Module, Debug)]
pub struct ClipMlp {
    /// `fc1`: hidden → intermediate.
    pub fc1: Projection,
    /// `fc2`: intermediate → hidden.
    pub fc2: Projection,
    /// Whether the activation is quick-GELU (otherwise exact GELU).
    pub quick_gelu: bool,
}

impl ClipMlp {
    /// `[b, n, d] → [b, n, d]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.fc1.forward(x);
        let x = if self.quick_gelu { x.clone() * sigmoid(x * 1.702) } else { gelu(x) };
        self.fc2.forward(x)
    }
}

/// One pre-norm transformer layer (`encoder.layers.N.*`).
#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    /// `self_attn`.
    pub self_attn: ClipAttention,
    /// `layer_norm1`, before attention.
    pub layer_norm1: LayerNorm,
    /// `mlp`.
    pub mlp: ClipMlp,
    /// `layer_norm2`, before the MLP.
    pub layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    /// `[b, n, d] → [b, n, d]`.
    pub fn forward(&self, x: Tensor<3>, causal: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x), causal);
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// The transformer layers (`encoder.*`).
#[derive(Module, Debug)]
pub struct ClipEncoder {
    /// `layers.N`.
    pub layers: Vec<ClipEncoderLayer>,
}

/// CLIP's text transformer (`text_model.*`).
#[derive(Module, Debug)]
pub struct ClipTextTransformer {
    /// `embeddings`.
    pub embeddings: ClipEmbeddings,
    /// `encoder`.
    pub encoder: ClipEncoder,
    /// `final_layer_norm`.
    pub final_layer_norm: LayerNorm,
}

impl ClipTextTransformer {
    /// Builds the encoder from transformers-named weights (`text_model.` prefix optional), checking every shape
    /// against `cfg`.
    pub fn load(cfg: &ClipTextConfig, weights: &dyn Weights, device: &Device) -> Result<Self> {
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(Error::Invalid(format!(
                "CLIP width {} does not split into {} heads",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        let root = Scope::new(weights, device);
        let vb = match key_prefix(weights)? {
            "" => root,
            prefix => root.pp(prefix.trim_end_matches('.')),
        };
        let (d, ff) = (cfg.hidden_size, cfg.intermediate_size);
        let embeddings = vb.pp("embeddings");
        let embeddings = ClipEmbeddings {
            token_embedding: HostEmbedding::load(
                weights,
                &embeddings.pp("token_embedding").key("weight"),
                [cfg.vocab_size, d],
            )?,
            position_embedding: Embedding {
                weight: Param::from_tensor(
                    embeddings.pp("position_embedding").tensor("weight", [cfg.max_position_embeddings, d])?,
                ),
            },
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let layer = vb.pp("encoder.layers").pp(i);
                let attention = layer.pp("self_attn");
                Ok(ClipEncoderLayer {
                    self_attn: ClipAttention {
                        q_proj: attention.pp("q_proj").linear(d, d, true)?,
                        k_proj: attention.pp("k_proj").linear(d, d, true)?,
                        v_proj: attention.pp("v_proj").linear(d, d, true)?,
                        out_proj: attention.pp("out_proj").linear(d, d, true)?,
                        num_heads: cfg.num_attention_heads,
                    },
                    layer_norm1: layer_norm(layer.pp("layer_norm1"), cfg)?,
                    mlp: ClipMlp {
                        fc1: layer.pp("mlp.fc1").linear(d, ff, true)?,
                        fc2: layer.pp("mlp.fc2").linear(ff, d, true)?,
                        quick_gelu: cfg.hidden_act == ClipActivation::QuickGelu,
                    },
                    layer_norm2: layer_norm(layer.pp("layer_norm2"), cfg)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = layer_norm(vb.pp("final_layer_norm"), cfg)?;
        Ok(Self { embeddings, encoder: ClipEncoder { layers }, final_layer_norm })
    }

    /// Token and position embeddings of one sequence of `ids` → `[1, n, d]` on `device`.
    pub fn embed(&self, ids: &[u32], device: &Device) -> Result<Tensor<3>> {
        let n = ids.len();
        let [max_positions, _] = self.embeddings.position_embedding.weight.dims();
        if n > max_positions {
            return Err(Error::Invalid(format!("CLIP takes at most {max_positions} tokens, got {n}")));
        }
        let positions = Tensor::<1, Int>::arange(0..n as i64, device).reshape([1, n]);
        Ok(self.embeddings.token_embedding.forward(ids, device)?
            + self.embeddings.position_embedding.forward(positions))
    }

    /// One sequence of `ids` → (last hidden state `[1, n, d]` after the final norm, pooled `[1, d]`).
    pub fn forward(&self, ids: &[u32], device: &Device) -> Result<(Tensor<3>, Tensor<2>)> {
        let n = ids.len();
        let mut x = self.embed(ids, device)?;
        let above_diagonal = Tensor::<2, Bool>::tril_mask([n, n], 0, device);
        let causal = Tensor::<2>::zeros([n, n], device).mask_fill(above_diagonal, f32::MIN).unsqueeze::<3>(); // [1, n, n]
        for layer in &self.encoder.layers {
            x = layer.forward(x, causal.clone());
        }
        let last_hidden = self.final_layer_norm.forward(x);
        let [_, _, d] = last_hidden.dims();
        let pooled = last_hidden.clone().narrow(1, pooled_position(ids), 1).reshape([1, d]);
        Ok((last_hidden, pooled))
    }
}

/// The position CLIP pools: the first of the largest id (`ids.argmax(-1)` in torch; the end token has the
/// largest id in CLIP's vocabulary).
fn pooled_position(ids: &[u32]) -> usize {
    let largest = ids.iter().copied().max().unwrap_or(0);
    ids.iter().position(|&id| id == largest).unwrap_or(0)
}

/// Test-only helpers shared by the text-encoder tests: safetensors fixtures as [`Weights`] and goldens.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::testing::{FixtureFile, TINY, assert_data_far_apart, golden, golden_ids};
    use burn::tensor::Tolerance;

    fn tiny_config() -> ClipTextConfig {
        let json = std::fs::read_to_string(format!("{TINY}/FLUX.1-Kontext-dev-tiny/text_encoder/config.json")).unwrap();
        ClipTextConfig::from_hf_json(&json).unwrap()
    }

    /// The golden prompt's hidden states and pooled vector; the same ids in reverse order are the negative control.
    fn check_against_golden(path: &str) {
        let device = crate::device::cpu();
        let weights = FixtureFile::open(path);
        let model = ClipTextTransformer::load(&tiny_config(), &weights, &device).unwrap();
        let (last, pooled) = model.forward(&clip_ids(), &device).unwrap();
        let tolerance = Tolerance::absolute(1e-4);
        let want_last = golden("golden_text_vae_internals.safetensors", "clip_last_hidden_state");
        let want_pooled = golden("golden_run.safetensors", "clip_pooled");
        last.into_data().assert_approx_eq::<f32>(&want_last, tolerance);
        pooled.into_data().assert_approx_eq::<f32>(&want_pooled, tolerance);
        let reversed: Vec<u32> = clip_ids().into_iter().rev().collect();
        let (last, pooled) = model.forward(&reversed, &device).unwrap();
        assert_data_far_apart(&last.into_data(), &want_last, 1e-4, "hidden states of the ids reversed");
        assert_data_far_apart(&pooled.into_data(), &want_pooled, 1e-4, "pooled vector of the ids reversed");
    }

    #[test]
    fn config_json_is_the_tiny_preset() {
        assert_eq!(tiny_config(), ClipTextConfig::tiny());
    }

    #[test]
    fn config_inferred_from_shapes_matches_config_json() {
        let weights = FixtureFile::open("bfl_gguf/clip_l.safetensors");
        assert_eq!(ClipTextConfig::from_weights(&weights, 8).unwrap(), ClipTextConfig::tiny());
        assert!(ClipTextConfig::from_weights(&weights, CLIP_HEAD_DIM).is_err());
    }

    #[test]
    fn diffusers_text_encoder_matches_golden() {
        check_against_golden("FLUX.1-Kontext-dev-tiny/text_encoder/model.safetensors");
    }

    #[test]
    fn comfy_clip_l_matches_golden() {
        check_against_golden("bfl_gguf/clip_l.safetensors");
    }

    #[test]
    fn clip_l_with_text_projection_matches_golden() {
        check_against_golden("bfl_gguf/clip_l_with_text_projection.safetensors");
    }

    #[test]
    fn embeddings_match_golden() {
        let device = crate::device::cpu();
        let weights = FixtureFile::open("bfl_gguf/clip_l.safetensors");
        let model = ClipTextTransformer::load(&tiny_config(), &weights, &device).unwrap();
        let want = golden("golden_text_vae_internals.safetensors", "clip_embeddings_out");
        model
            .embed(&clip_ids(), &device)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&want, Tolerance::absolute(1e-5));
        let reversed: Vec<u32> = clip_ids().into_iter().rev().collect();
        let control = model.embed(&reversed, &device).unwrap().into_data();
        assert_data_far_apart(&control, &want, 1e-5, "embeddings of the ids reversed");
    }

    #[test]
    fn the_token_table_stays_on_the_host() {
        let device = crate::device::cpu();
        let weights = FixtureFile::open("bfl_gguf/clip_l.safetensors");
        let cfg = tiny_config();
        let model = ClipTextTransformer::load(&cfg, &weights, &device).unwrap();
        assert_eq!(model.embeddings.token_embedding.dims(), [cfg.vocab_size, cfg.hidden_size]);
        let on_file: usize = weights.names().iter().map(|n| weights.shape(n).unwrap().iter().product::<usize>()).sum();
        let on_device = model.num_params();
        // Everything but the token table (and the projection a clip_l file may carry) is on the device.
        assert!(on_device <= on_file - cfg.vocab_size * cfg.hidden_size, "{on_device} of {on_file}");
    }

    #[test]
    fn pooled_takes_the_first_largest_id() {
        assert_eq!(pooled_position(&[5, 9, 9, 9]), 1);
        assert_eq!(pooled_position(&[9, 1, 3, 9]), 0);
        assert_eq!(pooled_position(&[1, 2, 3]), 2);
    }

    /// The golden prompt's CLIP ids.
    fn clip_ids() -> Vec<u32> {
        golden_ids("clip_input_ids").iter::<i64>().map(|id| id as u32).collect()
    }

    #[test]
    fn load_rejects_a_wrong_config_and_missing_tensors() {
        let device = crate::device::cpu();
        let weights = FixtureFile::open("bfl_gguf/clip_l.safetensors");
        let wide = ClipTextConfig { hidden_size: 64, ..ClipTextConfig::tiny() };
        let err = ClipTextTransformer::load(&wide, &weights, &device).unwrap_err().to_string();
        assert!(err.contains("text_model.embeddings.token_embedding.weight"), "{err}");
        let deep = ClipTextConfig { num_hidden_layers: 3, ..ClipTextConfig::tiny() };
        let err = ClipTextTransformer::load(&deep, &weights, &device).unwrap_err().to_string();
        assert!(err.contains("missing tensor `text_model.encoder.layers.2"), "{err}");
        let t5 = FixtureFile::open("FLUX.1-Kontext-dev-tiny/text_encoder_2/model.safetensors");
        assert!(ClipTextTransformer::load(&ClipTextConfig::tiny(), &t5, &device).is_err());
    }

    #[test]
    fn forward_rejects_sequences_longer_than_the_position_table() {
        let device = crate::device::cpu();
        let weights = FixtureFile::open("bfl_gguf/clip_l.safetensors");
        let model = ClipTextTransformer::load(&tiny_config(), &weights, &device).unwrap();
        assert!(model.forward(&[0; 78], &device).is_err());
    }
}
