//! Which family of kernels runs each operation ([`KernelPath`]), chosen once per process from the adapter's
//! features, or forced (`kontext --kernels`, `KONTEXT_KERNELS`):
//!
//! - `coop`: cooperative matrices (tensor cores on NVIDIA, matrix cores on AMD, simdgroup matrices on Apple),
//!   through wgpu's `EXPERIMENTAL_COOPERATIVE_MATRIX`: tiles multiplied as f16 fragments, accumulated in f32.
//!   The packed matmuls from 9 rows on run [`super::coop_matmul`], the attention over heads of 16 to 128
//!   [`super::coop_attention`]; the rest runs as on `f32`.
//! - `subgroup-f16`: the plain kernels computing their products in f16 (where the adapter has `shader-f16`),
//!   with subgroup operations where the adapter has them ([`super::precision::Precision::F16`]).
//! - `f32`: the plain kernels in f32, subgroups where the adapter has them; also the name of the CPU's path.
//!
//! Without a request, `coop` where a hardware adapter offers it, else `f32` (f16 stays opt-in: see
//! [`super::precision`]). Software adapters that offer cooperative matrices (Mesa 26's lavapipe) emulate them
//! more slowly than the plain kernels run (0.4–1.2× there, `kontext bench`), so they take `coop` only on request.

use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::packs_on;
use super::precision::{self, Precision};
use crate::{Error, Result};

/// A family of kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelPath {
    /// Cooperative matrices with f16 inputs and f32 accumulators.
    Coop,
    /// The plain kernels with f16 products and subgroups.
    SubgroupF16,
    /// The plain kernels in f32.
    F32,
}

/// The process-wide request: 0 = none (each device's [`KernelPath::auto`]), else 1 + the path's index.
static REQUESTED: AtomicU8 = AtomicU8::new(0);

impl FromStr for KernelPath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|path| path.name() == s)
            .ok_or_else(|| Error::Invalid(format!("unknown kernel path `{s}`: use `coop`, `subgroup-f16` or `f32`")))
    }
}

impl From<Precision> for KernelPath {
    /// The plain kernels' path at `precision`: `subgroup-f16` for f16, `f32` for f32.
    fn from(precision: Precision) -> Self {
        match precision {
            Precision::F16 => Self::SubgroupF16,
            Precision::F32 => Self::F32,
        }
    }
}

impl std::fmt::Display for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl KernelPath {
    /// Every path, fastest first.
    pub const ALL: [Self; 3] = [Self::Coop, Self::SubgroupF16, Self::F32];

    /// The name `--kernels` takes and reports print.
    pub fn name(self) -> &'static str {
        match self {
            Self::Coop => "coop",
            Self::SubgroupF16 => "subgroup-f16",
            Self::F32 => "f32",
        }
    }

    fn code(self) -> u8 {
        1 + Self::ALL.iter().position(|&p| p == self).unwrap_or(2) as u8
    }

    /// Why `device` cannot run this path, or `None` when it can.
    pub fn missing_on(self, device: &Device) -> Option<String> {
        match self {
            Self::F32 => None,
            Self::SubgroupF16 if !Precision::f16_available(device) => {
                Some("it needs a wgpu adapter with `shader-f16`".into())
            }
            Self::SubgroupF16 => None,
            Self::Coop if !packs_on(device) || crate::device::coop_fragment().is_none() => Some(
                "it needs a wgpu adapter with cooperative matrices of f16 inputs and f32 accumulators \
                 (EXPERIMENTAL_COOPERATIVE_MATRIX: Vulkan's VK_KHR_cooperative_matrix or Metal's simdgroup \
                 matrices; in a browser, Chromium's `chromium-experimental-subgroup-matrix`), `shader-f16`, \
                 subgroups of at most 64 and 32 KiB of workgroup memory"
                    .into(),
            ),
            Self::Coop => None,
        }
    }

    /// The paths `device` can run, fastest first.
    pub fn available(device: &Device) -> Vec<Self> {
        Self::ALL.into_iter().filter(|path| path.missing_on(device).is_none()).collect()
    }

    /// The path when none is requested: `coop` where a hardware `device` offers it, else `f32`.
    pub fn auto(device: &Device) -> Self {
        match Self::Coop.missing_on(device) {
            None if !crate::device::software_adapter(device) => Self::Coop,
            _ => Self::F32,
        }
    }

    /// The process-wide path on `device`: the request ([`KernelPath::choose`]) where the device can run it,
    /// else [`KernelPath::auto`].
    pub fn of(device: &Device) -> Self {
        match REQUESTED.load(Ordering::Relaxed) {
            0 => Self::auto(device),
            code => {
                let requested = Self::ALL[(code - 1) as usize];
                match requested.missing_on(device) {
                    None => requested,
                    Some(_) => Self::auto(device),
                }
            }
        }
    }

    /// Settles the path for the rest of the process, `requested` or each device's [`KernelPath::auto`], and
    /// returns the one `device` gets; the precision of the plain kernels follows (`subgroup-f16`: f16, else
    /// f32). A path `device` cannot run is a one-line error (on the CPU every request becomes `f32`).
    pub fn choose(requested: Option<Self>, device: &Device) -> Result<Self> {
        if let Some(path) = requested
            && packs_on(device)
            && let Some(why) = path.missing_on(device)
        {
            let others: Vec<&str> = Self::available(device).into_iter().map(Self::name).collect();
            return Err(Error::Invalid(format!(
                "kernel path `{path}` is not available on this adapter: {why}; use {}",
                others.join(" or ")
            )));
        }
        REQUESTED.store(requested.map_or(0, Self::code), Ordering::Relaxed);
        Precision::choose(requested.map(Self::precision).filter(|&p| p == Precision::F16), device)?;
        Ok(Self::of(device))
    }

    /// The path from `--kernels` or `--precision` (`f16` is `subgroup-f16`, `f32` is `f32`); both given must
    /// agree.
    pub fn requested(kernels: Option<Self>, precision: Option<Precision>) -> Result<Option<Self>> {
        let from_precision = precision.map(Self::from);
        match (kernels, from_precision) {
            (Some(k), Some(p)) if k != p => Err(Error::Invalid(format!(
                "--kernels {k} and --precision {} disagree: give one (precision f16 is the path subgroup-f16)",
                p.precision()
            ))),
            (k, p) => Ok(k.or(p)),
        }
    }

    /// The path the packed matmul of an `x` with `rows` rows takes on `device`: `coop` from 9 rows on where
    /// that is the path (fewer rows take the matrix-vector kernel), else the plain kernels' precision.
    pub fn for_matmul(rows: usize, device: &Device) -> Self {
        match Self::of(device) {
            Self::Coop if rows > super::coop_matmul::MIN_ROWS => Self::Coop,
            _ => Self::plain(device),
        }
    }

    /// The plain kernels' path at the device's precision.
    pub fn plain(device: &Device) -> Self {
        Self::from(Precision::of(device))
    }

    /// The precision of the plain kernels on this path: f16 on `subgroup-f16`, else f32 (`coop` computes in
    /// f16 only inside its own kernels).
    pub fn precision(self) -> Precision {
        match self {
            Self::SubgroupF16 => Precision::F16,
            Self::Coop | Self::F32 => Precision::F32,
        }
    }
}

/// Runs `f` with `path` as the process-wide request (the precision following it), then puts the previous
/// request back (`kontext bench` times the paths side by side). Not for use while other work runs.
pub fn with_path<R>(path: KernelPath, f: impl FnOnce() -> R) -> R {
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            REQUESTED.store(self.0, Ordering::Relaxed);
        }
    }
    let _restore = Restore(REQUESTED.swap(path.code(), Ordering::Relaxed));
    precision::with_precision(path.precision(), f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        for path in KernelPath::ALL {
            assert_eq!(path.to_string().parse::<KernelPath>().unwrap(), path);
            assert_eq!(serde_json::to_string(&path).unwrap(), format!("\"{path}\""));
        }
        let err = "tensor".parse::<KernelPath>().unwrap_err().to_string();
        assert!(err.contains("unknown kernel path `tensor`"), "{err}");
    }

    #[test]
    fn precision_and_kernels_must_agree() {
        use KernelPath::*;
        assert_eq!(KernelPath::requested(None, Some(Precision::F16)).unwrap(), Some(SubgroupF16));
        assert_eq!(KernelPath::requested(Some(Coop), None).unwrap(), Some(Coop));
        assert_eq!(KernelPath::requested(Some(F32), Some(Precision::F32)).unwrap(), Some(F32));
        let err = KernelPath::requested(Some(Coop), Some(Precision::F16)).unwrap_err().to_string();
        assert!(err.contains("--kernels coop and --precision f16 disagree"), "{err}");
    }

    #[test]
    fn the_cpu_runs_f32() {
        let cpu = crate::device::cpu();
        assert_eq!(KernelPath::available(&cpu), [KernelPath::F32]);
        assert_eq!(KernelPath::auto(&cpu), KernelPath::F32);
        assert_eq!(KernelPath::choose(Some(KernelPath::Coop), &cpu).unwrap(), KernelPath::F32);
        assert_eq!(KernelPath::for_matmul(4096, &cpu), KernelPath::F32);
        KernelPath::choose(None, &cpu).unwrap();
    }
}
