//! A whole edit as the user asks for it — prompt, references, size, steps, guidance, seed — prepared,
//! stepped and finished in separate calls so that a CLI or a browser worker can report and cancel.

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

use super::cache::{CacheConfig, StepCache};
use super::image as images;
use super::kontext::{self, Conditioning, KontextDenoiser, LATENT_CHANNELS, References, VAE_SCALE};
use super::mask::{MaskedEdit, PasteBack, PreparedMask};
use super::sampler::Sampler;
use super::schedule::{self, ShiftConfig};
use super::size::{self, Resize};
use crate::device::read_f32;
use crate::kernels::latent;
use crate::model::flux::lora;
use crate::model::layers::LoraAdapter;
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
    /// Where the first reference may change, for a masked edit of it; `None` lets the edit change anything.
    pub mask: Option<MaskedEdit>,
}

/// A `(width, height)` in pixels.
pub type PixelSize = (usize, usize);

impl EditRequest {
    /// The output size and the size of each reference the DiT is conditioned on, as it is encoded. A masked
    /// edit keeps the size of its image (the first reference) and is conditioned on its mask's reference
    /// instead of the image when it has one.
    pub fn sizes(&self) -> Result<(PixelSize, Vec<PixelSize>)> {
        let sized =
            |r: &RgbImage| size::reference_size(r.width() as usize, r.height() as usize, self.resize, self.max_area);
        let mut references = self.references.iter().map(sized).collect::<Result<Vec<_>>>()?;
        let Some(mask) = &self.mask else {
            let first = self.references.first().map(|r| (r.width() as usize, r.height() as usize));
            return Ok((size::output_size(self.size, first, self.max_area)?, references));
        };
        let Some(&image) = references.first() else {
            return Err(Error::Invalid("a masked edit needs the image to edit, given as the first reference".into()));
        };
        if let Some(requested) = self.size
            && size::output_size(Some(requested), None, self.max_area)? != image
        {
            return Err(Error::Invalid(format!(
                "a masked edit keeps the size of its image, {}×{} as it is encoded: leave out the output size",
                image.0, image.1
            )));
        }
        if let Some(reference) = &mask.reference {
            references[0] = sized(reference)?;
        }
        Ok((image, references))
    }

    /// Refuses what [`Edit::prepare`] would refuse before it encodes anything: sizes, and a mask that does not
    /// fit the image or the strength the steps.
    pub fn check(&self) -> Result<()> {
        let ((width, height), references) = self.sizes()?;
        if let (Some(mask), Some(image)) = (&self.mask, self.references.first()) {
            mask.check(image.dimensions(), self.steps)?;
            mask.prepare(image, (width, height), mask.reference.as_ref().map(|_| references[0]))?;
        }
        Ok(())
    }
}

/// Plans `request` on `model` with the LoRA `adapters` (at their strengths, [`Flux::set_adapters`]) within
/// `limits`: under `residency` when given, else the most resident choice that fits `limits.budget`. An edit that
/// cannot fit is refused ([`Error::OverBudget`]) before anything is uploaded, the adapters included, with what
/// would fit.
///
/// [`Flux::set_adapters`]: crate::model::flux::Flux::set_adapters
pub fn plan_edit(
    model: &KontextModel,
    request: &EditRequest,
    adapters: &[(&LoraAdapter, f32)],
    limits: DeviceLimits,
    residency: Option<Residency>,
) -> Result<MemoryPlan> {
    request.check()?;
    let (output, references) = request.sizes()?;
    let inputs = PlanInputs {
        residency,
        cached_residuals: request.cache.residuals(),
        masked: request.mask.is_some(),
        adapter_bytes: lora::active_device_bytes(adapters),
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
    blend: Option<Blend>,
    paste_back: Option<PasteBack>,
    device: Device,
    width: usize,
    height: usize,
}

/// What a masked edit puts back after every step: outside the mask, the image's latents noised to the σ the
/// latents have reached (diffusers' `scale_noise`). All packed `[1, tokens, 64]`.
struct Blend {
    /// 1 where the edit may change the latents, 0 elsewhere.
    mask: Tensor<3>,
    /// `1 − mask`.
    keep: Tensor<3>,
    /// The image's latents.
    image: Tensor<3>,
    /// The edit's noise.
    noise: Tensor<3>,
}

impl Blend {
    fn new(prepared: &PreparedMask, image: Tensor<3>, noise: Tensor<3>) -> Self {
        let (latent_w, latent_h) = prepared.latent_size;
        // The mask on every latent channel, `[1, 16, h, w]`, then packed as the latents are.
        let channels: Vec<f32> = (0..LATENT_CHANNELS).flat_map(|_| prepared.latent.iter().copied()).collect();
        let data = TensorData::new(channels, [1, LATENT_CHANNELS, latent_h, latent_w]);
        let mask = latent::pack(Tensor::<4>::from_data(data, &image.device()));
        Self { keep: mask.clone().neg() + 1.0, mask, image, noise }
    }

    /// The image noised to `sigma`: `σ · noise + (1 − σ) · image`.
    fn noised_image(&self, sigma: f32) -> Tensor<3> {
        self.noise.clone() * sigma + self.image.clone() * (1.0 - sigma)
    }

    /// `latents` inside the mask, the image at `sigma` outside (the image itself after the last step).
    fn apply(&self, latents: Tensor<3>, sigma: Option<f32>) -> Tensor<3> {
        let restored = match sigma {
            Some(sigma) => self.noised_image(sigma),
            None => self.image.clone(),
        };
        self.keep.clone() * restored + self.mask.clone() * latents
    }
}

/// The finished edit.
pub struct EditResult {
    /// The image.
    pub image: RgbImage,
    /// Final packed latents `[1, tokens, 64]`.
    pub latents: Tensor<3>,
    /// The decoded image `[1, 3, h, w]` in `[0, 1]`, planar, as read back (for an edited crop: the crop, before
    /// it is pasted back).
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

        let prepared = match &request.mask {
            Some(mask) => {
                let image = &request.references[0];
                mask.check((image.width(), image.height()), request.steps)?;
                let reference_size = mask.reference.as_ref().map(|_| reference_sizes[0]);
                Some(mask.prepare(image, (width, height), reference_size)?)
            }
            None => None,
        };

        report(Phase::EncodingText);
        let text = model.encode_text(&request.prompt, device)?;

        report(Phase::EncodingReferences);
        let mut latents = Vec::with_capacity(request.references.len());
        let mut image_latents = None;
        for (i, (reference, &(w, h))) in request.references.iter().zip(&reference_sizes).enumerate() {
            let encoded = match (i, &prepared) {
                (0, Some(prepared)) => {
                    let image = model.encode_reference(&prepared.image, device)?;
                    image_latents = Some(image.clone());
                    match &prepared.reference {
                        Some(reference) => model.encode_reference(reference, device)?,
                        None => image,
                    }
                }
                _ => model.encode_reference(&images::resize(reference, w, h), device)?,
            };
            latents.push(encoded);
        }
        let references = if latents.is_empty() { References::none() } else { References::from_latents(latents) };

        let noise = match noise {
            Some(noise) => {
                kontext::check_noise(&noise, latent_height, latent_width)?;
                noise
            }
            None => kontext::initial_noise(request.seed, latent_height, latent_width, device),
        };
        let (sampler, blend) = match (&request.mask, &prepared, image_latents) {
            (Some(mask), Some(prepared), Some(image)) => {
                let sigmas = schedule::sigmas(request.steps, noise.dims()[1], ShiftConfig::flux());
                let sigmas = sigmas[mask.skipped_steps(request.steps)..].to_vec();
                let blend = Blend::new(prepared, latent::pack(image), noise);
                (Sampler::new(blend.noised_image(sigmas[0]), sigmas), Some(blend))
            }
            _ => (kontext::sampler(noise, request.steps), None),
        };
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
        let cache = StepCache::new(request.cache.clone(), sampler.steps());
        let paste_back = prepared.and_then(|p| p.paste_back);
        Ok(Self { model, conditioning, sampler, cache, blend, paste_back, device: device.clone(), width, height })
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
        if let Some(blend) = &self.blend {
            let sigma = (!self.sampler.is_done()).then(|| self.sampler.sigma());
            self.sampler.replace_latents(|latents| blend.apply(latents, sigma));
        }
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

    /// Decodes the latents and reads the image back (an edited crop is pasted back into its image).
    pub async fn finish(self) -> Result<EditResult> {
        self.decode()?.read().await
    }

    /// Queues the decoding of the latents; the image stays on the device until [`Decoded::read`].
    pub fn decode(self) -> Result<Decoded<'m>> {
        let (width, height, device) = (self.width, self.height, self.device);
        let latents = self.sampler.into_latents();
        self.model.enter(PlanPhase::Decoding, &device)?;
        let vae = self.model.vae(&device)?;
        let decoded = kontext::decode_latents(vae, latents.clone(), height / VAE_SCALE, width / VAE_SCALE)?;
        self.model.meter.sample(&device, PlanPhase::Decoding.label());
        let pixels = (decoded / 2.0 + 0.5).clamp(0.0, 1.0);
        Ok(Decoded { model: self.model, pixels, latents, paste_back: self.paste_back, device, width, height })
    }
}

/// A decoded edit whose image is still on the device.
pub struct Decoded<'m> {
    model: &'m mut KontextModel,
    /// The decoded image `[1, 3, h, w]` in `[0, 1]` (for an edited crop: the crop, before it is pasted back).
    pub pixels: Tensor<4>,
    /// Final packed latents `[1, tokens, 64]`.
    pub latents: Tensor<3>,
    paste_back: Option<PasteBack>,
    device: Device,
    width: usize,
    height: usize,
}

impl Decoded<'_> {
    /// Whether the finished image is [`Decoded::pixels`] pasted back into the image it edits a crop of, so that
    /// `pixels` alone is not the result.
    pub fn pastes_back(&self) -> bool {
        self.paste_back.is_some()
    }

    /// Reads the image back (one readback) and pastes an edited crop back into its image.
    pub async fn read(self) -> Result<EditResult> {
        let pixels = read_f32(self.pixels).await?;
        self.model.check_device(PlanPhase::Decoding.label(), &self.device)?;
        let mut image = images::from_unit_planar(&pixels, self.width, self.height)?;
        if let Some(paste_back) = &self.paste_back {
            image = paste_back.apply(&image);
        }
        Ok(EditResult { image, latents: self.latents, pixels })
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::device::cpu;
    use crate::harness::testing::{FixtureFile, assert_data_far_apart, fixture};
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
            mask: None,
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

    fn png(name: &str) -> RgbImage {
        images::decode(&std::fs::read(fixture(&format!("golden/{name}"))).unwrap()).unwrap()
    }

    /// The largest difference in LSB between two images of one size.
    fn worst_lsb(a: &RgbImage, b: &RgbImage) -> u8 {
        assert_eq!(a.dimensions(), b.dimensions());
        a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
    }

    /// diffusers' `FluxKontextInpaintPipeline` on the tiny pack (`tests/fixtures/generator/inpaint_golden.py`):
    /// the mask on the pixel and latent grids, the crop, the noised start, the latents after every step and the
    /// image (±1 LSB) agree for each case — part of the image, a mask at twice the size, strength 0.6 and 0.8,
    /// with and without `image_reference`, with `padding_mask_crop` (and the crop pasted back as
    /// `apply_overlay` does). Outside the mask the final latents are the image's, exactly.
    #[test]
    fn masked_edits_match_every_step_of_diffusers_inpainting() {
        let device = cpu();
        let golden = FixtureFile::open("golden/golden_inpaint.safetensors");
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("golden/golden_inpaint_meta.json")).unwrap())
                .unwrap();
        let mut model = tiny_model(&device);
        let mut finals = Vec::new();
        for (case, entry) in meta["cases"].as_object().unwrap() {
            let close = |got: Tensor<3>, key: &str| {
                let expected: Tensor<3> = golden.tensor(&format!("{case}/{key}"), &device);
                let err = max_abs_difference(got, expected);
                assert!(err <= 1e-4, "{case} {key}: max |ours − diffusers| = {err:.2e}");
            };
            let request = crate::harness::testing::golden_masked_request(case);
            let mask = request.mask.clone().unwrap();
            let reference_size = mask.reference.as_ref().map(|r| (r.width() as usize, r.height() as usize));
            let prepared = mask.prepare(&request.references[0], (96, 64), reference_size).unwrap();
            assert_eq!(prepared.pixels.as_raw(), &golden.bytes(&format!("{case}/mask/pixels")), "{case}: mask pixels");
            if let Some(region) = entry["crop_region"].as_array() {
                let region: Vec<i64> = region.iter().map(|v| v.as_i64().unwrap()).collect();
                assert_eq!(prepared.paste_back.as_ref().unwrap().region.to_vec(), region, "{case}: crop region");
                assert_eq!(prepared.image, png(&format!("inpaint_{case}_input.png")), "{case}: the crop, resized");
            }

            let noise = golden.tensor("noise", &device);
            let mut edit = Edit::prepare(&mut model, &request, Some(noise), &device).unwrap();
            let blend = edit.blend.as_ref().unwrap();
            close(blend.mask.clone(), "mask/latent");
            close(blend.image.clone(), "image_latents");
            close(edit.latents().clone(), "latents/initial");
            let steps = entry["steps_run"].as_u64().unwrap() as usize;
            assert_eq!(edit.progress(), (0, steps), "{case}: the strength's steps");
            for step in 0..steps {
                pollster::block_on(edit.step()).unwrap();
                close(edit.latents().clone(), &format!("latents/step_{step}"));
            }
            let (mask_tokens, image_tokens) = (blend_of(&edit).mask.clone(), blend_of(&edit).image.clone());
            let result = pollster::block_on(edit.finish()).unwrap();
            // Outside the mask: the image's latents, bit for bit; inside, the edit.
            let outside = (result.latents.clone() - image_tokens.clone()) * (mask_tokens.clone().neg() + 1.0);
            assert_eq!(outside.abs().max().into_scalar::<f32>(), 0.0, "{case}: the blend leaks");
            let inside = ((result.latents.clone() - image_tokens) * mask_tokens).abs().max().into_scalar::<f32>();
            assert!(inside > 1e-2, "{case}: the masked area did not change ({inside:.2e})");

            let decoded = images::from_unit_planar(&result.pixels, 96, 64).unwrap();
            let lsb = worst_lsb(&decoded, &png(&format!("inpaint_{case}.png")));
            assert!(lsb <= 1, "{case}: the image differs by {lsb} LSB");
            match entry["crop_region"].is_array() {
                true => {
                    let lsb = worst_lsb(&result.image, &png(&format!("inpaint_{case}_overlay.png")));
                    assert!(lsb <= 1, "{case}: the pasted-back image differs by {lsb} LSB");
                }
                false => assert_eq!(result.image, decoded),
            }
            finals.push((case.clone(), result.latents));
        }
        // Control: the cases differ from each other by far more than the tolerance, so a strength, reference or
        // crop that were ignored would fail the comparison above.
        for pair in finals.windows(2) {
            let effect = max_abs_difference(pair[0].1.clone(), pair[1].1.clone());
            assert!(effect > 1e-2, "{} and {} differ by only {effect:.2e}", pair[0].0, pair[1].0);
        }
    }

    fn blend_of<'a>(edit: &'a Edit<'_>) -> &'a Blend {
        edit.blend.as_ref().unwrap()
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
        let other_prompt = golden_edit(&mut model, "a yellow square", &device);
        assert_eq!(model.references_encoded(), 1, "the same pixels are not encoded again");
        again.into_data().assert_approx_eq::<f32>(&first.clone().into_data(), Tolerance::absolute(0.0));
        first.into_data().assert_approx_eq::<f32>(&golden.clone().into_data(), Tolerance::absolute(1e-4));
        assert_data_far_apart(&other_prompt.into_data(), &golden.into_data(), 1e-4, "another instruction");

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
        assert_data_far_apart(&expected.clone().into_data(), &golden.into_data(), 1e-4, "another instruction");
        assert!(kept.t5.is_resident() && !kept.flux.modulation_weights_released());
        let got = golden_edit(&mut model, "a yellow square", &device);
        got.into_data().assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-6));
        assert!(!model.t5.is_resident());
    }

    #[test]
    fn every_residency_matches_the_golden_and_holds_only_what_it_keeps() {
        let device = cpu();
        let run = FixtureFile::open("golden/golden_run.safetensors");
        let golden: Tensor<3> = run.tensor("latents_after_step_3", &device);
        // Negative control: the latents one step short.
        let step_short = run.tensor::<3>("latents_after_step_2", &device).into_data();
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
            assert_data_far_apart(&latents.clone().into_data(), &step_short, 1e-4, &format!("{residency:?}"));
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
