//! The public files of the real FLUX.1 Kontext [dev] model, as data in one table; the public turbo LoRAs people
//! use on it ([`TURBO_LORAS`]); and the built-in demo pack.
//!
//! The model files' sizes are approximate (from the hosting pages, rounded to about three digits): they are shown
//! before a download and used for the quota check; the server's own answer replaces them before the first chunk is
//! stored ([`Manifest::set_remote`](super::manifest::Manifest::set_remote)). The LoRAs' sizes and hashes are
//! exact, and a fetched file is checked against both.

use super::manifest::{DEFAULT_CHUNK_SIZE, Manifest, Role, Source, StoredFile, sha256_hex};
use crate::{Error, Result};

/// One downloadable file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogFile {
    /// Stable id (kept in manifests).
    pub id: &'static str,
    /// The part of the pipeline it provides.
    pub role: Role,
    /// What the user picks (`DiT Q4_K_S`).
    pub label: &'static str,
    /// Path in the stored model; tokenizer files keep their diffusers-folder path.
    pub path: &'static str,
    /// Where it is fetched from (Hugging Face `resolve` URLs answer Range requests and allow CORS).
    pub url: &'static str,
    /// Approximate size in bytes.
    pub size: u64,
    /// The licence the file is under.
    pub licence: &'static str,
}

const KONTEXT_LICENCE: &str =
    "FLUX.1 [dev] Non-Commercial License (Black Forest Labs): non-commercial use; public use needs content filters";
const APACHE: &str = "Apache-2.0";
const CLIP_LICENCE: &str = "MIT (OpenAI CLIP)";

/// Every real file the app offers, one row each.
pub const CATALOG: &[CatalogFile] = &[
    CatalogFile {
        id: "kontext-dev-q4_0",
        role: Role::Transformer,
        label: "DiT Q4_0",
        path: "flux1-kontext-dev-Q4_0.gguf",
        url: "https://huggingface.co/QuantStack/FLUX.1-Kontext-dev-GGUF/resolve/main/flux1-kontext-dev-Q4_0.gguf",
        size: 6_800_000_000,
        licence: KONTEXT_LICENCE,
    },
    CatalogFile {
        id: "kontext-dev-q4_k_s",
        role: Role::Transformer,
        label: "DiT Q4_K_S",
        path: "flux1-kontext-dev-Q4_K_S.gguf",
        url: "https://huggingface.co/QuantStack/FLUX.1-Kontext-dev-GGUF/resolve/main/flux1-kontext-dev-Q4_K_S.gguf",
        size: 6_800_000_000,
        licence: KONTEXT_LICENCE,
    },
    CatalogFile {
        id: "kontext-dev-q5_k_s",
        role: Role::Transformer,
        label: "DiT Q5_K_S",
        path: "flux1-kontext-dev-Q5_K_S.gguf",
        url: "https://huggingface.co/QuantStack/FLUX.1-Kontext-dev-GGUF/resolve/main/flux1-kontext-dev-Q5_K_S.gguf",
        size: 8_280_000_000,
        licence: KONTEXT_LICENCE,
    },
    CatalogFile {
        id: "kontext-dev-q8_0",
        role: Role::Transformer,
        label: "DiT Q8_0",
        path: "flux1-kontext-dev-Q8_0.gguf",
        url: "https://huggingface.co/QuantStack/FLUX.1-Kontext-dev-GGUF/resolve/main/flux1-kontext-dev-Q8_0.gguf",
        size: 12_700_000_000,
        licence: KONTEXT_LICENCE,
    },
    CatalogFile {
        id: "t5-xxl-q5_k_m",
        role: Role::T5,
        label: "T5 XXL encoder Q5_K_M",
        path: "t5-v1_1-xxl-encoder-Q5_K_M.gguf",
        url: "https://huggingface.co/city96/t5-v1_1-xxl-encoder-gguf/resolve/main/t5-v1_1-xxl-encoder-Q5_K_M.gguf",
        size: 3_390_000_000,
        licence: APACHE,
    },
    CatalogFile {
        id: "t5-xxl-q8_0",
        role: Role::T5,
        label: "T5 XXL encoder Q8_0",
        path: "t5-v1_1-xxl-encoder-Q8_0.gguf",
        url: "https://huggingface.co/city96/t5-v1_1-xxl-encoder-gguf/resolve/main/t5-v1_1-xxl-encoder-Q8_0.gguf",
        size: 5_060_000_000,
        licence: APACHE,
    },
    CatalogFile {
        id: "clip-l",
        role: Role::Clip,
        label: "CLIP-L text encoder (f16)",
        path: "clip_l.safetensors",
        url: "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
        size: 246_000_000,
        licence: CLIP_LICENCE,
    },
    // The autoencoder of FLUX.1 [schnell], identical to [dev]'s, from the ungated Apache-2.0 repository.
    CatalogFile {
        id: "flux-ae",
        role: Role::Vae,
        label: "FLUX autoencoder",
        path: "ae.safetensors",
        url: "https://huggingface.co/black-forest-labs/FLUX.1-schnell/resolve/main/ae.safetensors",
        size: 335_000_000,
        licence: APACHE,
    },
    CatalogFile {
        id: "clip-vocab",
        role: Role::Tokenizer,
        label: "CLIP tokenizer vocabulary",
        path: "tokenizer/vocab.json",
        url: "https://huggingface.co/openai/clip-vit-large-patch14/resolve/main/vocab.json",
        size: 961_000,
        licence: CLIP_LICENCE,
    },
    CatalogFile {
        id: "clip-merges",
        role: Role::Tokenizer,
        label: "CLIP tokenizer merges",
        path: "tokenizer/merges.txt",
        url: "https://huggingface.co/openai/clip-vit-large-patch14/resolve/main/merges.txt",
        size: 525_000,
        licence: CLIP_LICENCE,
    },
];

/// A public FLUX.1 [dev] LoRA that makes Kontext [dev] edit in a few steps, with its model card's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurboLora {
    /// Stable id, used in element ids.
    pub id: &'static str,
    /// What the preset is called.
    pub label: &'static str,
    /// The name it is stored under (its LoRA entry's name; a file added with this name is taken for it).
    pub name: &'static str,
    /// Where it is fetched from (a Hugging Face `resolve` URL: CORS allowed).
    pub url: &'static str,
    /// Its model card.
    pub card: &'static str,
    /// Exact size in bytes.
    pub size: u64,
    /// SHA-256 of the file, lower-case hex.
    pub sha256: &'static str,
    /// The licence the file is under.
    pub licence: &'static str,
    /// Denoising steps it was distilled for.
    pub steps: usize,
    /// LoRA strength the card recommends.
    pub strength: f32,
    /// Distilled guidance the card recommends.
    pub guidance: f32,
}

/// The turbo LoRAs of the presets. Both are diffusers/PEFT files over every linear layer of the FLUX.1
/// transformer (rank 64, no alphas, no metadata); `tests/fixtures/generator/turbo_lora_golden.py` writes the same
/// layout at tiny size. Sizes and hashes are those of the files' Git LFS pointers on Hugging Face; settings and
/// licences from the model cards (Turbo-Alpha: "guidance_scale=3.5 and lora_scale=1", 8 steps; Hyper-FLUX:
/// "LoRA scales around 0.125", "guidance scale could be kept on 3.5", 8 steps; Hyper-SD's LICENSE.md puts its
/// FLUX.1-dev LoRAs under the FLUX.1 [dev] licence).
pub const TURBO_LORAS: &[TurboLora] = &[
    TurboLora {
        id: "turbo-alpha",
        label: "Turbo-Alpha (8 steps)",
        name: "FLUX.1-Turbo-Alpha.safetensors",
        url: "https://huggingface.co/alimama-creative/FLUX.1-Turbo-Alpha/resolve/main/diffusion_pytorch_model.safetensors",
        card: "https://huggingface.co/alimama-creative/FLUX.1-Turbo-Alpha",
        size: 694_082_424,
        sha256: "77f7523a5e9c3da6cfc730c6b07461129fa52997ea06168e9ed5312228aa0bff",
        licence: KONTEXT_LICENCE,
        steps: 8,
        strength: 1.0,
        guidance: 3.5,
    },
    TurboLora {
        id: "hyper-flux",
        label: "Hyper-FLUX (8 steps)",
        name: "Hyper-FLUX.1-dev-8steps-lora.safetensors",
        url: "https://huggingface.co/ByteDance/Hyper-SD/resolve/main/Hyper-FLUX.1-dev-8steps-lora.safetensors",
        card: "https://huggingface.co/ByteDance/Hyper-SD",
        size: 1_388_026_440,
        sha256: "e0ab0fdf569cd01a382f19bd87681f628879dea7ad51fe5a3799b6c18c7b2d03",
        licence: KONTEXT_LICENCE,
        steps: 8,
        strength: 0.125,
        guidance: 3.5,
    },
];

impl TurboLora {
    /// Whether an added LoRA of this name and size is this file: its stored name, or its exact size (the
    /// files' own names, such as Turbo-Alpha's `diffusion_pytorch_model.safetensors`, say nothing).
    pub fn is(&self, name: &str, size: u64) -> bool {
        name == self.name || size == self.size
    }

    /// Checks fetched bytes against the catalog: size, then SHA-256.
    pub fn verify(&self, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 != self.size {
            return Err(Error::Invalid(format!(
                "{} arrived with {} bytes, the catalog's file has {}: not stored",
                self.name,
                bytes.len(),
                self.size
            )));
        }
        let hex = sha256_hex(bytes);
        if hex != self.sha256 {
            return Err(Error::Invalid(format!(
                "{} arrived with SHA-256 {hex}, the catalog's file has {}: not stored",
                self.name, self.sha256
            )));
        }
        Ok(())
    }
}

/// The catalog row `id`.
pub fn entry(id: &str) -> Result<&'static CatalogFile> {
    CATALOG.iter().find(|f| f.id == id).ok_or_else(|| Error::Invalid(format!("the catalog has no file {id:?}")))
}

/// The rows of one role (the quantizations to choose from).
pub fn choices(role: Role) -> impl Iterator<Item = &'static CatalogFile> {
    CATALOG.iter().filter(move |f| f.role == role)
}

/// A manifest for the real model from catalog rows: the chosen DiT and T5, plus CLIP, the VAE and the CLIP
/// tokenizer (one row of each role is needed; the tokenizer's two files are both taken).
pub fn manifest(id: &str, transformer: &str, t5: &str) -> Result<Manifest> {
    let chosen = [entry(transformer)?, entry(t5)?];
    for (file, role) in chosen.iter().zip([Role::Transformer, Role::T5]) {
        if file.role != role {
            return Err(Error::Invalid(format!("{} is not a {role:?} file", file.id)));
        }
    }
    let rest = CATALOG.iter().filter(|f| matches!(f.role, Role::Clip | Role::Vae | Role::Tokenizer));
    let rows: Vec<&CatalogFile> = chosen.into_iter().chain(rest).collect();
    let files = rows
        .iter()
        .map(|f| StoredFile::new(f.path, Some(f.role), Some(f.url.to_string()), f.size, DEFAULT_CHUNK_SIZE))
        .collect::<Result<Vec<_>>>()?;
    let label = format!("FLUX.1 Kontext [dev] · {} · {}", rows[0].label, rows[1].label);
    let entries = rows.iter().map(|f| f.id.to_string()).collect();
    Manifest::new(id, &label, Source::Catalog { entries }, files)
}

/// Folder of the built-in demo pack beside the app's page (copied into `dist/` by `www/index.html`).
pub const DEMO_BASE: &str = "demo-model/";
/// Store id of the demo pack.
pub const DEMO_ID: &str = "demo";

/// A manifest for the demo pack: [`crate::pipeline::loader::DIFFUSERS_FILES`] under `base` (the page's URL joined with
/// [`DEMO_BASE`]), with the sizes the server reported.
pub fn demo_manifest(base: &str, sizes: &[u64], chunk_size: u64) -> Result<Manifest> {
    let paths = crate::pipeline::loader::DIFFUSERS_FILES;
    if sizes.len() != paths.len() {
        return Err(Error::Invalid(format!(
            "the demo pack has {} files, {} sizes were given",
            paths.len(),
            sizes.len()
        )));
    }
    let files = paths
        .iter()
        .zip(sizes)
        .map(|(path, &size)| StoredFile::new(path, None, Some(format!("{base}{path}")), size, chunk_size))
        .collect::<Result<Vec<_>>>()?;
    Manifest::new(DEMO_ID, "Demo model (tiny random weights)", Source::Demo, files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_unique_and_well_formed() {
        let mut ids = std::collections::HashSet::new();
        for f in CATALOG {
            assert!(ids.insert(f.id), "{} twice", f.id);
            assert!(
                f.url.starts_with("https://huggingface.co/") && f.url.ends_with(f.path.rsplit('/').next().unwrap()),
                "{f:?}"
            );
            assert!(f.size > 0 && !f.licence.is_empty(), "{f:?}");
        }
        for role in [Role::Transformer, Role::T5, Role::Clip, Role::Vae, Role::Tokenizer] {
            assert!(choices(role).next().is_some(), "no {role:?}");
        }
    }

    #[test]
    fn a_catalog_manifest_has_one_file_per_part() {
        let m = manifest("kontext-q4", "kontext-dev-q4_k_s", "t5-xxl-q8_0").unwrap();
        let roles: Vec<_> = m.files.iter().map(|f| f.role.unwrap()).collect();
        assert_eq!(roles, [Role::Transformer, Role::T5, Role::Clip, Role::Vae, Role::Tokenizer, Role::Tokenizer]);
        assert_eq!(m.total_bytes(), 6_800_000_000 + 5_060_000_000 + 246_000_000 + 335_000_000 + 961_000 + 525_000);
        assert_eq!(m.file("flux1-kontext-dev-Q4_K_S.gguf").unwrap().chunks.len(), 203); // 6.8 GB / 32 MiB
        assert!(m.label.contains("Q4_K_S") && m.label.contains("Q8_0"), "{}", m.label);
        assert!(manifest("x", "t5-xxl-q8_0", "t5-xxl-q8_0").unwrap_err().to_string().contains("not a Transformer"));
        assert!(manifest("x", "kontext-dev-q9", "t5-xxl-q8_0").is_err());
    }

    #[test]
    fn turbo_loras_are_well_formed_and_told_apart() {
        for lora in TURBO_LORAS {
            assert!(lora.url.starts_with("https://huggingface.co/") && lora.url.contains("/resolve/main/"), "{lora:?}");
            assert!(lora.card.starts_with("https://huggingface.co/") && lora.size > 100_000_000, "{lora:?}");
            assert!(lora.sha256.len() == 64 && lora.sha256.bytes().all(|b| b.is_ascii_hexdigit()), "{lora:?}");
            assert!(lora.steps == 8 && lora.strength > 0.0 && lora.strength <= 1.0 && lora.guidance > 0.0);
            assert!(lora.is(lora.name, 1) && lora.is("diffusion_pytorch_model.safetensors", lora.size));
            assert!(TURBO_LORAS.iter().filter(|other| other.is(lora.name, lora.size)).count() == 1, "{lora:?}");
        }
    }

    #[test]
    fn fetched_turbo_lora_bytes_are_checked_by_size_then_hash() {
        let bytes = b"not a LoRA".to_vec();
        let lora = TurboLora { size: bytes.len() as u64, sha256: "00", ..TURBO_LORAS[0] };
        let short = TurboLora { size: 11, ..lora };
        assert!(
            short.verify(&bytes).unwrap_err().to_string().contains("arrived with 10 bytes, the catalog's file has 11")
        );
        assert!(lora.verify(&bytes).unwrap_err().to_string().contains("arrived with SHA-256"));
        let good = TurboLora { sha256: Box::leak(sha256_hex(&bytes).into_boxed_str()), ..lora };
        assert!(good.verify(&bytes).is_ok());
    }

    #[test]
    fn the_demo_manifest_lists_the_fixture_pack() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny/FLUX.1-Kontext-dev-tiny/");
        let sizes: Vec<u64> = crate::pipeline::loader::DIFFUSERS_FILES
            .iter()
            .map(|p| std::fs::metadata(format!("{root}{p}")).unwrap().len())
            .collect();
        let m = demo_manifest("http://127.0.0.1/demo-model/", &sizes, 1 << 20).unwrap();
        assert_eq!(m.total_bytes(), sizes.iter().sum::<u64>());
        assert_eq!(
            m.file("vae/config.json").unwrap().url.as_deref(),
            Some("http://127.0.0.1/demo-model/vae/config.json")
        );
        assert!(demo_manifest("x/", &sizes[1..], 1 << 20).is_err());
    }
}
