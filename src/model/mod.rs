//! The networks of the Kontext pipeline, backend-agnostic burn modules.

pub mod config;
pub mod vae;
pub mod vae_config;
pub mod vae_remap;

pub use config::FluxConfig;
