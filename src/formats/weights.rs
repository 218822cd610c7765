//! Weights as the models consume them: named host tensors, produced by the format readers in
//! [`crate::formats`] from whatever file the user has (safetensors, sharded safetensors, GGUF).

use crate::formats::GgmlType;
use crate::{Error, Result};

/// A tensor on the host in f32, row-major, with its logical shape (PyTorch order: `[out, in]` for Linear).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Logical shape, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Wraps `data`, checking that it fills `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(Error::Invalid(format!("{} values do not fill shape {shape:?}", data.len())));
        }
        Ok(Self { shape, data })
    }
}

/// A tensor as a GGUF stores it: ggml type, logical shape (PyTorch order) and block bytes.
pub type RawBlock = (GgmlType, Vec<usize>, Vec<u8>);

/// A source of named weights. Implementations read lazily, one tensor at a time, so a model can be built
/// tensor by tensor without holding a whole checkpoint in memory.
pub trait Weights {
    /// Every tensor name, in file order.
    fn names(&self) -> Vec<String>;
    /// The logical shape of `name` (PyTorch order), without reading its data.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Reads (and dequantizes, when stored quantized) the tensor `name` as f32.
    fn read(&self, name: &str) -> Result<HostTensor>;

    /// The stored ggml type, logical shape (PyTorch order) and block bytes of `name`, for sources that keep
    /// tensors in ggml blocks (GGUF), so that layers may keep them packed on the device; `None` for sources
    /// that only produce f32 values, and for missing tensors.
    fn raw_block(&self, _name: &str) -> Option<Result<RawBlock>> {
        None
    }

    /// The ggml type `name` is stored in, for sources that keep ggml blocks (GGUF), read from the header only.
    fn stored_type(&self, _name: &str) -> Option<GgmlType> {
        None
    }

    /// Whether `name` exists.
    fn contains(&self, name: &str) -> bool {
        self.shape(name).is_some()
    }

    /// [`Weights::read`], failing with a message that names the missing tensor.
    fn require(&self, name: &str) -> Result<HostTensor> {
        if !self.contains(name) {
            return Err(Error::Invalid(format!("missing tensor `{name}`")));
        }
        self.read(name)
    }
}

impl<W: Weights + ?Sized> Weights for Box<W> {
    fn names(&self) -> Vec<String> {
        (**self).names()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        (**self).shape(name)
    }
    fn read(&self, name: &str) -> Result<HostTensor> {
        (**self).read(name)
    }
    fn raw_block(&self, name: &str) -> Option<Result<RawBlock>> {
        (**self).raw_block(name)
    }
    fn stored_type(&self, name: &str) -> Option<GgmlType> {
        (**self).stored_type(name)
    }
}
