//! Manifests for the sources a user types or picks: a diffusers-layout folder URL and/or one URL per part, and
//! local files (picked one by one, or a whole folder). Plain data, tested natively; the page probes sizes and
//! reads the files.

use super::manifest::{Manifest, Role, Source, StoredFile, sha256_hex};
use crate::formats::safetensors::ShardedSafetensors;
use crate::pipeline::loader::DIFFUSERS_FILES;
use crate::{Error, Result};

/// The top-level entries of a diffusers-layout folder that the app keeps.
pub const DIFFUSERS_DIRS: [&str; 7] =
    ["transformer", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "scheduler"];

/// Every role a single file can have, in the order the forms list them.
pub const ROLES: [Role; 5] = [Role::Transformer, Role::T5, Role::Clip, Role::Vae, Role::Tokenizer];

/// What the user calls a role.
pub fn role_label(role: Role) -> &'static str {
    match role {
        Role::Transformer => "DiT (transformer)",
        Role::T5 => "T5 text encoder",
        Role::Clip => "CLIP text encoder",
        Role::Vae => "VAE (autoencoder)",
        Role::Tokenizer => "CLIP tokenizer file",
    }
}

/// The folder of a diffusers layout whose weights a single file of `role` replaces.
fn replaced_folder(role: Role) -> Option<&'static str> {
    match role {
        Role::Transformer => Some("transformer/"),
        Role::T5 => Some("text_encoder_2/"),
        Role::Clip => Some("text_encoder/"),
        Role::Vae => Some("vae/"),
        Role::Tokenizer => None,
    }
}

/// One file to store: where it goes in the model and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    /// Path in the stored model.
    pub path: String,
    /// The part it provides, `None` for a file of a diffusers folder.
    pub role: Option<Role>,
    /// Its URL (custom URL sources) or the index of the picked file (local sources, as text).
    pub origin: String,
}

/// Path of a single-file part in the stored model: tokenizer files where the loader reads them
/// (`tokenizer/vocab.json`), other parts under `parts/<role>/` so two parts may share a file name.
pub fn part_path(role: Role, file_name: &str) -> Result<String> {
    let name = file_name.rsplit('/').next().unwrap_or(file_name);
    let bad =
        name.is_empty() || name == "." || name == ".." || name.contains('\\') || name.chars().any(char::is_control);
    if bad {
        return Err(Error::Invalid(format!("{file_name:?} is not a usable file name")));
    }
    Ok(match role {
        Role::Tokenizer => format!("tokenizer/{name}"),
        Role::Transformer => format!("parts/transformer/{name}"),
        Role::T5 => format!("parts/t5/{name}"),
        Role::Clip => format!("parts/clip/{name}"),
        Role::Vae => format!("parts/vae/{name}"),
    })
}

/// URLs the user typed: a folder in the diffusers layout and/or one URL per part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlSource {
    /// Folder URL (a trailing `/` is added when missing).
    pub base: Option<String>,
    /// The DiT file (GGUF or safetensors).
    pub transformer: Option<String>,
    /// The T5 encoder file.
    pub t5: Option<String>,
    /// The CLIP-L file.
    pub clip: Option<String>,
    /// The autoencoder file.
    pub vae: Option<String>,
    /// CLIP tokenizer `vocab.json`.
    pub vocab: Option<String>,
    /// CLIP tokenizer `merges.txt`.
    pub merges: Option<String>,
}

fn check_url(what: &str, url: &str) -> Result<()> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(rest) if !rest.is_empty() && !url.chars().any(|c| c.is_whitespace() || c.is_control()) => Ok(()),
        _ => Err(Error::Invalid(format!("the {what} URL {url:?} is not an http(s) address"))),
    }
}

/// The last path segment of `url` (query and fragment removed).
fn url_file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.trim_end_matches('/').rsplit('/').next().unwrap_or(path)
}

impl UrlSource {
    /// Trims every field and drops empty ones.
    pub fn normalized(mut self) -> Self {
        for field in [
            &mut self.base,
            &mut self.transformer,
            &mut self.t5,
            &mut self.clip,
            &mut self.vae,
            &mut self.vocab,
            &mut self.merges,
        ] {
            *field = field.take().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        }
        if let Some(base) = &mut self.base
            && !base.ends_with('/')
        {
            base.push('/');
        }
        self
    }

    /// The files to fetch: the folder's [`DIFFUSERS_FILES`] except the weights a part URL replaces (their
    /// `config.json` stays: the loader reads it beside the part's file, as `kontext edit --model DIR --transformer
    /// FILE` does), then the parts. Without a folder every weights part needs its URL (the CLIP tokenizer falls back to the built-in
    /// one, as for ComfyUI's file set).
    pub fn plan(&self) -> Result<Vec<PlannedFile>> {
        let parts = [
            (Role::Transformer, &self.transformer, "DiT"),
            (Role::T5, &self.t5, "T5"),
            (Role::Clip, &self.clip, "CLIP"),
            (Role::Vae, &self.vae, "VAE"),
            (Role::Tokenizer, &self.vocab, "CLIP tokenizer vocab.json"),
            (Role::Tokenizer, &self.merges, "CLIP tokenizer merges.txt"),
        ];
        if let Some(base) = &self.base {
            check_url("folder", base)?;
        } else {
            let missing: Vec<&str> = parts
                .iter()
                .filter(|(role, url, _)| url.is_none() && *role != Role::Tokenizer)
                .map(|(_, _, what)| *what)
                .collect();
            if parts.iter().all(|(_, url, _)| url.is_none()) {
                return Err(Error::Invalid(
                    "give the URL of a model folder (diffusers layout) or one URL per part".into(),
                ));
            }
            if !missing.is_empty() {
                return Err(Error::Invalid(format!(
                    "without a folder URL every part needs its own URL; missing: {}",
                    missing.join(", ")
                )));
            }
        }
        let mut planned = Vec::new();
        for (role, url, what) in &parts {
            if let Some(url) = url {
                check_url(what, url)?;
                let name = match (role, *what) {
                    (Role::Tokenizer, w) if w.ends_with("vocab.json") => "vocab.json",
                    (Role::Tokenizer, _) => "merges.txt",
                    _ => url_file_name(url),
                };
                planned.push(PlannedFile { path: part_path(*role, name)?, role: Some(*role), origin: url.clone() });
            }
        }
        if let Some(base) = &self.base {
            let replaced: Vec<&str> = planned.iter().filter_map(|f| f.role.and_then(replaced_folder)).collect();
            let taken: Vec<String> = planned.iter().map(|f| f.path.clone()).collect();
            let folder = DIFFUSERS_FILES
                .iter()
                .filter(|path| {
                    let weights_replaced =
                        replaced.iter().any(|dir| path.starts_with(dir)) && !path.ends_with("config.json");
                    !weights_replaced && !taken.iter().any(|t| t == *path)
                })
                .map(|path| PlannedFile { path: path.to_string(), role: None, origin: format!("{base}{path}") });
            planned.splice(0..0, folder.collect::<Vec<_>>());
        }
        Ok(planned)
    }

    /// The store id of this source's model: its label and a hash of its URLs, so the same URLs find the same stored
    /// model again (after a reload, offline).
    pub fn stable_id(&self) -> String {
        let urls = [&self.base, &self.transformer, &self.t5, &self.clip, &self.vae, &self.vocab, &self.merges]
            .map(|url| url.as_deref().unwrap_or_default())
            .join("\n");
        let hash = u64::from_str_radix(&sha256_hex(urls.as_bytes())[..12], 16).unwrap_or_default();
        model_id(&self.label(), hash)
    }

    /// A name for the model: the folder's name, else the DiT's file name.
    pub fn label(&self) -> String {
        match (&self.base, &self.transformer) {
            (Some(base), _) => url_file_name(base).to_string(),
            (None, Some(dit)) => url_file_name(dit).to_string(),
            _ => "custom model".to_string(),
        }
    }
}

/// What a server says of a file before its download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// Its size in bytes.
    pub size: u64,
    /// Its `ETag`, else its `Last-Modified`, when the page may read either.
    pub validator: Option<String>,
}

/// The manifest of planned files whose sizes are known, each fetched from its `origin` URL.
pub fn url_manifest(
    id: &str,
    label: &str,
    base: Option<String>,
    files: &[(PlannedFile, RemoteFile)],
    chunk_size: u64,
) -> Result<Manifest> {
    let stored = files
        .iter()
        .map(|(f, remote)| {
            let mut file = StoredFile::new(&f.path, f.role, Some(f.origin.clone()), remote.size, chunk_size)?;
            file.validator = remote.validator.clone();
            Ok(file)
        })
        .collect::<Result<Vec<_>>>()?;
    Manifest::new(id, label, Source::Urls { base }, stored)
}

/// The index that stands for a folder's weights file when the checkpoint is sharded
/// (`transformer/diffusion_pytorch_model.safetensors` → `….safetensors.index.json`); `None` for other files.
pub fn sharded_index(file: &PlannedFile) -> Option<PlannedFile> {
    let is_folder_weights = file.role.is_none() && file.path.ends_with(".safetensors") && file.path.contains('/');
    is_folder_weights.then(|| PlannedFile {
        path: format!("{}.index.json", file.path),
        role: None,
        origin: format!("{}.index.json", file.origin.split(['?', '#']).next().unwrap_or(&file.origin)),
    })
}

/// The shards that `index` (a planned `*.safetensors.index.json`, read as `index_json`) names, each beside it in
/// the folder and on the server.
pub fn shard_files(index: &PlannedFile, index_json: &str) -> Result<Vec<PlannedFile>> {
    let folder = |path: &str| path[..path.rfind('/').map_or(0, |i| i + 1)].to_string();
    let (dir, url_dir) = (folder(&index.path), folder(&index.origin));
    ShardedSafetensors::shard_names(index_json)?
        .into_iter()
        .map(|name| {
            let bad = name.is_empty() || name.contains(['/', '\\', '?', '#']) || name.starts_with('.');
            if bad || name.chars().any(char::is_control) {
                return Err(Error::Invalid(format!(
                    "{} names a shard {name:?} that is not a file beside it",
                    index.origin
                )));
            }
            Ok(PlannedFile { path: format!("{dir}{name}"), role: None, origin: format!("{url_dir}{name}") })
        })
        .collect()
}

/// The part a picked file most likely is, from its name (`flux1-kontext-dev-Q4_K_S.gguf` → DiT,
/// `t5-v1_1-xxl-encoder-Q8_0.gguf` → T5, `clip_l.safetensors` → CLIP, `ae.safetensors` → VAE).
pub fn guess_role(file_name: &str) -> Option<Role> {
    let name = file_name.rsplit('/').next().unwrap_or(file_name).to_ascii_lowercase();
    let stem = name.rsplit_once('.').map_or(name.as_str(), |(s, _)| s);
    let weights = name.ends_with(".gguf") || name.ends_with(".safetensors");
    if name == "vocab.json" || name == "merges.txt" {
        Some(Role::Tokenizer)
    } else if !weights {
        None
    } else if stem.contains("t5") || stem.contains("umt5") {
        Some(Role::T5)
    } else if stem.contains("clip") {
        Some(Role::Clip)
    } else if stem == "ae" || stem.contains("vae") || stem.contains("autoencoder") {
        Some(Role::Vae)
    } else if stem.contains("flux")
        || stem.contains("kontext")
        || stem.contains("transformer")
        || name.ends_with(".gguf")
    {
        Some(Role::Transformer)
    } else {
        None
    }
}

/// The files of a picked folder to keep, as (index in the pick, path in the model): the relative paths lose their
/// first component (the folder's own name) and only the diffusers layout's entries are kept.
pub fn folder_files(relative_paths: &[String]) -> Result<Vec<(usize, String)>> {
    let mut kept = Vec::new();
    for (index, relative) in relative_paths.iter().enumerate() {
        let inside = relative.split_once('/').map_or(relative.as_str(), |(_, rest)| rest);
        let top = inside.split('/').next().unwrap_or("");
        let hidden = inside.split('/').any(|part| part.starts_with('.'));
        let keep = !hidden && (inside == "model_index.json" || (DIFFUSERS_DIRS.contains(&top) && inside.contains('/')));
        if keep {
            kept.push((index, inside.to_string()));
        }
    }
    if !kept.iter().any(|(_, p)| p.starts_with("transformer/")) {
        return Err(Error::Invalid(
            "this folder is not a model in the diffusers layout: it has no transformer/ folder (pick the folder that holds model_index.json)".into(),
        ));
    }
    Ok(kept)
}

/// The manifest of local files: `(path, role, size)` each, in the order given.
pub fn local_manifest(
    id: &str,
    label: &str,
    files: &[(String, Option<Role>, u64)],
    chunk_size: u64,
) -> Result<Manifest> {
    let mut roles = std::collections::HashMap::new();
    for (path, role, _) in files {
        if let Some(role) = role.filter(|r| *r != Role::Tokenizer)
            && let Some(other) = roles.insert(role, path)
        {
            return Err(Error::Invalid(format!(
                "two files were given as the {}: {other} and {path}",
                role_label(role)
            )));
        }
    }
    let stored = files
        .iter()
        .map(|(path, role, size)| StoredFile::new(path, *role, None, *size, chunk_size))
        .collect::<Result<Vec<_>>>()?;
    Manifest::new(id, label, Source::Local, stored)
}

/// A store id for a new model: its label reduced to `[a-z0-9-]`, then `-` and `suffix` (a timestamp), so two
/// stores of the same source do not collide.
pub fn model_id(label: &str, suffix: u64) -> String {
    let mut slug: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    slug.truncate(60);
    if slug.is_empty() {
        slug.push_str("model");
    }
    format!("{slug}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_url_lists_the_diffusers_files() {
        let source = UrlSource { base: Some(" http://host/m/tiny ".into()), ..Default::default() }.normalized();
        assert_eq!(source.base.as_deref(), Some("http://host/m/tiny/"));
        let plan = source.plan().unwrap();
        assert_eq!(plan.len(), DIFFUSERS_FILES.len());
        assert_eq!(plan[1].origin, "http://host/m/tiny/transformer/diffusion_pytorch_model.safetensors");
        assert!(plan.iter().all(|f| f.role.is_none()));
        assert_eq!(source.label(), "tiny");
    }

    #[test]
    fn part_urls_replace_the_folders_weights_but_not_their_configs() {
        let source = UrlSource {
            base: Some("https://h/f/".into()),
            transformer: Some("https://h/q/flux1-kontext-dev-Q4_0.gguf?download=1".into()),
            vocab: Some("https://h/v.json".into()),
            ..Default::default()
        };
        let plan = source.plan().unwrap();
        let paths: Vec<&str> = plan.iter().map(|f| f.path.as_str()).collect();
        // The folder's DiT weights are replaced; its config.json stays, read beside the part's file.
        let transformer: Vec<&&str> = paths.iter().filter(|p| p.starts_with("transformer/")).collect();
        assert_eq!(transformer, [&"transformer/config.json"], "{paths:?}");
        assert_eq!(paths.iter().filter(|p| **p == "tokenizer/vocab.json").count(), 1, "{paths:?}");
        assert!(paths.contains(&"parts/transformer/flux1-kontext-dev-Q4_0.gguf"), "{paths:?}");
        assert!(paths.contains(&"vae/diffusion_pytorch_model.safetensors"), "{paths:?}");
        assert_eq!(plan.len(), DIFFUSERS_FILES.len() - 2 + 2);
        let vocab = plan.iter().find(|f| f.path == "tokenizer/vocab.json").unwrap();
        assert_eq!((vocab.role, vocab.origin.as_str()), (Some(Role::Tokenizer), "https://h/v.json"));
    }

    #[test]
    fn part_urls_alone_must_cover_every_part() {
        let err = UrlSource { transformer: Some("https://h/dit.gguf".into()), ..Default::default() }
            .plan()
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing: T5, CLIP, VAE"), "{err}");
        assert!(!err.contains("tokenizer"), "the CLIP tokenizer is built in: {err}");
        assert!(UrlSource::default().plan().unwrap_err().to_string().contains("URL of a model folder"));
        let err = UrlSource { base: Some("ftp://h/".into()), ..Default::default() }.plan().unwrap_err().to_string();
        assert!(err.contains("not an http(s) address"), "{err}");
        let all = |u: &str| Some(format!("https://h/{u}"));
        let full = UrlSource {
            transformer: all("a/model.safetensors"),
            t5: all("b/model.safetensors"),
            clip: all("clip_l.safetensors"),
            vae: all("ae.safetensors"),
            vocab: all("vocab.json"),
            merges: all("merges.txt"),
            ..Default::default()
        };
        let paths: Vec<String> = full.plan().unwrap().into_iter().map(|f| f.path).collect();
        assert_eq!(paths[..2], ["parts/transformer/model.safetensors", "parts/t5/model.safetensors"]);
        assert_eq!(full.label(), "model.safetensors");
        let comfy = UrlSource { vocab: None, merges: None, ..full.clone() };
        assert_eq!(comfy.plan().unwrap().len(), 4, "ComfyUI's four files are enough");
    }

    #[test]
    fn the_same_urls_give_the_same_store_id_and_other_urls_another() {
        let source = UrlSource { base: Some("https://h/m/FLUX.1-Kontext-dev/".into()), ..Default::default() };
        let id = source.stable_id();
        assert!(id.starts_with("flux-1-kontext-dev-"), "{id}");
        assert_eq!(id, source.clone().stable_id());
        let with_part = UrlSource { vae: Some("https://h/ae.safetensors".into()), ..source.clone() };
        assert_ne!(with_part.stable_id(), id);
        let elsewhere = UrlSource { base: Some("https://g/m/FLUX.1-Kontext-dev/".into()), ..Default::default() };
        assert_ne!(elsewhere.stable_id(), id);
    }

    #[test]
    fn a_sharded_folder_weights_file_is_planned_as_its_index_and_shards() {
        let source = UrlSource { base: Some("https://h/m/".into()), ..Default::default() };
        let plan = source.plan().unwrap();
        let weights = plan.iter().find(|f| f.path == "transformer/diffusion_pytorch_model.safetensors").unwrap();
        let index = sharded_index(weights).unwrap();
        assert_eq!(index.path, "transformer/diffusion_pytorch_model.safetensors.index.json");
        assert_eq!(index.origin, "https://h/m/transformer/diffusion_pytorch_model.safetensors.index.json");
        assert!(plan.iter().filter(|f| f.path.ends_with(".json")).all(|f| sharded_index(f).is_none()));
        let json = r#"{"metadata":{},"weight_map":{"a":"diffusion_pytorch_model-00002-of-00002.safetensors",
            "b":"diffusion_pytorch_model-00001-of-00002.safetensors","c":"diffusion_pytorch_model-00001-of-00002.safetensors"}}"#;
        let shards = shard_files(&index, json).unwrap();
        assert_eq!(
            shards.iter().map(|f| (f.path.as_str(), f.origin.as_str())).collect::<Vec<_>>(),
            [
                (
                    "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
                    "https://h/m/transformer/diffusion_pytorch_model-00001-of-00002.safetensors"
                ),
                (
                    "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
                    "https://h/m/transformer/diffusion_pytorch_model-00002-of-00002.safetensors"
                ),
            ]
        );
        for hostile in [r#"{"weight_map":{"a":"../../x.safetensors"}}"#, r#"{"weight_map":{"a":".hidden"}}"#] {
            let err = shard_files(&index, hostile).unwrap_err().to_string();
            assert!(err.contains("not a file") && err.contains("beside"), "{err}");
        }
        assert!(shard_files(&index, "not json").is_err());
    }

    #[test]
    fn roles_are_guessed_from_common_file_names() {
        let cases = [
            ("flux1-kontext-dev-Q4_K_S.gguf", Some(Role::Transformer)),
            ("t5-v1_1-xxl-encoder-Q8_0.gguf", Some(Role::T5)),
            ("t5xxl_fp16.safetensors", Some(Role::T5)),
            ("clip_l.safetensors", Some(Role::Clip)),
            ("ae.safetensors", Some(Role::Vae)),
            ("dir/vocab.json", Some(Role::Tokenizer)),
            ("merges.txt", Some(Role::Tokenizer)),
            ("model.safetensors", None),
            ("notes.txt", None),
        ];
        for (name, role) in cases {
            assert_eq!(guess_role(name), role, "{name}");
        }
        assert_eq!(part_path(Role::Vae, "x/ae.safetensors").unwrap(), "parts/vae/ae.safetensors");
        assert!(part_path(Role::Vae, "..").is_err());
    }

    #[test]
    fn a_picked_folder_keeps_the_diffusers_entries() {
        let picked: Vec<String> = [
            "tiny/model_index.json",
            "tiny/transformer/config.json",
            "tiny/README.md",
            "tiny/.git/HEAD",
            "tiny/vae/x.safetensors",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            folder_files(&picked).unwrap(),
            vec![
                (0, "model_index.json".into()),
                (1, "transformer/config.json".into()),
                (4, "vae/x.safetensors".into())
            ]
        );
        let err = folder_files(&["photos/a.png".to_string()]).unwrap_err().to_string();
        assert!(err.contains("not a model in the diffusers layout"), "{err}");
    }

    #[test]
    fn local_manifests_refuse_two_files_for_one_part() {
        let files = vec![
            ("parts/transformer/a.gguf".to_string(), Some(Role::Transformer), 10),
            ("tokenizer/vocab.json".to_string(), Some(Role::Tokenizer), 3),
            ("tokenizer/merges.txt".to_string(), Some(Role::Tokenizer), 3),
        ];
        let m = local_manifest("l", "L", &files, 4).unwrap();
        assert_eq!((m.total_bytes(), m.source.clone()), (16, Source::Local));
        let mut twice = files.clone();
        twice.push(("parts/transformer/b.gguf".into(), Some(Role::Transformer), 1));
        let err = local_manifest("l", "L", &twice, 4).unwrap_err().to_string();
        assert!(
            err.contains(
                "two files were given as the DiT (transformer): parts/transformer/a.gguf and parts/transformer/b.gguf"
            ),
            "{err}"
        );
    }

    #[test]
    fn ids_are_slugs_with_a_suffix() {
        assert_eq!(model_id("FLUX.1 Kontext [dev] · Q4", 17), "flux-1-kontext-dev-q4-17");
        assert_eq!(model_id("···", 3), "model-3");
    }
}
