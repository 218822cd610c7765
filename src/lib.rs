#![doc = include_str!("../README.md")]

pub mod bench;
pub mod device;
pub mod embed_api;
pub mod error;
pub mod formats;
pub mod fuzz;
pub mod kernels;
pub mod latent;
pub mod loader;
pub mod model;
pub mod pipeline;
pub mod plan;
pub mod protocol;
pub mod selfcheck;
pub mod store;
pub mod tokenizer;
pub mod weights;

#[cfg(target_arch = "wasm32")]
pub mod ui;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
