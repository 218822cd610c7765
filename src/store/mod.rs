//! The model store: a model's files kept in the browser's IndexedDB as verified chunks, with a manifest per
//! model, filled by resumable downloads.
//!
//! [`manifest`] and [`catalog`] are plain data (tested natively); [`idb`], [`download`] and [`files`] need a
//! browser.

pub mod catalog;
pub mod manifest;

#[cfg(target_arch = "wasm32")]
pub mod download;
#[cfg(target_arch = "wasm32")]
pub mod files;
#[cfg(target_arch = "wasm32")]
pub mod idb;

pub use manifest::{Manifest, Role, Source, StorageEstimate, StoredFile, is_storage_full};
