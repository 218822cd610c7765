//! The networks of the Kontext pipeline, backend-agnostic burn modules.

pub mod clip;
pub mod config;
pub mod embeddings;
pub mod flux;
pub mod load;
pub mod lora;
pub mod rope;
pub mod t5;
#[cfg(test)]
pub(crate) mod testing;
pub mod transformer_remap;
pub mod vae;
pub mod vae_config;
pub mod vae_remap;
pub mod vae_tiling;

pub use config::FluxConfig;
