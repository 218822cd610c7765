#![doc = include_str!("../README.md")]

pub mod error;
pub mod formats;

pub mod device;
pub mod kernels;

pub mod model;

pub mod pipeline;

pub mod store;

pub mod web;

#[cfg(target_arch = "wasm32")]
pub mod app;
#[cfg(target_arch = "wasm32")]
pub mod ui;

#[doc(hidden)]
pub mod harness;

pub use error::{Error, Result};
