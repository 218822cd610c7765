//! Flux transformer configuration, with candle's field names (and therefore `kontext inspect`'s keys).

use serde::{Deserialize, Serialize};

/// Hyper-parameters of a Flux DiT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FluxConfig {
    /// Channels of a packed latent token: 16 latent channels × 2 × 2.
    pub in_channels: usize,
    /// Width of the pooled text vector (CLIP-L: 768).
    pub vec_in_dim: usize,
    /// Width of the text tokens (T5-XXL: 4096).
    pub context_in_dim: usize,
    /// Width of the transformer.
    pub hidden_size: usize,
    /// MLP width over `hidden_size`.
    pub mlp_ratio: f64,
    /// Attention heads; `hidden_size / num_heads` is the head width.
    pub num_heads: usize,
    /// Double-stream blocks.
    pub depth: usize,
    /// Single-stream blocks.
    pub depth_single_blocks: usize,
    /// RoPE dimensions per position axis; they sum to the head width.
    pub axes_dim: Vec<usize>,
    /// RoPE base.
    pub theta: f64,
    /// Whether the qkv projections have a bias.
    pub qkv_bias: bool,
    /// Whether a guidance embedding exists (distilled guidance, as in [dev]).
    pub guidance_embed: bool,
}

impl FluxConfig {
    /// FLUX.1 Kontext [dev]; the same numbers as FLUX.1 [dev]
    /// (<https://github.com/black-forest-labs/flux/blob/main/src/flux/util.py>, `configs["flux-dev-kontext"]`).
    pub fn kontext_dev() -> Self {
        Self {
            in_channels: 64,
            vec_in_dim: 768,
            context_in_dim: 4096,
            hidden_size: 3072,
            mlp_ratio: 4.0,
            num_heads: 24,
            depth: 19,
            depth_single_blocks: 38,
            axes_dim: vec![16, 56, 56],
            theta: 10_000.0,
            qkv_bias: true,
            guidance_embed: true,
        }
    }

    /// The random-weight reference pipeline of the test fixtures (`tests/fixtures/generator/tiny_reference.json`).
    pub fn tiny() -> Self {
        Self {
            in_channels: 64,
            vec_in_dim: 32,
            context_in_dim: 32,
            hidden_size: 64,
            mlp_ratio: 4.0,
            num_heads: 4,
            depth: 2,
            depth_single_blocks: 2,
            axes_dim: vec![4, 4, 8],
            theta: 10_000.0,
            qkv_bias: true,
            guidance_embed: true,
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Width of the MLP hidden layer.
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }
}
