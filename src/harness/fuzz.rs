//! Entry points of the fuzz targets (`tests/fuzz/`): each takes arbitrary bytes and drives one reader of
//! untrusted input as the app does — open, inspect, read tensors, build and use a tokenizer. They return the
//! reader's verdict; a panic, a hang or an allocation beyond what the input implies is the finding.
//! `tests/fuzz_corpus.rs` replays the committed corpora through the same functions on stable Rust.

use std::collections::HashMap;

use crate::formats::weights::Weights;
use crate::formats::{ByteSource, GgufFile, SafetensorsFile, ShardedSafetensors};
use crate::model::FluxConfig;
use crate::model::flux::infer::infer_flux_config;
use crate::model::inspect::{inspect_gguf, inspect_safetensors, inspect_sharded};
use crate::model::vae::config::VaeConfig;
use crate::pipeline::tokenizer::{ClipTokenizer, T5Tokenizer};
use crate::store::manifest::Manifest;
use crate::{Error, Result};

/// Tensors read per input: enough to reach every tensor of a small file, few enough to keep runs fast.
const MAX_TENSORS_READ: usize = 64;
/// Largest tensor (elements) a target dequantizes; larger ones are inspected only.
const MAX_ELEMENTS_READ: u64 = 1 << 20;
/// Largest image a target decodes (the app's limit is 64 MP; the check is the same code).
const MAX_FUZZ_PIXELS: u64 = 1 << 20;
/// Prompts every tokenizer built from fuzzed data must encode (or refuse) without panicking.
const PROMPTS: [&str; 3] = ["put her in a rainy Tokyo street at night", "", "ünïcödé 東京 <|endoftext|> </s> \u{0}"];

/// A GGUF file: header and metadata, inspection (architecture, config from shapes), every small tensor read
/// and dequantized, and the T5 tokenizer llama.cpp embeds, when present.
pub fn gguf(data: &[u8]) -> Result<()> {
    let file = GgufFile::open(data.to_vec())?;
    let _ = inspect_gguf(&file);
    read_small_tensors(&file);
    if file.metadata("tokenizer.ggml.tokens").is_some() {
        let tokenizer = crate::pipeline::loader::t5_tokenizer_from_gguf(&file)?;
        for prompt in PROMPTS {
            let _ = tokenizer.encode(prompt, 32);
        }
    }
    Ok(())
}

/// A safetensors file: header, inspection and every small tensor read.
pub fn safetensors(data: &[u8]) -> Result<()> {
    let file = SafetensorsFile::open(data.to_vec())?;
    let _ = inspect_safetensors(&file, None);
    read_small_tensors(&file);
    Ok(())
}

/// A `*.safetensors.index.json`: its shard list, then the sharded checkpoint over small valid shards (each
/// shard the index names holds one tensor of its own), inspected and read.
pub fn safetensors_index(data: &[u8]) -> Result<()> {
    let json = std::str::from_utf8(data).map_err(|_| Error::Invalid("the index is not UTF-8".into()))?;
    let names = ShardedSafetensors::shard_names(json)?;
    let shards: HashMap<String, Box<dyn ByteSource>> = names
        .iter()
        .take(16)
        .enumerate()
        .map(|(i, name)| (name.clone(), Box::new(one_tensor_safetensors(&format!("t{i}"))) as Box<dyn ByteSource>))
        .collect();
    let file = ShardedSafetensors::open(json, shards)?;
    let _ = inspect_sharded(&file, None);
    read_small_tensors(&file);
    Ok(())
}

/// Configuration: a diffusers `config.json` for the transformer or the VAE, or a JSON list of
/// `[name, shape]` pairs from which the Flux configuration is inferred (and reconciled with the JSON's
/// transformer config when both parse).
pub fn config(data: &[u8]) -> Result<()> {
    let json = std::str::from_utf8(data).map_err(|_| Error::Invalid("the config is not UTF-8".into()))?;
    let declared = FluxConfig::from_diffusers_json(json);
    if let Ok(vae) = VaeConfig::from_diffusers_json(json) {
        let _ = vae.validate();
    }
    if let Ok(shapes) = serde_json::from_str::<Vec<(String, Vec<usize>)>>(json) {
        let inferred = infer_flux_config(&shapes)?;
        let _ = (inferred.head_dim(), inferred.mlp_hidden());
        if let Ok(declared) = declared {
            inferred.reconcile(declared)?;
        }
        return Ok(());
    }
    declared.map(|_| ())
}

/// Tokenizer files, by the first byte: 0 = CLIP `vocab.json` NUL `merges.txt`, 1 = CLIP `tokenizer.json`,
/// 2 = T5 `tokenizer.json`, 3 = T5 `spiece.model`. Each built tokenizer encodes a few prompts.
pub fn tokenizer(data: &[u8]) -> Result<()> {
    let Some((&kind, rest)) = data.split_first() else { return Ok(()) };
    match kind % 4 {
        0 => {
            let text = std::str::from_utf8(rest).map_err(|_| Error::Invalid("not UTF-8".into()))?;
            let (vocab, merges) = text.split_once('\0').unwrap_or((text, ""));
            encode_clip(&ClipTokenizer::from_vocab_merges(vocab, merges)?);
        }
        1 => encode_clip(&ClipTokenizer::from_tokenizer_json(rest)?),
        2 => encode_t5(&T5Tokenizer::from_tokenizer_json(rest)?),
        _ => encode_t5(&T5Tokenizer::from_spiece_model(rest)?),
    }
    Ok(())
}

/// A model-store manifest as read back from IndexedDB: parsed and validated; a valid one must survive a JSON
/// round trip unchanged and answer every range and chunk query without panicking.
pub fn manifest(data: &[u8]) -> Result<()> {
    let json = std::str::from_utf8(data).map_err(|_| Error::Invalid("the manifest is not UTF-8".into()))?;
    let manifest = Manifest::from_json(json)?;
    let again = Manifest::from_json(&manifest.to_json()).expect("a valid manifest must read back");
    assert_eq!(again.to_json(), manifest.to_json(), "the manifest changed in a JSON round trip");
    let _ = (manifest.total_bytes(), manifest.stored_bytes(), manifest.missing_bytes());
    for file in &manifest.files {
        let _ = (file.missing_runs(), file.state(), file.stored_bytes(), file.is_complete());
        for index in [0, file.chunks.len().saturating_sub(1), file.chunks.len()] {
            let _ = file.chunk_span(index);
        }
        for (offset, len) in
            [(0, 1), (file.size / 2, 4096), (file.size.saturating_sub(1), 1), (file.size, 1), (u64::MAX, 1)]
        {
            if let Ok(spans) = file.chunks_for_range(offset, len) {
                let covered: u64 = spans.iter().map(|&(_, _, span_len)| span_len).sum();
                assert_eq!(covered, len.min(file.size.saturating_sub(offset)), "chunk spans do not cover the range");
            }
        }
        let _ = manifest.file(&file.path);
    }
    Ok(())
}

/// Image bytes through the app's decoder (header checks first, then a decode bounded by the header's size).
pub fn image(data: &[u8]) -> Result<()> {
    let image = crate::pipeline::image::decode_within(data, MAX_FUZZ_PIXELS)?;
    assert!(image.width() > 0 && image.height() > 0 && image.width() as u64 * image.height() as u64 <= MAX_FUZZ_PIXELS);
    Ok(())
}

/// A LoRA file (adapters are shared online, so untrusted) resolved against the tiny Flux model of
/// `tests/fixtures/tiny` on the CPU, as the worker does when the user adds one.
#[cfg(not(target_arch = "wasm32"))]
pub fn lora(data: &[u8]) -> Result<()> {
    use crate::model::flux::Flux;
    use crate::model::layers::LoraAdapter;
    thread_local! {
        static MODEL: Flux = {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny/bfl_gguf/transformer_bfl.safetensors");
            let weights = SafetensorsFile::open(crate::formats::FileSource::open(path).expect("the tiny DiT fixture"))
                .expect("the tiny DiT fixture");
            Flux::load(&FluxConfig::tiny(), &weights, &crate::device::cpu()).expect("the tiny DiT fixture")
        };
    }
    MODEL.with(|model| LoraAdapter::read(data.to_vec(), model).map(|_| ()))
}

/// A fuzz target's body: reads one input, returning an error (never panicking) for bad ones.
pub type Target = fn(&[u8]) -> Result<()>;

/// The fuzz targets by name, for the corpus replay.
#[cfg(not(target_arch = "wasm32"))]
pub const TARGETS: [(&str, Target); 8] = [
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("safetensors_index", safetensors_index),
    ("config", config),
    ("tokenizer", tokenizer),
    ("manifest", manifest),
    ("image", image),
    ("lora", lora),
];

fn read_small_tensors(weights: &dyn Weights) {
    for name in weights.names().into_iter().take(MAX_TENSORS_READ) {
        let small = weights.shape(&name).is_some_and(|shape| {
            shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64)).is_some_and(|n| n <= MAX_ELEMENTS_READ)
        });
        if small && let Ok(tensor) = weights.read(&name) {
            assert_eq!(tensor.data.len() as u64, tensor.shape.iter().map(|&d| d as u64).product::<u64>());
        }
    }
}

fn one_tensor_safetensors(name: &str) -> Vec<u8> {
    let header = format!(r#"{{"{name}":{{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}}}"#);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0; 8]);
    bytes
}

fn encode_clip(tokenizer: &ClipTokenizer) {
    for prompt in PROMPTS {
        if let Ok(ids) = tokenizer.encode(prompt) {
            assert_eq!(ids.len(), crate::pipeline::tokenizer::CLIP_MAX_LEN, "CLIP ids are padded to 77");
        }
    }
}

fn encode_t5(tokenizer: &T5Tokenizer) {
    for prompt in PROMPTS {
        if let Ok(ids) = tokenizer.encode(prompt, 32) {
            assert_eq!(ids.len(), 32, "T5 ids are padded to the requested length");
        }
    }
}
