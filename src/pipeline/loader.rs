//! Loading a whole Kontext model from the files people have: a diffusers-layout folder, and/or single files
//! that replace its parts (a BFL or GGUF transformer, a T5 GGUF, `clip_l.safetensors`, `ae.safetensors`).
//!
//! Files are reached through [`ModelFiles`] (a folder natively, stored chunks in the browser) and
//! [`ByteSource`]s, so this module never touches `std::fs` and runs unchanged in the browser.

use burn::tensor::Device;

use crate::formats::weights::Weights;
use crate::formats::{ByteSource, GgufFile, SafetensorsFile, ShardedSafetensors};
use crate::model::FluxConfig;
use crate::model::clip::{CLIP_HEAD_DIM, ClipTextConfig, ClipTextTransformer};
use crate::model::flux::Flux;
use crate::model::flux::remap::DiffusersAsBfl;
use crate::model::t5::{LlamaCppT5Names, T5Config, T5Encoder};
use crate::model::vae::Vae;
use crate::model::vae::config::VaeConfig;
use crate::model::vae::remap::LdmVaeWeights;
use crate::pipeline::kontext::T5_TOKENS;
use crate::pipeline::kontext::TextConditioning;
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

/// What is freed from the device between uses, to fit a model into a browser's GPU memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPolicy {
    /// Free T5 and CLIP after encoding a prompt (its embeddings stay cached); they load again for a new prompt.
    pub release_text_encoders: bool,
    /// Free the DiT's modulation layers (3.2 B of 11.9 B parameters) once every step's modulations are
    /// computed; they load again for the next edit.
    pub release_modulation_weights: bool,
}

impl MemoryPolicy {
    /// Everything stays resident (small models, the CPU).
    pub const KEEP_ALL: Self = Self { release_text_encoders: false, release_modulation_weights: false };
    /// Free all that can be freed (what [`crate::pipeline::plan::MemoryPlan`] assumes when no budget is known).
    pub const LEAN: Self = Self { release_text_encoders: true, release_modulation_weights: true };

    /// Lean when the DiT's weights take a gigabyte or more of a GPU, else everything stays: reloading costs a
    /// re-upload per edit, worth it only where memory is short.
    pub fn auto(device: &Device, dit_device_bytes: usize) -> Self {
        let gpu = crate::device::max_binding_bytes(device) != u64::MAX;
        if gpu && dit_device_bytes >= 1 << 30 { Self::LEAN } else { Self::KEEP_ALL }
    }
}

/// Builds a network on a device (again) from the weights it captured.
pub type Builder<M> = Box<dyn Fn(&Device) -> Result<M>>;

/// A network that can be freed from the device after use and built again from its weights.
pub struct Reloadable<M> {
    network: Option<M>,
    load: Builder<M>,
}

impl<M> Reloadable<M> {
    /// `network`, which `load` builds again after [`Reloadable::release`].
    pub fn new(network: M, load: impl Fn(&Device) -> Result<M> + 'static) -> Self {
        Self { network: Some(network), load: Box::new(load) }
    }

    /// The network, loaded again first if it was released.
    pub fn get(&mut self, device: &Device) -> Result<&M> {
        if self.network.is_none() {
            self.network = Some((self.load)(device)?);
        }
        Ok(self.network.as_ref().expect("loaded above"))
    }

    /// Frees the network (its GPU buffers go when the last tensor does).
    pub fn release(&mut self) {
        self.network = None;
    }

    /// Whether the network is on the device.
    pub fn is_resident(&self) -> bool {
        self.network.is_some()
    }
}

/// Prompts whose text conditioning is kept, so repeated edits skip the text encoders.
const CACHED_PROMPTS: usize = 4;

/// Every network and tokenizer of FLUX.1 Kontext, loaded on one device.
pub struct KontextModel {
    /// The DiT.
    pub flux: Flux,
    /// The DiT's configuration.
    pub flux_config: FluxConfig,
    /// The DiT's weights as read (headers and sources), to load released layers again.
    transformer_weights: Box<dyn Weights>,
    /// T5 v1.1 encoder.
    pub t5: Reloadable<T5Encoder>,
    /// CLIP-L text encoder.
    pub clip: Reloadable<ClipTextTransformer>,
    /// The autoencoder.
    pub vae: Vae,
    /// CLIP BPE tokenizer.
    pub clip_tokenizer: ClipTokenizer,
    /// T5 SentencePiece tokenizer.
    pub t5_tokenizer: T5Tokenizer,
    /// What is freed between uses.
    pub memory: MemoryPolicy,
    /// Text conditioning of the last prompts, most recent last.
    text_cache: Vec<(String, TextConditioning)>,
}

impl KontextModel {
    /// Loads every part, each from its override when given, else from the folder.
    pub fn load(files: &dyn ModelFiles, overrides: Overrides, device: &Device) -> Result<Self> {
        let (transformer_weights, flux_config) = transformer_weights(files, overrides.transformer)?;
        let flux = Flux::load(&flux_config, transformer_weights.as_ref(), device)?;
        let (t5, t5_tokenizer) = load_t5(files, overrides.t5, device)?;
        let (clip, clip_tokenizer) = load_clip(files, overrides.clip, device)?;
        let vae = load_vae(files, overrides.vae, device)?;
        let memory = MemoryPolicy::auto(device, flux.device_bytes());
        Ok(Self {
            flux,
            flux_config,
            transformer_weights,
            t5,
            clip,
            vae,
            clip_tokenizer,
            t5_tokenizer,
            memory,
            text_cache: Vec::new(),
        })
    }

    /// T5 tokens and the pooled CLIP vector of `prompt`: from the cache, else encoded (loading the encoders if
    /// they were released, and releasing them afterwards when the policy says so).
    pub fn encode_text(&mut self, prompt: &str, device: &Device) -> Result<TextConditioning> {
        if let Some(at) = self.text_cache.iter().position(|(cached, _)| cached == prompt) {
            let entry = self.text_cache.remove(at);
            self.text_cache.push(entry.clone());
            return Ok(entry.1);
        }
        let t5_ids = self.t5_tokenizer.encode(prompt, T5_TOKENS)?;
        let clip_ids = self.clip_tokenizer.encode(prompt)?;
        let t5 = self.t5.get(device)?.forward(&t5_ids, device)?;
        let (_, pooled) = self.clip.get(device)?.forward(&clip_ids, device)?;
        if self.memory.release_text_encoders {
            self.t5.release();
            self.clip.release();
        }
        let text = TextConditioning { t5, pooled };
        if self.text_cache.len() == CACHED_PROMPTS {
            self.text_cache.remove(0);
        }
        self.text_cache.push((prompt.to_string(), text.clone()));
        Ok(text)
    }

    /// Loads the DiT's modulation layers again if they were released.
    pub fn restore_modulation_weights(&mut self, device: &Device) -> Result<()> {
        if self.flux.modulation_weights_released() {
            self.flux.reload_modulation_weights(self.transformer_weights.as_ref(), device)?;
        }
        Ok(())
    }
}

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

fn missing(part: &str, flag: &str, folder_path: &str) -> Error {
    Error::Invalid(format!("no {part}: give {flag} FILE, or --model DIR with {folder_path}"))
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
            missing("transformer", "--transformer", "transformer/diffusion_pytorch_model.safetensors")
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

/// T5 from `--t5` (a llama.cpp GGUF with its tokenizer, or transformers safetensors) or `text_encoder_2/`.
pub fn load_t5(
    files: &dyn ModelFiles,
    file: Option<Box<dyn ByteSource>>,
    device: &Device,
) -> Result<(Reloadable<T5Encoder>, T5Tokenizer)> {
    if let Some(source) = file {
        match open_container(source)? {
            Container::Gguf(gguf) => {
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
                return Ok((reloadable_t5(config, Box::new(LlamaCppT5Names::new(gguf)), device)?, tokenizer));
            }
            // A single transformers-named file (ComfyUI's `t5xxl_fp16.safetensors`): config from the shapes.
            Container::Safetensors(st) => {
                let tokenizer = folder_t5_tokenizer(files)?.ok_or_else(|| {
                    missing(
                        "T5 tokenizer",
                        "--t5 as a GGUF (it carries one)",
                        "tokenizer_2/tokenizer.json or tokenizer_2/spiece.model",
                    )
                })?;
                let config = match files.read_text("text_encoder_2/config.json")? {
                    Some(json) => T5Config::from_hf_json(&json)?,
                    None => T5Config::from_weights(&st)?,
                };
                return Ok((reloadable_t5(config, Box::new(st), device)?, tokenizer));
            }
        }
    }
    let weights = component_weights(files, "text_encoder_2", "model")?
        .ok_or_else(|| missing("T5 encoder", "--t5", "text_encoder_2/model.safetensors"))?;
    let config = match files.read_text("text_encoder_2/config.json")? {
        Some(json) => T5Config::from_hf_json(&json)?,
        None => T5Config::from_weights(weights.as_ref())?,
    };
    let tokenizer = folder_t5_tokenizer(files)?.ok_or_else(|| {
        missing("T5 tokenizer", "--t5 (a GGUF carries one)", "tokenizer_2/tokenizer.json or tokenizer_2/spiece.model")
    })?;
    Ok((reloadable_t5(config, weights, device)?, tokenizer))
}

fn reloadable_t5(config: T5Config, weights: Box<dyn Weights>, device: &Device) -> Result<Reloadable<T5Encoder>> {
    let encoder = T5Encoder::load(&config, weights.as_ref(), device)?;
    Ok(Reloadable::new(encoder, move |device| T5Encoder::load(&config, weights.as_ref(), device)))
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

/// CLIP-L from `--clip` (`clip_l.safetensors`) or `text_encoder/`; the tokenizer from `tokenizer/`, or the built-in
/// CLIP-L one when the file set has none (ComfyUI's).
pub fn load_clip(
    files: &dyn ModelFiles,
    file: Option<Box<dyn ByteSource>>,
    device: &Device,
) -> Result<(Reloadable<ClipTextTransformer>, ClipTokenizer)> {
    let weights: Box<dyn Weights> = match file {
        Some(source) => match open_container(source)? {
            Container::Safetensors(st) => Box::new(st),
            Container::Gguf(_) => {
                return Err(Error::Invalid("CLIP as GGUF is not supported; use clip_l.safetensors".into()));
            }
        },
        None => component_weights(files, "text_encoder", "model")?
            .ok_or_else(|| missing("CLIP text encoder", "--clip", "text_encoder/model.safetensors"))?,
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
    let clip = ClipTextTransformer::load(&config, weights.as_ref(), device)?;
    Ok((Reloadable::new(clip, move |device| ClipTextTransformer::load(&config, weights.as_ref(), device)), tokenizer))
}

/// The VAE from `--vae` (BFL `ae.safetensors` or diffusers) or `vae/`. Group-norm groups cannot be seen in
/// shapes: they come from `vae/config.json` when the folder has one, else Flux's 32.
pub fn load_vae(files: &dyn ModelFiles, file: Option<Box<dyn ByteSource>>, device: &Device) -> Result<Vae> {
    let weights: Box<dyn Weights> = match file {
        Some(source) => match open_container(source)? {
            Container::Safetensors(st) => Box::new(st),
            Container::Gguf(_) => {
                return Err(Error::Invalid("a VAE as GGUF is not supported; use ae.safetensors".into()));
            }
        },
        None => component_weights(files, "vae", "diffusion_pytorch_model")?
            .ok_or_else(|| missing("VAE", "--vae", "vae/diffusion_pytorch_model.safetensors"))?,
    };
    let folder_config =
        files.read_text("vae/config.json")?.map(|json| VaeConfig::from_diffusers_json(&json)).transpose()?;
    if LdmVaeWeights::is_ldm(weights.as_ref()) {
        let renamed = LdmVaeWeights::new(weights.as_ref())?;
        let mut config = VaeConfig::infer(&renamed)?;
        if let Some(folder) = &folder_config {
            config = config.with_norm_num_groups(folder.norm_num_groups);
        }
        return Vae::load(&config, &renamed, device);
    }
    let config = match folder_config {
        Some(config) => config,
        None => VaeConfig::infer(weights.as_ref())?,
    };
    Vae::load(&config, weights.as_ref(), device)
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
