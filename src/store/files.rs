//! A complete stored model as [`ModelFiles`] plus [`Overrides`], ready for [`crate::loader::KontextModel::load`].
//!
//! The loader reads synchronously, IndexedDB only asynchronously, so this reads every file into memory first:
//! right for the demo pack and small models. Streaming real models chunk by chunk into GPU buffers within a
//! bounded heap is later work.

use std::collections::HashMap;
use std::sync::Arc;

use super::idb::Store;
use super::manifest::{Role, human_bytes};
use crate::formats::ByteSource;
use crate::loader::{MemoryFiles, ModelFiles, Overrides};
use crate::{Error, Result};

/// The files of one stored model, in memory.
pub struct StoredModel {
    files: MemoryFiles,
    parts: Vec<(Role, String)>,
}

impl StoredModel {
    /// Reads every file of model `id`; refused unless every chunk is stored and verified.
    pub async fn load(store: &Store, id: &str) -> Result<Self> {
        Self::load_reporting(store, id, &mut |_, _| {}).await
    }

    /// [`StoredModel::load`], calling `progress(bytes read, total bytes)` before and after every file.
    pub async fn load_reporting(store: &Store, id: &str, progress: &mut dyn FnMut(u64, u64)) -> Result<Self> {
        let manifest = store.manifest(id).await?.ok_or_else(|| Error::Invalid(format!("the store has no model {id:?}")))?;
        if !manifest.is_complete() {
            return Err(Error::Invalid(format!(
                "model {:?} is not complete: {} of {} stored; download the rest first",
                manifest.label,
                human_bytes(manifest.stored_bytes()),
                human_bytes(manifest.total_bytes())
            )));
        }
        let mut files = HashMap::new();
        let mut parts = Vec::new();
        let (mut read, total) = (0, manifest.total_bytes());
        progress(read, total);
        for file in &manifest.files {
            let bytes = store.read_range(id, &file.path, 0, file.size).await?;
            read += file.size;
            progress(read, total);
            files.insert(file.path.clone(), Arc::new(bytes));
            if let Some(role) = file.role.filter(|r| *r != Role::Tokenizer) {
                parts.push((role, file.path.clone()));
            }
        }
        Ok(Self { files: MemoryFiles(files), parts })
    }

    /// Bytes of every file together.
    pub fn total_bytes(&self) -> u64 {
        self.files.0.values().map(|bytes| bytes.len() as u64).sum()
    }

    /// The single-file parts (DiT, T5, CLIP, VAE) as loader overrides; folder files stay reachable by path.
    pub fn overrides(&self) -> Overrides {
        let mut overrides = Overrides::default();
        for (role, path) in &self.parts {
            let source: Option<Box<dyn ByteSource>> = self.files.0.get(path).map(|b| Box::new(b.clone()) as Box<dyn ByteSource>);
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
        self.files.open(path)
    }
}
