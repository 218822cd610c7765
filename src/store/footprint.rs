//! What a stored model will take before it is loaded: GPU bytes per part (from the safetensors headers, or
//! the GGUF file sizes), the WebAssembly memory the load passes through, and a [`MemoryPlan`] of an edit,
//! checked against the adapter's limits so a model that cannot fit is refused with the reason instead of
//! crashing the worker.

use serde_json::Value;

use super::manifest::{Role, human_bytes};
use crate::model::FluxConfig;
use crate::model::flux::infer::infer_flux_config;
use crate::model::t5::T5Config;
use crate::model::vae::config::VaeConfig;
use crate::pipeline::kontext::T5_TOKENS;
use crate::pipeline::plan::{DeviceLimits, DitWeights, MemoryPlan, PlanInputs};
use crate::{Error, Result};

/// WebAssembly memory a load may use (at most 4 GiB, and browsers often grant less). Files stream from the
/// store one tensor at a time, so a load takes [`Footprint::load_heap_bytes`], whatever the model's size.
pub const HEAP_LOAD_LIMIT: u64 = 2 << 30;
/// WebAssembly memory a load takes beyond twice its largest tensor (headers, configs, vocabularies).
pub const HEAP_LOAD_SLACK: u64 = 64 << 20;
/// The edit the estimate is made for: a 1024×1024 output from one 1024×1024 reference (the Quality preset).
pub const PLANNED_EDIT: (usize, usize) = (1024, 1024);
/// Most bytes of a safetensors header the estimate reads.
pub const MAX_HEADER_BYTES: u64 = 100 << 20;

/// Dense tensors of a safetensors file, from its header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSummary {
    /// Every tensor's name and shape.
    pub shapes: Vec<(String, Vec<usize>)>,
    /// Total element count.
    pub elements: u64,
    /// The tensor with the most elements, and that count.
    pub largest: Option<(String, u64)>,
}

/// The length of a safetensors header, from the file's first 8 bytes.
pub fn safetensors_header_len(first: &[u8], file: &str) -> Result<u64> {
    let bytes: [u8; 8] = first
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::Invalid(format!("{file} is too short to be a safetensors file")))?;
    let len = u64::from_le_bytes(bytes);
    if len == 0 || len > MAX_HEADER_BYTES {
        return Err(Error::Invalid(format!("{file}: a safetensors header of {len} bytes is not plausible")));
    }
    Ok(len)
}

/// Shapes and element counts from a safetensors header's JSON.
pub fn summarize_safetensors(header: &[u8], file: &str) -> Result<TensorSummary> {
    let json: Value = serde_json::from_slice(header)
        .map_err(|e| Error::Invalid(format!("{file}: the safetensors header is not JSON ({e})")))?;
    let entries =
        json.as_object().ok_or_else(|| Error::Invalid(format!("{file}: the safetensors header is not an object")))?;
    let mut summary = TensorSummary { shapes: Vec::new(), elements: 0, largest: None };
    for (name, entry) in entries.iter().filter(|(name, _)| *name != "__metadata__") {
        let shape: Vec<usize> = entry
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|dims| dims.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| Error::Invalid(format!("{file}: tensor {name} has no readable shape")))?;
        let count = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let count =
            count.ok_or_else(|| Error::Invalid(format!("{file}: tensor {name} has an impossible shape {shape:?}")))?;
        summary.elements = summary.elements.saturating_add(count);
        if summary.largest.as_ref().is_none_or(|(_, most)| count > *most) {
            summary.largest = Some((name.clone(), count));
        }
        summary.shapes.push((name.clone(), shape));
    }
    Ok(summary)
}

/// The part whose weights a stored file holds: its role, or for a diffusers folder its component folder.
/// `None` for configs, tokenizers and other small files.
pub fn weight_part(path: &str, role: Option<Role>) -> Option<Role> {
    let weights = path.ends_with(".safetensors") || path.ends_with(".gguf");
    match role {
        Some(Role::Tokenizer) => None,
        Some(role) => weights.then_some(role),
        None if !weights => None,
        None => match path.split('/').next()? {
            "transformer" => Some(Role::Transformer),
            "text_encoder_2" => Some(Role::T5),
            "text_encoder" => Some(Role::Clip),
            "vae" => Some(Role::Vae),
            _ => None,
        },
    }
}

/// One stored file as the estimate sees it.
#[derive(Debug, Clone)]
pub struct FileFacts {
    /// Path in the model.
    pub path: String,
    /// Its role, when it is a single-file part.
    pub role: Option<Role>,
    /// Bytes.
    pub size: u64,
    /// The header of a safetensors weight file; `None` for GGUF (packed weights stay packed: the file size is
    /// the device size) and non-weight files.
    pub tensors: Option<TensorSummary>,
}

/// What a stored model takes.
#[derive(Debug, Clone)]
pub struct Footprint {
    /// GPU bytes of the DiT, T5, CLIP and VAE weights (dense tensors as f32).
    pub dit: u64,
    /// T5 bytes.
    pub t5: u64,
    /// CLIP bytes.
    pub clip: u64,
    /// VAE bytes.
    pub vae: u64,
    /// All files together.
    pub file_bytes: u64,
    /// The largest dense tensor as f32: `(name, bytes)`.
    pub largest_tensor: Option<(String, u64)>,
    /// The DiT's architecture (from its shapes and config.json, else assumed).
    pub flux: FluxConfig,
    /// Whether `flux` was assumed to be FLUX.1 Kontext [dev] (GGUF files are not read for the estimate).
    pub flux_assumed: bool,
    /// The VAE's architecture.
    pub vae_config: VaeConfig,
}

impl Footprint {
    /// The footprint of `files`, with the texts of `transformer/config.json` and `vae/config.json` when stored.
    pub fn new(files: &[FileFacts], transformer_config: Option<&str>, vae_config: Option<&str>) -> Result<Self> {
        let mut bytes = std::collections::HashMap::new();
        let mut largest: Option<(String, u64)> = None;
        let mut dit_shapes = Vec::new();
        for file in files {
            let Some(part) = weight_part(&file.path, file.role) else { continue };
            let device = match &file.tensors {
                Some(t) => t.elements * 4,
                None => file.size,
            };
            *bytes.entry(part).or_insert(0u64) += device;
            if let Some(t) = &file.tensors {
                if let Some((name, count)) = &t.largest
                    && largest.as_ref().is_none_or(|(_, most)| count * 4 > *most)
                {
                    largest = Some((format!("{} in {}", name, file.path), count * 4));
                }
                if part == Role::Transformer {
                    dit_shapes.extend(t.shapes.iter().cloned());
                }
            }
        }
        let declared = transformer_config.map(FluxConfig::from_diffusers_json).transpose()?;
        let inferred = if dit_shapes.is_empty() { None } else { Some(infer_flux_config(&dit_shapes)?) };
        let (flux, flux_assumed) = match (inferred, declared) {
            (Some(inferred), Some(declared)) => (inferred.reconcile(declared)?, false),
            (Some(config), None) | (None, Some(config)) => (config, false),
            (None, None) => (FluxConfig::kontext_dev(), true),
        };
        let vae_config = vae_config.map(VaeConfig::from_diffusers_json).transpose()?.unwrap_or_else(VaeConfig::flux);
        let part = |role| bytes.get(&role).copied().unwrap_or(0);
        Ok(Self {
            dit: part(Role::Transformer),
            t5: part(Role::T5),
            clip: part(Role::Clip),
            vae: part(Role::Vae),
            file_bytes: files.iter().map(|f| f.size).sum(),
            largest_tensor: largest,
            flux,
            flux_assumed,
            vae_config,
        })
    }

    /// WebAssembly memory the load passes through: twice the largest tensor (its stored bytes and its f32
    /// values) plus [`HEAP_LOAD_SLACK`].
    pub fn load_heap_bytes(&self) -> u64 {
        2 * self.largest_tensor.as_ref().map_or(0, |(_, b)| *b) + HEAP_LOAD_SLACK
    }

    /// Checks the footprint against the adapter's `limits` and plans a [`PLANNED_EDIT`].
    pub fn assess(&self, limits: DeviceLimits) -> Assessment {
        let mut refusals = Vec::new();
        let mut warnings = Vec::new();
        if self.load_heap_bytes() > HEAP_LOAD_LIMIT {
            let (name, bytes) = self.largest_tensor.clone().unwrap_or_default();
            refusals.push(format!(
                "loading tensor {name} ({}) passes {} through WebAssembly memory, and this version can use at most {} for that",
                human_bytes(bytes),
                human_bytes(self.load_heap_bytes()),
                human_bytes(HEAP_LOAD_LIMIT)
            ));
        }
        if let Some((name, bytes)) = &self.largest_tensor
            && *bytes > limits.max_buffer_size
        {
            refusals.push(format!(
                "tensor {name} needs {} on the GPU, more than the largest buffer this adapter allows ({})",
                human_bytes(*bytes),
                human_bytes(limits.max_buffer_size)
            ));
        }
        let inputs = PlanInputs {
            flux: self.flux.clone(),
            dit: DitWeights::DeviceBytes(self.dit),
            t5: T5Config::v1_1_xxl(),
            t5_bytes: self.t5,
            clip_bytes: self.clip,
            vae: self.vae_config.clone(),
            vae_bytes: self.vae,
            limits,
            output: PLANNED_EDIT,
            references: vec![PLANNED_EDIT],
            text_tokens: T5_TOKENS,
            modulation_precomputed: true,
            residency: None,
            cached_residuals: 0,
            masked: false,
            adapter_bytes: 0,
        };
        let plan = match MemoryPlan::new(&inputs) {
            Ok(plan) => {
                if !plan.largest_activation_fits {
                    warnings.push(format!(
                        "a {}×{} edit needs a {} activation, more than one storage binding of this adapter ({}): choose a smaller output",
                        PLANNED_EDIT.0,
                        PLANNED_EDIT.1,
                        human_bytes(plan.largest_activation_bytes),
                        human_bytes(limits.max_storage_buffer_binding_size.min(limits.max_buffer_size))
                    ));
                }
                if plan.fits_budget == Some(false) {
                    refusals.push(format!(
                        "an edit needs at least {} of GPU memory, more than the {} available",
                        human_bytes(plan.peak_bytes),
                        human_bytes(limits.budget.unwrap_or(0))
                    ));
                }
                Some(plan)
            }
            Err(e) => {
                refusals.push(e.to_string());
                None
            }
        };
        if self.flux_assumed {
            warnings.push("the DiT's architecture is assumed to be FLUX.1 Kontext [dev] (GGUF headers are not read for the estimate)".into());
        }
        Assessment { plan, refusal: (!refusals.is_empty()).then(|| refusals.join("; ")), warnings }
    }
}

/// Whether a model fits, and its plan.
#[derive(Debug, Clone)]
pub struct Assessment {
    /// The memory plan of [`PLANNED_EDIT`], when one could be made.
    pub plan: Option<MemoryPlan>,
    /// Why the model must not be loaded on this adapter, for the user.
    pub refusal: Option<String>,
    /// What will limit edits without preventing the load.
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(buffer: u64) -> DeviceLimits {
        DeviceLimits { max_buffer_size: buffer, max_storage_buffer_binding_size: buffer, budget: None }
    }

    fn fixture(path: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/tiny/FLUX.1-Kontext-dev-tiny/{path}", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
    }

    fn facts(path: &str) -> FileFacts {
        let bytes = fixture(path);
        let tensors = path.ends_with(".safetensors").then(|| {
            let len = safetensors_header_len(&bytes, path).unwrap();
            summarize_safetensors(&bytes[8..8 + len as usize], path).unwrap()
        });
        FileFacts { path: path.into(), role: None, size: bytes.len() as u64, tensors }
    }

    #[test]
    fn headers_give_element_counts_and_the_largest_tensor() {
        let header = br#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F16","shape":[3,4],"data_offsets":[0,24]},"b":{"dtype":"F32","shape":[5],"data_offsets":[24,44]}}"#;
        let summary = summarize_safetensors(header, "x.safetensors").unwrap();
        assert_eq!(summary.elements, 17);
        assert_eq!(summary.largest, Some(("a".into(), 12)));
        assert!(
            summarize_safetensors(br#"{"a":{"shape":"no"}}"#, "x")
                .unwrap_err()
                .to_string()
                .contains("no readable shape")
        );
        assert!(safetensors_header_len(&[1, 2], "x").unwrap_err().to_string().contains("too short"));
        assert!(safetensors_header_len(&u64::MAX.to_le_bytes(), "x").is_err());
    }

    #[test]
    fn the_tiny_pack_fits_and_its_architecture_comes_from_its_files() {
        let files: Vec<FileFacts> = crate::pipeline::loader::DIFFUSERS_FILES.iter().map(|p| facts(p)).collect();
        let config = String::from_utf8(fixture("transformer/config.json")).unwrap();
        let vae = String::from_utf8(fixture("vae/config.json")).unwrap();
        let footprint = Footprint::new(&files, Some(&config), Some(&vae)).unwrap();
        assert!(!footprint.flux_assumed);
        assert_eq!(footprint.flux.hidden_size, 64);
        // The transformer file is f32 plus a small header: its device bytes are a little under its size.
        let dit_file = files[1].size;
        assert!(footprint.dit <= dit_file && footprint.dit > dit_file - 16_384, "{} vs {dit_file}", footprint.dit);
        assert!(footprint.t5 > 0 && footprint.clip > 0 && footprint.vae > 0);
        assert_eq!(footprint.file_bytes, files.iter().map(|f| f.size).sum::<u64>());
        let fits = footprint.assess(limits(256 << 20));
        assert_eq!(fits.refusal, None);
        assert!(fits.warnings.is_empty(), "{:?}", fits.warnings);
        let plan = fits.plan.unwrap();
        assert_eq!(plan.tokens, 512 + 4096 + 4096);
        // A 1 KiB buffer limit cannot hold the largest tensor (and no VAE tile fits such a binding).
        let refused = footprint.assess(limits(1024)).refusal.unwrap();
        assert!(refused.contains("more than the largest buffer this adapter allows (1 KB)"), "{refused}");
    }

    #[test]
    fn real_models_stream_and_are_warned_about_activations() {
        let gguf = |path: &str, role, size| FileFacts { path: path.into(), role: Some(role), size, tensors: None };
        let files = [
            gguf("parts/transformer/flux1-kontext-dev-Q4_0.gguf", Role::Transformer, 6_800_000_000),
            gguf("parts/t5/t5.gguf", Role::T5, 3_390_000_000),
            FileFacts {
                path: "tokenizer/vocab.json".into(),
                role: Some(Role::Tokenizer),
                size: 961_000,
                tensors: None,
            },
        ];
        let footprint = Footprint::new(&files, None, None).unwrap();
        assert!(footprint.flux_assumed);
        assert_eq!((footprint.dit, footprint.t5, footprint.clip), (6_800_000_000, 3_390_000_000, 0));
        let verdict = footprint.assess(limits(128 << 20));
        assert_eq!(verdict.refusal, None, "files stream to the GPU: their size alone is no reason to refuse");
        assert!(verdict.warnings.iter().any(|w| w.contains("choose a smaller output")), "{:?}", verdict.warnings);
        assert!(verdict.warnings.iter().any(|w| w.contains("assumed")), "{:?}", verdict.warnings);
    }

    #[test]
    fn a_tensor_too_large_for_the_heap_is_refused() {
        let header = br#"{"huge":{"dtype":"F16","shape":[32768,9000],"data_offsets":[0,589824000]}}"#;
        let tensors = Some(summarize_safetensors(header, "big.safetensors").unwrap());
        let files = [FileFacts { path: "vae/big.safetensors".into(), role: None, size: 589_824_008, tensors }];
        let footprint = Footprint::new(&files, None, None).unwrap();
        assert_eq!(footprint.load_heap_bytes(), 2 * 32768 * 9000 * 4 + HEAP_LOAD_SLACK);
        let refusal = footprint.assess(limits(u64::MAX)).refusal.unwrap();
        assert!(refusal.contains("loading tensor huge in vae/big.safetensors (1.2 GB) passes 2.4 GB"), "{refusal}");
    }

    #[test]
    fn weight_parts_follow_roles_and_folders() {
        assert_eq!(weight_part("text_encoder_2/model.safetensors", None), Some(Role::T5));
        assert_eq!(weight_part("text_encoder/model.safetensors", None), Some(Role::Clip));
        assert_eq!(weight_part("vae/config.json", None), None);
        assert_eq!(weight_part("parts/clip/clip_l.safetensors", Some(Role::Clip)), Some(Role::Clip));
        assert_eq!(weight_part("tokenizer/vocab.json", Some(Role::Tokenizer)), None);
    }
}
