//! Test support: f32 safetensors fixtures as [`Weights`], and golden tensors on a device.

use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::weights::{HostTensor, Weights};
use crate::{Error, Result};

/// Path of a file under `tests/fixtures/tiny/`.
pub fn fixture(relative: &str) -> String {
    format!("{}/tests/fixtures/tiny/{relative}", env!("CARGO_MANIFEST_DIR"))
}

/// A whole f32 safetensors file in memory.
pub struct SafetensorsFile {
    bytes: Vec<u8>,
}

impl SafetensorsFile {
    /// Reads the fixture at `tests/fixtures/tiny/{relative}`.
    pub fn open(relative: &str) -> Self {
        let path = fixture(relative);
        Self { bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")) }
    }

    fn file(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("valid safetensors")
    }

    /// The tensor `name` as a `D`-rank tensor on `device`.
    pub fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let host = self.read(name).unwrap();
        let shape: [usize; D] = host.shape.try_into().unwrap_or_else(|s| panic!("`{name}` has shape {s:?}"));
        Tensor::from_data(TensorData::new(host.data, shape), device)
    }
}

impl Weights for SafetensorsFile {
    fn names(&self) -> Vec<String> {
        self.file().names().into_iter().map(String::from).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.file().tensor(name).ok().map(|view| view.shape().to_vec())
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        let file = self.file();
        let view = file.tensor(name).map_err(|_| Error::Invalid(format!("missing tensor `{name}`")))?;
        assert_eq!(view.dtype(), Dtype::F32, "`{name}` is not f32");
        let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        HostTensor::new(view.shape().to_vec(), data)
    }
}
