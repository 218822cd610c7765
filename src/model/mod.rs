//! The networks of the Kontext pipeline, backend-agnostic burn modules, with their configurations and the
//! layers they share.

pub mod clip;
pub mod flux;
pub mod inspect;
pub mod layers;
pub mod scope;
pub mod t5;
pub mod vae;

pub use flux::config::FluxConfig;
