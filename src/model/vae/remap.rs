//! BFL's `ae.safetensors` (the LDM naming of flux `modules/autoencoder.py`) presented under diffusers'
//! `AutoencoderKL` names, so [`crate::model::vae::Vae::load`] reads both. The mapping is the inverse of diffusers'
//! `convert_ldm_vae_checkpoint`.

use std::collections::HashMap;

use crate::formats::GgmlType;
use crate::formats::weights::{HostTensor, RawBlock, Weights};
use crate::{Error, Result};

/// How a tensor changes between the two namings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transform {
    /// Same shape and values.
    Keep,
    /// A 1×1 conv weight `[out, in, 1, 1]` becomes a Linear weight `[out, in]`; other shapes (biases) are kept.
    Conv1x1ToLinear,
}

/// BFL name prefix → diffusers name prefix; the first matching rule wins and the rest of the name is kept.
/// Placeholders match one dot-separated segment: `{p}` is `encoder` or `decoder`, `{i}` (level) and `{j}`
/// (resnet) are integers copied across, and `{r}` is `levels - 1 - i`: BFL numbers decoder levels finest
/// first, diffusers in the order they run. Names no rule matches (`conv_in`, `conv_out`, `quant_conv`, …)
/// are the same in both namings.
const RULES: &[(&str, &str, Transform)] = &[
    ("{p}.norm_out", "{p}.conv_norm_out", Transform::Keep),
    ("{p}.mid.block_1", "{p}.mid_block.resnets.0", Transform::Keep),
    ("{p}.mid.block_2", "{p}.mid_block.resnets.1", Transform::Keep),
    ("{p}.mid.attn_1.norm", "{p}.mid_block.attentions.0.group_norm", Transform::Keep),
    ("{p}.mid.attn_1.q", "{p}.mid_block.attentions.0.to_q", Transform::Conv1x1ToLinear),
    ("{p}.mid.attn_1.k", "{p}.mid_block.attentions.0.to_k", Transform::Conv1x1ToLinear),
    ("{p}.mid.attn_1.v", "{p}.mid_block.attentions.0.to_v", Transform::Conv1x1ToLinear),
    ("{p}.mid.attn_1.proj_out", "{p}.mid_block.attentions.0.to_out.0", Transform::Conv1x1ToLinear),
    ("encoder.down.{i}.block.{j}.nin_shortcut", "encoder.down_blocks.{i}.resnets.{j}.conv_shortcut", Transform::Keep),
    ("encoder.down.{i}.block.{j}", "encoder.down_blocks.{i}.resnets.{j}", Transform::Keep),
    ("encoder.down.{i}.downsample.conv", "encoder.down_blocks.{i}.downsamplers.0.conv", Transform::Keep),
    ("decoder.up.{i}.block.{j}.nin_shortcut", "decoder.up_blocks.{r}.resnets.{j}.conv_shortcut", Transform::Keep),
    ("decoder.up.{i}.block.{j}", "decoder.up_blocks.{r}.resnets.{j}", Transform::Keep),
    ("decoder.up.{i}.upsample.conv", "decoder.up_blocks.{r}.upsamplers.0.conv", Transform::Keep),
];

/// A VAE checkpoint in BFL/LDM naming, seen through diffusers names.
pub struct LdmVaeWeights<'a> {
    inner: &'a dyn Weights,
    /// `(diffusers name, BFL name, transform)` in the file's order.
    entries: Vec<(String, String, Transform)>,
    /// Diffusers name → position in `entries`.
    index: HashMap<String, usize>,
}

impl<'a> LdmVaeWeights<'a> {
    /// Whether `weights` use BFL/LDM VAE names (`encoder.down.0.block.0…`).
    pub fn is_ldm(weights: &dyn Weights) -> bool {
        weights.contains("encoder.down.0.block.0.conv1.weight")
    }

    /// Wraps `inner`, renaming every tensor. Fails when two tensors would get the same diffusers name (a file
    /// that mixes both namings).
    pub fn new(inner: &'a dyn Weights) -> Result<Self> {
        let ldm_names = inner.names();
        let decoder_levels = ldm_names
            .iter()
            .filter_map(|name| name.strip_prefix("decoder.up.")?.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |last| last + 1);
        let mut entries = Vec::with_capacity(ldm_names.len());
        let mut index = HashMap::with_capacity(ldm_names.len());
        for ldm in ldm_names {
            let (diffusers, transform) = to_diffusers(&ldm, decoder_levels);
            if let Some(&earlier) = index.get(&diffusers) {
                let (_, first, _): &(String, String, Transform) = &entries[earlier];
                return Err(Error::Invalid(format!(
                    "VAE tensors `{first}` and `{ldm}` both stand for `{diffusers}`: the file mixes namings"
                )));
            }
            index.insert(diffusers.clone(), entries.len());
            entries.push((diffusers, ldm, transform));
        }
        Ok(Self { inner, entries, index })
    }

    fn entry(&self, name: &str) -> Option<&(String, String, Transform)> {
        self.index.get(name).map(|&i| &self.entries[i])
    }
}

impl Weights for LdmVaeWeights<'_> {
    fn names(&self) -> Vec<String> {
        self.entries.iter().map(|(diffusers, _, _)| diffusers.clone()).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let (_, ldm, transform) = self.entry(name)?;
        Some(transform.shape(self.inner.shape(ldm)?))
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        let (_, ldm, transform) = self.entry(name).ok_or_else(|| Error::Invalid(format!("missing tensor `{name}`")))?;
        let HostTensor { shape, data } = self.inner.read(ldm)?;
        HostTensor::new(transform.shape(shape), data)
    }

    /// As stored: a reshape keeps the bytes, so the attention's 1×1 convs reach the packed matmuls as Linears.
    fn raw_block(&self, name: &str) -> Option<Result<RawBlock>> {
        let (_, ldm, transform) = self.entry(name)?;
        Some(self.inner.raw_block(ldm)?.map(|(ty, shape, bytes)| (ty, transform.shape(shape), bytes)))
    }

    fn stored_type(&self, name: &str) -> Option<GgmlType> {
        self.inner.stored_type(&self.entry(name)?.1)
    }
}

impl Transform {
    fn shape(self, shape: Vec<usize>) -> Vec<usize> {
        match (self, shape.as_slice()) {
            (Self::Conv1x1ToLinear, &[out, inp, 1, 1]) => vec![out, inp],
            _ => shape,
        }
    }
}

/// The diffusers name of the BFL tensor `ldm`, and how its shape changes.
fn to_diffusers(ldm: &str, decoder_levels: usize) -> (String, Transform) {
    let segments: Vec<&str> = ldm.split('.').collect();
    for &(from, to, transform) in RULES {
        let pattern: Vec<&str> = from.split('.').collect();
        if pattern.len() >= segments.len() {
            continue;
        }
        let mut captures: HashMap<&str, String> = HashMap::new();
        let matched = pattern.iter().zip(&segments).all(|(&want, &seg)| match want {
            "{p}" if seg == "encoder" || seg == "decoder" => captures.insert(want, seg.to_string()).is_none(),
            "{i}" | "{j}" if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) => {
                captures.insert(want, seg.to_string()).is_none()
            }
            _ => want == seg,
        });
        if !matched {
            continue;
        }
        if let Some(level) = captures.get("{i}").and_then(|i| i.parse::<usize>().ok()) {
            captures.insert("{r}", decoder_levels.saturating_sub(1 + level).to_string());
        }
        let head: Vec<String> =
            to.split('.').map(|seg| captures.get(seg).cloned().unwrap_or_else(|| seg.to_string())).collect();
        let tail = &segments[pattern.len()..];
        return (format!("{}.{}", head.join("."), tail.join(".")), transform);
    }
    (ldm.to_string(), Transform::Keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::testing::{FixtureFile, assert_data_far_apart};
    use crate::model::vae::{Vae, VaeConfig};
    use burn::tensor::Tolerance;

    #[test]
    fn ae_safetensors_becomes_the_diffusers_checkpoint_tensor_for_tensor() {
        let ae = FixtureFile::open("bfl_gguf/ae.safetensors");
        let diffusers = FixtureFile::open("FLUX.1-Kontext-dev-tiny/vae/diffusion_pytorch_model.safetensors");
        assert!(LdmVaeWeights::is_ldm(&ae) && !LdmVaeWeights::is_ldm(&diffusers));
        let remapped = LdmVaeWeights::new(&ae).unwrap();
        let mut got = remapped.names();
        let mut want = diffusers.names();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        for name in &want {
            assert_eq!(remapped.shape(name), diffusers.shape(name), "{name}");
            assert_eq!(remapped.read(name).unwrap(), diffusers.read(name).unwrap(), "{name}");
            let stored = |w: &dyn Weights| w.raw_block(name).map(Result::unwrap);
            assert_eq!(stored(&remapped), stored(&diffusers), "{name}: as stored");
            assert_eq!(remapped.stored_type(name), diffusers.stored_type(name), "{name}");
        }
    }

    #[test]
    fn rules_reverse_decoder_levels_and_keep_unmatched_names() {
        let name = |ldm: &str| to_diffusers(ldm, 4).0;
        assert_eq!(name("decoder.up.3.upsample.conv.weight"), "decoder.up_blocks.0.upsamplers.0.conv.weight");
        assert_eq!(name("decoder.up.0.block.2.nin_shortcut.bias"), "decoder.up_blocks.3.resnets.2.conv_shortcut.bias");
        assert_eq!(name("encoder.down.10.block.1.norm2.weight"), "encoder.down_blocks.10.resnets.1.norm2.weight");
        assert_eq!(name("decoder.mid.attn_1.proj_out.weight"), "decoder.mid_block.attentions.0.to_out.0.weight");
        assert_eq!(to_diffusers("encoder.mid.attn_1.q.weight", 4).1, Transform::Conv1x1ToLinear);
        assert_eq!(name("post_quant_conv.weight"), "post_quant_conv.weight");
        assert_eq!(name("encoder.down.x.block.0.conv1.weight"), "encoder.down.x.block.0.conv1.weight");
    }

    #[test]
    fn bfl_ae_encodes_and_decodes_like_the_goldens() {
        let device = crate::device::cpu();
        let ae = FixtureFile::open("bfl_gguf/ae.safetensors");
        let remapped = LdmVaeWeights::new(&ae).unwrap();
        let json = include_str!("../../../tests/fixtures/tiny/FLUX.1-Kontext-dev-tiny/vae/config.json");
        let groups = VaeConfig::from_diffusers_json(json).unwrap().norm_num_groups;
        let cfg = VaeConfig::infer(&remapped).unwrap().with_norm_num_groups(groups);
        assert_eq!(cfg.block_out_channels, [8, 16, 32, 32]);
        let vae = Vae::load(&cfg, &remapped, &device).unwrap();

        let golden = FixtureFile::open("golden/golden_text_vae_internals.safetensors");
        let mean = vae.encode(golden.tensor::<4>("vae_encoder_input_image", &device)).unwrap();
        let moments = golden.tensor::<4>("vae_encoder_moments", &device); // [1, 32, 8, 12]
        mean.into_data().assert_approx_eq::<f32>(&moments.narrow(1, 0, 16).into_data(), Tolerance::absolute(1e-4));
        let latents = golden.tensor::<4>("vae_decoder_input_latents", &device);
        let decoded = vae.decode(latents.clone()).unwrap();
        let expected = golden.tensor::<4>("vae_decoder_output", &device).into_data();
        decoded.into_data().assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-4));
        let mirrored = vae.decode(latents.flip([3])).unwrap().into_data();
        assert_data_far_apart(&mirrored, &expected, 1e-4, "the mirrored latents' decode");
    }
}
