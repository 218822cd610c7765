//! The embed API's requests (`/?embed`, README "Embedding"): which parent origins may talk to the app, and how
//! `kontext:load` and `kontext:edit` map onto the worker's [`ToWorker`] requests. The browser glue that reads
//! `postMessage` events and answers them is `app::embed`; this part is plain data and runs (and is tested) natively.

use serde::Deserialize;
use serde_bytes::ByteBuf;

use crate::pipeline::cache::CacheConfig;
use crate::pipeline::size::DEFAULT_MAX_AREA;
use crate::store::manifest::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE};
use crate::store::sources::UrlSource;
use crate::web::protocol::{EditJob, MaskJob};

/// Most reference images one edit takes.
pub const MAX_IMAGES: usize = 4;
/// Steps when `kontext:edit` gives none (the reference pipeline's default).
pub const DEFAULT_STEPS: usize = 28;
/// Most steps one edit may ask for.
pub const MAX_STEPS: usize = 200;
/// Guidance when `kontext:edit` gives none (BFL's recommended value).
pub const DEFAULT_GUIDANCE: f32 = 2.5;

/// `scheme://host[:port]` of `url` (lower case, no path), or `None` when it is not an http(s) URL.
pub fn origin_of(url: &str) -> Option<String> {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    Some(format!("{scheme}://{}", authority.to_ascii_lowercase()))
}

/// The origins whose messages the app accepts: its own, and each origin listed in `?allow=` (comma-separated).
/// Entries that are not http(s) origins (`*`, `null`, garbage) are dropped: a wildcard would let any page drive
/// the app.
pub fn allowed_origins(own_origin: &str, allow: Option<&str>) -> Vec<String> {
    let mut origins: Vec<String> = origin_of(own_origin).into_iter().collect();
    for entry in allow.unwrap_or_default().split(',') {
        if let Some(origin) = origin_of(entry)
            && !origins.contains(&origin)
        {
            origins.push(origin);
        }
    }
    origins
}

/// `source` of `kontext:load`: a diffusers-layout folder (sharded or not) and/or single files that replace its parts,
/// or the four single files alone (ComfyUI's set; the CLIP tokenizer is then the built-in one). URLs, absolute or
/// relative to the app's page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct LoadSource {
    /// Folder in the diffusers layout.
    #[serde(default)]
    pub base: Option<String>,
    /// The DiT: BFL or diffusers safetensors, or a Flux GGUF.
    #[serde(default)]
    pub transformer: Option<String>,
    /// The T5 encoder: a llama.cpp T5 GGUF or transformers safetensors.
    #[serde(default)]
    pub t5: Option<String>,
    /// CLIP-L: `clip_l.safetensors` or transformers safetensors.
    #[serde(default)]
    pub clip: Option<String>,
    /// The VAE: BFL `ae.safetensors` or diffusers safetensors.
    #[serde(default)]
    pub vae: Option<String>,
}

impl LoadSource {
    /// The source to store, with relative URLs resolved against `page`; refused (with the reason) when it names no
    /// file or misses a part.
    pub fn to_source(&self, page: &str) -> Result<UrlSource, String> {
        let resolve = |url: &Option<String>| {
            url.as_deref().map(str::trim).filter(|u| !u.is_empty()).map(|u| resolve_url(page, u))
        };
        let source = UrlSource {
            base: resolve(&self.base),
            transformer: resolve(&self.transformer),
            t5: resolve(&self.t5),
            clip: resolve(&self.clip),
            vae: resolve(&self.vae),
            vocab: None,
            merges: None,
        }
        .normalized();
        let given = [&source.base, &source.transformer, &source.t5, &source.clip, &source.vae];
        if given.iter().all(|url| url.is_none()) {
            return Err("source needs a base folder URL or single-file URLs (transformer, t5, clip, vae)".into());
        }
        source.plan().map_err(|e| format!("kontext:load: {e}"))?;
        Ok(source)
    }
}

/// `gpuMemory` of `kontext:load`: the GPU memory, in bytes, that every edit on the model must fit; absent for no
/// limit.
pub fn gpu_memory(value: Option<f64>) -> Result<Option<u64>, String> {
    match value {
        None => Ok(None),
        Some(bytes) if bytes.is_finite() && bytes >= 1.0 && bytes <= u64::MAX as f64 => Ok(Some(bytes as u64)),
        Some(bytes) => Err(format!("kontext:load: gpuMemory must be a positive number of bytes, not {bytes}")),
    }
}

/// `chunkSize` of `kontext:load`: the bytes of each verified chunk the files are stored in (smaller chunks lose less
/// to a dropped connection); [`DEFAULT_CHUNK_SIZE`] when absent.
pub fn chunk_size(value: Option<f64>) -> Result<u64, String> {
    match value {
        None => Ok(DEFAULT_CHUNK_SIZE),
        Some(bytes) if bytes.fract() == 0.0 && (MIN_CHUNK_SIZE as f64..=MAX_CHUNK_SIZE as f64).contains(&bytes) => {
            Ok(bytes as u64)
        }
        Some(bytes) => Err(format!(
            "kontext:load: chunkSize must be a whole number of bytes from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}, not {bytes}"
        )),
    }
}

/// The smallest `chunkSize` accepted: 64 KiB (a smaller one makes a real model millions of records).
pub const MIN_CHUNK_SIZE: u64 = 64 << 10;

/// `url` resolved against the page URL `page` (absolute URLs unchanged; `/x` from the origin; `x` from the page's
/// folder).
pub fn resolve_url(page: &str, url: &str) -> String {
    if url.contains("://") {
        return url.to_string();
    }
    let page = page.split(['?', '#']).next().unwrap_or_default();
    match url.strip_prefix('/') {
        Some(path) => format!("{}/{path}", origin_of(page).unwrap_or_default()),
        None => format!("{}{url}", &page[..page.rfind('/').map_or(page.len(), |i| i + 1)]),
    }
}

/// `kontext:edit` without its images (Blobs, read by the page).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct EditOptions {
    /// The instruction.
    #[serde(default)]
    pub prompt: String,
    /// Output width; needs `height`.
    #[serde(default)]
    pub width: Option<usize>,
    /// Output height; needs `width`.
    #[serde(default)]
    pub height: Option<usize>,
    /// Denoising steps ([`DEFAULT_STEPS`] when absent).
    #[serde(default)]
    pub steps: Option<usize>,
    /// Distilled guidance ([`DEFAULT_GUIDANCE`] when absent).
    #[serde(default)]
    pub guidance: Option<f32>,
    /// Seed of the noise (random when absent; the result says which).
    #[serde(default)]
    pub seed: Option<u64>,
    /// `"bucket"` (default: references snap to a Kontext size at the output's area) or `"none"`.
    #[serde(default)]
    pub resize: Option<String>,
    /// `returnLatents`: answer with the final packed latents (`latents`, `latentsShape`) as well.
    #[serde(default, rename = "returnLatents")]
    pub return_latents: bool,
    /// `previews`: draw live previews on the view's canvas (true when absent).
    #[serde(default)]
    pub previews: Option<bool>,
    /// The step cache, `{kind: "fbc", threshold}` or `{kind: "mag", threshold, maxSkipSteps, retentionRatio,
    /// ratios}` (none when absent); progress messages of reused steps say `reused: true`.
    #[serde(default)]
    pub cache: Option<CacheConfig>,
    /// With a `mask`: how much of the schedule runs, in (0, 1] (1 when absent).
    #[serde(default)]
    pub strength: Option<f64>,
    /// With a `mask`: edit a crop around the mask with this many pixels of margin, and paste it back.
    #[serde(default, rename = "maskCrop")]
    pub mask_crop: Option<u32>,
}

/// The Blobs of `kontext:edit`, as bytes read by the page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EditBlobs {
    /// `images`: the references, the image to edit first.
    pub images: Vec<Vec<u8>>,
    /// `mask`: a PNG, white where the first image may change.
    pub mask: Option<Vec<u8>>,
    /// `maskReference`: an image that conditions a masked edit instead of the image.
    pub mask_reference: Option<Vec<u8>>,
}

impl From<Vec<Vec<u8>>> for EditBlobs {
    fn from(images: Vec<Vec<u8>>) -> Self {
        Self { images, ..Self::default() }
    }
}

impl EditOptions {
    /// The worker's job `id` with the encoded images and mask. With `width` and `height`, references are bucketed
    /// at the output's area (as `kontext edit --width W --height H --max-area W·H`); without, at 1024².
    pub fn to_job(&self, id: u32, blobs: EditBlobs, random_seed: impl FnOnce() -> u64) -> Result<EditJob, String> {
        let EditBlobs { images, mask, mask_reference } = blobs;
        if images.len() > MAX_IMAGES {
            return Err(format!("an edit takes at most {MAX_IMAGES} images, got {}", images.len()));
        }
        let mask = match mask {
            Some(_) if images.is_empty() => return Err("a mask needs the image to edit as images[0]".into()),
            Some(image) => {
                let strength = self.strength.unwrap_or(1.0);
                if !(strength > 0.0 && strength <= 1.0) {
                    return Err(format!("strength must be in (0, 1], got {strength}"));
                }
                Some(Box::new(MaskJob {
                    image: ByteBuf::from(image),
                    name: "mask".into(),
                    strength,
                    crop_padding: self.mask_crop,
                    reference: mask_reference.map(ByteBuf::from),
                }))
            }
            None if self.strength.is_some() || self.mask_crop.is_some() || mask_reference.is_some() => {
                return Err("strength, maskCrop and maskReference are for masked edits: add a mask".into());
            }
            None => None,
        };
        let max_area = match (self.width, self.height) {
            (Some(w), Some(h)) if w > 0 && h > 0 => w * h,
            (None, None) => DEFAULT_MAX_AREA,
            _ => return Err("give both width and height (positive), or neither".into()),
        };
        let cache = self.cache.clone().unwrap_or_default();
        if cache == CacheConfig::Calibrate {
            return Err("cache: calibration runs in `kontext calibrate-cache`".into());
        }
        cache.validate().map_err(|e| format!("cache: {e}"))?;
        let steps = self.steps.unwrap_or(DEFAULT_STEPS);
        if !(1..=MAX_STEPS).contains(&steps) {
            return Err(format!("steps must be between 1 and {MAX_STEPS}, got {steps}"));
        }
        let guidance = self.guidance.unwrap_or(DEFAULT_GUIDANCE);
        if !guidance.is_finite() || guidance < 0.0 {
            return Err(format!("guidance must be a number ≥ 0, got {guidance}"));
        }
        let keep_reference_size = match self.resize.as_deref() {
            None | Some("bucket") => false,
            Some("none") => true,
            Some(other) => return Err(format!("resize must be \"bucket\" or \"none\", got {other:?}")),
        };
        Ok(EditJob {
            id,
            prompt: self.prompt.clone(),
            images: images.into_iter().map(ByteBuf::from).collect(),
            width: self.width,
            height: self.height,
            max_area,
            keep_reference_size,
            steps,
            guidance,
            seed: self.seed.unwrap_or_else(random_seed),
            loras: Vec::new(),
            return_latents: self.return_latents,
            cache,
            mask,
            previews: self.previews.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_origins_are_allowed_and_wildcards_are_dropped() {
        let origins = allowed_origins(
            "http://127.0.0.1:8080",
            Some("https://Shop.Example/products, *,null,ftp://x, http://127.0.0.1:9000/"),
        );
        assert_eq!(origins, ["http://127.0.0.1:8080", "https://shop.example", "http://127.0.0.1:9000"]);
        assert_eq!(allowed_origins("https://app.example", None), ["https://app.example"]);
        assert_eq!(origin_of("https://user@evil.example"), None);
    }

    #[test]
    fn load_sources_resolve_against_the_page_and_need_every_part_without_a_folder() {
        let source = LoadSource {
            base: Some("demo-model".into()),
            vae: Some("/weights/ae.safetensors".into()),
            ..Default::default()
        };
        let source = source.to_source("http://127.0.0.1:8080/app/?embed").unwrap();
        assert_eq!(source.base.as_deref(), Some("http://127.0.0.1:8080/app/demo-model/"));
        assert_eq!(source.vae.as_deref(), Some("http://127.0.0.1:8080/weights/ae.safetensors"));
        let paths: Vec<String> = source.plan().unwrap().into_iter().map(|f| f.path).collect();
        assert!(paths.contains(&"parts/vae/ae.safetensors".to_string()), "{paths:?}");
        let vae: Vec<&String> = paths.iter().filter(|p| p.starts_with("vae/")).collect();
        assert_eq!(vae, ["vae/config.json"], "the file replaces the folder's VAE weights, not its config");
        assert!(paths.contains(&"transformer/config.json".to_string()), "{paths:?}");
        assert!(
            LoadSource::default().to_source("http://a/").unwrap_err().contains("base folder URL or single-file URLs")
        );
        let only_dit = LoadSource { transformer: Some("https://h/f.gguf".into()), ..Default::default() };
        assert!(only_dit.to_source("http://a/").unwrap_err().contains("missing: T5, CLIP, VAE"));
        let comfy = LoadSource {
            transformer: Some("https://h/flux1-kontext-dev-Q4_0.gguf".into()),
            t5: Some("https://h/t5-v1_1-xxl-encoder-Q8_0.gguf".into()),
            clip: Some("https://h/clip_l.safetensors".into()),
            vae: Some("https://h/ae.safetensors".into()),
            base: None,
        };
        assert_eq!(comfy.to_source("http://a/").unwrap().plan().unwrap().len(), 4);
    }

    #[test]
    fn gpu_memory_is_a_positive_byte_count_or_absent() {
        assert_eq!(gpu_memory(None), Ok(None));
        assert_eq!(gpu_memory(Some(8.0 * 1024.0 * 1024.0 * 1024.0)), Ok(Some(8 << 30)));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(gpu_memory(Some(bad)).unwrap_err().contains("gpuMemory must be a positive number of bytes"));
        }
    }

    #[test]
    fn chunk_size_is_whole_bytes_within_bounds_or_the_default() {
        assert_eq!(chunk_size(None), Ok(DEFAULT_CHUNK_SIZE));
        assert_eq!(chunk_size(Some(262144.0)), Ok(262144));
        for bad in [1024.0, 65536.5, (MAX_CHUNK_SIZE * 2) as f64, f64::NAN, -1.0] {
            assert!(chunk_size(Some(bad)).unwrap_err().contains("chunkSize must be a whole number of bytes"), "{bad}");
        }
    }

    #[test]
    fn edit_options_fill_defaults_and_refuse_bad_values() {
        let job =
            EditOptions { prompt: "p".into(), ..Default::default() }.to_job(7, vec![vec![1]].into(), || 99).unwrap();
        assert_eq!((job.id, job.steps, job.guidance, job.seed, job.max_area), (7, 28, 2.5, 99, 1024 * 1024));
        assert!(!job.keep_reference_size && job.width.is_none());
        let sized = EditOptions {
            width: Some(144),
            height: Some(96),
            seed: Some(5),
            resize: Some("none".into()),
            ..Default::default()
        };
        let job = sized.to_job(1, EditBlobs::default(), || unreachable!("the seed is given")).unwrap();
        assert_eq!(
            (job.width, job.height, job.max_area, job.seed, job.keep_reference_size),
            (Some(144), Some(96), 144 * 96, 5, true)
        );
        let bad = [
            EditOptions { width: Some(64), ..Default::default() },
            EditOptions { steps: Some(0), ..Default::default() },
            EditOptions { guidance: Some(f32::NAN), ..Default::default() },
            EditOptions { resize: Some("crop".into()), ..Default::default() },
            EditOptions { cache: Some(CacheConfig::Calibrate), ..Default::default() },
            EditOptions { cache: Some(CacheConfig::Fbc { threshold: f64::NAN }), ..Default::default() },
            EditOptions { cache: CacheConfig::parse("mag:0.1").ok(), ..Default::default() },
        ];
        for options in bad {
            assert!(options.to_job(1, EditBlobs::default(), || 0).is_err(), "{options:?}");
        }
        assert!(EditOptions::default().to_job(1, vec![Vec::new(); 5].into(), || 0).is_err());
        let cached = EditOptions { cache: Some(CacheConfig::Fbc { threshold: 0.1 }), ..Default::default() };
        assert_eq!(cached.to_job(1, EditBlobs::default(), || 0).unwrap().cache, CacheConfig::Fbc { threshold: 0.1 });
    }

    #[test]
    fn masked_edits_need_a_mask_and_an_image_and_a_strength_in_range() {
        let blobs = |mask: bool, reference: bool| EditBlobs {
            images: vec![vec![1]],
            mask: mask.then(|| vec![2]),
            mask_reference: reference.then(|| vec![3]),
        };
        let options = EditOptions { strength: Some(0.6), mask_crop: Some(32), ..Default::default() };
        let mask = options.to_job(1, blobs(true, true), || 0).unwrap().mask.unwrap();
        assert_eq!((mask.strength, mask.crop_padding, mask.image.to_vec()), (0.6, Some(32), vec![2]));
        assert_eq!(mask.reference.map(|r| r.to_vec()), Some(vec![3]));
        let plain = EditOptions::default().to_job(1, blobs(true, false), || 0).unwrap().mask.unwrap();
        assert_eq!((plain.strength, plain.crop_padding, plain.reference), (1.0, None, None));
        let err = |options: &EditOptions, blobs: EditBlobs| options.to_job(1, blobs, || 0).unwrap_err();
        assert!(err(&options, blobs(false, false)).contains("add a mask"));
        assert!(err(&EditOptions::default(), blobs(false, true)).contains("add a mask"));
        let no_image = EditBlobs { mask: Some(vec![2]), ..EditBlobs::default() };
        assert!(err(&EditOptions::default(), no_image).contains("needs the image to edit"));
        for strength in [0.0, 1.5, f64::NAN] {
            let options = EditOptions { strength: Some(strength), ..Default::default() };
            assert!(err(&options, blobs(true, false)).contains("strength must be in (0, 1]"), "{strength}");
        }
    }
}
