//! Recognising a weight file from its header alone: format, architecture, the Flux configuration implied by
//! the tensor shapes, tensor counts per type, parameters and bytes (`kontext inspect`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::Result;
use crate::formats::gguf::GgufFile;
use crate::formats::safetensors::{SafetensorsFile, SafetensorsTensor, ShardedSafetensors};
use crate::formats::weights::Weights;
use crate::model::flux::config::FluxConfig;
use crate::model::flux::infer::{infer_flux_config, tensor_shapes};

/// What a weight file is, read from its header without reading tensor data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inspection {
    /// Container format: `"safetensors"`, `"safetensors (N shards)"` or `"gguf vN"`.
    pub format: String,
    /// `general.architecture` for GGUF; otherwise recognised from tensor names: `"flux"`, `"t5encoder"`,
    /// `"clip"`, `"vae"`. `None` when unrecognised.
    pub architecture: Option<String>,
    /// The Flux transformer configuration, for Flux files.
    pub config: Option<FluxConfig>,
    /// Tensor count per stored type (safetensors dtype or ggml type name).
    pub dtypes: BTreeMap<String, usize>,
    /// Number of tensors.
    pub tensors: usize,
    /// Number of parameters (values over all tensors).
    pub params: u64,
    /// Bytes of tensor data as stored (headers excluded).
    pub bytes: u64,
    /// The tensor with the most values and that count (a load holds about twice it as f32 in host memory).
    pub largest: Option<(String, u64)>,
}

/// The architecture recognised from tensor names (for files that do not declare one).
pub fn architecture_from_names<'a>(mut names: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    const RULES: [(&str, &str); 8] = [
        ("img_in.weight", "flux"),
        ("x_embedder.weight", "flux"),
        ("double_blocks.0.img_attn.qkv.weight", "flux"),
        ("layer.0.SelfAttention.q.weight", "t5encoder"),
        ("enc.blk.0.attn_q.weight", "t5encoder"),
        ("embeddings.token_embedding.weight", "clip"),
        ("decoder.conv_in.weight", "vae"),
        ("encoder.conv_in.weight", "vae"),
    ];
    names.find_map(|name| RULES.iter().find(|(suffix, _)| name.ends_with(suffix)).map(|&(_, arch)| arch))
}

/// Counts and sums over tensor entries `(name, dtype, values, bytes)`.
struct Tally {
    dtypes: BTreeMap<String, usize>,
    tensors: usize,
    params: u64,
    bytes: u64,
    largest: Option<(String, u64)>,
}

fn tally<'a>(entries: impl Iterator<Item = (&'a str, &'a str, u64, u64)>) -> Tally {
    let mut tally = Tally { dtypes: BTreeMap::new(), tensors: 0, params: 0, bytes: 0, largest: None };
    for (name, dtype, numel, len) in entries {
        *tally.dtypes.entry(dtype.to_string()).or_insert(0) += 1;
        tally.tensors += 1;
        tally.params += numel;
        tally.bytes += len;
        if tally.largest.as_ref().is_none_or(|(_, most)| numel > *most) {
            tally.largest = Some((name.to_string(), numel));
        }
    }
    tally
}

fn flux_config(
    architecture: Option<&str>,
    weights: &dyn Weights,
    diffusers_config: Option<&str>,
) -> Result<Option<FluxConfig>> {
    if architecture != Some("flux") {
        return Ok(None);
    }
    let inferred = infer_flux_config(&tensor_shapes(weights))?;
    Ok(Some(match diffusers_config {
        Some(json) => inferred.reconcile(FluxConfig::from_diffusers_json(json)?)?,
        None => inferred,
    }))
}

fn inspect_safetensors_entries<'a>(
    format: String,
    entries: impl Iterator<Item = &'a SafetensorsTensor> + Clone,
    weights: &dyn Weights,
    diffusers_config: Option<&str>,
) -> Result<Inspection> {
    let architecture = architecture_from_names(entries.clone().map(|t| t.name.as_str()));
    let Tally { dtypes, tensors, params, bytes, largest } =
        tally(entries.map(|t| (t.name.as_str(), t.dtype.as_str(), t.numel(), t.len)));
    Ok(Inspection {
        format,
        architecture: architecture.map(str::to_string),
        config: flux_config(architecture, weights, diffusers_config)?,
        dtypes,
        tensors,
        params,
        bytes,
        largest,
    })
}

/// Inspects a safetensors file; `diffusers_config` is the text of a `FluxTransformer2DModel` `config.json`
/// that accompanies it, if any (it supplies the RoPE split and is checked against the shapes).
pub fn inspect_safetensors(file: &SafetensorsFile, diffusers_config: Option<&str>) -> Result<Inspection> {
    inspect_safetensors_entries("safetensors".into(), file.tensors().iter(), file, diffusers_config)
}

/// Inspects a sharded safetensors checkpoint (see [`inspect_safetensors`]).
pub fn inspect_sharded(file: &ShardedSafetensors, diffusers_config: Option<&str>) -> Result<Inspection> {
    let format = format!("safetensors ({} shards)", file.shards().len());
    inspect_safetensors_entries(format, file.tensors(), file, diffusers_config)
}

/// Inspects a GGUF file; its architecture is `general.architecture`, or recognised from names when absent.
pub fn inspect_gguf(file: &GgufFile) -> Result<Inspection> {
    let architecture = match file.architecture() {
        Some(arch) => Some(arch.to_string()),
        None => architecture_from_names(file.tensors().iter().map(|t| t.name.as_str())).map(str::to_string),
    };
    let Tally { dtypes, tensors, params, bytes, largest } =
        tally(file.tensors().iter().map(|t| (t.name.as_str(), t.ggml_type.name(), t.numel(), t.len)));
    Ok(Inspection {
        format: format!("gguf v{}", file.version()),
        config: flux_config(architecture.as_deref(), file, None)?,
        architecture,
        dtypes,
        tensors,
        params,
        bytes,
        largest,
    })
}

/// Inspects a path: a `.gguf` or `.safetensors` file, a `*.safetensors.index.json` (shards beside it), or a
/// directory (a diffusers model root, whose `transformer/` is inspected, or a component folder). A
/// `FluxTransformer2DModel` `config.json` in the same folder is used for the RoPE split.
#[cfg(not(target_arch = "wasm32"))]
pub fn inspect_path(path: &std::path::Path) -> Result<Inspection> {
    use std::collections::HashMap;

    use serde_json::Value;

    use crate::Error;
    use crate::formats::source::{ByteSource, FileSource};
    use std::path::{Path, PathBuf};

    let read_text =
        |p: &Path| std::fs::read_to_string(p).map_err(|e| Error::Invalid(format!("cannot read {}: {e}", p.display())));
    let flux_json_beside = |file: &Path| -> Result<Option<String>> {
        let json = file.with_file_name("config.json");
        if !json.is_file() {
            return Ok(None);
        }
        let text = read_text(&json)?;
        let is_flux = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("_class_name").and_then(Value::as_str).map(|c| c == "FluxTransformer2DModel"))
            .unwrap_or(false);
        Ok(is_flux.then_some(text))
    };

    let path: PathBuf = if path.is_dir() {
        let dir = if path.join("transformer").is_dir() { path.join("transformer") } else { path.to_path_buf() };
        let entries =
            std::fs::read_dir(&dir).map_err(|e| Error::Invalid(format!("cannot list {}: {e}", dir.display())))?;
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        let name = |p: &PathBuf| p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
        let pick = files.iter().find(|p| name(p).ends_with(".safetensors.index.json")).cloned().or_else(|| {
            let weights: Vec<&PathBuf> =
                files.iter().filter(|p| name(p).ends_with(".safetensors") || name(p).ends_with(".gguf")).collect();
            (weights.len() == 1).then(|| weights[0].clone())
        });
        pick.ok_or_else(|| {
            Error::Invalid(format!(
                "{} holds no index and not exactly one .safetensors or .gguf file; name the file to inspect",
                dir.display()
            ))
        })?
    } else {
        path.to_path_buf()
    };

    if path.extension().is_some_and(|e| e == "json") {
        let index = read_text(&path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut shards = HashMap::new();
        for shard in ShardedSafetensors::shard_names(&index)? {
            let source: Box<dyn ByteSource> = Box::new(FileSource::open(dir.join(&shard))?);
            shards.insert(shard, source);
        }
        let sharded = ShardedSafetensors::open(&index, shards)?;
        return inspect_sharded(&sharded, flux_json_beside(&path)?.as_deref());
    }
    let source = FileSource::open(&path)?;
    if source.len() >= 4 && source.read_at(0, 4)? == b"GGUF" {
        inspect_gguf(&GgufFile::open(source)?)
    } else {
        inspect_safetensors(&SafetensorsFile::open(source)?, flux_json_beside(&path)?.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_from_names() {
        let arch = |names: &[&str]| architecture_from_names(names.iter().copied());
        assert_eq!(arch(&["model.diffusion_model.img_in.weight"]), Some("flux"));
        assert_eq!(arch(&["shared.weight", "encoder.block.0.layer.0.SelfAttention.q.weight"]), Some("t5encoder"));
        assert_eq!(arch(&["text_model.embeddings.token_embedding.weight"]), Some("clip"));
        assert_eq!(arch(&["encoder.conv_in.weight"]), Some("vae"));
        assert_eq!(arch(&["lm_head.weight"]), None);
    }
}
