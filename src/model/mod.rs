//! The networks of the Kontext pipeline, backend-agnostic burn modules.

pub mod clip;
pub mod config;
pub mod t5;

pub use config::FluxConfig;
