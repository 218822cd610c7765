//! Loading a whole Kontext model from the files people have: a diffusers-layout folder, and/or single files
//! that replace its parts (a BFL or GGUF transformer, a T5 GGUF, `clip_l.safetensors`, `ae.safetensors`).
//!
//! Files are reached through [`ModelFiles`] (a folder natively, stored chunks in the browser) and
//! [`ByteSource`]s, so this module never touches `std::fs` and runs unchanged in the browser.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use burn::tensor::{Device, Tensor};
use image::RgbImage;
use sha2::{Digest, Sha256};

use crate::device::MemoryMeter;
use crate::device::faults::FaultKind;
use crate::formats::weights::Weights;
use crate::formats::{ByteSource, GgufFile, SafetensorsFile, ShardedSafetensors};
use crate::kernels::quant_matmul::keeps_blocks;
use crate::model::FluxConfig;
use crate::model::clip::{CLIP_HEAD_DIM, ClipTextConfig, ClipTextTransformer};
use crate::model::flux::remap::DiffusersAsBfl;
use crate::model::flux::{Flux, Layers};
use crate::model::layers::{planned_device_bytes, tensor_device_bytes};
use crate::model::t5::{LlamaCppT5Names, T5Config, T5Encoder};
use crate::model::vae::Vae;
use crate::model::vae::config::VaeConfig;
use crate::model::vae::remap::LdmVaeWeights;
use crate::pipeline::image as images;
use crate::pipeline::kontext::{self, T5_TOKENS, TextConditioning};
use crate::pipeline::plan::{
    CACHED_PROMPTS, CACHED_REFERENCES, DeviceLimits, DitWeights, MemoryPlan, PlanInputs, PlanPhase, Residency,
};
use crate::pipeline::tokenizer::{ClipTokenizer, T5Tokenizer};
use crate::{Error, Result};

/// Files of a diffusers-layout model folder, by path relative to its root (`transformer/config.json`, …).
pub trait ModelFiles {
    /// Opens `path`; `Ok(None)` when the folder has no such file.
    fn open(&self, path: &str) -> Result<Option<Box<dyn ByteSource>>>;

    /// Reads a small text file (configs, vocabularies); `Ok(None)` when absent.
    fn read_text(&self, path: &str) -> Result<Option<String>> {
        let Some(source) = self.open(path)? else { return Ok(None) };
        let bytes = read_all(source.as_ref())?;
        String::from_utf8(bytes).map(Some).map_err(|_| Error::Invalid(format!("{path} is not UTF-8 text")))
    }
}

/// No folder: every part comes from an explicit file.
pub struct NoFolder;

impl ModelFiles for NoFolder {
    fn open(&self, _path: &str) -> Result<Option<Box<dyn ByteSource>>> {
        Ok(None)
    }
}

/// A diffusers-layout folder on the local disk.
#[cfg(not(target_arch = "wasm32"))]
pub struct Folder(pub std::path::PathBuf);

#[cfg(not(target_arch = "wasm32"))]
impl ModelFiles for Folder {
    fn open(&self, path: &str) -> Result<Option<Box<dyn ByteSource>>> {
        let full = self.0.join(path);
        if !full.is_file() {
            return Ok(None);
        }
        Ok(Some(Box::new(crate::formats::FileSource::open(full)?)))
    }
}

/// Largest text file read whole (a CLIP `vocab.json` is 1.6 MB, a T5 `tokenizer.json` 2.4 MB).
const MAX_TEXT_BYTES: u64 = 64 << 20;

fn read_all(source: &dyn ByteSource) -> Result<Vec<u8>> {
    if source.len() > MAX_TEXT_BYTES {
        return Err(Error::Invalid(format!(
            "{} is {} bytes, too large for a config or vocabulary",
            source.label(),
            source.len()
        )));
    }
    source.read_at(0, source.len() as usize)
}

/// Single files that replace parts of the folder.
#[derive(Default)]
pub struct Overrides {
    /// The DiT: BFL or diffusers safetensors, or a Flux GGUF.
    pub transformer: Option<Box<dyn ByteSource>>,
    /// The T5 encoder: a llama.cpp T5 GGUF (tokenizer inside) or transformers safetensors.
    pub t5: Option<Box<dyn ByteSource>>,
    /// CLIP-L: `clip_l.safetensors` (ComfyUI) or transformers safetensors.
    pub clip: Option<Box<dyn ByteSource>>,
    /// The VAE: BFL `ae.safetensors` or diffusers safetensors.
    pub vae: Option<Box<dyn ByteSource>>,
}

/// Builds a network on a device (again) from the weights it captured.
pub type Builder<M> = Box<dyn Fn(&Device) -> Result<M>>;

/// A network that is on the device only while needed: built from its weights on first use, freed after use,
/// built again on the next.
pub struct Reloadable<M> {
    network: Option<M>,
    load: Builder<M>,
}

impl<M> Reloadable<M> {
    /// A network `load` builds when first asked for; nothing is uploaded before.
    pub fn deferred(load: impl Fn(&Device) -> Result<M> + 'static) -> Self {
        Self { network: None, load: Box::new(load) }
    }

    /// The network, loaded first if it is not on the device.
    pub fn get(&mut self, device: &Device) -> Result<&M> {
        if self.network.is_none() {
            self.network = Some((self.load)(device)?);
        }
        Ok(self.network.as_ref().expect("loaded above"))
    }

    /// Frees the network (its GPU buffers go when the last tensor does); returns whether it was there.
    pub fn release(&mut self) -> bool {
        self.network.take().is_some()
    }

    /// Whether the network is on the device.
    pub fn is_resident(&self) -> bool {
        self.network.is_some()
    }
}

/// Reports an upload of weights as it goes: the part, the bytes uploaded, the bytes of the whole upload.
pub type UploadReport = Box<dyn FnMut(&str, u64, u64)>;

/// The bytes of weights uploaded so far in the current upload of one part.
#[derive(Default)]
struct UploadMeter {
    part: Cell<&'static str>,
    done: Cell<u64>,
    total: Cell<u64>,
    report: RefCell<Option<UploadReport>>,
}

impl UploadMeter {
    fn begin(&self, part: &'static str, total: u64) {
        self.part.set(part);
        self.done.set(0);
        self.total.set(total);
        self.tell();
    }

    fn add(&self, bytes: u64) {
        self.done.set((self.done.get() + bytes).min(self.total.get()));
        self.tell();
    }

    fn tell(&self) {
        if let Some(report) = self.report.borrow_mut().as_mut() {
            report(self.part.get(), self.done.get(), self.total.get());
        }
    }
}

/// A part's weights that count the device bytes of each tensor read for upload into an [`UploadMeter`]: ggml
/// blocks the device keeps packed when read raw, the others when read as values.
struct Metered {
    inner: Box<dyn Weights>,
    meter: Rc<UploadMeter>,
    device: Device,
}

fn metered(weights: Box<dyn Weights>, meter: Option<&Rc<UploadMeter>>, device: &Device) -> Box<dyn Weights> {
    match meter {
        Some(meter) => Box::new(Metered { inner: weights, meter: meter.clone(), device: device.clone() }),
        None => weights,
    }
}

impl Metered {
    fn packed(&self, name: &str) -> bool {
        let shape = self.inner.shape(name).unwrap_or_default();
        self.inner.stored_type(name).is_some_and(|ty| keeps_blocks(ty, &shape, &self.device))
    }

    fn count(&self, name: &str) {
        if !is_host_table(name) {
            let bytes = tensor_device_bytes(self.inner.as_ref(), name, &self.device);
            crate::device::faults::note_upload(&self.device, bytes);
            self.meter.add(bytes);
        }
    }
}

impl Weights for Metered {
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.inner.shape(name)
    }
    fn stored_type(&self, name: &str) -> Option<crate::formats::GgmlType> {
        self.inner.stored_type(name)
    }
    fn read(&self, name: &str) -> Result<crate::formats::weights::HostTensor> {
        let tensor = self.inner.read(name)?;
        if !self.packed(name) {
            self.count(name);
        }
        Ok(tensor)
    }
    fn raw_block(&self, name: &str) -> Option<Result<crate::formats::weights::RawBlock>> {
        let raw = self.inner.raw_block(name);
        if matches!(raw, Some(Ok(_))) && self.packed(name) {
            self.count(name);
        }
        raw
    }
}

/// Device bytes of each part of a model as loaded, from the file headers ([`planned_device_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartBytes {
    /// The DiT.
    pub dit: u64,
    /// T5 (its token table stays on the host).
    pub t5: u64,
    /// CLIP (its token table stays on the host).
    pub clip: u64,
    /// The VAE.
    pub vae: u64,
}

/// Every network and tokenizer of FLUX.1 Kontext on one device, each uploaded for the phases of an edit that
/// use it and kept or released between them as [`KontextModel::residency`] says.
pub struct KontextModel {
    /// The DiT; layers not on the device are [released](crate::model::layers::Projection::is_released).
    pub flux: Flux,
    /// The DiT's configuration.
    pub flux_config: FluxConfig,
    /// The DiT's weights as read (headers and sources), to load released layers again or stream blocks.
    transformer_weights: Box<dyn Weights>,
    /// T5 v1.1 encoder.
    pub t5: Reloadable<T5Encoder>,
    /// T5's configuration.
    pub t5_config: T5Config,
    /// CLIP-L text encoder.
    pub clip: Reloadable<ClipTextTransformer>,
    /// The autoencoder.
    pub vae: Reloadable<Vae>,
    /// The autoencoder's configuration.
    pub vae_config: VaeConfig,
    /// CLIP BPE tokenizer.
    pub clip_tokenizer: ClipTokenizer,
    /// T5 SentencePiece tokenizer.
    pub t5_tokenizer: T5Tokenizer,
    /// Device bytes of each part once loaded.
    pub part_bytes: PartBytes,
    /// What stays on the device between phases.
    pub residency: Residency,
    /// Device memory measured at every phase change and step.
    pub meter: MemoryMeter,
    /// Counts the bytes of weights uploaded, for [`KontextModel::on_upload`].
    uploads: Rc<UploadMeter>,
    /// Text conditioning of the last prompts, most recent last.
    text_cache: Vec<(String, TextConditioning)>,
    /// Scaled VAE latents of the last references, by the SHA-256 of their pixels as encoded, most recent last.
    reference_cache: Vec<([u8; 32], Tensor<4>)>,
    /// References run through the VAE encoder since the model was opened.
    references_encoded: usize,
    /// The peak of the plan followed and its budget, for the answer to a GPU that runs out of memory.
    planned: (Option<u64>, Option<u64>),
}

impl KontextModel {
    /// Resolves every part, each from its override when given, else from the folder — formats, configurations
    /// and tokenizers, failing on the first missing or broken part — and only then uploads what
    /// [`Residency::unbudgeted`] keeps.
    pub fn load(files: &dyn ModelFiles, overrides: Overrides, device: &Device) -> Result<Self> {
        let mut model = Self::open(files, overrides, device)?;
        model.upload_kept(device)?;
        Ok(model)
    }

    /// Resolves every part without uploading anything (the DiT's small norm scales aside); the residency is
    /// [`Residency::unbudgeted`] until the caller sets one from a [`crate::pipeline::plan::MemoryPlan`].
    pub fn open(files: &dyn ModelFiles, overrides: Overrides, device: &Device) -> Result<Self> {
        let uploads = Rc::new(UploadMeter::default());
        let meter = Some(&uploads);
        let (transformer_weights, flux_config) = transformer_weights(files, overrides.transformer)?;
        let (t5, t5_config, t5_tokenizer, t5_bytes) = load_t5_deferred(files, overrides.t5, meter, device)?;
        let (clip, clip_tokenizer, clip_bytes) = load_clip_deferred(files, overrides.clip, meter, device)?;
        let (vae, vae_config, vae_bytes) = load_vae_deferred(files, overrides.vae, meter, device)?;
        let transformer_weights = metered(transformer_weights, meter, device);
        let flux = Flux::load_deferring(&flux_config, transformer_weights.as_ref(), Some(Layers::All), device)?;
        let part_bytes = PartBytes {
            dit: planned_device_bytes(transformer_weights.as_ref(), device, |_| true),
            t5: t5_bytes,
            clip: clip_bytes,
            vae: vae_bytes,
        };
        let gpu = crate::device::max_binding_bytes(device) != u64::MAX;
        Ok(Self {
            flux,
            flux_config,
            transformer_weights,
            t5,
            t5_config,
            clip,
            vae,
            vae_config,
            clip_tokenizer,
            t5_tokenizer,
            residency: Residency::unbudgeted(gpu, part_bytes.dit),
            part_bytes,
            meter: MemoryMeter::default(),
            uploads,
            text_cache: Vec::new(),
            reference_cache: Vec::new(),
            references_encoded: 0,
            planned: (None, None),
        })
    }

    /// Keeps between phases what `plan` keeps, and remembers its peak and budget for [`KontextModel::check_device`].
    pub fn follow(&mut self, plan: &MemoryPlan) {
        self.residency = plan.residency;
        self.planned = (Some(plan.peak_bytes), plan.limits.budget);
    }

    /// Ends the load or edit with an answer when the GPU reported a failure since the last check (see
    /// [`crate::device::faults`]): everything uploaded is released first, its pages returned, so that the device
    /// is usable again and the next request uploads afresh. `during` says what was under way.
    pub fn check_device(&mut self, during: &str, device: &Device) -> Result<()> {
        let Some(fault) = crate::device::faults::check(device) else { return Ok(()) };
        let held = crate::device::reserved_bytes(device);
        self.release_all(device);
        Err(match fault.kind {
            FaultKind::OutOfMemory => Error::OutOfMemory {
                during: during.to_string(),
                held,
                planned_peak: self.planned.0,
                budget: self.planned.1,
            },
            FaultKind::Lost => Error::Readback(format!("the GPU device was lost during {during}: {}", fault.message)),
            FaultKind::Refused => Error::Gpu(format!(
                "the GPU refused an operation during {during} ({}); the model's weights were released and are \
                 uploaded again by the next request",
                fault.message
            )),
        })
    }

    /// Releases every part and the cached prompts and references, and returns the freed pages to the driver.
    fn release_all(&mut self, device: &Device) {
        self.t5.release();
        self.clip.release();
        self.vae.release();
        self.flux.release(Layers::All);
        self.text_cache.clear();
        self.reference_cache.clear();
        crate::device::release_free_pages(device);
    }

    /// Reports every upload of weights from now on: the part, the bytes uploaded and the bytes of the whole
    /// upload (the next edit's uploads of released parts included).
    pub fn on_upload(&mut self, report: UploadReport) {
        *self.uploads.report.borrow_mut() = Some(report);
    }

    /// Starts counting the upload of `part` when it is not on the device.
    fn count_upload(&self, part: &'static str, resident: bool, bytes: u64) {
        if !resident && bytes > 0 {
            self.uploads.begin(part, bytes);
        }
    }

    /// Starts counting the upload of the DiT's released layers of `layers`.
    fn count_dit_upload(&self, layers: Layers, device: &Device) {
        let weights = self.transformer_weights.as_ref();
        let bytes = self
            .flux
            .named_projections()
            .iter()
            .filter(|(name, p)| layers.contains(name) && p.is_released())
            .map(|(name, _)| {
                ["weight", "bias"]
                    .map(|t| tensor_device_bytes(weights, &format!("{name}.{t}"), device))
                    .iter()
                    .sum::<u64>()
            })
            .sum();
        self.count_upload("transformer", false, bytes);
    }

    fn upload_t5_and_clip(&mut self, device: &Device) -> Result<()> {
        self.count_upload("t5", self.t5.is_resident(), self.part_bytes.t5);
        self.t5.get(device)?;
        self.count_upload("clip", self.clip.is_resident(), self.part_bytes.clip);
        self.clip.get(device)?;
        Ok(())
    }

    fn upload_vae(&mut self, device: &Device) -> Result<()> {
        self.count_upload("vae", self.vae.is_resident(), self.part_bytes.vae);
        self.vae.get(device).map(|_| ())
    }

    fn upload_dit(&mut self, layers: Layers, device: &Device) -> Result<()> {
        self.count_dit_upload(layers, device);
        self.flux.reload(layers, self.transformer_weights.as_ref(), device)
    }

    /// What a memory plan needs to know of this model for an edit of `output` pixels from `references`.
    pub fn plan_inputs(
        &self,
        output: (usize, usize),
        references: Vec<(usize, usize)>,
        limits: DeviceLimits,
    ) -> PlanInputs {
        PlanInputs {
            flux: self.flux_config.clone(),
            dit: DitWeights::DeviceBytes(self.part_bytes.dit),
            t5: self.t5_config.clone(),
            t5_bytes: self.part_bytes.t5,
            clip_bytes: self.part_bytes.clip,
            vae: self.vae_config.clone(),
            vae_bytes: self.part_bytes.vae,
            limits,
            output,
            references,
            text_tokens: T5_TOKENS,
            modulation_precomputed: true,
            residency: None,
            cached_residuals: 0,
            masked: false,
            adapter_bytes: self.flux.adapter_bytes() as u64,
        }
    }

    /// Uploads the parts [`KontextModel::residency`] keeps between phases.
    pub fn upload_kept(&mut self, device: &Device) -> Result<()> {
        let r = self.residency;
        if r.keep_dit && !r.stream_dit {
            self.upload_dit(if r.release_modulation_weights { Layers::Core } else { Layers::All }, device)?;
        }
        if r.keep_vae {
            self.upload_vae(device)?;
        }
        if r.keep_text_encoders {
            self.upload_t5_and_clip(device)?;
        }
        self.check_device(UPLOADING_THE_MODEL, device)?;
        self.meter.sample(device, "load");
        Ok(())
    }

    /// Makes the device hold what `phase` uses and what the residency keeps: everything else is released and
    /// its pages returned to the driver first, then the missing parts are uploaded.
    pub fn enter(&mut self, phase: PlanPhase, device: &Device) -> Result<()> {
        let r = self.residency;
        if let Some((label, _)) = self.meter.by_label.last() {
            let label = label.clone();
            self.check_device(if label == "load" { UPLOADING_THE_MODEL } else { &label }, device)?;
            self.meter.sample(device, &label);
        }
        let uses_dit = matches!(phase, PlanPhase::Modulations | PlanPhase::Denoising);
        let mut freed = false;
        if !r.keep_text_encoders && phase != PlanPhase::TextEncoding {
            freed |= self.t5.release() | self.clip.release();
        }
        if !r.keep_vae && !matches!(phase, PlanPhase::ReferenceEncoding | PlanPhase::Decoding) {
            freed |= self.vae.release();
        }
        if (!r.keep_dit || r.stream_dit) && !uses_dit {
            freed |= self.flux.release(Layers::All);
        }
        if phase == PlanPhase::Denoising && r.release_modulation_weights {
            freed |= self.flux.release(Layers::Modulation);
        }
        if freed {
            crate::device::release_free_pages(device);
        }
        match phase {
            PlanPhase::TextEncoding => self.upload_t5_and_clip(device)?,
            PlanPhase::ReferenceEncoding | PlanPhase::Decoding => self.upload_vae(device)?,
            PlanPhase::Modulations if r.stream_dit => {
                self.upload_dit(Layers::Modulation, device)?;
                self.upload_dit(Layers::Unstreamed, device)?;
            }
            PlanPhase::Modulations => self.upload_dit(Layers::All, device)?,
            PlanPhase::Denoising if !r.stream_dit => self.upload_dit(Layers::Core, device)?,
            PlanPhase::Denoising => {}
        }
        self.check_device(&format!("the upload of the weights for {}", phase.label()), device)?;
        self.meter.sample(device, phase.label());
        Ok(())
    }

    /// The DiT's weights, to stream its blocks when [`Residency::stream_dit`].
    pub fn streamed_weights(&self) -> Option<&dyn Weights> {
        self.residency.stream_dit.then_some(self.transformer_weights.as_ref())
    }

    /// T5 tokens and the pooled CLIP vector of `prompt`: from the cache, else encoded (the encoders uploaded for
    /// it, and released after when the residency does not keep them).
    pub fn encode_text(&mut self, prompt: &str, device: &Device) -> Result<TextConditioning> {
        if let Some(at) = self.text_cache.iter().position(|(cached, _)| cached == prompt) {
            let entry = self.text_cache.remove(at);
            self.text_cache.push(entry.clone());
            return Ok(entry.1);
        }
        let t5_ids = self.t5_tokenizer.encode(prompt, T5_TOKENS)?;
        let clip_ids = self.clip_tokenizer.encode(prompt)?;
        self.enter(PlanPhase::TextEncoding, device)?;
        let t5 = self.t5.get(device)?.forward(&t5_ids, device)?;
        let (_, pooled) = self.clip.get(device)?.forward(&clip_ids, device)?;
        let text = TextConditioning { t5, pooled };
        if self.text_cache.len() == CACHED_PROMPTS {
            self.text_cache.remove(0);
        }
        self.text_cache.push((prompt.to_string(), text.clone()));
        Ok(text)
    }

    /// The scaled latent `[1, 16, h/8, w/8]` of a reference already resized to its encoding size: from the cache
    /// when the same pixels were encoded lately (a re-run, or a chain of edits that keeps its references), else
    /// through the VAE encoder (uploaded for it, in [`PlanPhase::ReferenceEncoding`]).
    pub fn encode_reference(&mut self, image: &RgbImage, device: &Device) -> Result<Tensor<4>> {
        let mut hasher = Sha256::new();
        hasher.update((image.width() as u64).to_le_bytes());
        hasher.update((image.height() as u64).to_le_bytes());
        hasher.update(image.as_raw());
        let key: [u8; 32] = hasher.finalize().into();
        if let Some(at) = self.reference_cache.iter().position(|(cached, _)| *cached == key) {
            let entry = self.reference_cache.remove(at);
            self.reference_cache.push(entry.clone());
            return Ok(entry.1);
        }
        self.enter(PlanPhase::ReferenceEncoding, device)?;
        let latent = kontext::encode_reference(self.vae.get(device)?, images::to_tensor(image, device))?;
        self.references_encoded += 1;
        if self.reference_cache.len() == CACHED_REFERENCES {
            self.reference_cache.remove(0);
        }
        self.reference_cache.push((key, latent.clone()));
        Ok(latent)
    }

    /// References run through the VAE encoder since the model was opened (cache hits not counted).
    pub fn references_encoded(&self) -> usize {
        self.references_encoded
    }

    /// The VAE, uploaded first if it is not on the device.
    pub fn vae(&mut self, device: &Device) -> Result<&Vae> {
        self.vae.get(device)
    }

    /// Loads the DiT's modulation layers again if they were released.
    pub fn restore_modulation_weights(&mut self, device: &Device) -> Result<()> {
        self.flux.reload(Layers::Modulation, self.transformer_weights.as_ref(), device)
    }
}

/// What [`KontextModel::check_device`] says was under way while the model's kept parts were uploaded.
pub const UPLOADING_THE_MODEL: &str = "the upload of the model's weights";

/// The two container formats, told apart by their first bytes.
enum Container {
    Gguf(GgufFile),
    Safetensors(SafetensorsFile),
}

/// Opens a weight file as GGUF or safetensors by its magic; the readers' errors already name the file.
fn open_container(source: Box<dyn ByteSource>) -> Result<Container> {
    let magic = if source.len() >= 4 { source.read_at(0, 4)? } else { Vec::new() };
    if magic == b"GGUF" {
        GgufFile::open(source).map(Container::Gguf)
    } else {
        SafetensorsFile::open(source).map(Container::Safetensors)
    }
}

/// A diffusers component's weights: `{dir}/{stem}.safetensors`, or shards listed in `{stem}.safetensors.index.json`.
fn component_weights(files: &dyn ModelFiles, dir: &str, stem: &str) -> Result<Option<Box<dyn Weights>>> {
    if let Some(source) = files.open(&format!("{dir}/{stem}.safetensors"))? {
        return Ok(Some(Box::new(SafetensorsFile::open(source)?)));
    }
    let index_path = format!("{dir}/{stem}.safetensors.index.json");
    let Some(index) = files.read_text(&index_path)? else { return Ok(None) };
    let mut shards = std::collections::HashMap::new();
    for shard in ShardedSafetensors::shard_names(&index)? {
        let source = files
            .open(&format!("{dir}/{shard}"))?
            .ok_or_else(|| Error::Invalid(format!("{index_path} lists {shard}, which is missing")))?;
        shards.insert(shard, source);
    }
    Ok(Some(Box::new(ShardedSafetensors::open(&index, shards)?)))
}

fn missing(part: &str, file: &str, flag: &str, folder_path: &str) -> Error {
    Error::MissingPart { part: part.into(), file: file.into(), flag: flag.into(), folder_path: folder_path.into() }
}

/// The DiT from `--transformer` (BFL/diffusers safetensors or GGUF) or `transformer/`; the configuration is
/// inferred from the tensor shapes and reconciled with `transformer/config.json` when the folder has one.
pub fn load_transformer(
    files: &dyn ModelFiles,
    file: Option<Box<dyn ByteSource>>,
    device: &Device,
) -> Result<(Flux, FluxConfig)> {
    let (weights, config) = transformer_weights(files, file)?;
    Ok((Flux::load(&config, weights.as_ref(), device)?, config))
}

/// The DiT's weights under BFL names (diffusers checkpoints through the remap table) and its configuration.
fn transformer_weights(
    files: &dyn ModelFiles,
    file: Option<Box<dyn ByteSource>>,
) -> Result<(Box<dyn Weights>, FluxConfig)> {
    let weights: Box<dyn Weights> = match file {
        Some(source) => match open_container(source)? {
            Container::Gguf(gguf) => Box::new(gguf),
            Container::Safetensors(st) => Box::new(st),
        },
        None => component_weights(files, "transformer", "diffusion_pytorch_model")?.ok_or_else(|| {
            missing(
                "transformer",
                "a transformer file (BFL safetensors or a Flux GGUF)",
                "--transformer",
                "transformer/diffusion_pytorch_model.safetensors",
            )
        })?,
    };
    let shapes = crate::model::flux::infer::tensor_shapes(weights.as_ref());
    let mut config = crate::model::flux::infer::infer_flux_config(&shapes)?;
    if let Some(json) = files.read_text("transformer/config.json")? {
        config = config.reconcile(FluxConfig::from_diffusers_json(&json)?)?;
    }
    let is_diffusers = shapes.iter().any(|(name, _)| name.contains("transformer_blocks."));
    Ok((if is_diffusers { Box::new(DiffusersAsBfl::new(weights)) } else { weights }, config))
}

/// T5 from `--t5` (a llama.cpp GGUF with its tokenizer, or transformers safetensors) or `text_encoder_2/`,
/// resolved and uploaded on first use.
pub fn load_t5(
    files: &dyn ModelFiles,
    file: Option<Box<dyn ByteSource>>,
    device: &Device,
) -> Result<(Reloadable<T5Encoder>, T5Tokenizer)> {
    let (t5, _, tokenizer, _) = load_t5_deferred(files, file, None, device)?;
    Ok((t5, tokenizer))
}

/// Whether `name` is a token table the text encoders keep on the host ([`crate::model::layers::HostEmbedding`]).
fn is_host_table(name: &str) -> bool {
    ["shared.", "embed_tokens.", "token_embd.", "token_embedding."].iter().any(|table| name.contains(table))
}

const T5_TOKENIZER_FILES: &str = "tokenizer_2/tokenizer.json or tokenizer_2/spiece.model";

/// [`load_t5`] with T5's configuration and its planned device bytes.
fn load_t5_deferred(
    files: &dyn ModelFiles,
    file: Option<Box<dyn ByteSource>>,
    meter: Option<&Rc<UploadMeter>>,
    device: &Device,
) -> Result<(Reloadable<T5Encoder>, T5Config, T5Tokenizer, u64)> {
    let no_tokenizer = || missing("T5 tokenizer", "a T5 GGUF, which carries its tokenizer", "--t5", T5_TOKENIZER_FILES);
    let (config, weights, tokenizer): (T5Config, Box<dyn Weights>, T5Tokenizer) = match file.map(open_container) {
        Some(Ok(Container::Gguf(gguf))) => {
            let tokenizer = match folder_t5_tokenizer(files)? {
                Some(tokenizer) => tokenizer,
                None => t5_tokenizer_from_gguf(&gguf)?,
            };
            let arch =
                gguf.metadata("general.architecture").and_then(|v| v.as_str()).unwrap_or("t5encoder").to_string();
            let vocab = gguf
                .shape("token_embd.weight")
                .map(|s| s[0])
                .ok_or_else(|| Error::Invalid("the T5 GGUF has no token_embd".into()))?;
            let config = T5Config::from_gguf_kv(&arch, |key| gguf.metadata(key).and_then(number), vocab)?;
            (config, Box::new(LlamaCppT5Names::new(gguf)), tokenizer)
        }
        // A single transformers-named file (ComfyUI's `t5xxl_fp16.safetensors`): config from the shapes.
        Some(Ok(Container::Safetensors(st))) => {
            let tokenizer = folder_t5_tokenizer(files)?.ok_or_else(no_tokenizer)?;
            let config = match files.read_text("text_encoder_2/config.json")? {
                Some(json) => T5Config::from_hf_json(&json)?,
                None => T5Config::from_weights(&st)?,
            };
            (config, Box::new(st), tokenizer)
        }
        Some(Err(e)) => return Err(e),
        None => {
            let weights = component_weights(files, "text_encoder_2", "model")?.ok_or_else(|| {
                missing("T5 encoder", "a T5 GGUF or safetensors file", "--t5", "text_encoder_2/model.safetensors")
            })?;
            let config = match files.read_text("text_encoder_2/config.json")? {
                Some(json) => T5Config::from_hf_json(&json)?,
                None => T5Config::from_weights(weights.as_ref())?,
            };
            (config, weights, folder_t5_tokenizer(files)?.ok_or_else(no_tokenizer)?)
        }
    };
    let bytes = planned_device_bytes(weights.as_ref(), device, |name| !is_host_table(name));
    let weights = metered(weights, meter, device);
    let load_config = config.clone();
    let t5 = Reloadable::deferred(move |device| T5Encoder::load(&load_config, weights.as_ref(), device));
    Ok((t5, config, tokenizer, bytes))
}

fn number(value: &crate::formats::GgufValue) -> Option<f64> {
    value.as_f32().map(f64::from).or_else(|| value.as_u64().map(|v| v as f64))
}

fn folder_t5_tokenizer(files: &dyn ModelFiles) -> Result<Option<T5Tokenizer>> {
    if let Some(source) = files.open("tokenizer_2/tokenizer.json")? {
        return T5Tokenizer::from_tokenizer_json(&read_all(source.as_ref())?).map(Some);
    }
    if let Some(source) = files.open("tokenizer_2/spiece.model")? {
        return T5Tokenizer::from_spiece_model(&read_all(source.as_ref())?).map(Some);
    }
    Ok(None)
}

/// The SentencePiece vocabulary llama.cpp stores in a T5 GGUF (`tokenizer.ggml.*`).
pub fn t5_tokenizer_from_gguf(gguf: &GgufFile) -> Result<T5Tokenizer> {
    let key = |name: &str| gguf.metadata(&format!("tokenizer.ggml.{name}"));
    let need =
        |name: &str| key(name).ok_or_else(|| Error::Invalid(format!("the T5 GGUF has no tokenizer.ggml.{name}")));
    let tokens = need("tokens")?
        .as_array()
        .and_then(|a| a.as_strings())
        .ok_or_else(|| Error::Invalid("tokenizer.ggml.tokens is not a string array".into()))?
        .to_vec();
    let scores = need("scores")?
        .as_array()
        .and_then(|a| a.as_f32s())
        .ok_or_else(|| Error::Invalid("tokenizer.ggml.scores is not an f32 array".into()))?
        .to_vec();
    let types = need("token_type")?
        .as_array()
        .and_then(|a| a.as_i32s())
        .ok_or_else(|| Error::Invalid("tokenizer.ggml.token_type is not an i32 array".into()))?
        .to_vec();
    let charsmap = key("precompiled_charsmap")
        .and_then(|v| v.as_array())
        .and_then(|a| a.as_bytes())
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    let flag = |name: &str, default: bool| key(name).and_then(|v| v.as_bool()).unwrap_or(default);
    let id = |name: &str, default: u32| key(name).and_then(|v| v.as_u64()).map(|v| v as u32).unwrap_or(default);
    T5Tokenizer::from_gguf_vocab(
        tokens,
        scores,
        types,
        charsmap,
        flag("add_space_prefix", true),
        flag("remove_extra_whitespaces", true),
        id("eos_token_id", 1),
        id("unknown_token_id", 2),
        id("padding_token_id", 0),
    )
}

/// Tokens of CLIP-L, whose tokenizer is built in ([`ClipTokenizer::clip_l`]).
const CLIP_L_VOCAB: usize = 49408;

/// CLIP-L from `--clip` (`clip_l.safetensors`) or `text_encoder/`, uploaded on first use; the tokenizer from
/// `tokenizer/`, or the built-in CLIP-L one when the file set has none (ComfyUI's).
pub fn load_clip(
    files: &dyn ModelFiles,
    file: Option<Box<dyn ByteSource>>,
    device: &Device,
) -> Result<(Reloadable<ClipTextTransformer>, ClipTokenizer)> {
    let (clip, tokenizer, _) = load_clip_deferred(files, file, None, device)?;
    Ok((clip, tokenizer))
}

/// [`load_clip`] with CLIP's planned device bytes.
fn load_clip_deferred(
    files: &dyn ModelFiles,
    file: Option<Box<dyn ByteSource>>,
    meter: Option<&Rc<UploadMeter>>,
    device: &Device,
) -> Result<(Reloadable<ClipTextTransformer>, ClipTokenizer, u64)> {
    let weights: Box<dyn Weights> = match file {
        Some(source) => match open_container(source)? {
            Container::Safetensors(st) => Box::new(st),
            Container::Gguf(_) => {
                return Err(Error::Invalid("CLIP as GGUF is not supported; use clip_l.safetensors".into()));
            }
        },
        None => component_weights(files, "text_encoder", "model")?.ok_or_else(|| {
            missing("CLIP text encoder", "clip_l.safetensors", "--clip", "text_encoder/model.safetensors")
        })?,
    };
    let config = match files.read_text("text_encoder/config.json")? {
        Some(json) => ClipTextConfig::from_hf_json(&json)?,
        None => ClipTextConfig::from_weights(weights.as_ref(), CLIP_HEAD_DIM)?,
    };
    let tokenizer = match (files.read_text("tokenizer/vocab.json")?, files.read_text("tokenizer/merges.txt")?) {
        (Some(vocab), Some(merges)) => ClipTokenizer::from_vocab_merges(&vocab, &merges)?,
        _ => match files.open("tokenizer/tokenizer.json")? {
            Some(source) => ClipTokenizer::from_tokenizer_json(&read_all(source.as_ref())?)?,
            None if config.vocab_size == CLIP_L_VOCAB => ClipTokenizer::clip_l()?,
            None => {
                return Err(Error::Invalid(format!(
                    "this CLIP has {} tokens, not CLIP-L's {CLIP_L_VOCAB}: its tokenizer/vocab.json and \
                     tokenizer/merges.txt are needed",
                    config.vocab_size
                )));
            }
        },
    };
    let bytes = planned_device_bytes(weights.as_ref(), device, |name| !is_host_table(name));
    let weights = metered(weights, meter, device);
    let clip = Reloadable::deferred(move |device| ClipTextTransformer::load(&config, weights.as_ref(), device));
    Ok((clip, tokenizer, bytes))
}

/// The VAE from `--vae` (BFL `ae.safetensors` or diffusers) or `vae/`. Group-norm groups cannot be seen in
/// shapes: they come from `vae/config.json` when the folder has one, else Flux's 32.
pub fn load_vae(files: &dyn ModelFiles, file: Option<Box<dyn ByteSource>>, device: &Device) -> Result<Vae> {
    let (mut vae, _, _) = load_vae_deferred(files, file, None, device)?;
    vae.get(device)?;
    vae.network.take().ok_or_else(|| Error::Invalid("the VAE did not load".into()))
}

/// The VAE resolved (configuration and planned device bytes), uploaded on first use.
fn load_vae_deferred(
    files: &dyn ModelFiles,
    file: Option<Box<dyn ByteSource>>,
    meter: Option<&Rc<UploadMeter>>,
    device: &Device,
) -> Result<(Reloadable<Vae>, VaeConfig, u64)> {
    let weights: Box<dyn Weights> = match file {
        Some(source) => match open_container(source)? {
            Container::Safetensors(st) => Box::new(st),
            Container::Gguf(_) => {
                return Err(Error::Invalid("a VAE as GGUF is not supported; use ae.safetensors".into()));
            }
        },
        None => component_weights(files, "vae", "diffusion_pytorch_model")?
            .ok_or_else(|| missing("VAE", "ae.safetensors", "--vae", "vae/diffusion_pytorch_model.safetensors"))?,
    };
    let folder_config =
        files.read_text("vae/config.json")?.map(|json| VaeConfig::from_diffusers_json(&json)).transpose()?;
    let ldm = LdmVaeWeights::is_ldm(weights.as_ref());
    let config = match (ldm, folder_config) {
        (true, folder) => {
            let config = VaeConfig::infer(&LdmVaeWeights::new(weights.as_ref())?)?;
            match folder {
                Some(folder) => config.with_norm_num_groups(folder.norm_num_groups),
                None => config,
            }
        }
        (false, Some(config)) => config,
        (false, None) => VaeConfig::infer(weights.as_ref())?,
    };
    let bytes = planned_device_bytes(weights.as_ref(), device, |_| true);
    let weights = metered(weights, meter, device);
    let load_config = config.clone();
    let vae = Reloadable::deferred(move |device| match ldm {
        true => Vae::load(&load_config, &LdmVaeWeights::new(weights.as_ref())?, device),
        false => Vae::load(&load_config, weights.as_ref(), device),
    });
    Ok((vae, config, bytes))
}

/// A model folder held in memory (fetched files, or files the user picked), keyed by relative path.
#[derive(Default)]
pub struct MemoryFiles(pub std::collections::HashMap<String, std::sync::Arc<Vec<u8>>>);

impl ModelFiles for MemoryFiles {
    fn open(&self, path: &str) -> Result<Option<Box<dyn ByteSource>>> {
        Ok(self.0.get(path).map(|bytes| Box::new(bytes.clone()) as Box<dyn ByteSource>))
    }
}

/// The files of a diffusers-layout folder that [`KontextModel::load`] reads (single-file weights, not shards).
pub const DIFFUSERS_FILES: [&str; 11] = [
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer_2/tokenizer.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
];
