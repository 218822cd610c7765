//! A whole edit as the user asks for it — prompt, references, size, steps, guidance, seed — prepared,
//! stepped and finished in separate calls so that a CLI or a browser worker can report and cancel.

use burn::tensor::{Device, Tensor};
use image::RgbImage;

use super::image as images;
use super::kontext::{self, KontextDenoiser, References, TextConditioning, VAE_SCALE};
use super::sampler::Sampler;
use super::size::{self, Resize};
use crate::loader::KontextModel;
use crate::device::read_f32;
use crate::{Error, Result};

/// T5 sequence length, as the reference pipeline (`max_sequence_length` 512).
pub const T5_TOKENS: usize = 512;

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
    model: &'m KontextModel,
    denoiser: KontextDenoiser<'m>,
    sampler: Sampler,
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
    /// Encodes the prompt and references and draws the initial noise (or takes `noise`, packed `[1, n, 64]`).
    pub fn prepare(model: &'m KontextModel, request: &EditRequest, noise: Option<Tensor<3>>, device: &Device) -> Result<Self> {
        Self::prepare_reporting(model, request, noise, device, &mut |_| {})
    }

    /// [`Edit::prepare`], telling `report` which phase starts.
    pub fn prepare_reporting(
        model: &'m KontextModel,
        request: &EditRequest,
        noise: Option<Tensor<3>>,
        device: &Device,
        report: &mut dyn FnMut(Phase),
    ) -> Result<Self> {
        if request.steps == 0 {
            return Err(Error::Invalid("at least one step is needed".into()));
        }
        let first = request.references.first().map(|r| (r.width() as usize, r.height() as usize));
        let (width, height) = size::output_size(request.size, first, request.max_area)?;
        let (latent_height, latent_width) = (height / VAE_SCALE, width / VAE_SCALE);

        report(Phase::EncodingText);
        let text = encode_text(model, &request.prompt, device)?;

        report(Phase::EncodingReferences);
        let mut latents = Vec::with_capacity(request.references.len());
        for reference in &request.references {
            let (w, h) = size::reference_size(reference.width() as usize, reference.height() as usize, request.resize, request.max_area)?;
            let pixels = images::to_tensor(&images::resize(reference, w, h), device);
            latents.push(kontext::encode_reference(&model.vae, pixels)?);
        }
        let references = if latents.is_empty() { References::none() } else { References::from_latents(latents) };

        let noise = match noise {
            Some(noise) => {
                kontext::check_noise(&noise, latent_height, latent_width)?;
                noise
            }
            None => kontext::initial_noise(request.seed, latent_height, latent_width, device),
        };
        let denoiser = KontextDenoiser::new(&model.flux, text, references, latent_height, latent_width, request.guidance, device);
        Ok(Self { model, denoiser, sampler: kontext::sampler(noise, request.steps), width, height })
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

    /// Runs the next denoising step (queues it on the device).
    pub fn step(&mut self) -> Result<()> {
        self.sampler.step(&self.denoiser)
    }

    /// The current packed latents (for previews).
    pub fn latents(&self) -> &Tensor<3> {
        self.sampler.latents()
    }

    /// Decodes the latents and reads the image back.
    pub async fn finish(self) -> Result<EditResult> {
        let (width, height) = (self.width, self.height);
        let latents = self.sampler.into_latents();
        let decoded = kontext::decode_latents(&self.model.vae, latents.clone(), height / VAE_SCALE, width / VAE_SCALE)?;
        let pixels = read_f32((decoded / 2.0 + 0.5).clamp(0.0, 1.0)).await?;
        let image = images::from_unit_planar(&pixels, width, height)?;
        Ok(EditResult { image, latents, pixels })
    }
}

/// T5 tokens and the pooled CLIP vector of `prompt`.
pub fn encode_text(model: &KontextModel, prompt: &str, device: &Device) -> Result<TextConditioning> {
    let t5_ids = model.t5_tokenizer.encode(prompt, T5_TOKENS)?;
    let clip_ids = model.clip_tokenizer.encode(prompt)?;
    let t5 = model.t5.forward(&t5_ids, device)?;
    let (_, pooled) = model.clip.forward(kontext::token_tensor(&clip_ids, device))?;
    Ok(TextConditioning { t5, pooled })
}
