//! The Kontext pipeline around the networks: the model as a whole and how it is loaded, tokenizers, sizes,
//! images, position ids, noise, schedule, sampler and the memory plan.

pub mod cache;
pub mod edit;
pub mod ids;
pub mod image;
pub mod kontext;
pub mod loader;
pub mod mask;
pub mod plan;
pub mod preview;
pub mod resample;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod size;
pub mod tokenizer;
