//! The networks of the Kontext pipeline, backend-agnostic burn modules.

pub mod config;

pub use config::FluxConfig;
