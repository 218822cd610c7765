//! One Kontext edit on already-loaded networks: text → embeddings, references → latent tokens and ids,
//! noise → Euler steps through the DiT → VAE decode. Backend-agnostic; readback only at the end, async.

use std::sync::OnceLock;

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::cache::StepCache;
use super::ids::{self, Position};
use super::rng::NoiseRng;
use super::sampler::{Denoiser, Sampler};
use super::schedule::{self, ShiftConfig};
use crate::formats::weights::Weights;
use crate::kernels::latent;
use crate::model::flux::rope::Rope;
use crate::model::flux::{Flux, Modulations};
use crate::model::vae::Vae;
use crate::model::vae::tiling;
use crate::{Error, Result};

/// Latent channels of the Flux VAE; a packed token holds `4 ×` this.
pub const LATENT_CHANNELS: usize = 16;
/// Pixels per latent pixel.
pub const VAE_SCALE: usize = 8;

/// T5 sequence length, as the reference pipeline (`max_sequence_length` 512).
pub const T5_TOKENS: usize = 512;

/// Text conditioning of one prompt: T5 tokens and the pooled CLIP vector.
#[derive(Debug, Clone)]
pub struct TextConditioning {
    /// `[1, n_txt, context_in_dim]`.
    pub t5: Tensor<3>,
    /// `[1, vec_in_dim]`.
    pub pooled: Tensor<2>,
}

/// Encoded references: packed tokens and their position ids.
#[derive(Debug, Clone)]
pub struct References {
    /// `[1, n_ref, 64]`, every reference's tokens in order; `None` for text-to-image.
    pub tokens: Option<Tensor<3>>,
    /// One `(1, row, col)` per reference token.
    pub ids: Vec<Position>,
}

impl References {
    /// Packs scaled reference latents (`[1, 16, h, w]` each, after `(z − shift)·scale`) and places them.
    pub fn from_latents(latents: Vec<Tensor<4>>) -> Self {
        let sizes: Vec<(usize, usize)> = latents.iter().map(|z| (z.dims()[2], z.dims()[3])).collect();
        let ids = ids::reference_ids(&sizes).concat();
        let packed: Vec<Tensor<3>> = latents.into_iter().map(latent::pack).collect();
        let tokens = if packed.is_empty() { None } else { Some(Tensor::cat(packed, 1)) };
        Self { tokens, ids }
    }

    /// No reference: plain text-to-image.
    pub fn none() -> Self {
        Self { tokens: None, ids: Vec::new() }
    }
}

/// What the DiT is conditioned on in one edit: the text, the references, every token's position and the
/// modulations of every step of the schedule, computed up front.
pub struct Conditioning {
    /// `(σ, modulations)` of each step.
    modulations: Vec<(f32, Modulations)>,
    text: TextConditioning,
    text_ids: Tensor<2>,
    references: Option<Tensor<3>>,
    image_ids: Tensor<2>,
    guidance: f32,
    noise_tokens: usize,
    /// The RoPE angles of `[text, image]` tokens, computed at the first step and reused by the others.
    rope: OnceLock<Rope>,
}

impl Conditioning {
    /// Conditions an output of `latent_height × latent_width` latent pixels, computing with `flux` the
    /// modulations of the steps at `sigmas` (after this, `flux`'s modulation weights may be released).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        flux: &Flux,
        text: TextConditioning,
        references: References,
        latent_height: usize,
        latent_width: usize,
        guidance: f32,
        sigmas: &[f32],
        device: &Device,
    ) -> Result<Self> {
        let modulations = flux.schedule_modulations(sigmas, text.pooled.clone(), Some(guidance))?;
        let modulations = sigmas.iter().copied().zip(modulations).collect();
        Ok(Self::with_modulations(modulations, text, references, latent_height, latent_width, guidance, device))
    }

    /// [`Conditioning::new`] with the `(σ, modulations)` of each step computed beforehand (by
    /// [`Flux::schedule_modulations`]).
    pub fn with_modulations(
        modulations: Vec<(f32, Modulations)>,
        text: TextConditioning,
        references: References,
        latent_height: usize,
        latent_width: usize,
        guidance: f32,
        device: &Device,
    ) -> Self {
        let noise_ids = ids::noise_ids(latent_height, latent_width);
        let noise_tokens = noise_ids.len();
        let image_ids = positions_tensor(&[noise_ids, references.ids].concat(), device);
        let text_ids = positions_tensor(&ids::text_ids(text.t5.dims()[1]), device);
        let references = references.tokens;
        Self { modulations, text, text_ids, references, image_ids, guidance, noise_tokens, rope: OnceLock::new() }
    }
}

/// The DiT as a [`Denoiser`] of the noise tokens under a [`Conditioning`].
pub struct KontextDenoiser<'a> {
    /// The DiT.
    pub flux: &'a Flux,
    /// What it is conditioned on.
    pub conditioning: &'a Conditioning,
    /// The DiT's weights when its blocks stream from them ([`Flux::forward_streaming`]).
    pub streamed: Option<&'a dyn Weights>,
    /// The edit's step cache.
    pub cache: &'a mut StepCache,
}

impl Denoiser for KontextDenoiser<'_> {
    async fn velocity(&mut self, latents: Tensor<3>, sigma: f32) -> Result<Tensor<3>> {
        let c = self.conditioning;
        let img = match &c.references {
            Some(reference) => Tensor::cat(vec![latents, reference.clone()], 1), // [1, n_noise + n_ref, 64]
            None => latents,
        };
        let computed;
        let modulations = match c.modulations.iter().find(|(s, _)| s.to_bits() == sigma.to_bits()) {
            Some((_, modulations)) => modulations,
            None => {
                computed = self.flux.schedule_modulations(&[sigma], c.text.pooled.clone(), Some(c.guidance))?;
                &computed[0]
            }
        };
        let rope = match c.rope.get() {
            Some(rope) => rope,
            None => {
                let rope = self.flux.rope(c.text_ids.clone(), c.image_ids.clone())?;
                c.rope.get_or_init(|| rope)
            }
        };
        let out = self.cache.forward(self.flux, img, c.text.t5.clone(), rope, modulations, self.streamed).await?;
        Ok(out.narrow(1, 0, c.noise_tokens))
    }
}

/// `[n, 3]` f32 ids on `device`.
pub fn positions_tensor(positions: &[Position], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(positions.concat(), [positions.len(), 3]), device)
}

/// Seeded initial noise, drawn as diffusers does in the unpacked layout `[1, 16, h, w]`, then packed.
pub fn initial_noise(seed: u64, latent_height: usize, latent_width: usize, device: &Device) -> Tensor<3> {
    let values = NoiseRng::new(seed).normals(LATENT_CHANNELS * latent_height * latent_width);
    latent::pack(Tensor::from_data(TensorData::new(values, [1, LATENT_CHANNELS, latent_height, latent_width]), device))
}

/// Checks user-given packed noise `[1, tokens, 64]` against the output size.
pub fn check_noise(noise: &Tensor<3>, latent_height: usize, latent_width: usize) -> Result<()> {
    let expected = [1, (latent_height / 2) * (latent_width / 2), LATENT_CHANNELS * 4];
    if noise.dims() != expected {
        return Err(Error::Invalid(format!(
            "the noise has shape {:?}; an output of {}×{} pixels needs {expected:?}",
            noise.dims(),
            latent_width * VAE_SCALE,
            latent_height * VAE_SCALE
        )));
    }
    Ok(())
}

/// A sampler on Flux's shifted schedule for this output size.
pub fn sampler(initial_noise: Tensor<3>, steps: usize) -> Sampler {
    let noise_tokens = initial_noise.dims()[1];
    Sampler::new(initial_noise, schedule::sigmas(steps, noise_tokens, ShiftConfig::flux()))
}

/// Token ids as the `[1, n]` Int tensor the text encoders take.
pub fn token_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let n = ids.len();
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(ids, [1, n]), device)
}

/// A reference image `[1, 3, h, w]` in `[-1, 1]` → its scaled latent `[1, 16, h/8, w/8]` (VAE mean, no sampling).
pub fn encode_reference(vae: &Vae, image: Tensor<4>) -> Result<Tensor<4>> {
    Ok(vae.scale_latents(vae.encode(image)?))
}

/// Final packed latents → the decoded image `[1, 3, 8h, 8w]` in about `[-1, 1]`; decoded in tiles when a
/// whole decode would need a buffer beyond the device's binding limit.
pub fn decode_latents(vae: &Vae, latents: Tensor<3>, latent_height: usize, latent_width: usize) -> Result<Tensor<4>> {
    let limit = crate::device::max_binding_bytes(&latents.device());
    decode_latents_within(vae, latents, latent_height, latent_width, limit)
}

/// [`decode_latents`] under a given binding limit in bytes.
fn decode_latents_within(
    vae: &Vae,
    latents: Tensor<3>,
    latent_height: usize,
    latent_width: usize,
    max_binding_bytes: u64,
) -> Result<Tensor<4>> {
    let z = vae.unscale_latents(latent::unpack(latents, latent_height, latent_width));
    tiling::decode_within(vae, z, max_binding_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::testing::{FixtureFile, assert_data_far_apart, fixture};
    use crate::model::FluxConfig;
    use crate::model::vae::config::VaeConfig;
    use crate::pipeline::image;
    use burn::tensor::Tolerance;

    fn networks(device: &Device) -> (Flux, Vae) {
        let flux = Flux::load(&FluxConfig::tiny(), &FixtureFile::open("bfl_gguf/transformer_bfl.safetensors"), device)
            .unwrap();
        let config = std::fs::read_to_string(fixture("FLUX.1-Kontext-dev-tiny/vae/config.json")).unwrap();
        let vae_weights = FixtureFile::open("FLUX.1-Kontext-dev-tiny/vae/diffusion_pytorch_model.safetensors");
        let vae = Vae::load(&VaeConfig::from_diffusers_json(&config).unwrap(), &vae_weights, device).unwrap();
        (flux, vae)
    }

    fn reference_latent(vae: &Vae, png: &str, device: &Device) -> Tensor<4> {
        let pixels = image::decode(&std::fs::read(fixture(png)).unwrap()).unwrap();
        encode_reference(vae, image::to_tensor(&pixels, device)).unwrap()
    }

    fn close<const D: usize>(got: Tensor<D>, golden: &FixtureFile, key: &str, device: &Device) {
        got.into_data()
            .assert_approx_eq::<f32>(&golden.tensor::<D>(key, device).into_data(), Tolerance::absolute(1e-4));
    }

    /// Runs the 4 golden steps (text embeddings taken from the golden) and checks every step and the image.
    fn check_denoising(
        golden: &FixtureFile,
        output_png: &str,
        references: Vec<Tensor<4>>,
        flux: &Flux,
        vae: &Vae,
        device: &Device,
    ) {
        let text = TextConditioning {
            t5: golden.tensor("t5_prompt_embeds", device),
            pooled: golden.tensor("clip_pooled", device),
        };
        let mut sampler = sampler(golden.tensor("latents_init_packed", device), 4);
        let conditioning = Conditioning::new(
            flux,
            text,
            References::from_latents(references),
            10,
            8,
            2.5,
            sampler.step_sigmas(),
            device,
        )
        .unwrap();
        let mut cache = StepCache::none();
        let mut denoiser = KontextDenoiser { flux, conditioning: &conditioning, streamed: None, cache: &mut cache };
        for step in 0..4 {
            futures_lite::future::block_on(sampler.step(&mut denoiser)).unwrap();
            close(sampler.latents().clone(), golden, &format!("latents_after_step_{step}"), device);
            // Negative control: the latents one step before.
            let before =
                if step == 0 { "latents_init_packed".into() } else { format!("latents_after_step_{}", step - 1) };
            let before = golden.tensor::<3>(&before, device).into_data();
            assert_data_far_apart(&sampler.latents().clone().into_data(), &before, 1e-4, &format!("step {step}"));
        }
        let decoded = decode_latents(vae, sampler.into_latents(), 10, 8).unwrap();
        close(decoded.clone(), golden, "decoded_raw", device);
        let values = decoded.into_data().try_into_vec_as::<f32>().unwrap();
        let got = image::from_planar(&values, 64, 80).unwrap();
        // The golden PNG holds `image_u8`.
        let expected = image::decode(&std::fs::read(fixture(output_png)).unwrap()).unwrap();
        let worst = got.as_raw().iter().zip(expected.as_raw()).map(|(&g, &e)| g.abs_diff(e)).max().unwrap();
        assert!(worst <= 1, "image differs by {worst} LSB");
    }

    #[test]
    fn one_reference_edit_matches_every_golden_step_and_the_image() {
        let device = crate::device::cpu();
        let (flux, vae) = networks(&device);
        let golden = FixtureFile::open("golden/golden_run.safetensors");
        let reference = reference_latent(&vae, "golden/reference_input.png", &device);
        close(reference.clone(), &golden, "image_latents_unpacked_scaled", &device);
        check_denoising(&golden, "golden/output.png", vec![reference], &flux, &vae, &device);
    }

    /// 24×40 latents with a 1 MiB limit: a whole decode needs 16 channels × 192 × 320 px × 4 B = 3.75 MiB,
    /// a 16-px tile 16 × 128² × 4 = 1 MiB, a 24-px tile 16 × 192² × 4 = 2.25 MiB: tile 16, overlap 4, measured
    /// against the whole decode at 28.36 dB (see `model::vae::tiling` for why the random tiny VAE tiles poorly).
    #[test]
    fn decoding_tiles_when_the_whole_latent_exceeds_the_binding_limit() {
        let device = crate::device::cpu();
        let (_, vae) = networks(&device);
        let noise = initial_noise(3, 24, 40, &device);
        let limit = 1 << 20;
        let cfg = vae.config();
        assert_eq!(tiling::decoder_peak_bytes(&cfg, 24, 40), 3_932_160);
        assert_eq!(
            tiling::DecodeTiling::choose(&cfg, 24, 40, limit).unwrap(),
            tiling::DecodeTiling::Tiled { tile: 16, overlap: 4 }
        );
        let tiled = decode_latents_within(&vae, noise.clone(), 24, 40, limit).unwrap();
        let whole = decode_latents(&vae, noise.clone(), 24, 40).unwrap();
        let z = vae.unscale_latents(latent::unpack(noise, 24, 40));
        tiled.clone().into_data().assert_approx_eq::<f32>(
            &tiling::decode_tiled(&vae, z.clone(), 16, 4).unwrap().into_data(),
            Tolerance::absolute(1e-6),
        );
        whole
            .clone()
            .into_data()
            .assert_approx_eq::<f32>(&vae.decode(z).unwrap().into_data(), Tolerance::absolute(1e-6));
        let (tiled, whole) =
            (tiled.into_data().try_into_vec_as::<f32>().unwrap(), whole.into_data().try_into_vec_as::<f32>().unwrap());
        let mse = tiled.iter().zip(&whole).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / tiled.len() as f64;
        let psnr = 10.0 * (4.0 / mse).log10();
        println!("decode_latents under 1 MiB: PSNR {psnr:.2} dB against the whole decode");
        assert!(psnr >= 25.0, "PSNR {psnr:.2} dB");
    }

    #[test]
    fn two_references_are_placed_with_the_offset_rule_and_match_the_golden() {
        let device = crate::device::cpu();
        let (flux, vae) = networks(&device);
        let golden = FixtureFile::open("golden/golden_multiref.safetensors");
        let references = vec![
            reference_latent(&vae, "golden/multiref_ref1.png", &device),
            reference_latent(&vae, "golden/multiref_ref2.png", &device),
        ];
        let ids = References::from_latents(references.clone()).ids;
        let golden_ids = golden.tensor::<2>("img_ids_full", &device).into_data().try_into_vec_as::<f32>().unwrap();
        assert_eq!(ids.concat(), golden_ids[20 * 3..].to_vec());
        check_denoising(&golden, "golden/output_multiref.png", references, &flux, &vae, &device);
    }
}
