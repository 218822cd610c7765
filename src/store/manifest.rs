//! What the store holds of one model: its files, cut into chunks, each chunk's SHA-256 and whether it is
//! stored. Kept as JSON beside the chunks and validated whenever it is read back, so a corrupt or hostile
//! manifest is refused with one clear error instead of driving reads past the stored bytes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Version of the manifest's JSON shape; a manifest of another version is refused.
pub const MANIFEST_VERSION: u32 = 1;
/// Chunk size of real downloads: small enough for every browser's single-value limits, large enough that a
/// 12 GB file is a few hundred records.
pub const DEFAULT_CHUNK_SIZE: u64 = 32 << 20;
/// Largest chunk accepted (Firefox refuses single `ArrayBuffer`s over 2 GB; the heap must hold one chunk).
pub const MAX_CHUNK_SIZE: u64 = 256 << 20;
/// Largest file accepted (the biggest real file, the bf16 DiT, is 23.8 GB).
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// Most files in one model (a sharded diffusers folder has a few dozen).
pub const MAX_FILES: usize = 4096;
/// Most chunks in one model, whatever its files.
pub const MAX_CHUNKS: usize = 1 << 20;
const MAX_TEXT: usize = 4096;

/// The part of the pipeline a single file provides; files without a role belong to a diffusers-layout folder
/// and are found by their path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The DiT (GGUF or safetensors).
    Transformer,
    /// The T5 encoder (GGUF).
    T5,
    /// CLIP-L (`clip_l.safetensors`).
    Clip,
    /// The autoencoder (`ae.safetensors`).
    Vae,
    /// A tokenizer file, read from its folder path (`tokenizer/vocab.json`).
    Tokenizer,
}

/// Where a model's files came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// Files chosen from [`crate::store::catalog::CATALOG`], by entry id.
    Catalog {
        /// The catalog ids, one per file.
        entries: Vec<String>,
    },
    /// URLs the user gave: a diffusers-layout folder and/or one URL per file.
    Urls {
        /// Base URL of the folder, when one was given.
        base: Option<String>,
    },
    /// Files the user picked or dropped from the local disk.
    Local,
    /// The tiny demo pack served with the app.
    Demo,
}

/// Whether a chunk's bytes are in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkState {
    /// Not stored (never fetched, or dropped after failing verification).
    Missing,
    /// Stored, and its SHA-256 matched when it was written.
    Stored,
}

/// One chunk of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Lower-case hex SHA-256 of the chunk's bytes: recorded when first stored, or known beforehand; a chunk
    /// fetched again must match it.
    pub sha256: Option<String>,
    /// Stored or missing.
    pub state: ChunkState,
}

/// How much of a file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    /// No chunk stored.
    Missing,
    /// Some chunks stored.
    Partial,
    /// Every chunk stored and verified: the file can be used.
    Complete,
}

/// One file of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Path relative to the model's root (`transformer/config.json`, `flux1-kontext-dev-Q4_K_S.gguf`).
    pub path: String,
    /// The part it provides when it is a single-file part; `None` for a file of a diffusers folder.
    pub role: Option<Role>,
    /// Where it is downloaded from; `None` for local files.
    pub url: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Bytes per chunk; the last chunk holds the rest.
    pub chunk_size: u64,
    /// One entry per chunk, in order.
    pub chunks: Vec<Chunk>,
    /// What the server said identifies this version of the file (its `ETag`, else its `Last-Modified`), when it
    /// said so: a later answer with another one is a changed file, whose bytes are never mixed with these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator: Option<String>,
}

/// Number of chunks of a file of `size` bytes.
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    size.div_ceil(chunk_size.max(1))
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl StoredFile {
    /// A file with every chunk missing.
    pub fn new(path: &str, role: Option<Role>, url: Option<String>, size: u64, chunk_size: u64) -> Result<Self> {
        check_sizes(path, size, chunk_size)?;
        let chunks = vec![Chunk { sha256: None, state: ChunkState::Missing }; chunk_count(size, chunk_size) as usize];
        let file = Self { path: path.to_string(), role, url, size, chunk_size, chunks, validator: None };
        file.validate()?;
        Ok(file)
    }

    /// Byte offset and length of chunk `index`.
    pub fn chunk_span(&self, index: usize) -> Result<(u64, u64)> {
        if index >= self.chunks.len() {
            return Err(Error::Invalid(format!(
                "{} has {} chunks, there is no chunk {index}",
                self.path,
                self.chunks.len()
            )));
        }
        let start = index as u64 * self.chunk_size;
        Ok((start, self.chunk_size.min(self.size - start)))
    }

    /// Indices of the chunks not stored.
    pub fn missing_chunks(&self) -> Vec<usize> {
        self.chunks.iter().enumerate().filter(|(_, c)| c.state == ChunkState::Missing).map(|(i, _)| i).collect()
    }

    /// Runs of consecutive missing chunks, as `start..end` chunk indices (one HTTP range each).
    pub fn missing_runs(&self) -> Vec<std::ops::Range<usize>> {
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        for index in self.missing_chunks() {
            match runs.last_mut() {
                Some(run) if run.end == index => run.end += 1,
                _ => runs.push(index..index + 1),
            }
        }
        runs
    }

    /// Bytes stored.
    pub fn stored_bytes(&self) -> u64 {
        (0..self.chunks.len())
            .filter(|&i| self.chunks[i].state == ChunkState::Stored)
            .map(|i| self.chunk_span(i).map_or(0, |(_, len)| len))
            .sum()
    }

    /// Whether every chunk is stored and verified.
    pub fn is_complete(&self) -> bool {
        self.chunks.iter().all(|c| c.state == ChunkState::Stored)
    }

    /// Missing, partial or complete.
    pub fn state(&self) -> FileState {
        let stored = self.chunks.iter().filter(|c| c.state == ChunkState::Stored).count();
        match stored {
            _ if stored == self.chunks.len() => FileState::Complete,
            0 => FileState::Missing,
            _ => FileState::Partial,
        }
    }

    /// The chunks that hold `offset..offset + len`, each as (chunk index, offset inside the chunk, length).
    pub fn chunks_for_range(&self, offset: u64, len: u64) -> Result<Vec<(usize, u64, u64)>> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "{}: reading {len} bytes at offset {offset} goes past its end ({} bytes)",
                    self.path, self.size
                )));
            }
        }
        let mut pieces = Vec::new();
        let mut at = offset;
        while at < offset + len {
            let index = (at / self.chunk_size) as usize;
            let (start, chunk_len) = self.chunk_span(index)?;
            let inside = at - start;
            let take = (chunk_len - inside).min(offset + len - at);
            pieces.push((index, inside, take));
            at += take;
        }
        Ok(pieces)
    }

    /// Checks the file's invariants: sizes within bounds, chunk count equal to the size's, hashes well formed,
    /// every stored chunk with a hash, a relative path without `..`.
    pub fn validate(&self) -> Result<()> {
        check_path(&self.path)?;
        check_sizes(&self.path, self.size, self.chunk_size)?;
        let expected = chunk_count(self.size, self.chunk_size);
        if self.chunks.len() as u64 != expected {
            return Err(Error::Invalid(format!(
                "{} lists {} chunks, but {} bytes in chunks of {} make {expected}",
                self.path,
                self.chunks.len(),
                self.size,
                self.chunk_size
            )));
        }
        if let Some(url) = &self.url
            && (url.is_empty() || url.len() > MAX_TEXT)
        {
            return Err(Error::Invalid(format!("{} has an empty or overlong URL", self.path)));
        }
        if let Some(validator) = &self.validator
            && (validator.len() > MAX_TEXT || validator.chars().any(char::is_control))
        {
            return Err(Error::Invalid(format!("{} has an overlong or garbled ETag", self.path)));
        }
        for (index, chunk) in self.chunks.iter().enumerate() {
            match &chunk.sha256 {
                Some(hash) if !is_sha256_hex(hash) => {
                    return Err(Error::Invalid(format!("{} chunk {index}: {hash:?} is not a hex SHA-256", self.path)));
                }
                None if chunk.state == ChunkState::Stored => {
                    return Err(Error::Invalid(format!(
                        "{} chunk {index} is marked stored without a SHA-256",
                        self.path
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn check_sizes(path: &str, size: u64, chunk_size: u64) -> Result<()> {
    if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
        return Err(Error::Invalid(format!("{path}: chunk size {chunk_size} is outside 1..={MAX_CHUNK_SIZE} bytes")));
    }
    if size > MAX_FILE_SIZE {
        return Err(Error::Invalid(format!(
            "{path}: {size} bytes is larger than the {MAX_FILE_SIZE} bytes a file may have"
        )));
    }
    Ok(())
}

fn check_path(path: &str) -> Result<()> {
    let bad = path.is_empty()
        || path.len() > MAX_TEXT
        || path.starts_with('/')
        || path.contains('\\')
        || path.chars().any(char::is_control)
        || path.split('/').any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(Error::Invalid(format!("{path:?} is not a relative file path")));
    }
    Ok(())
}

fn is_sha256_hex(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// One model in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_VERSION`].
    pub version: u32,
    /// Key of the model in the store.
    pub id: String,
    /// Name shown to the user.
    pub label: String,
    /// Where the files came from.
    pub source: Source,
    /// The files, each path once.
    pub files: Vec<StoredFile>,
}

impl Manifest {
    /// A manifest of `files`, validated.
    pub fn new(id: &str, label: &str, source: Source, files: Vec<StoredFile>) -> Result<Self> {
        let manifest = Self { version: MANIFEST_VERSION, id: id.to_string(), label: label.to_string(), source, files };
        manifest.validate()?;
        Ok(manifest)
    }

    /// Parses and validates a manifest read back from storage.
    pub fn from_json(json: &str) -> Result<Self> {
        let manifest: Self = serde_json::from_str(json)
            .map_err(|e| Error::Invalid(format!("a stored model manifest is unreadable: {e}")))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The manifest as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a manifest is plain data")
    }

    /// Checks every invariant; the error names the model and what is wrong.
    pub fn validate(&self) -> Result<()> {
        let fail = |what: String| Err(Error::Invalid(format!("model manifest {:?}: {what}", self.id)));
        if self.version != MANIFEST_VERSION {
            return fail(format!("version {} is not {MANIFEST_VERSION}", self.version));
        }
        if self.id.is_empty() || self.id.len() > 200 || self.id.chars().any(char::is_control) {
            return fail("the id is empty, too long or has control characters".into());
        }
        if self.label.len() > MAX_TEXT {
            return fail("the label is too long".into());
        }
        if self.files.len() > MAX_FILES {
            return fail(format!("{} files is more than {MAX_FILES}", self.files.len()));
        }
        let mut paths = std::collections::HashSet::new();
        let mut chunks = 0usize;
        for file in &self.files {
            if let Err(e) = file.validate() {
                return fail(e.to_string());
            }
            if !paths.insert(file.path.as_str()) {
                return fail(format!("{} is listed twice", file.path));
            }
            chunks += file.chunks.len();
            if chunks > MAX_CHUNKS {
                return fail(format!("more than {MAX_CHUNKS} chunks"));
            }
        }
        Ok(())
    }

    /// The file at `path`.
    pub fn file(&self, path: &str) -> Result<&StoredFile> {
        self.files.iter().find(|f| f.path == path).ok_or_else(|| self.no_file(path))
    }

    fn file_mut(&mut self, path: &str) -> Result<&mut StoredFile> {
        let missing = self.no_file(path);
        self.files.iter_mut().find(|f| f.path == path).ok_or(missing)
    }

    fn no_file(&self, path: &str) -> Error {
        Error::Invalid(format!("model {:?} has no file {path}", self.id))
    }

    /// Sum of the files' sizes.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Bytes stored and verified.
    pub fn stored_bytes(&self) -> u64 {
        self.files.iter().map(StoredFile::stored_bytes).sum()
    }

    /// Bytes still to fetch.
    pub fn missing_bytes(&self) -> u64 {
        self.total_bytes() - self.stored_bytes()
    }

    /// Whether every file is complete: the model can be loaded.
    pub fn is_complete(&self) -> bool {
        self.files.iter().all(StoredFile::is_complete)
    }

    /// Missing (nothing stored), partial or complete, over all files.
    pub fn state(&self) -> FileState {
        if self.is_complete() {
            FileState::Complete
        } else if self.files.iter().flat_map(|f| &f.chunks).all(|c| c.state == ChunkState::Missing) {
            FileState::Missing
        } else {
            FileState::Partial
        }
    }

    /// Checks that `bytes` may be stored as chunk `index` of `path` (right length; the recorded SHA-256 when
    /// there is one) and returns its hash.
    pub fn check_chunk(&self, path: &str, index: usize, bytes: &[u8]) -> Result<String> {
        self.check_hashed_chunk(path, index, bytes.len(), sha256_hex(bytes))
    }

    /// [`Manifest::check_chunk`] for bytes already hashed: `len` bytes whose SHA-256 is `hash`.
    pub fn check_hashed_chunk(&self, path: &str, index: usize, len: usize, hash: String) -> Result<String> {
        let file = self.file(path)?;
        let (_, expected_len) = file.chunk_span(index)?;
        if len as u64 != expected_len {
            return Err(Error::Invalid(format!("{path} chunk {index} must be {expected_len} bytes, got {len}")));
        }
        if let Some(expected) = &file.chunks[index].sha256
            && *expected != hash
        {
            return Err(Error::Invalid(format!(
                "{path} chunk {index} does not match its SHA-256 (expected {expected}, got {hash}); fetch it again"
            )));
        }
        Ok(hash)
    }

    /// Marks chunk `index` of `path` stored with `sha256` (which [`Manifest::check_chunk`] returned).
    pub fn mark_stored(&mut self, path: &str, index: usize, sha256: String) -> Result<()> {
        let file = self.file_mut(path)?;
        file.chunk_span(index)?;
        let chunk = &mut file.chunks[index];
        if chunk.sha256.as_ref().is_some_and(|h| *h != sha256) {
            return Err(Error::Invalid(format!("{path} chunk {index} does not match its recorded SHA-256")));
        }
        chunk.sha256 = Some(sha256);
        chunk.state = ChunkState::Stored;
        Ok(())
    }

    /// Marks chunk `index` of `path` missing; its recorded hash stays, so the refetched bytes must match it.
    pub fn mark_missing(&mut self, path: &str, index: usize) -> Result<()> {
        let file = self.file_mut(path)?;
        file.chunk_span(index)?;
        file.chunks[index].state = ChunkState::Missing;
        Ok(())
    }

    /// Records what the server now says of file `path`: its size and validator (`ETag` or `Last-Modified`). A file
    /// with nothing stored takes them (catalog sizes are approximate; the server's answer is the truth); one with stored chunks must still match them, or it [changed on the
    /// server](is_changed_on_server).
    pub fn set_remote(&mut self, path: &str, size: u64, validator: Option<String>) -> Result<()> {
        let file = self.file_mut(path)?;
        let validator_changed = matches!((&file.validator, &validator), (Some(was), Some(now)) if was != now);
        if file.size == size && !validator_changed {
            if file.validator.is_none() {
                file.validator = validator;
            }
            return self.validate();
        }
        if file.chunks.iter().any(|c| c.state == ChunkState::Stored || c.sha256.is_some()) {
            let what = if file.size != size {
                format!("it was {} bytes, it is now {size}", file.size)
            } else {
                let (was, now) =
                    (file.validator.as_deref().unwrap_or_default(), validator.as_deref().unwrap_or_default());
                format!("it was {was:?}, it is now {now:?}")
            };
            return Err(changed_on_server(file.url.as_deref().unwrap_or(path), &what));
        }
        let mut fresh = StoredFile::new(&file.path.clone(), file.role, file.url.clone(), size, file.chunk_size)?;
        fresh.validator = validator;
        *file = fresh;
        self.validate()
    }
}

/// The error for a file that changed on its server between chunks (`what` says how): its bytes are not mixed.
pub fn changed_on_server(url: &str, what: &str) -> Error {
    Error::Invalid(format!(
        "{url} changed on the server since its download began ({what}); its stored chunks were not mixed with the new bytes"
    ))
}

/// Whether `error` is [`changed_on_server`]'s: trying again cannot help.
pub fn is_changed_on_server(error: &Error) -> bool {
    matches!(error, Error::Invalid(message) if message.contains(" changed on the server since its download began ("))
}

/// Space the browser grants this site, as `navigator.storage.estimate()` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StorageEstimate {
    /// Bytes in use by this site.
    pub usage: f64,
    /// Bytes this site may use.
    pub quota: f64,
}

/// Head-room kept free beyond the bytes to store (IndexedDB's own records and the manifests).
pub const QUOTA_MARGIN: u64 = 64 << 20;

impl StorageEstimate {
    /// Bytes that can still be stored.
    pub fn available(&self) -> u64 {
        (self.quota - self.usage).max(0.0) as u64
    }

    /// Refuses, with a `storage full:` error naming both sizes, when `needed` bytes will not fit.
    pub fn check_fits(&self, needed: u64) -> Result<()> {
        let available = self.available();
        if needed.saturating_add(QUOTA_MARGIN) > available {
            return Err(Error::Invalid(format!(
                "storage full: this download needs {} more but the browser lets this site store only {} more; delete models or free disk space",
                human_bytes(needed),
                human_bytes(available.saturating_sub(QUOTA_MARGIN))
            )));
        }
        Ok(())
    }
}

/// Whether `error` says the browser's storage is full.
pub fn is_storage_full(error: &Error) -> bool {
    matches!(error, Error::Invalid(message) if message.starts_with("storage full:"))
}

/// `1.5 GB`, `320.0 MB`, `12 KB`: sizes for messages, in decimal units as browsers and disks show them.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} KB", b / 1e3)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let files = vec![
            StoredFile::new("transformer/model.safetensors", None, Some("https://example.org/t".into()), 10, 4)
                .unwrap(),
            StoredFile::new("ae.safetensors", Some(Role::Vae), None, 4, 4).unwrap(),
        ];
        Manifest::new("tiny", "Tiny", Source::Demo, files).unwrap()
    }

    #[test]
    fn chunks_cover_the_file_and_the_last_holds_the_rest() {
        let manifest = sample();
        let file = manifest.file("transformer/model.safetensors").unwrap();
        assert_eq!(file.chunks.len(), 3);
        assert_eq!(file.chunk_span(2).unwrap(), (8, 2));
        assert!(file.chunk_span(3).is_err());
        assert_eq!(file.chunks_for_range(3, 6).unwrap(), vec![(0, 3, 1), (1, 0, 4), (2, 0, 1)]);
        assert_eq!(file.chunks_for_range(10, 0).unwrap(), vec![]);
        assert!(file.chunks_for_range(9, 2).unwrap_err().to_string().contains("past its end"));
        assert!(file.chunks_for_range(u64::MAX, 2).is_err());
        assert_eq!(StoredFile::new("empty.json", None, None, 0, 4).unwrap().state(), FileState::Complete);
    }

    #[test]
    fn stored_chunks_change_the_states_and_missing_runs() {
        let mut manifest = sample();
        let path = "transformer/model.safetensors";
        assert_eq!(manifest.state(), FileState::Missing);
        let hash = manifest.check_chunk(path, 1, &[1, 2, 3, 4]).unwrap();
        assert_eq!(hash, sha256_hex(&[1, 2, 3, 4]));
        manifest.mark_stored(path, 1, hash).unwrap();
        assert_eq!(manifest.file(path).unwrap().missing_runs(), vec![0..1, 2..3]);
        assert_eq!(manifest.stored_bytes(), 4);
        assert_eq!(manifest.missing_bytes(), 10);
        assert_eq!(manifest.state(), FileState::Partial);
        assert!(manifest.check_chunk(path, 2, &[1, 2, 3]).unwrap_err().to_string().contains("must be 2 bytes"));
        for (i, bytes) in [(0, vec![0u8; 4]), (2, vec![9u8; 2])] {
            let hash = manifest.check_chunk(path, i, &bytes).unwrap();
            manifest.mark_stored(path, i, hash).unwrap();
        }
        assert!(manifest.file(path).unwrap().is_complete());
        assert!(!manifest.is_complete());
        let hash = manifest.check_chunk("ae.safetensors", 0, b"vae!").unwrap();
        manifest.mark_stored("ae.safetensors", 0, hash).unwrap();
        assert!(manifest.is_complete());
        assert_eq!(manifest.state(), FileState::Complete);
    }

    #[test]
    fn a_refetched_chunk_must_match_the_recorded_hash() {
        let mut manifest = sample();
        let path = "ae.safetensors";
        let hash = manifest.check_chunk(path, 0, b"good").unwrap();
        manifest.mark_stored(path, 0, hash).unwrap();
        manifest.mark_missing(path, 0).unwrap();
        assert_eq!(manifest.file(path).unwrap().state(), FileState::Missing);
        let err = manifest.check_chunk(path, 0, b"evil").unwrap_err().to_string();
        assert!(err.contains("does not match its SHA-256"), "{err}");
        assert!(manifest.check_chunk(path, 0, b"good").is_ok());
        assert!(is_changed_on_server(&manifest.set_remote(path, 5, None).unwrap_err()));
    }

    #[test]
    fn a_file_whose_etag_changes_after_chunks_are_stored_is_refused_as_changed() {
        let mut manifest = sample();
        let path = "ae.safetensors";
        let size = manifest.file(path).unwrap().size;
        manifest.set_remote(path, size, Some("v1".into())).unwrap();
        let hash = manifest.check_chunk(path, 0, b"good").unwrap();
        manifest.mark_stored(path, 0, hash).unwrap();
        manifest.set_remote(path, size, None).unwrap();
        manifest.set_remote(path, size, Some("v1".into())).unwrap();
        let changed = manifest.set_remote(path, size, Some("v2".into())).unwrap_err();
        assert!(is_changed_on_server(&changed), "{changed}");
        assert!(changed.to_string().contains(r#"(it was "v1", it is now "v2")"#), "{changed}");
        assert!(is_changed_on_server(&manifest.set_remote(path, size + 1, None).unwrap_err()));
        assert_eq!(manifest.file(path).unwrap().stored_bytes(), 4, "the stored chunk stays");
        assert!(!is_changed_on_server(&Error::Invalid("storage full: x".into())));
    }

    #[test]
    fn approximate_sizes_are_corrected_before_anything_is_stored() {
        let mut manifest = sample();
        manifest.set_remote("transformer/model.safetensors", 13, None).unwrap();
        assert_eq!(manifest.file("transformer/model.safetensors").unwrap().chunks.len(), 4);
        assert_eq!(manifest.total_bytes(), 17);
    }

    #[test]
    fn manifests_round_trip_through_json() {
        let mut manifest = sample();
        let hash = manifest.check_chunk("ae.safetensors", 0, b"good").unwrap();
        manifest.mark_stored("ae.safetensors", 0, hash).unwrap();
        assert_eq!(Manifest::from_json(&manifest.to_json()).unwrap(), manifest);
    }

    #[test]
    fn corrupt_or_hostile_manifests_are_refused_with_a_reason() {
        let good = sample();
        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut value: serde_json::Value = serde_json::from_str(&good.to_json()).unwrap();
            f(&mut value);
            Manifest::from_json(&value.to_string()).unwrap_err().to_string()
        };
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|v| v["version"] = 2.into()), "version 2"),
            (Box::new(|v| v["id"] = "".into()), "id is empty"),
            (Box::new(|v| v["files"][0]["size"] = 1_000_000.into()), "make 250000"),
            (Box::new(|v| v["files"][0]["size"] = u64::MAX.into()), "larger than"),
            (Box::new(|v| v["files"][0]["chunk_size"] = 0.into()), "chunk size 0"),
            (Box::new(|v| v["files"][0]["path"] = "../../etc/passwd".into()), "not a relative file path"),
            (Box::new(|v| v["files"][0]["path"] = "/abs".into()), "not a relative file path"),
            (Box::new(|v| v["files"][1]["path"] = "transformer/model.safetensors".into()), "listed twice"),
            (Box::new(|v| v["files"][0]["chunks"][0]["state"] = "stored".into()), "without a SHA-256"),
            (Box::new(|v| v["files"][0]["chunks"][0]["sha256"] = "zz".into()), "not a hex SHA-256"),
            (Box::new(|v| v["files"][0]["chunks"][0]["state"] = "half".into()), "unreadable"),
            (Box::new(|v| v["files"][0]["url"] = "".into()), "URL"),
        ];
        for (change, expected) in cases {
            let err = edit(change.as_ref());
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        }
        for junk in ["", "null", "[]", "{\"version\":1}", "{{{{", "\u{0}"] {
            assert!(Manifest::from_json(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn the_quota_check_refuses_what_will_not_fit() {
        let estimate = StorageEstimate { usage: 1e9, quota: 10e9 };
        assert_eq!(estimate.available(), 9_000_000_000);
        assert!(estimate.check_fits(8_000_000_000).is_ok());
        let err = estimate.check_fits(12_000_000_000).unwrap_err();
        assert!(is_storage_full(&err), "{err}");
        assert!(err.to_string().contains("12.0 GB") && err.to_string().contains("8.9 GB"), "{err}");
        assert!(StorageEstimate { usage: 5.0, quota: 1.0 }.check_fits(0).is_err());
    }
}
