//! The activation precision of the packed matmuls ([`super::quant_matmul`]): f16 on adapters with
//! `shader-f16`, f32 otherwise, overridable once per process (`kontext --precision`, `KONTEXT_PRECISION`).
//!
//! Only the packed kernels read and write f16 activations (weights still dequantize to f32 and products still
//! accumulate in f32); the rest of the model stays f32, because its norms, softmax, RoPE and modulations lose
//! accuracy in f16, and some adapters (Apple GPUs) gave garbage with f16 accumulation.

use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use burn::tensor::{DType, Device};
use serde::{Deserialize, Serialize};

use super::quant_matmul::packs_on;
use crate::{Error, Result};

/// Element type of the activations (x and y) of the packed matmuls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats: every adapter.
    F32,
    /// 16-bit floats: adapters with `shader-f16`; halves the activation bytes the kernels read and write.
    F16,
}

/// The process-wide choice: 0 = per device ([`Precision::default_for`]), 1 = F32, 2 = F16.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            other => Err(Error::Invalid(format!("unknown precision `{other}`: use `f32` or `f16`"))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        })
    }
}

impl Precision {
    /// The default on an adapter with (`true`) or without `shader-f16`: F16 where it is available.
    pub fn default_for(shader_f16: bool) -> Self {
        if shader_f16 { Self::F16 } else { Self::F32 }
    }

    /// Whether `device` runs the f16 kernels: wgpu with `shader-f16` enabled (burn requests every adapter
    /// feature, so f16 tensors are then usable there).
    pub fn f16_available(device: &Device) -> bool {
        packs_on(device) && device.supports_dtype(DType::F16)
    }

    /// The precision of the packed matmuls on `device`: the process-wide choice ([`Precision::choose`]) when
    /// the device can run it, else [`Precision::default_for`] its `shader-f16`.
    pub fn of(device: &Device) -> Self {
        let available = Self::f16_available(device);
        match CHOSEN.load(Ordering::Relaxed) {
            1 => Self::F32,
            2 if available => Self::F16,
            _ => Self::default_for(available),
        }
    }

    /// Settles the precision for the rest of the process, `requested` or each device's default when `None`,
    /// and returns the one `device` gets. Asking for F16 on a wgpu adapter without `shader-f16` is an error; on
    /// devices without packed kernels (the CPU) everything stays F32.
    pub fn choose(requested: Option<Self>, device: &Device) -> Result<Self> {
        if requested == Some(Self::F16) && packs_on(device) && !Self::f16_available(device) {
            return Err(Error::Invalid(
                "precision f16 needs a wgpu adapter with `shader-f16`; this one has none (use f32)".into(),
            ));
        }
        CHOSEN.store(
            match requested {
                None => 0,
                Some(Self::F32) => 1,
                Some(Self::F16) => 2,
            },
            Ordering::Relaxed,
        );
        Ok(Self::of(device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_f32_without_shader_f16_and_f16_with_it() {
        assert_eq!(Precision::default_for(false), Precision::F32);
        assert_eq!(Precision::default_for(true), Precision::F16);
    }

    #[test]
    fn names_parse_and_print() {
        for precision in [Precision::F32, Precision::F16] {
            assert_eq!(precision.to_string().parse::<Precision>().unwrap(), precision);
        }
        let err = "bf16".parse::<Precision>().unwrap_err().to_string();
        assert!(err.contains("unknown precision `bf16`"), "{err}");
    }

    #[test]
    fn the_cpu_has_no_f16_kernels() {
        let cpu = crate::device::cpu();
        assert!(!Precision::f16_available(&cpu));
        assert_eq!(Precision::of(&cpu), Precision::F32);
        assert_eq!(Precision::choose(Some(Precision::F16), &cpu).unwrap(), Precision::F32);
        assert_eq!(Precision::choose(None, &cpu).unwrap(), Precision::F32);
    }
}
