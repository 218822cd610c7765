//! The compute precision of the packed matmuls ([`super::quant_matmul`]): f32 by default; f16 on request
//! (`kontext --precision f16`, `KONTEXT_PRECISION=f16`) on adapters with `shader-f16`.
//!
//! f16 is opt-in because Flux's activations can leave f16's range (±65504): the model is trained and shipped in
//! bf16, and fp16 runs of it in other tools need clamping against overflow. Where the activations stay in
//! range (the GGUF goldens do: within 7e-4), f16 halves the workgroup memory a tile takes and the bytes each
//! product reads from it.
//!
//! Only the packed kernels compute in f16, and only their products: x is converted as its tile is loaded, the
//! dequantized weights as theirs is, and every product is widened to f32 and accumulated in f32 (some adapters,
//! Apple GPUs among them, gave garbage with f16 accumulation). x, y and the bias stay f32 in memory, so no cast
//! pass runs around the kernels; the rest of the model stays f32, because its norms, softmax, RoPE and
//! modulations lose accuracy in f16.

use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use burn::tensor::{DType, Device};
use serde::{Deserialize, Serialize};

use super::packs_on;
use crate::{Error, Result};

/// Element type in which the packed matmuls hold and multiply their tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats: every adapter.
    F32,
    /// 16-bit floats: adapters with `shader-f16`; halves the workgroup memory of the kernels' tiles.
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
    /// The precision when none is requested, whether or not the adapter has `shader-f16`: F32 (see the module
    /// documentation for why f16 is opt-in).
    pub const DEFAULT: Self = Self::F32;

    /// Whether `device` runs the f16 kernels: wgpu with `shader-f16` enabled (burn requests every adapter
    /// feature, so f16 tensors are then usable there).
    pub fn f16_available(device: &Device) -> bool {
        packs_on(device) && device.supports_dtype(DType::F16)
    }

    /// The precision of the packed matmuls on `device`: the process-wide choice ([`Precision::choose`]) when
    /// the device can run it, else [`Precision::DEFAULT`].
    pub fn of(device: &Device) -> Self {
        match CHOSEN.load(Ordering::Relaxed) {
            2 if Self::f16_available(device) => Self::F16,
            _ => Self::DEFAULT,
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

/// Runs `f` with `precision` as the process-wide choice (on devices that can run it, see [`Precision::of`]),
/// then puts the previous choice back (`kontext bench` times f32 and f16 compute side by side). Not for
/// use while other work runs.
pub fn with_precision<R>(precision: Precision, f: impl FnOnce() -> R) -> R {
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            CHOSEN.store(self.0, Ordering::Relaxed);
        }
    }
    let chosen = match precision {
        Precision::F32 => 1,
        Precision::F16 => 2,
    };
    let _restore = Restore(CHOSEN.swap(chosen, Ordering::Relaxed));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

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
