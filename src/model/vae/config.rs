//! Configuration of the Flux VAE (diffusers `AutoencoderKL` with `DownEncoderBlock2D` / `UpDecoderBlock2D`
//! levels): presets, `vae/config.json`, and inference from tensor shapes.

use serde::Deserialize;

use crate::formats::weights::Weights;
use crate::{Error, Result};

/// Hyper-parameters of the VAE. The number of resolution levels is `block_out_channels.len()`; the image is
/// downscaled by `2^(levels - 1)`.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    /// Channels of the image (RGB: 3).
    pub in_channels: usize,
    /// Channels of the decoded image (RGB: 3).
    pub out_channels: usize,
    /// Channels of the latent (Flux: 16); the encoder emits twice as many moments (mean ‖ log-variance).
    pub latent_channels: usize,
    /// Width of each level, finest first (Flux: `[128, 256, 512, 512]`).
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder level; decoder levels have one more.
    pub layers_per_block: usize,
    /// Groups of every GroupNorm. Not visible in tensor shapes: see [`VaeConfig::infer`].
    pub norm_num_groups: usize,
    /// Multiplier of the shifted latent the transformer sees (Flux: 0.3611).
    pub scaling_factor: f64,
    /// Offset subtracted from the latent before scaling (Flux: 0.1159).
    pub shift_factor: f64,
    /// Whether both mid blocks have their single-head self-attention.
    pub mid_block_add_attention: bool,
    /// Whether a 1×1 `quant_conv` follows the encoder (Flux: no). Present weights are applied regardless.
    pub use_quant_conv: bool,
    /// Whether a 1×1 `post_quant_conv` precedes the decoder (Flux: no). Present weights are applied regardless.
    pub use_post_quant_conv: bool,
}

/// The keys of diffusers' `vae/config.json` this crate reads; missing keys take `AutoencoderKL`'s defaults.
#[derive(Deserialize)]
struct DiffusersVaeJson {
    #[serde(default = "default_rgb")]
    in_channels: usize,
    #[serde(default = "default_rgb")]
    out_channels: usize,
    #[serde(default = "default_latent_channels")]
    latent_channels: usize,
    #[serde(default = "default_block_out_channels")]
    block_out_channels: Vec<usize>,
    #[serde(default = "default_layers_per_block")]
    layers_per_block: usize,
    #[serde(default = "default_norm_num_groups")]
    norm_num_groups: usize,
    #[serde(default = "default_scaling_factor")]
    scaling_factor: f64,
    #[serde(default)]
    shift_factor: Option<f64>,
    #[serde(default = "default_true")]
    mid_block_add_attention: bool,
    #[serde(default = "default_true")]
    use_quant_conv: bool,
    #[serde(default = "default_true")]
    use_post_quant_conv: bool,
    #[serde(default = "default_act_fn")]
    act_fn: String,
    #[serde(default)]
    down_block_types: Option<Vec<String>>,
    #[serde(default)]
    up_block_types: Option<Vec<String>>,
}

fn default_rgb() -> usize {
    3
}
fn default_latent_channels() -> usize {
    4
}
fn default_block_out_channels() -> Vec<usize> {
    vec![64]
}
fn default_layers_per_block() -> usize {
    1
}
fn default_norm_num_groups() -> usize {
    32
}
fn default_scaling_factor() -> f64 {
    0.18215
}
fn default_true() -> bool {
    true
}
fn default_act_fn() -> String {
    "silu".into()
}

impl VaeConfig {
    /// The FLUX.1 autoencoder (`ae.safetensors` / `vae/config.json` of black-forest-labs/FLUX.1-Kontext-dev;
    /// <https://github.com/black-forest-labs/flux/blob/main/src/flux/util.py>, `AutoEncoderParams`:
    /// ch 128, ch_mult [1, 2, 4, 4], num_res_blocks 2, z_channels 16, scale 0.3611, shift 0.1159).
    pub fn flux() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 16,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            norm_num_groups: 32,
            scaling_factor: 0.3611,
            shift_factor: 0.1159,
            mid_block_add_attention: true,
            use_quant_conv: false,
            use_post_quant_conv: false,
        }
    }

    /// Parses diffusers' `vae/config.json`. Keys it lacks take `AutoencoderKL`'s defaults (`shift_factor: null`
    /// is 0). Fails on block types or activations other than the ones this VAE implements.
    pub fn from_diffusers_json(json: &str) -> Result<Self> {
        let raw: DiffusersVaeJson =
            serde_json::from_str(json).map_err(|e| Error::Invalid(format!("VAE config.json is not valid: {e}")))?;
        if raw.act_fn != "silu" {
            return Err(Error::Invalid(format!(
                "VAE config.json: act_fn `{}` is not supported (only silu)",
                raw.act_fn
            )));
        }
        for (key, types, expected) in [
            ("down_block_types", &raw.down_block_types, "DownEncoderBlock2D"),
            ("up_block_types", &raw.up_block_types, "UpDecoderBlock2D"),
        ] {
            if let Some(types) = types {
                if let Some(other) = types.iter().find(|t| *t != expected) {
                    return Err(Error::Invalid(format!(
                        "VAE config.json: {key} `{other}` is not supported (only {expected})"
                    )));
                }
                if types.len() != raw.block_out_channels.len() {
                    return Err(Error::Invalid(format!(
                        "VAE config.json: {key} has {} entries but block_out_channels has {}",
                        types.len(),
                        raw.block_out_channels.len()
                    )));
                }
            }
        }
        let cfg = Self {
            in_channels: raw.in_channels,
            out_channels: raw.out_channels,
            latent_channels: raw.latent_channels,
            block_out_channels: raw.block_out_channels,
            layers_per_block: raw.layers_per_block,
            norm_num_groups: raw.norm_num_groups,
            scaling_factor: raw.scaling_factor,
            shift_factor: raw.shift_factor.unwrap_or(0.0),
            mid_block_add_attention: raw.mid_block_add_attention,
            use_quant_conv: raw.use_quant_conv,
            use_post_quant_conv: raw.use_post_quant_conv,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads the architecture from the shapes of diffusers-named weights (wrap BFL `ae.safetensors` in
    /// [`crate::model::vae::remap::LdmVaeWeights`] first). Shapes cannot show `norm_num_groups`,
    /// `scaling_factor` or `shift_factor`: they are set to Flux's values (32, 0.3611, 0.1159). Callers that
    /// know better (a `config.json`, a tiny test model) override them, e.g. with
    /// [`VaeConfig::with_norm_num_groups`].
    pub fn infer(weights: &dyn Weights) -> Result<Self> {
        let shape = |name: &str| {
            weights
                .shape(name)
                .ok_or_else(|| Error::Invalid(format!("VAE weights lack `{name}`: not a Flux/diffusers VAE")))
        };
        let first_conv = |level: usize| format!("encoder.down_blocks.{level}.resnets.0.conv1.weight");
        let mut block_out_channels = Vec::new();
        while weights.contains(&first_conv(block_out_channels.len())) {
            block_out_channels.push(shape(&first_conv(block_out_channels.len()))?[0]);
        }
        if block_out_channels.is_empty() {
            shape(&first_conv(0))?;
        }
        let layers_per_block =
            (0..).take_while(|j| weights.contains(&format!("encoder.down_blocks.0.resnets.{j}.conv1.weight"))).count();
        let in_channels = conv_dim(&shape("encoder.conv_in.weight")?, 1, "encoder.conv_in.weight")?;
        let latent_channels = conv_dim(&shape("decoder.conv_in.weight")?, 1, "decoder.conv_in.weight")?;
        let out_channels = conv_dim(&shape("decoder.conv_out.weight")?, 0, "decoder.conv_out.weight")?;
        let flux = Self::flux();
        let cfg = Self {
            in_channels,
            out_channels,
            latent_channels,
            block_out_channels,
            layers_per_block,
            norm_num_groups: flux.norm_num_groups,
            scaling_factor: flux.scaling_factor,
            shift_factor: flux.shift_factor,
            mid_block_add_attention: weights.contains("encoder.mid_block.attentions.0.to_q.weight"),
            use_quant_conv: weights.contains("quant_conv.weight"),
            use_post_quant_conv: weights.contains("post_quant_conv.weight"),
        };
        cfg.validate_widths()?;
        Ok(cfg)
    }

    /// The same configuration with another GroupNorm group count (it must divide every width).
    pub fn with_norm_num_groups(mut self, norm_num_groups: usize) -> Self {
        self.norm_num_groups = norm_num_groups;
        self
    }

    /// How much the encoder shrinks each side: `2^(levels - 1)` (Flux: 8).
    pub fn downscale(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Checks what the network needs of these numbers: at least one level and one resnet, and a group count
    /// that divides every GroupNorm's channels.
    pub fn validate(&self) -> Result<()> {
        self.validate_widths()?;
        let groups = self.norm_num_groups;
        if let Some(width) = self.block_out_channels.iter().find(|c| groups == 0 || !c.is_multiple_of(groups)) {
            return Err(Error::Invalid(format!(
                "VAE norm_num_groups {groups} does not divide the width {width} (block_out_channels {:?})",
                self.block_out_channels
            )));
        }
        Ok(())
    }

    /// [`VaeConfig::validate`] without the group count, which [`VaeConfig::infer`] only guesses.
    fn validate_widths(&self) -> Result<()> {
        if self.block_out_channels.is_empty() || self.block_out_channels.contains(&0) {
            return Err(Error::Invalid(format!(
                "VAE block_out_channels {:?} must hold at least one non-zero width",
                self.block_out_channels
            )));
        }
        if self.layers_per_block == 0 || self.in_channels == 0 || self.out_channels == 0 || self.latent_channels == 0 {
            return Err(Error::Invalid(format!(
                "VAE layers_per_block ({}), in/out channels ({}/{}) and latent_channels ({}) must be non-zero",
                self.layers_per_block, self.in_channels, self.out_channels, self.latent_channels
            )));
        }
        Ok(())
    }
}

fn conv_dim(shape: &[usize], dim: usize, name: &str) -> Result<usize> {
    match shape {
        [_, _, _, _] => Ok(shape[dim]),
        _ => Err(Error::Invalid(format!("VAE tensor `{name}` has shape {shape:?}, expected a 4-D conv weight"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_json_of_the_tiny_model_reads_every_field() {
        let json = include_str!("../../../tests/fixtures/tiny/FLUX.1-Kontext-dev-tiny/vae/config.json");
        let cfg = VaeConfig::from_diffusers_json(json).unwrap();
        let expected = VaeConfig { block_out_channels: vec![8, 16, 32, 32], norm_num_groups: 4, ..VaeConfig::flux() };
        assert_eq!(cfg, expected);
        assert_eq!(cfg.downscale(), 8);
    }

    #[test]
    fn diffusers_json_rejects_other_architectures_and_bad_groups() {
        let attn = r#"{"block_out_channels": [8], "down_block_types": ["AttnDownEncoderBlock2D"]}"#;
        assert!(VaeConfig::from_diffusers_json(attn).unwrap_err().to_string().contains("AttnDownEncoderBlock2D"));
        let gelu = r#"{"block_out_channels": [8], "act_fn": "gelu"}"#;
        assert!(VaeConfig::from_diffusers_json(gelu).unwrap_err().to_string().contains("gelu"));
        let groups = r#"{"block_out_channels": [8, 12], "norm_num_groups": 8}"#;
        assert!(VaeConfig::from_diffusers_json(groups).unwrap_err().to_string().contains("12"));
        assert!(VaeConfig::from_diffusers_json("{").is_err());
    }

    #[test]
    fn diffusers_json_defaults_follow_autoencoder_kl() {
        let cfg = VaeConfig::from_diffusers_json(r#"{"block_out_channels": [32, 64]}"#).unwrap();
        assert_eq!((cfg.latent_channels, cfg.layers_per_block, cfg.norm_num_groups), (4, 1, 32));
        assert_eq!((cfg.scaling_factor, cfg.shift_factor), (0.18215, 0.0));
        assert!(cfg.use_quant_conv && cfg.use_post_quant_conv && cfg.mid_block_add_attention);
        assert_eq!(cfg.downscale(), 2);
    }
}
