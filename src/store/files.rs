//! A complete stored model as [`ModelFiles`] plus [`Overrides`], ready for [`crate::pipeline::loader::KontextModel::load`].
//!
//! Nothing is read ahead: every file is a [`StoredFileSource`] over its chunks' `Blob` handles, whose
//! [`ByteSource::read_at`] slices the chunks a range touches and reads just those bytes with
//! `FileReaderSync`. The loader reads one tensor at a time, so a load holds about one tensor in WebAssembly
//! memory whatever the model's size. `FileReaderSync` exists only in Web Workers: models load in the app's
//! worker.

use std::collections::HashMap;
use std::rc::Rc;

use js_sys::Uint8Array;
use web_sys::{Blob, FileReaderSync};

use super::idb::Store;
use super::manifest::{Role, StoredFile, human_bytes};
use crate::formats::ByteSource;
use crate::pipeline::loader::{ModelFiles, Overrides};
use crate::store::js;
use crate::{Error, Result};

/// One stored file, read range by range from its chunks' `Blob`s.
#[derive(Clone)]
pub struct StoredFileSource {
    label: String,
    file: Rc<StoredFile>,
    chunks: Rc<Vec<Blob>>,
    reader: FileReaderSync,
}

impl StoredFileSource {
    /// The file described by `file`, whose chunks are `chunks` (in order), read with `reader`.
    pub fn new(label: String, file: StoredFile, chunks: Vec<Blob>, reader: FileReaderSync) -> Result<Self> {
        if chunks.len() != file.chunks.len() {
            return Err(Error::Invalid(format!(
                "{label}: {} chunk handles for {} chunks",
                chunks.len(),
                file.chunks.len()
            )));
        }
        Ok(Self { label, file: Rc::new(file), chunks: Rc::new(chunks), reader })
    }
}

impl ByteSource for StoredFileSource {
    fn len(&self) -> u64 {
        self.file.size
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        crate::formats::source::check_range(&self.label, self.file.size, offset, len)?;
        let mut out = vec![0u8; len];
        let mut at = 0usize;
        for (index, inside, take) in self.file.chunks_for_range(offset, len as u64)? {
            let piece =
                self.chunks[index].slice_with_f64_and_f64(inside as f64, (inside + take) as f64).map_err(|e| {
                    Error::Invalid(format!("{}: slicing chunk {index} failed: {}", self.label, js::describe(e)))
                })?;
            let buffer = self.reader.read_as_array_buffer(&piece).map_err(|e| {
                Error::Invalid(format!(
                    "{}: reading chunk {index} from browser storage failed: {}",
                    self.label,
                    js::describe(e)
                ))
            })?;
            let bytes = Uint8Array::new(&buffer);
            if bytes.length() as u64 != take {
                return Err(Error::Invalid(format!(
                    "{}: chunk {index} gave {} bytes where {take} were expected; verify the model",
                    self.label,
                    bytes.length()
                )));
            }
            bytes.copy_to(&mut out[at..at + take as usize]);
            at += take as usize;
        }
        Ok(out)
    }

    fn label(&self) -> String {
        self.label.clone()
    }
}

/// The files of one stored model, as handles on their chunks.
pub struct StoredModel {
    files: HashMap<String, StoredFileSource>,
    parts: Vec<(Role, String)>,
    total_bytes: u64,
}

impl StoredModel {
    /// Opens model `id`: refused unless every chunk is stored, and outside a Web Worker (no `FileReaderSync`).
    pub async fn open(store: &Store, id: &str) -> Result<Self> {
        let manifest =
            store.manifest(id).await?.ok_or_else(|| Error::Invalid(format!("the store has no model {id:?}")))?;
        if !manifest.is_complete() {
            return Err(Error::Invalid(format!(
                "model {:?} is not complete: {} of {} stored; download the rest first",
                manifest.label,
                human_bytes(manifest.stored_bytes()),
                human_bytes(manifest.total_bytes())
            )));
        }
        let reader = FileReaderSync::new().map_err(|e| {
            Error::Invalid(format!(
                "a stored model loads only in a Web Worker, which can read browser storage synchronously (FileReaderSync: {})",
                js::describe(e)
            ))
        })?;
        let mut files = HashMap::new();
        let mut parts = Vec::new();
        for file in &manifest.files {
            let chunks = store.chunk_blobs(id, &file.path).await?;
            let label = format!("{} (stored model {:?})", file.path, manifest.label);
            files.insert(file.path.clone(), StoredFileSource::new(label, file.clone(), chunks, reader.clone())?);
            if let Some(role) = file.role.filter(|r| *r != Role::Tokenizer) {
                parts.push((role, file.path.clone()));
            }
        }
        Ok(Self { files, parts, total_bytes: manifest.total_bytes() })
    }

    /// Bytes of every file together.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The single-file parts (DiT, T5, CLIP, VAE) as loader overrides; folder files stay reachable by path.
    pub fn overrides(&self) -> Overrides {
        let mut overrides = Overrides::default();
        for (role, path) in &self.parts {
            let source = self.files.get(path).map(|s| Box::new(s.clone()) as Box<dyn ByteSource>);
            match role {
                Role::Transformer => overrides.transformer = source,
                Role::T5 => overrides.t5 = source,
                Role::Clip => overrides.clip = source,
                Role::Vae => overrides.vae = source,
                Role::Tokenizer => {}
            }
        }
        overrides
    }
}

impl ModelFiles for StoredModel {
    fn open(&self, path: &str) -> Result<Option<Box<dyn ByteSource>>> {
        Ok(self.files.get(path).map(|s| Box::new(s.clone()) as Box<dyn ByteSource>))
    }
}
