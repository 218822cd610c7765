//! Readers for the weight files users download: safetensors (single or sharded) and GGUF, with ggml
//! dequantization. Headers are read without reading data, so a 24 GB file is recognised in milliseconds;
//! tensors are then read one at a time through [`weights::Weights`].

pub mod gguf;
pub mod gguf_writer;
pub mod quant;
pub mod safetensors;
pub mod source;
pub mod weights;

pub use gguf::{GgufArray, GgufFile, GgufTensorInfo, GgufValue};
pub use quant::{GgmlType, dequantize};
pub use safetensors::{SafetensorsFile, SafetensorsTensor, ShardedSafetensors};
pub use source::ByteSource;
#[cfg(not(target_arch = "wasm32"))]
pub use source::FileSource;
