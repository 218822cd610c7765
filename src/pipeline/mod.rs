//! The Kontext pipeline around the networks: sizes, position ids, noise, schedule and sampler.

pub mod edit;
pub mod ids;
pub mod image;
pub mod kontext;
pub mod preview;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod size;
