//! Choosing where tensors live: burn's Flex CPU backend, or its wgpu backend (Vulkan/Metal/DX12 natively,
//! WebGPU in a browser). The wgpu runtime is initialised once per process; later calls reuse it.

pub mod browser_grant;
pub mod faults;
pub mod launches;
pub mod selfcheck;

use std::str::FromStr;

use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which burn backend runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// burn's pure-Rust CPU backend (`flex`).
    Cpu,
    /// burn's wgpu backend: the GPU through WebGPU or a native graphics API.
    Wgpu,
}

impl FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "wgpu" => Ok(Self::Wgpu),
            other => Err(Error::Invalid(format!("unknown backend `{other}`: use `cpu` or `wgpu`"))),
        }
    }
}

/// What the GPU that burn opened reports about itself and the limits it granted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterReport {
    /// Adapter name as the driver gives it (e.g. "llvmpipe (LLVM 15.0.6, 256 bits)").
    pub name: String,
    /// Graphics API in use (Vulkan, Metal, Dx12, BrowserWebGpu, …).
    pub api: String,
    /// Driver name and version, when the platform tells.
    pub driver: String,
    /// Whether this is a CPU/software adapter.
    pub software: bool,
    /// Largest single buffer the device accepts, in bytes (as granted; [`max_binding_bytes`] applies any cap).
    pub max_buffer_size: u64,
    /// Largest storage-buffer binding a shader may see, in bytes (as granted).
    pub max_storage_buffer_binding_size: u64,
    /// Whether f16 arithmetic in shaders (`shader-f16`) is enabled.
    pub shader_f16: bool,
    /// Whether subgroup operations are enabled.
    pub subgroups: bool,
    /// The smallest subgroup size the adapter may run, where subgroup operations are enabled.
    #[serde(default)]
    pub subgroup_min_size: Option<u32>,
    /// The largest subgroup size the adapter may run, where subgroup operations are enabled.
    #[serde(default)]
    pub subgroup_max_size: Option<u32>,
    /// Workgroup memory one kernel may declare, in bytes (as granted).
    #[serde(default)]
    pub max_workgroup_storage_bytes: u32,
    /// The cooperative-matrix products the device offers (wgpu's `EXPERIMENTAL_COOPERATIVE_MATRIX`), as
    /// `MxNxK inputs→accumulator`; empty without the feature.
    #[serde(default)]
    pub cooperative_matrix: Vec<String>,
    /// The fragment size (8 or 16) of the cooperative products with f16 inputs and f32 accumulators that the
    /// `coop` kernels use ([`coop_fragment`]); `None` where the device has no such product, `shader-f16`,
    /// subgroups of at most 64 (the kernels number four subgroups) or 32 KiB of workgroup memory.
    #[serde(default)]
    pub coop_fragment: Option<u32>,
}

/// [`AdapterReport::subgroup_min_size`] of the wgpu device this process opened (0: none, or not opened yet).
static SUBGROUP_MIN_SIZE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Whether the adapter's name is one of the CPU (software) adapters': llvmpipe (lavapipe) or SwiftShader.
pub fn is_software(adapter_name: &str) -> bool {
    let name = adapter_name.to_lowercase();
    ["llvmpipe", "lavapipe", "swiftshader"].iter().any(|cpu| name.contains(cpu))
}

/// Whether the wgpu adapter this process opened reported itself a CPU one ([`AdapterReport::software`]): in
/// browsers, whose adapter names are often empty, the only sign of SwiftShader.
static SOFTWARE_OPENED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the opened adapter, named `adapter_name`, is a CPU (software) one: by its name, or by the device type
/// it reported when opened.
pub fn is_software_adapter(adapter_name: &str) -> bool {
    SOFTWARE_OPENED.load(std::sync::atomic::Ordering::Relaxed) || is_software(adapter_name)
}

/// Whether `device` is a wgpu device on a CPU (software) adapter ([`is_software_adapter`]).
pub fn software_adapter(device: &Device) -> bool {
    adapter_name(device).is_some_and(is_software_adapter)
}

/// Whether `device` is a wgpu device on Mesa's llvmpipe (lavapipe), which ends every loop of a shader after
/// 65,535 iterations in all, silently: kernels that loop over keys split their dispatches there.
pub fn llvmpipe(device: &Device) -> bool {
    adapter_name(device).is_some_and(|name| name.contains("llvmpipe"))
}

/// The adapter's name where `device` is a wgpu device. Read once: a process opens one wgpu adapter.
pub fn adapter_name(device: &Device) -> Option<&'static str> {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    match device.as_dispatch() {
        burn::backend::DispatchDevice::Cube(cube) => {
            Some(NAME.get_or_init(|| cube.client().properties().identity.name.clone()))
        }
        _ => None,
    }
}

/// The smallest subgroup size of the opened wgpu device, where it has subgroup operations enabled.
pub fn subgroup_min_size() -> Option<usize> {
    match SUBGROUP_MIN_SIZE.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        n => Some(n as usize),
    }
}

/// [`AdapterReport::subgroup_max_size`] of the opened wgpu device (0: none, or not opened yet).
static SUBGROUP_MAX_SIZE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The largest subgroup size of the opened wgpu device, where it has subgroup operations enabled.
pub fn subgroup_max_size() -> Option<usize> {
    match SUBGROUP_MAX_SIZE.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        n => Some(n as usize),
    }
}

/// [`AdapterReport::coop_fragment`] of the opened wgpu device (0: none, or not opened yet).
static COOP_FRAGMENT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The largest subgroup size the `coop` kernels run on: their workgroup of four subgroups stays within WebGPU's
/// 256 invocations.
pub const COOP_SUBGROUP_MAX: u32 = 64;

/// Workgroup memory the `coop` kernels declare at most, in bytes.
pub const COOP_WORKGROUP_BYTES: u32 = 32_768;

/// The square fragment size (8 or 16) of the opened wgpu device's cooperative products with f16 inputs and f32
/// accumulators, where the device also has `shader-f16`, subgroups of at most [`COOP_SUBGROUP_MAX`] and
/// [`COOP_WORKGROUP_BYTES`] of workgroup memory: what the `coop` kernel path needs
/// ([`crate::kernels::path::KernelPath`]).
pub fn coop_fragment() -> Option<usize> {
    match COOP_FRAGMENT.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        n => Some(n as usize),
    }
}

/// Reads a float tensor back to the host; the only readback path, async so it also works in a browser.
pub async fn read_f32<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    READBACKS.with(|count| count.set(count.get() + 1));
    let data = tensor.into_data_async().await.map_err(|e| Error::Readback(one_line(&format!("{e:?}"))))?;
    data.try_into_vec_as::<f32>().map_err(|e| Error::Readback(one_line(&format!("{e:?}"))))
}

thread_local! {
    /// Readbacks [`read_f32`] made on this thread.
    static READBACKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many tensors [`read_f32`] has read back to the CPU on this thread so far (each a mapped buffer on a GPU);
/// the difference of two calls counts what ran between them.
pub fn readbacks() -> u64 {
    READBACKS.with(std::cell::Cell::get)
}

/// Counts a readback made outside [`read_f32`] (a texture copied back).
pub(crate) fn note_readback() {
    READBACKS.with(|count| count.set(count.get() + 1));
}

/// Waits until the GPU has run everything queued on `device` so far (wgpu's `onSubmittedWorkDone`), reading
/// nothing back: what an edit awaits after each step, so that its progress is measured and messages get through.
/// Reports a device fault the wait finds; returns at once on the CPU.
pub async fn queue_done(device: &Device) -> Result<()> {
    match device.as_dispatch() {
        burn::backend::DispatchDevice::Cube(cube) => {
            cube.client().sync().await.map_err(|e| Error::Readback(one_line(&format!("{e:?}"))))
        }
        _ => Ok(()),
    }
}

/// A runtime error's report on one line: its causes joined by ": ", without the backtrace.
fn one_line(report: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for line in report.lines().map(str::trim) {
        if line.starts_with("Backtrace") || line == "No backtrace available" {
            break;
        }
        if !line.is_empty() && line != "Caused by:" && !parts.contains(&line) {
            parts.push(line);
        }
    }
    parts.join(": ")
}

/// Bytes the device allocator holds in pages (what the device gave it, used or kept for reuse); `None` on
/// backends without one (the CPU).
pub fn reserved_bytes(device: &Device) -> Option<u64> {
    device.memory_pool_usage().map(|usage| usage.bytes_reserved)
}

/// Returns the allocator's unused pages to the driver, so that freed tensors (released weights) really leave
/// the device instead of staying reserved for reuse.
pub fn release_free_pages(device: &Device) {
    device.memory_cleanup();
}

/// The most device memory held at the moments sampled: [`reserved_bytes`] just before pages are returned and
/// after each unit of work. The allocator keeps a page until it is returned, so a sample after some work
/// covers every allocation made during it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MemoryMeter {
    /// The largest sample; `None` without an allocator to ask.
    pub peak_bytes: Option<u64>,
    /// The largest sample under each label (the plan's phases), in first-seen order.
    pub by_label: Vec<(String, u64)>,
}

impl MemoryMeter {
    /// Samples the device's [`reserved_bytes`] as part of `label`.
    pub fn sample(&mut self, device: &Device, label: &str) {
        let Some(bytes) = reserved_bytes(device) else { return };
        self.peak_bytes = Some(self.peak_bytes.map_or(bytes, |peak| peak.max(bytes)));
        match self.by_label.iter_mut().find(|(l, _)| l == label) {
            Some((_, peak)) => *peak = (*peak).max(bytes),
            None => self.by_label.push((label.to_string(), bytes)),
        }
    }
}

/// The CPU device.
pub fn cpu() -> Device {
    Device::flex()
}

/// The wgpu objects under burn's device: what drawing on a canvas, or any other wgpu work beside burn's, needs
/// to share the device and the queue with the model's tensors.
pub type GpuHandles = burn::tensor::wgpu::WgpuSetup;

/// Opens (once) the default GPU through wgpu and returns the burn device with the adapter's report.
#[cfg(not(target_arch = "wasm32"))]
pub fn wgpu() -> Result<(Device, AdapterReport)> {
    opened_natively().map(|(device, report, _)| (device, report))
}

/// The wgpu objects of the GPU [`wgpu`] opens (opening it if needed).
#[cfg(not(target_arch = "wasm32"))]
pub fn wgpu_handles() -> Result<GpuHandles> {
    opened_natively().map(|(_, _, handles)| handles)
}

#[cfg(not(target_arch = "wasm32"))]
fn opened_natively() -> Result<(Device, AdapterReport, GpuHandles)> {
    use std::sync::OnceLock;
    static OPENED: OnceLock<std::result::Result<(Device, AdapterReport, GpuHandles), String>> = OnceLock::new();
    OPENED
        .get_or_init(|| {
            let (device, setup) = Device::wgpu_options().init_with_setup().map_err(|e| e.to_string())?;
            faults::watch(&setup.device);
            Ok((device, report_of(&setup), setup))
        })
        .clone()
        .map_err(|e| {
            Error::Gpu(format!(
                "no usable GPU adapter ({e}); install a Vulkan driver (e.g. Debian's mesa-vulkan-drivers)"
            ))
        })
}

/// Opens (once) the GPU through WebGPU; in a browser this must be awaited before any tensor op.
#[cfg(target_arch = "wasm32")]
pub async fn wgpu_async() -> Result<(Device, AdapterReport)> {
    wgpu_opened_async().await.map(|(device, report, _)| (device, report))
}

/// The wgpu objects of the GPU [`wgpu_async`] opens (opening it if needed).
#[cfg(target_arch = "wasm32")]
pub async fn wgpu_handles_async() -> Result<GpuHandles> {
    wgpu_opened_async().await.map(|(_, _, handles)| handles)
}

#[cfg(target_arch = "wasm32")]
async fn wgpu_opened_async() -> Result<(Device, AdapterReport, GpuHandles)> {
    thread_local! {
        static OPENED: std::cell::RefCell<Option<(Device, AdapterReport, GpuHandles)>> =
            const { std::cell::RefCell::new(None) };
    }
    if let Some(opened) = OPENED.with(|o| o.borrow().clone()) {
        return Ok(opened);
    }
    let (device, setup) = Device::wgpu_options()
        .init_with_setup_async()
        .await
        .map_err(|e| Error::Gpu(format!("WebGPU could not be opened: {e}")))?;
    faults::watch(&setup.device);
    let opened = (device, report_of(&setup), setup);
    OPENED.with(|o| *o.borrow_mut() = Some(opened.clone()));
    Ok(opened)
}

/// Environment variable that caps, natively, the buffer size the wgpu device is planned for (bytes), below
/// what the adapter grants: `KONTEXT_MAX_BUFFER_BYTES=134217728` makes any GPU behave like one with WebGPU's
/// default 128 MiB storage binding (the native test suite runs so).
pub const MAX_BUFFER_ENV: &str = "KONTEXT_MAX_BUFFER_BYTES";

thread_local! {
    static LIMIT_OVERRIDE: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// The largest buffer one kernel on `device` may bind, in bytes, which weights and activations are split to
/// fit: on wgpu the smaller of the granted `maxStorageBufferBindingSize` and `maxBufferSize` (as cubecl's
/// memory pages are sized) and of [`MAX_BUFFER_ENV`]; on the CPU unlimited, `u64::MAX`. Within
/// [`with_binding_limit`] at most its limit, on every device.
pub fn max_binding_bytes(device: &Device) -> u64 {
    let granted = match device.as_dispatch() {
        burn::backend::DispatchDevice::Cube(cube) => {
            cube.client().properties().memory.max_page_size.min(env_limit().unwrap_or(u64::MAX))
        }
        _ => u64::MAX,
    };
    LIMIT_OVERRIDE.with(|o| o.get()).map_or(granted, |limit| granted.min(limit))
}

/// Runs `f` with [`max_binding_bytes`] capped at `bytes` on every device (the CPU included) for this thread, so
/// that tests can make small models split their weights and chunk their activations as large ones do.
pub fn with_binding_limit<T>(bytes: u64, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<u64>);
    impl Drop for Restore {
        fn drop(&mut self) {
            LIMIT_OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(LIMIT_OVERRIDE.with(|o| o.replace(Some(bytes))));
    f()
}

/// [`MAX_BUFFER_ENV`], read once; never set in a browser.
fn env_limit() -> Option<u64> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        static LIMIT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
        *LIMIT.get_or_init(|| std::env::var(MAX_BUFFER_ENV).ok().and_then(|v| v.trim().parse().ok()))
    }
    #[cfg(target_arch = "wasm32")]
    None
}

/// Returns a device of the requested backend (natively).
#[cfg(not(target_arch = "wasm32"))]
pub fn open(backend: Backend) -> Result<Device> {
    match backend {
        Backend::Cpu => Ok(cpu()),
        Backend::Wgpu => wgpu().map(|(device, _)| device),
    }
}

fn report_of(setup: &burn::tensor::wgpu::WgpuSetup) -> AdapterReport {
    use burn::tensor::wgpu::wgpu::{DeviceType, Features};
    let info = setup.adapter.get_info();
    let limits = setup.device.limits();
    let features = setup.device.features();
    // In a browser, wgpu requests neither subgroups nor subgroup matrices: the worker's own request adds them
    // (www/device-request.js) and says what the device was granted.
    let browser_subgroups = browser_grant::subgroups();
    let subgroups = features.contains(Features::SUBGROUP) || browser_subgroups.is_some();
    let mut subgroup_min_size = subgroups.then_some(info.subgroup_min_size).filter(|&n| n > 0);
    let mut subgroup_max_size = subgroups.then_some(info.subgroup_max_size).filter(|&n| n > 0);
    if let Some(granted) = browser_subgroups {
        (subgroup_min_size, subgroup_max_size) = (Some(granted.subgroup_min_size), Some(granted.subgroup_max_size));
    }
    SUBGROUP_MIN_SIZE.store(subgroup_min_size.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    let products = match features.contains(Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
        true => setup.adapter.cooperative_matrix_properties(),
        false => Vec::new(),
    };
    let shader_f16 = features.contains(Features::SHADER_F16);
    let mut coop_fragment = [16, 8].into_iter().find(|&size| {
        use burn::tensor::wgpu::wgpu::CooperativeScalarType::{F16, F32};
        shader_f16
            && subgroup_max_size.is_some_and(|n| n <= COOP_SUBGROUP_MAX)
            && limits.max_compute_workgroup_storage_size >= COOP_WORKGROUP_BYTES
            && products
                .iter()
                .any(|p| [p.m_size, p.n_size, p.k_size] == [size; 3] && p.ab_type == F16 && p.cr_type == F32)
    });
    let mut cooperative_matrix: Vec<String> = products
        .iter()
        .map(|p| format!("{}x{}x{} {:?}→{:?}", p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type).to_lowercase())
        .collect();
    if let Some(granted) = browser_grant::subgroup_matrices().filter(|g| {
        browser_subgroups.is_some()
            && shader_f16
            && limits.max_compute_workgroup_storage_size >= COOP_WORKGROUP_BYTES
            && g.coop_fragment().is_some()
    }) {
        coop_fragment = granted.coop_fragment();
        cooperative_matrix = granted.configs.clone();
    }
    SUBGROUP_MAX_SIZE.store(subgroup_max_size.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    COOP_FRAGMENT.store(coop_fragment.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    let software = info.device_type == DeviceType::Cpu || is_software(&info.name);
    SOFTWARE_OPENED.store(software, std::sync::atomic::Ordering::Relaxed);
    AdapterReport {
        name: info.name.clone(),
        api: format!("{:?}", info.backend),
        driver: [info.driver.as_str(), info.driver_info.as_str()].join(" ").trim().to_string(),
        software,
        max_buffer_size: limits.max_buffer_size,
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
        shader_f16,
        subgroups,
        subgroup_min_size,
        subgroup_max_size,
        max_workgroup_storage_bytes: limits.max_compute_workgroup_storage_size,
        cooperative_matrix,
        coop_fragment,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_reports_become_one_line_without_the_backtrace() {
        let report = "The device is poisoned\nCaused by:\n  The device is poisoned\nCaused by:\n  Destroyed: Device \
                      was destroyed.\nBacktrace:\nNo backtrace available";
        assert_eq!(one_line(report), "The device is poisoned: Destroyed: Device was destroyed.");
    }

    #[test]
    fn the_cpu_has_no_binding_limit() {
        assert_eq!(max_binding_bytes(&cpu()), u64::MAX);
    }

    #[test]
    fn a_binding_limit_applies_within_its_scope_only() {
        let inner = with_binding_limit(4096, || {
            let nested = with_binding_limit(1 << 20, || max_binding_bytes(&cpu()));
            (max_binding_bytes(&cpu()), nested)
        });
        assert_eq!(inner, (4096, 1 << 20));
        assert_eq!(max_binding_bytes(&cpu()), u64::MAX);
    }
}
