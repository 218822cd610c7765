//! Test support: the committed fixtures (`tests/fixtures/tiny`) read through the real safetensors reader,
//! as [`Weights`] and as golden tensors on a device.

use burn::prelude::*;

use crate::Result;
use crate::formats::SafetensorsFile;
use crate::weights::{HostTensor, Weights};

/// The tiny reference fixtures.
pub const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny");

/// Path of a file under `tests/fixtures/tiny/`.
pub fn fixture(relative: &str) -> String {
    format!("{TINY}/{relative}")
}

/// A fixture safetensors file, held in memory.
pub struct FixtureFile(SafetensorsFile);

impl FixtureFile {
    /// Reads `tests/fixtures/tiny/{relative}`.
    pub fn open(relative: &str) -> Self {
        let path = fixture(relative);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Self(SafetensorsFile::open(bytes).unwrap_or_else(|e| panic!("{path}: {e}")))
    }

    /// The float tensor `name` as a `D`-rank tensor on `device`.
    pub fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let host = self.read(name).unwrap();
        let shape: [usize; D] = host.shape.try_into().unwrap_or_else(|s| panic!("`{name}` has shape {s:?}"));
        Tensor::from_data(TensorData::new(host.data, shape), device)
    }

    /// The int64 tensor `name` (token ids).
    pub fn ids(&self, name: &str) -> TensorData {
        let info = self.0.tensor(name).unwrap_or_else(|| panic!("no tensor `{name}`"));
        assert_eq!(info.dtype, "I64", "`{name}` is not int64");
        let bytes = self.0.raw(name).unwrap();
        let ids: Vec<i64> = bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
        TensorData::new(ids, info.shape.clone())
    }
}

impl Weights for FixtureFile {
    fn names(&self) -> Vec<String> {
        self.0.names()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.0.shape(name)
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        self.0.read(name)
    }
}

/// The float tensor `key` of `tests/fixtures/tiny/golden/{file}`.
pub fn golden(file: &str, key: &str) -> TensorData {
    let tensor = FixtureFile::open(&format!("golden/{file}")).read(key).unwrap();
    TensorData::new(tensor.data, tensor.shape)
}

/// The int64 tensor `key` of `golden/golden_run.safetensors`.
pub fn golden_ids(key: &str) -> TensorData {
    FixtureFile::open("golden/golden_run.safetensors").ids(key)
}

/// The tiny reference VAE's configuration (its `vae/config.json`).
pub fn tiny_vae_config() -> crate::model::vae_config::VaeConfig {
    let json = include_str!("../../tests/fixtures/tiny/FLUX.1-Kontext-dev-tiny/vae/config.json");
    crate::model::vae_config::VaeConfig::from_diffusers_json(json).unwrap()
}

/// The tiny reference VAE on `device`.
pub fn tiny_vae(device: &Device) -> crate::model::vae::Vae {
    let weights = FixtureFile::open("FLUX.1-Kontext-dev-tiny/vae/diffusion_pytorch_model.safetensors");
    crate::model::vae::Vae::load(&tiny_vae_config(), &weights, device).unwrap()
}
