//! The Flux VAE: diffusers' `AutoencoderKL` (encoder → mean of the latent distribution, decoder → image),
//! with field names equal to the diffusers checkpoint keys. BFL `ae.safetensors` loads through
//! [`crate::model::vae::remap::LdmVaeWeights`].
//!
//! Every forward is a pure function of its input (no caches, no global state), so the decoder can later be run
//! tile by tile.

pub mod config;
pub mod remap;
pub mod tiling;

use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::module::conv2d;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Device, Tensor};

use crate::formats::weights::Weights;
use crate::model::layers::Projection;
use crate::model::scope::Scope;
pub use crate::model::vae::config::VaeConfig;
use crate::{Error, Result};

/// GroupNorm epsilon of every norm in the VAE (diffusers `resnet_eps`, BFL `eps=1e-6`).
const NORM_EPS: f64 = 1e-6;

/// A 2-D convolution with bias, zero padding on every side.
#[derive(Module, Debug)]
pub struct Conv2d {
    /// `[out, in, k, k]`.
    pub weight: Param<Tensor<4>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
    /// Step between windows.
    pub stride: usize,
    /// Zeros added on each side of both spatial axes.
    pub padding: usize,
}

impl Conv2d {
    /// `[b, in, h, w] → [b, out, h', w']`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let options = ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
        conv2d(x, self.weight.val(), Some(self.bias.val()), options)
    }
}

/// GroupNorm with biased variance, epsilon 1e-6 and a per-channel affine.
#[derive(Module, Debug)]
pub struct GroupNorm {
    /// Per-channel scale `[c]`.
    pub weight: Param<Tensor<1>>,
    /// Per-channel offset `[c]`.
    pub bias: Param<Tensor<1>>,
    /// Number of channel groups normalised together.
    pub num_groups: usize,
}

impl GroupNorm {
    /// `[b, c, h, w] → [b, c, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let groups = self.num_groups;
        let grouped = x.reshape([b, groups, (c / groups) * h * w]); // [b, g, c/g·h·w]
        let (var, mean) = grouped.clone().var_mean_bias(2);
        let normed = grouped.sub(mean).div(var.add_scalar(NORM_EPS).sqrt()).reshape([b, c, h, w]);
        normed * self.weight.val().reshape([1, c, 1, 1]) + self.bias.val().reshape([1, c, 1, 1])
    }
}

/// diffusers `ResnetBlock2D` (BFL `ResnetBlock`): two norm–SiLU–conv stages plus a (1×1-projected) skip.
#[derive(Module, Debug)]
pub struct ResnetBlock {
    /// Norm before the first conv.
    pub norm1: GroupNorm,
    /// First 3×3 conv, in → out channels.
    pub conv1: Conv2d,
    /// Norm before the second conv.
    pub norm2: GroupNorm,
    /// Second 3×3 conv, out → out channels.
    pub conv2: Conv2d,
    /// 1×1 projection of the skip, present when in ≠ out channels (BFL `nin_shortcut`).
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    /// `[b, in, h, w] → [b, out, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let skip = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        skip + h
    }
}

/// The mid-block self-attention: one head over all `h·w` positions, scale `1/sqrt(c)`, residual.
#[derive(Module, Debug)]
pub struct Attention {
    /// Norm of the input (BFL `norm`).
    pub group_norm: GroupNorm,
    /// Query projection (BFL `q`, a 1×1 conv).
    pub to_q: Projection,
    /// Key projection (BFL `k`).
    pub to_k: Projection,
    /// Value projection (BFL `v`).
    pub to_v: Projection,
    /// Output projection, diffusers `to_out.0` (BFL `proj_out`).
    pub to_out: Projection,
}

impl Attention {
    /// `[b, c, h, w] → [b, c, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let tokens = self.group_norm.forward(x.clone()).reshape([b, c, h * w]).swap_dims(1, 2); // [b, hw, c]
        let heads = |proj: &Projection| proj.forward(tokens.clone()).unsqueeze_dim::<4>(1); // [b, 1, hw, c]
        let attended = crate::kernels::attention::attention(heads(&self.to_q), heads(&self.to_k), heads(&self.to_v));
        let out = self.to_out.forward(attended.reshape([b, h * w, c])); // [b, hw, c]
        out.swap_dims(1, 2).reshape([b, c, h, w]) + x
    }
}

/// diffusers `UNetMidBlock2D` of the VAE: resnet, optional attention, resnet.
#[derive(Module, Debug)]
pub struct MidBlock {
    /// The two resnets (BFL `block_1`, `block_2`).
    pub resnets: Vec<ResnetBlock>,
    /// Zero or one attention (BFL `attn_1`).
    pub attentions: Vec<Attention>,
}

impl MidBlock {
    /// `[b, c, h, w] → [b, c, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x);
        if let Some(attention) = self.attentions.first() {
            x = attention.forward(x);
        }
        self.resnets[1].forward(x)
    }
}

/// diffusers `Downsample2D` of the VAE: pad right and bottom by one, then a 3×3 stride-2 conv without padding.
#[derive(Module, Debug)]
pub struct Downsample {
    /// The 3×3 stride-2 conv.
    pub conv: Conv2d,
}

impl Downsample {
    /// `[b, c, h, w] → [b, c, ⌈h/2⌉, ⌈w/2⌉]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward(x.pad((0, 1, 0, 1), PadMode::Constant(0.0)))
    }
}

/// diffusers `Upsample2D`: nearest-neighbour ×2, then a 3×3 conv.
#[derive(Module, Debug)]
pub struct Upsample {
    /// The 3×3 conv after the resize.
    pub conv: Conv2d,
}

impl Upsample {
    /// `[b, c, h, w] → [b, c, 2h, 2w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let doubled = x
            .reshape([b, c, h, 1, w, 1])
            .repeat_dim(3, 2)
            .repeat_dim(5, 2) // [b, c, h, 2, w, 2]
            .reshape([b, c, 2 * h, 2 * w]);
        self.conv.forward(doubled)
    }
}

/// One encoder level (`DownEncoderBlock2D`).
#[derive(Module, Debug)]
pub struct DownBlock {
    /// `layers_per_block` resnets (BFL `block`).
    pub resnets: Vec<ResnetBlock>,
    /// The halving conv, on every level but the last (BFL `downsample`).
    pub downsamplers: Option<Downsample>,
}

/// One decoder level (`UpDecoderBlock2D`).
#[derive(Module, Debug)]
pub struct UpBlock {
    /// `layers_per_block + 1` resnets (BFL `block`).
    pub resnets: Vec<ResnetBlock>,
    /// The doubling conv, on every level but the last (BFL `upsample`).
    pub upsamplers: Option<Upsample>,
}

/// Image → latent moments (mean ‖ log-variance).
#[derive(Module, Debug)]
pub struct Encoder {
    /// 3×3 conv from the image channels to the first width.
    pub conv_in: Conv2d,
    /// Levels, finest first (BFL `down`).
    pub down_blocks: Vec<DownBlock>,
    /// Resnet–attention–resnet at the coarsest level (BFL `mid`).
    pub mid_block: MidBlock,
    /// Final norm (BFL `norm_out`).
    pub conv_norm_out: GroupNorm,
    /// 3×3 conv to `2 · latent_channels` moments.
    pub conv_out: Conv2d,
}

impl Encoder {
    /// `[b, in, H, W] → [b, 2·latent, H/f, W/f]`.
    pub fn forward(&self, image: Tensor<4>) -> Tensor<4> {
        let mut x = self.conv_in.forward(image);
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x);
            }
            if let Some(down) = &block.downsamplers {
                x = down.forward(x);
            }
        }
        let x = self.mid_block.forward(x);
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}

/// Latent → image.
#[derive(Module, Debug)]
pub struct Decoder {
    /// 3×3 conv from the latent to the coarsest width.
    pub conv_in: Conv2d,
    /// Resnet–attention–resnet at the coarsest level (BFL `mid`).
    pub mid_block: MidBlock,
    /// Levels, coarsest first (BFL `up`, stored in reverse: `up_blocks.i` = `up.{n-1-i}`).
    pub up_blocks: Vec<UpBlock>,
    /// Final norm (BFL `norm_out`).
    pub conv_norm_out: GroupNorm,
    /// 3×3 conv to the image channels.
    pub conv_out: Conv2d,
}

impl Decoder {
    /// `[b, latent, h, w] → [b, out, h·f, w·f]`, unclamped.
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let mut x = self.mid_block.forward(self.conv_in.forward(z));
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x);
            }
            if let Some(up) = &block.upsamplers {
                x = up.forward(x);
            }
        }
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}

/// The Flux autoencoder.
#[derive(Module, Debug)]
pub struct Vae {
    /// Image → moments.
    pub encoder: Encoder,
    /// Latent → image.
    pub decoder: Decoder,
    /// Optional 1×1 conv on the moments (absent in Flux).
    pub quant_conv: Option<Conv2d>,
    /// Optional 1×1 conv on the latent before decoding (absent in Flux).
    pub post_quant_conv: Option<Conv2d>,
    /// Image channels the encoder takes.
    pub in_channels: usize,
    /// Latent channels the decoder takes.
    pub latent_channels: usize,
    /// Side shrink of the encoder, `2^(levels - 1)`.
    pub downscale: usize,
    /// Multiplier of the shifted latent (`VaeConfig::scaling_factor`).
    pub scaling_factor: f64,
    /// Offset of the latent (`VaeConfig::shift_factor`).
    pub shift_factor: f64,
}

impl Vae {
    /// Builds the VAE from diffusers-named weights, checking every shape against `cfg`. `quant_conv` /
    /// `post_quant_conv` are loaded when the config asks for them or the weights hold them.
    pub fn load(cfg: &VaeConfig, weights: &dyn Weights, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let load = Loader { groups: cfg.norm_num_groups };
        let vb = Scope::new(weights, device);
        let (encoder_vb, decoder_vb) = (vb.pp("encoder"), vb.pp("decoder"));
        let widths = &cfg.block_out_channels;
        let levels = widths.len();
        let last = widths[levels - 1];
        let latent = cfg.latent_channels;

        let mut down_blocks = Vec::with_capacity(levels);
        let mut prev = widths[0];
        for (i, &width) in widths.iter().enumerate() {
            let block = encoder_vb.pp("down_blocks").pp(i);
            let resnets = (0..cfg.layers_per_block)
                .map(|j| load.resnet(block.pp("resnets").pp(j), if j == 0 { prev } else { width }, width))
                .collect::<Result<_>>()?;
            let downsamplers = (i + 1 < levels)
                .then(|| load.conv(block.pp("downsamplers.0.conv"), width, width, 3, 2, 0))
                .transpose()?
                .map(|conv| Downsample { conv });
            down_blocks.push(DownBlock { resnets, downsamplers });
            prev = width;
        }
        let encoder = Encoder {
            conv_in: load.conv(encoder_vb.pp("conv_in"), cfg.in_channels, widths[0], 3, 1, 1)?,
            down_blocks,
            mid_block: load.mid_block(encoder_vb.pp("mid_block"), last, cfg.mid_block_add_attention)?,
            conv_norm_out: load.group_norm(encoder_vb.pp("conv_norm_out"), last)?,
            conv_out: load.conv(encoder_vb.pp("conv_out"), last, 2 * latent, 3, 1, 1)?,
        };

        let mut up_blocks = Vec::with_capacity(levels);
        let mut prev = last;
        for (i, &width) in widths.iter().rev().enumerate() {
            let block = decoder_vb.pp("up_blocks").pp(i);
            let resnets = (0..=cfg.layers_per_block)
                .map(|j| load.resnet(block.pp("resnets").pp(j), if j == 0 { prev } else { width }, width))
                .collect::<Result<_>>()?;
            let upsamplers = (i + 1 < levels)
                .then(|| load.conv(block.pp("upsamplers.0.conv"), width, width, 3, 1, 1))
                .transpose()?
                .map(|conv| Upsample { conv });
            up_blocks.push(UpBlock { resnets, upsamplers });
            prev = width;
        }
        let decoder = Decoder {
            conv_in: load.conv(decoder_vb.pp("conv_in"), latent, last, 3, 1, 1)?,
            mid_block: load.mid_block(decoder_vb.pp("mid_block"), last, cfg.mid_block_add_attention)?,
            up_blocks,
            conv_norm_out: load.group_norm(decoder_vb.pp("conv_norm_out"), widths[0])?,
            conv_out: load.conv(decoder_vb.pp("conv_out"), widths[0], cfg.out_channels, 3, 1, 1)?,
        };

        let optional_1x1 = |name: &str, wanted: bool, channels: usize| {
            (wanted || vb.pp(name).contains("weight"))
                .then(|| load.conv(vb.pp(name), channels, channels, 1, 1, 0))
                .transpose()
        };
        Ok(Self {
            encoder,
            decoder,
            quant_conv: optional_1x1("quant_conv", cfg.use_quant_conv, 2 * latent)?,
            post_quant_conv: optional_1x1("post_quant_conv", cfg.use_post_quant_conv, latent)?,
            in_channels: cfg.in_channels,
            latent_channels: latent,
            downscale: cfg.downscale(),
            scaling_factor: cfg.scaling_factor,
            shift_factor: cfg.shift_factor,
        })
    }

    /// The mean of the latent distribution of `image` (`[b, in, H, W]`, values in [-1, 1]; H and W multiples
    /// of the downscale, 8 for Flux): `[b, latent, H/8, W/8]`. No sampling, as Kontext uses it.
    pub fn encode(&self, image: Tensor<4>) -> Result<Tensor<4>> {
        let [b, c, h, w] = image.dims();
        let f = self.downscale;
        if c != self.in_channels || h == 0 || w == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
            return Err(Error::Invalid(format!(
                "VAE encode takes [batch, {}, H, W] with H and W positive multiples of {f}; got {:?}",
                self.in_channels,
                [b, c, h, w]
            )));
        }
        let mut moments = self.encoder.forward(image);
        if let Some(conv) = &self.quant_conv {
            moments = conv.forward(moments);
        }
        Ok(moments.narrow(1, 0, self.latent_channels)) // [b, latent, H/f, W/f]
    }

    /// Decodes `z` (`[b, latent, h, w]`, unscaled: see [`Vae::unscale_latents`]) to `[b, out, 8h, 8w]`,
    /// roughly in [-1, 1] and not clamped.
    pub fn decode(&self, z: Tensor<4>) -> Result<Tensor<4>> {
        let [b, c, h, w] = z.dims();
        if c != self.latent_channels || h == 0 || w == 0 {
            return Err(Error::Invalid(format!(
                "VAE decode takes latents [batch, {}, h, w]; got {:?}",
                self.latent_channels,
                [b, c, h, w]
            )));
        }
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z),
            None => z,
        };
        Ok(self.decoder.forward(z))
    }

    /// The latent the transformer sees: `(z − shift) · scale`.
    pub fn scale_latents(&self, z: Tensor<4>) -> Tensor<4> {
        z.sub_scalar(self.shift_factor).mul_scalar(self.scaling_factor)
    }

    /// The inverse of [`Vae::scale_latents`]: `z / scale + shift`.
    pub fn unscale_latents(&self, z: Tensor<4>) -> Tensor<4> {
        z.div_scalar(self.scaling_factor).add_scalar(self.shift_factor)
    }

    /// The configuration this VAE was loaded with, read back from its modules' shapes.
    pub fn config(&self) -> VaeConfig {
        let width = |resnet: &ResnetBlock| resnet.conv1.weight.val().dims()[0];
        VaeConfig {
            in_channels: self.in_channels,
            out_channels: self.decoder.conv_out.weight.val().dims()[0],
            latent_channels: self.latent_channels,
            block_out_channels: self.encoder.down_blocks.iter().map(|block| width(&block.resnets[0])).collect(),
            layers_per_block: self.encoder.down_blocks[0].resnets.len(),
            norm_num_groups: self.decoder.conv_norm_out.num_groups,
            scaling_factor: self.scaling_factor,
            shift_factor: self.shift_factor,
            mid_block_add_attention: !self.decoder.mid_block.attentions.is_empty(),
            use_quant_conv: self.quant_conv.is_some(),
            use_post_quant_conv: self.post_quant_conv.is_some(),
        }
    }
}

/// Reads named tensors into modules, checking shapes before reading data.
struct Loader {
    groups: usize,
}

impl Loader {
    fn conv(
        &self,
        vb: Scope,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Conv2d> {
        Ok(Conv2d {
            weight: Param::from_tensor(vb.tensor("weight", [c_out, c_in, kernel, kernel])?),
            bias: Param::from_tensor(vb.tensor("bias", [c_out])?),
            stride,
            padding,
        })
    }

    fn group_norm(&self, vb: Scope, channels: usize) -> Result<GroupNorm> {
        if !channels.is_multiple_of(self.groups) {
            return Err(Error::Invalid(format!(
                "VAE `{}`: {channels} channels do not split into {} groups",
                vb.prefix(),
                self.groups
            )));
        }
        Ok(GroupNorm {
            weight: Param::from_tensor(vb.tensor("weight", [channels])?),
            bias: Param::from_tensor(vb.tensor("bias", [channels])?),
            num_groups: self.groups,
        })
    }

    fn resnet(&self, vb: Scope, c_in: usize, c_out: usize) -> Result<ResnetBlock> {
        Ok(ResnetBlock {
            norm1: self.group_norm(vb.pp("norm1"), c_in)?,
            conv1: self.conv(vb.pp("conv1"), c_in, c_out, 3, 1, 1)?,
            norm2: self.group_norm(vb.pp("norm2"), c_out)?,
            conv2: self.conv(vb.pp("conv2"), c_out, c_out, 3, 1, 1)?,
            conv_shortcut: (c_in != c_out)
                .then(|| self.conv(vb.pp("conv_shortcut"), c_in, c_out, 1, 1, 0))
                .transpose()?,
        })
    }

    fn mid_block(&self, vb: Scope, channels: usize, with_attention: bool) -> Result<MidBlock> {
        let attentions = if with_attention {
            let attn = vb.pp("attentions").pp(0);
            vec![Attention {
                group_norm: self.group_norm(attn.pp("group_norm"), channels)?,
                to_q: attn.pp("to_q").linear(channels, channels, true)?,
                to_k: attn.pp("to_k").linear(channels, channels, true)?,
                to_v: attn.pp("to_v").linear(channels, channels, true)?,
                to_out: attn.pp("to_out").pp(0).linear(channels, channels, true)?,
            }]
        } else {
            Vec::new()
        };
        let resnets = vb.pp("resnets");
        Ok(MidBlock {
            resnets: vec![
                self.resnet(resnets.pp(0), channels, channels)?,
                self.resnet(resnets.pp(1), channels, channels)?,
            ],
            attentions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::testing::{FixtureFile, assert_data_far_apart, tiny_vae, tiny_vae_config as tiny_config};
    use burn::tensor::Tolerance;

    fn internals() -> FixtureFile {
        FixtureFile::open("golden/golden_text_vae_internals.safetensors")
    }

    #[test]
    fn encode_returns_the_mean_half_of_the_golden_moments() {
        let device = crate::device::cpu();
        let golden = internals();
        let image = golden.tensor::<4>("vae_encoder_input_image", &device);
        let moments = golden.tensor::<4>("vae_encoder_moments", &device); // [1, 32, 8, 12]
        let vae = tiny_vae(&device);
        let mean = vae.encode(image.clone()).unwrap();
        assert_eq!(mean.dims(), [1, 16, 8, 12]);
        let want = moments.narrow(1, 0, 16).into_data();
        mean.into_data().assert_approx_eq::<f32>(&want, Tolerance::absolute(1e-4));
        let mirrored = vae.encode(image.flip([3])).unwrap().into_data();
        assert_data_far_apart(&mirrored, &want, 1e-4, "the mirrored image's mean");
    }

    #[test]
    fn decode_matches_the_golden_decoder_output() {
        let device = crate::device::cpu();
        let golden = internals();
        let z = golden.tensor::<4>("vae_decoder_input_latents", &device);
        let expected = golden.tensor::<4>("vae_decoder_output", &device); // [1, 3, 80, 64]
        let vae = tiny_vae(&device);
        let decoded = vae.decode(z.clone()).unwrap();
        let expected = expected.into_data();
        decoded.into_data().assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-4));
        let mirrored = vae.decode(z.flip([3])).unwrap().into_data();
        assert_data_far_apart(&mirrored, &expected, 1e-4, "the mirrored latents' decode");
    }

    #[test]
    fn scaled_mean_is_the_golden_reference_latent_and_unscale_inverts_it() {
        let device = crate::device::cpu();
        let run = FixtureFile::open("golden/golden_run.safetensors");
        let image = run.tensor::<4>("reference_image_preprocessed", &device);
        let expected = run.tensor::<4>("image_latents_unpacked_scaled", &device); // [1, 16, 8, 12]
        let vae = tiny_vae(&device);
        let mean = vae.encode(image).unwrap();
        let scaled = vae.scale_latents(mean.clone());
        scaled.clone().into_data().assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-4));
        vae.unscale_latents(scaled).into_data().assert_approx_eq::<f32>(&mean.into_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    fn config_reads_back_the_loaded_configuration() {
        let device = crate::device::cpu();
        assert_eq!(tiny_vae(&device).config(), tiny_config());
    }

    #[test]
    fn inferred_config_equals_config_json_once_groups_are_given() {
        let weights = FixtureFile::open("FLUX.1-Kontext-dev-tiny/vae/diffusion_pytorch_model.safetensors");
        let inferred = VaeConfig::infer(&weights).unwrap();
        assert_eq!(inferred.norm_num_groups, 32);
        assert_eq!(inferred.with_norm_num_groups(4), tiny_config());
    }

    #[test]
    fn bad_inputs_and_mismatched_configs_are_errors() {
        let device = crate::device::cpu();
        let vae = tiny_vae(&device);
        let gray = Tensor::<4>::zeros([1, 1, 64, 96], &device);
        assert!(vae.encode(gray).unwrap_err().to_string().contains("[batch, 3, H, W]"));
        let odd = Tensor::<4>::zeros([1, 3, 60, 96], &device);
        assert!(vae.encode(odd).is_err());
        assert!(vae.decode(Tensor::<4>::zeros([1, 4, 8, 8], &device)).is_err());

        let weights = FixtureFile::open("FLUX.1-Kontext-dev-tiny/vae/diffusion_pytorch_model.safetensors");
        let wider = VaeConfig { block_out_channels: vec![8, 16, 32, 64], ..tiny_config() };
        let err = Vae::load(&wider, &weights, &device).unwrap_err().to_string();
        assert!(err.contains("encoder.down_blocks.3.resnets.0.conv1.weight"), "{err}");
        let quant = VaeConfig { use_quant_conv: true, ..tiny_config() };
        assert!(Vae::load(&quant, &weights, &device).unwrap_err().to_string().contains("quant_conv.weight"));
    }
}
