//! A whole edit as the user asks for it — prompt, references, size, steps, guidance, seed — prepared,
//! stepped and finished in separate calls so that a CLI or a browser worker can report and cancel.

use burn::tensor::{Device, Tensor};
use image::RgbImage;

use super::cache::{CacheConfig, StepCache};
use super::image as images;
use super::kontext::{self, Conditioning, KontextDenoiser, References, VAE_SCALE};
use super::sampler::Sampler;
use super::size::{self, Resize};
use crate::device::read_f32;
use crate::pipeline::loader::KontextModel;
use crate::pipeline::plan::{DeviceLimits, MemoryPlan, PlanInputs, PlanPhase, Residency};
use crate::{Error, Result};

/// What the user asks for.
#[derive(Debug, Clone)]
pub struct EditRequest {
    /// The instruction ("make the sky purple") or, without references, the description of the image.
    pub prompt: String,
    /// Reference images, in order; empty for text-to-image.
    pub references: Vec<RgbImage>,
    /// Output `(width, height)`; `None` follows the first reference's aspect at `max_area`.
    pub size: Option<(usize, usize)>,
    /// Pixel area of the output (when no size is given) and of the reference buckets.
    pub max_area: usize,
    /// How references are resized.
    pub resize: Resize,
    /// Denoising steps.
    pub steps: usize,
    /// Distilled guidance (2.5 recommended for Kontext).
    pub guidance: f32,
    /// Seed of the initial noise.
    pub seed: u64,
    /// The step cache.
    pub cache: CacheConfig,
}

/// A `(width, height)` in pixels.
pub type PixelSize = (usize, usize);

impl EditRequest {
    /// The output size and each reference's size as it is encoded.
    pub fn sizes(&self) -> Result<(PixelSize, Vec<PixelSize>)> {
        let first = self.references.first().map(|r| (r.width() as usize, r.height() as usize));
        let output = size::output_size(self.size, first, self.max_area)?;
        let references = self
            .references
            .iter()
            .map(|r| size::reference_size(r.width() as usize, r.height() as usize, self.resize, self.max_area))
            .collect::<Result<_>>()?;
        Ok((output, references))
    }
}

/// Plans `request` on `model` within `limits`: under `residency` when given, else the most resident choice that
/// fits `limits.budget`. An edit that cannot fit is refused ([`Error::OverBudget`]) before anything is
/// uploaded, with what would fit.
pub fn plan_edit(
    model: &KontextModel,
    request: &EditRequest,
    limits: DeviceLimits,
    residency: Option<Residency>,
) -> Result<MemoryPlan> {
    let (output, references) = request.sizes()?;
    let inputs = PlanInputs {
        residency,
        cached_residuals: request.cache.residuals(),
        ..model.plan_inputs(output, references, limits)
    };
    let plan = MemoryPlan::new(&inputs)?;
    if let (Some(budget), Some(false)) = (limits.budget, plan.fits_budget) {
        return Err(Error::OverBudget {
            output,
            needed: plan.peak_bytes,
            budget,
            phase: plan.busiest_phase().map_or("the edit", |p| p.phase.label()).to_string(),
            residency: plan.residency.describe(),
            advice: MemoryPlan::what_would_fit(&PlanInputs { residency: None, ..inputs })?,
        });
    }
    Ok(plan)
}

/// The stages of an edit, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Running T5 and CLIP.
    EncodingText,
    /// Running the VAE encoder over the references.
    EncodingReferences,
    /// Denoising step `step` (1-based) of `steps`.
    Denoising {
        /// Steps done, this one included.
        step: usize,
        /// Total steps.
        steps: usize,
    },
    /// Running the VAE decoder.
    Decoding,
}

/// An edit in progress.
pub struct Edit<'m> {
    model: &'m mut KontextModel,
    conditioning: Conditioning,
    sampler: Sampler,
    cache: StepCache,
    device: Device,
    width: usize,
    height: usize,
}

/// The finished edit.
pub struct EditResult {
    /// The image.
    pub image: RgbImage,
    /// Final packed latents `[1, tokens, 64]`.
    pub latents: Tensor<3>,
    /// The decoded image `[1, 3, h, w]` in `[0, 1]`, planar, as read back.
    pub pixels: Vec<f32>,
}

impl<'m> Edit<'m> {
    /// Encodes the prompt and references, computes every step's modulations and draws the initial noise (or
    /// takes `noise`, packed `[1, n, 64]`). Parts of `model` are uploaded and released per `model.residency`.
    pub fn prepare(
        model: &'m mut KontextModel,
        request: &EditRequest,
        noise: Option<Tensor<3>>,
        device: &Device,
    ) -> Result<Self> {
        Self::prepare_reporting(model, request, noise, device, &mut |_| {})
    }

    /// [`Edit::prepare`], telling `report` which phase starts.
    pub fn prepare_reporting(
        model: &'m mut KontextModel,
        request: &EditRequest,
        noise: Option<Tensor<3>>,
        device: &Device,
        report: &mut dyn FnMut(Phase),
    ) -> Result<Self> {
        if request.steps == 0 {
            return Err(Error::Invalid("at least one step is needed".into()));
        }
        request.cache.validate()?;
        let ((width, height), reference_sizes) = request.sizes()?;
        let (latent_height, latent_width) = (height / VAE_SCALE, width / VAE_SCALE);

        report(Phase::EncodingText);
        let text = model.encode_text(&request.prompt, device)?;

        report(Phase::EncodingReferences);
        let mut latents = Vec::with_capacity(request.references.len());
        for (reference, &(w, h)) in request.references.iter().zip(&reference_sizes) {
            latents.push(model.encode_reference(&images::resize(reference, w, h), device)?);
        }
        let references = if latents.is_empty() { References::none() } else { References::from_latents(latents) };

        let noise = match noise {
            Some(noise) => {
                kontext::check_noise(&noise, latent_height, latent_width)?;
                noise
            }
            None => kontext::initial_noise(request.seed, latent_height, latent_width, device),
        };
        let sampler = kontext::sampler(noise, request.steps);
        model.enter(PlanPhase::Modulations, device)?;
        let modulations =
            model.flux.schedule_modulations(sampler.step_sigmas(), text.pooled.clone(), Some(request.guidance))?;
        model.enter(PlanPhase::Denoising, device)?;
        let modulations = sampler.step_sigmas().iter().copied().zip(modulations).collect();
        let conditioning = Conditioning::with_modulations(
            modulations,
            text,
            references,
            latent_height,
            latent_width,
            request.guidance,
            device,
        );
        let cache = StepCache::new(request.cache.clone(), request.steps);
        Ok(Self { model, conditioning, sampler, cache, device: device.clone(), width, height })
    }

    /// Output `(width, height)` in pixels.
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// `(steps done, steps)`.
    pub fn progress(&self) -> (usize, usize) {
        (self.sampler.steps_done(), self.sampler.steps())
    }

    /// Whether every denoising step is done.
    pub fn is_denoised(&self) -> bool {
        self.sampler.is_done()
    }

    /// Runs the next denoising step (queues it on the device; a step cache may wait for a value it reads back).
    pub async fn step(&mut self) -> Result<()> {
        let mut denoiser = KontextDenoiser {
            flux: &self.model.flux,
            conditioning: &self.conditioning,
            streamed: self.model.streamed_weights(),
            cache: &mut self.cache,
        };
        self.sampler.step(&mut denoiser).await?;
        let during = format!("denoising step {}", self.sampler.steps_done());
        self.model.check_device(&during, &self.device)?;
        self.model.meter.sample(&self.device, PlanPhase::Denoising.label());
        Ok(())
    }

    /// The step cache: which steps reused it so far, and what it calibrated.
    pub fn cache(&self) -> &StepCache {
        &self.cache
    }

    /// The current packed latents (for previews).
    pub fn latents(&self) -> &Tensor<3> {
        self.sampler.latents()
    }

    /// Decodes the latents and reads the image back.
    pub async fn finish(self) -> Result<EditResult> {
        let (width, height, device) = (self.width, self.height, self.device);
        let latents = self.sampler.into_latents();
        self.model.enter(PlanPhase::Decoding, &device)?;
        let vae = self.model.vae(&device)?;
        let decoded = kontext::decode_latents(vae, latents.clone(), height / VAE_SCALE, width / VAE_SCALE)?;
        self.model.meter.sample(&device, PlanPhase::Decoding.label());
        let pixels = read_f32((decoded / 2.0 + 0.5).clamp(0.0, 1.0)).await?;
        self.model.check_device(PlanPhase::Decoding.label(), &device)?;
        let image = images::from_unit_planar(&pixels, width, height)?;
        Ok(EditResult { image, latents, pixels })
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::device::cpu;
    use crate::harness::testing::{FixtureFile, fixture};
    use crate::model::flux::Layers;
    use crate::pipeline::loader::{Folder, Overrides};
    use crate::pipeline::plan::Residency;
    use burn::tensor::Tolerance;

    const PROMPT: &str = "Make the red square blue and add a small yellow sun in the sky";

    fn tiny_model(device: &Device) -> KontextModel {
        KontextModel::load(&Folder(fixture("FLUX.1-Kontext-dev-tiny").into()), Overrides::default(), device).unwrap()
    }

    /// The golden call on `reference` (the golden reference image when `None`): 64×80 at the reference's own
    /// size, guidance 2.5, with `prompt`, `steps` and `cache`.
    fn golden_request(prompt: &str, reference: Option<RgbImage>, steps: usize, cache: CacheConfig) -> EditRequest {
        let golden_reference =
            || images::decode(&std::fs::read(fixture("golden/reference_input.png")).unwrap()).unwrap();
        EditRequest {
            prompt: prompt.into(),
            references: vec![reference.unwrap_or_else(golden_reference)],
            size: Some((64, 80)),
            max_area: 64 * 80,
            resize: Resize::None,
            steps,
            guidance: 2.5,
            seed: 0,
            cache,
        }
    }

    /// Runs `request` from `noise` to its final latents; returns the finished edit's step cache with them.
    fn denoise(
        model: &mut KontextModel,
        request: &EditRequest,
        noise: Tensor<3>,
        device: &Device,
    ) -> (Tensor<3>, StepCache) {
        let mut edit = Edit::prepare(model, request, Some(noise), device).unwrap();
        while !edit.is_denoised() {
            pollster::block_on(edit.step()).unwrap();
        }
        (edit.sampler.into_latents(), edit.cache)
    }

    /// The golden call: 4 steps from the golden noise.
    fn golden_edit(model: &mut KontextModel, prompt: &str, device: &Device) -> Tensor<3> {
        let noise = FixtureFile::open("golden/golden_run.safetensors").tensor("latents_init_packed", device);
        denoise(model, &golden_request(prompt, None, 4, CacheConfig::None), noise, device).0
    }

    /// The golden call at the 12 steps of `golden/golden_cache.safetensors` (its noise) with `cache`: the final
    /// latents, the steps that reused the cache and the ratios it measured.
    fn cached_edit(model: &mut KontextModel, cache: CacheConfig, device: &Device) -> (Tensor<3>, Vec<usize>, Vec<f32>) {
        let noise = FixtureFile::open("golden/golden_cache.safetensors").tensor("noise", device);
        let (latents, cache) = denoise(model, &golden_request(PROMPT, None, 12, cache), noise, device);
        (latents, cache.reused_steps().to_vec(), cache.measured_ratios().to_vec())
    }

    fn max_abs_difference(a: Tensor<3>, b: Tensor<3>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// diffusers' `FirstBlockCacheConfig` at two thresholds and `MagCacheConfig` with the ratios it calibrated,
    /// on the tiny pack (`tests/fixtures/generator/cache_golden.py`): the same steps reuse the cache and the final
    /// latents agree; calibration measures diffusers' ratios.
    #[test]
    fn step_caches_reuse_the_steps_diffusers_reuses_and_match_its_latents() {
        let device = cpu();
        let golden = FixtureFile::open("golden/golden_cache.safetensors");
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("golden/golden_cache_meta.json")).unwrap()).unwrap();
        let reused_in = |name: &str| -> Vec<usize> {
            let computed = meta[name]["computed"].as_array().unwrap();
            (0..computed.len()).filter(|&i| computed[i].as_u64() == Some(0)).collect()
        };
        let mut model = tiny_model(&device);

        let (uncached, reused, ratios) = cached_edit(&mut model, CacheConfig::Calibrate, &device);
        assert!(reused.is_empty(), "calibration runs every step");
        let uncached_golden: Tensor<3> = golden.tensor("uncached/latents", &device);
        let err = max_abs_difference(uncached, uncached_golden.clone());
        assert!(err <= 1e-4, "uncached: max |ours − diffusers| = {err:.2e}");
        let golden_ratios = golden.tensor::<1>("calibration/ratios", &device).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(ratios.len(), 12);
        for (step, (ours, theirs)) in ratios.iter().zip(&golden_ratios).enumerate() {
            assert!((ours - theirs).abs() <= 1e-4, "ratio of step {step}: ours {ours}, diffusers {theirs}");
        }

        let mag = CacheConfig::Mag { threshold: 0.06, max_skip_steps: 2, retention_ratio: 0.2, ratios: golden_ratios };
        for (name, config) in [
            ("fbc", CacheConfig::Fbc { threshold: 0.42 }),
            ("fbc_low", CacheConfig::Fbc { threshold: 0.36 }),
            ("mag", mag),
        ] {
            let (latents, reused, _) = cached_edit(&mut model, config, &device);
            assert!(!reused.is_empty() && reused.len() < 10, "{name}: the goldens reuse some steps, not all");
            assert_eq!(reused, reused_in(name), "{name}: the steps that reused the cache");
            let expected: Tensor<3> = golden.tensor(&format!("{name}/latents"), &device);
            let err = max_abs_difference(latents.clone(), expected.clone());
            assert!(err <= 1e-4, "{name}: max |ours − diffusers| = {err:.2e}");
            // Control: reusing the cache changes the result by more than 10× that tolerance (one reused step of
            // twelve: 6e-3), so a cache that reused other steps, or none, would fail the comparison.
            let effect = max_abs_difference(expected, uncached_golden.clone());
            assert!(effect > 1e-3, "{name}: the cache changes the latents by only {effect:.2e}");
        }
    }

    #[test]
    fn references_encode_once_and_the_next_edits_with_the_same_pixels_reuse_them() {
        let device = cpu();
        let golden: Tensor<3> =
            FixtureFile::open("golden/golden_run.safetensors").tensor("latents_after_step_3", &device);
        let mut model = tiny_model(&device);
        let first = golden_edit(&mut model, PROMPT, &device);
        assert_eq!(model.references_encoded(), 1);
        // A re-run and a new instruction on the same reference: no encoding, the same result.
        let again = golden_edit(&mut model, PROMPT, &device);
        golden_edit(&mut model, "a yellow square", &device);
        assert_eq!(model.references_encoded(), 1, "the same pixels are not encoded again");
        again.into_data().assert_approx_eq::<f32>(&first.clone().into_data(), Tolerance::absolute(0.0));
        first.into_data().assert_approx_eq::<f32>(&golden.into_data(), Tolerance::absolute(1e-4));

        // One changed pixel is another reference.
        let mut reference = images::decode(&std::fs::read(fixture("golden/reference_input.png")).unwrap()).unwrap();
        reference.get_pixel_mut(0, 0).0[0] ^= 1;
        Edit::prepare(&mut model, &golden_request(PROMPT, Some(reference), 1, CacheConfig::None), None, &device)
            .unwrap();
        assert_eq!(model.references_encoded(), 2);
    }

    #[test]
    fn a_lean_model_frees_and_reloads_its_parts_and_still_matches_the_golden() {
        let device = cpu();
        let golden: Tensor<3> =
            FixtureFile::open("golden/golden_run.safetensors").tensor("latents_after_step_3", &device);
        let mut model = tiny_model(&device);
        model.residency = Residency::LEAN;
        let resident_bytes = model.flux.device_bytes();
        for _ in 0..2 {
            let latents = golden_edit(&mut model, PROMPT, &device);
            latents.into_data().assert_approx_eq::<f32>(&golden.clone().into_data(), Tolerance::absolute(1e-4));
            assert!(!model.t5.is_resident() && !model.clip.is_resident(), "the text encoders are freed after encoding");
            assert!(model.flux.modulation_weights_released());
            assert!(model.flux.device_bytes() < resident_bytes, "released layers hold no device memory");
        }

        // A new prompt loads the encoders again (and frees them again); the result equals a model that keeps all.
        let mut kept = tiny_model(&device);
        kept.residency = Residency::KEEP_ALL;
        let expected = golden_edit(&mut kept, "a yellow square", &device);
        assert!(kept.t5.is_resident() && !kept.flux.modulation_weights_released());
        let got = golden_edit(&mut model, "a yellow square", &device);
        got.into_data().assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-6));
        assert!(!model.t5.is_resident());
    }

    #[test]
    fn every_residency_matches_the_golden_and_holds_only_what_it_keeps() {
        let device = cpu();
        let golden: Tensor<3> =
            FixtureFile::open("golden/golden_run.safetensors").tensor("latents_after_step_3", &device);
        for residency in Residency::CHOICES {
            let mut model =
                KontextModel::open(&Folder(fixture("FLUX.1-Kontext-dev-tiny").into()), Overrides::default(), &device)
                    .unwrap();
            assert!(model.flux.projections().iter().all(|p| p.is_released()), "opening uploads no linear layer");
            assert!(!model.t5.is_resident() && !model.clip.is_resident() && !model.vae.is_resident());
            model.residency = residency;
            model.upload_kept(&device).unwrap();
            assert_eq!(model.vae.is_resident(), residency.keep_vae, "{residency:?}");
            let latents = golden_edit(&mut model, PROMPT, &device);
            latents.into_data().assert_approx_eq::<f32>(&golden.clone().into_data(), Tolerance::absolute(1e-4));
            // Denoising: the text encoders and the VAE stay only when kept; streamed blocks are not on the device.
            assert_eq!(model.t5.is_resident(), residency.keep_text_encoders, "{residency:?}");
            assert_eq!(model.vae.is_resident(), residency.keep_vae, "{residency:?}");
            assert_eq!(model.flux.is_released(Layers::Blocks), residency.stream_dit, "{residency:?}");
            assert_eq!(model.flux.modulation_weights_released(), residency.release_modulation_weights);
            assert!(!model.flux.is_released(Layers::Unstreamed), "{residency:?}");
        }
    }

    #[test]
    fn a_missing_part_is_named_before_anything_is_uploaded() {
        let device = cpu();
        let overrides = Overrides {
            transformer: Some(Box::new(
                crate::formats::FileSource::open(fixture("bfl_gguf/transformer_bfl-Q8_0.gguf")).unwrap(),
            )),
            ..Overrides::default()
        };
        let err = KontextModel::open(&crate::pipeline::loader::NoFolder, overrides, &device).err().unwrap();
        assert!(
            matches!(&err, Error::MissingPart { part, flag, .. } if part == "T5 encoder" && flag == "--t5"),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "the model has no T5 encoder: add a T5 GGUF or safetensors file, or a model folder with \
             text_encoder_2/model.safetensors"
        );
    }

    #[test]
    fn released_modulation_weights_are_refused_until_reloaded() {
        let device = cpu();
        let mut model = tiny_model(&device);
        let y = Tensor::<2>::zeros([1, model.flux_config.vec_in_dim], &device);
        let before = model.flux.schedule_modulations(&[0.5], y.clone(), Some(2.5)).unwrap().remove(0).final_shift;
        model.flux.release_modulation_weights();
        let err = model.flux.schedule_modulations(&[0.5], y.clone(), Some(2.5)).err().unwrap().to_string();
        assert_eq!(err, "the modulation weights were released from the device: reload them first");
        model.restore_modulation_weights(&device).unwrap();
        let after = model.flux.schedule_modulations(&[0.5], y, Some(2.5)).unwrap().remove(0).final_shift;
        after.into_data().assert_eq(&before.into_data(), true);
    }
}
