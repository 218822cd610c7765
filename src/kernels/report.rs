//! What each operation runs on a device ([`KernelPaths`]), as `kontext device`, `kontext bench` and the app's
//! device report name it.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::attention;
use super::path::KernelPath;

/// The kernel path of each operation on a device, as reports name them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelPaths {
    /// The process-wide path ([`KernelPath::of`]).
    pub chosen: KernelPath,
    /// Every path the device can run, fastest first.
    pub available: Vec<KernelPath>,
    /// The path of the model's packed matmuls over many rows ([`KernelPath::for_matmul`]).
    pub matmul: KernelPath,
    /// The path of the model's attention at a 1024² text-to-image length, 4 608 tokens of 128-wide heads
    /// ([`attention::kernel_path`]).
    pub attention: KernelPath,
    /// The subgroup size the plain kernels' subgroup layouts (the flash attention's) count on: the device's
    /// smallest; `None` where the device has no subgroups (or, in a browser, was not granted them).
    #[serde(default)]
    pub subgroup_size: Option<usize>,
}

impl KernelPaths {
    /// Tokens of a 1024² text-to-image edit: 4 096 image tokens and 512 of text.
    const REPORTED_TOKENS: usize = 4608;

    /// The paths on `device` under the process-wide choice.
    pub fn of(device: &Device) -> Self {
        let tokens = Self::REPORTED_TOKENS;
        Self {
            chosen: KernelPath::of(device),
            available: KernelPath::available(device),
            matmul: KernelPath::for_matmul(tokens, device),
            attention: attention::kernel_path(device, tokens, tokens, 128),
            subgroup_size: crate::device::subgroup_min_size(),
        }
    }
}
