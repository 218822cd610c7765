//! The model store: a model's files kept in the browser's IndexedDB as verified chunks, with a manifest per
//! model, filled by resumable downloads.
//!
//! [`manifest`], [`catalog`], [`sources`], [`meter`] and [`footprint`] are plain data (tested natively); [`idb`],
//! [`download`] and [`files`] need a
//! browser.

pub mod catalog;
pub mod footprint;
pub mod manifest;
pub mod meter;
pub mod sources;

#[cfg(target_arch = "wasm32")]
pub mod download;
#[cfg(target_arch = "wasm32")]
pub mod files;
#[cfg(target_arch = "wasm32")]
pub mod idb;
#[cfg(target_arch = "wasm32")]
pub mod js;

pub use manifest::{Manifest, Role, Source, StorageEstimate, StoredFile, is_storage_full};
