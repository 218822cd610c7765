//! Our WGSL kernels (`shaders/*.wgsl`) and the plumbing that runs them on burn's wgpu tensors.
//!
//! Every kernel has a reference path in plain burn tensor ops, used on devices that are not wgpu (the CPU
//! backend) and compared with the kernel in tests.
//!
//! Shaders declare every binding `var<storage, read_write>`, inputs included: natively, cubecl's memory pool
//! places several allocations in one wgpu buffer, and wgpu refuses one buffer bound both read-only and
//! read-write in a dispatch.

pub mod attention;
pub mod flash;
pub mod fused;
pub mod latent;
pub mod pack;
pub mod precision;
pub mod quant_matmul;
pub mod repack;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use burn::backend::wgpu::CubeTensor;
use burn::backend::{Cube, DispatchDevice};
use burn::cubecl::ir::{UIntKind, metadata::Info, settings::Dim3};
use burn::cubecl::prelude::{
    AddressType, Client, CubeCount, CubeKernel, ElemType, ExecutionMode, KernelDefinition, KernelId, KernelMetadata,
    KernelSettings, PrecompiledSource, Scope,
};
use burn::cubecl::server::{BufferBinding, Handle, KernelArguments};
use burn::tensor::{Bytes, DType, Device, Shape, Tensor};

/// Threads per workgroup in every elementwise kernel of ours (`@workgroup_size(256)`).
pub const WORKGROUP: u32 = 256;
/// Workgroups per dispatch dimension that every WebGPU adapter accepts.
const MAX_GROUPS_PER_DIM: u32 = 65_535;

/// Loop iterations one invocation may run on Mesa's llvmpipe (lavapipe) before the driver silently ends every
/// loop of the shader (`LP_MAX_TGSI_LOOP_ITERATIONS` = 65535, shared by all loops); we plan for three quarters.
pub const LLVMPIPE_LOOP_BUDGET: usize = 49_152;

/// A hand-written WGSL compute shader with entry point `main`: a fixed text, or one generated from a template
/// with compile-time constants (then the name carries their values).
#[derive(Debug, Clone, Copy)]
pub struct WgslKernel {
    /// Unique name, also the compilation-cache key and the name launch counts report.
    pub name: &'static str,
    /// The WGSL text.
    pub source: &'static str,
}

/// Every generated kernel by name: generated once per process and kept, so that a launch neither rebuilds its
/// text nor hashes more than the name.
static GENERATED: LazyLock<Mutex<HashMap<String, WgslKernel>>> = LazyLock::new(Default::default);

impl WgslKernel {
    /// A kernel from a fixed text.
    pub const fn fixed(name: &'static str, source: &'static str) -> Self {
        Self { name, source }
    }

    /// The kernel called `name`, its text made by `source` the first time the name is asked for. A name must
    /// carry every constant the text depends on.
    pub fn generated(name: String, source: impl FnOnce() -> String) -> Self {
        let mut generated = GENERATED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *generated.entry(name).or_insert_with_key(|name| Self {
            name: Box::leak(name.clone().into_boxed_str()),
            source: Box::leak(source().into_boxed_str()),
        })
    }
}

impl KernelMetadata for WgslKernel {
    fn name(&self) -> &'static str {
        self.name
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info(self.name)
    }

    fn address_type(&self) -> ElemType {
        ElemType::UInt(UIntKind::U32)
    }
}

impl CubeKernel for WgslKernel {
    fn define(&self) -> KernelDefinition {
        let settings = KernelSettings::new(Dim3::new_single(), ExecutionMode::Checked, AddressType::U32);
        KernelDefinition { body: Scope::root(settings.clone()), settings, info: Info::default() }
    }

    fn source(&self) -> Option<PrecompiledSource> {
        Some(PrecompiledSource { source: self.source.to_string(), entrypoint_name: "main".into(), lang: "wgsl" })
    }
}

/// Whether `device` runs our kernels (wgpu, unless [`with_plain_ops`] turned them off), so that weights may
/// stay packed there.
pub fn packs_on(device: &Device) -> bool {
    !plain_ops() && matches!(device.as_dispatch(), DispatchDevice::Cube(_))
}

/// Set while [`with_plain_ops`] runs.
static PLAIN_OPS: AtomicBool = AtomicBool::new(false);

/// Whether our kernels are off ([`with_plain_ops`]).
pub fn plain_ops() -> bool {
    PLAIN_OPS.load(Ordering::Relaxed)
}

/// Runs `f` with every kernel of ours off, on every thread: the reference twins in plain burn ops instead, and
/// weights loaded in the meantime dequantized to dense f32 (`kontext bench` times the model both ways side by
/// side). Not for use while other work runs.
pub fn with_plain_ops<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            PLAIN_OPS.store(self.0, Ordering::Relaxed);
        }
    }
    let _restore = Restore(PLAIN_OPS.swap(true, Ordering::Relaxed));
    f()
}

/// A float tensor on burn's wgpu backend, contiguous, ready to bind; `Err` gives back tensors of other backends.
#[allow(clippy::result_large_err)] // the error is the caller's own tensor, handed back for the reference path
pub fn cube_tensor<const D: usize>(tensor: Tensor<D>) -> Result<CubeTensor, Tensor<D>> {
    cube_tensor_of(tensor, DType::F32)
}

/// A float tensor of `dtype` on burn's wgpu backend, contiguous, ready to bind; `Err` gives back tensors of
/// other backends or dtypes.
#[allow(clippy::result_large_err)] // the error is the caller's own tensor
pub fn cube_tensor_of<const D: usize>(tensor: Tensor<D>, dtype: DType) -> Result<CubeTensor, Tensor<D>> {
    match tensor.clone().try_into_primitive::<Cube>() {
        Ok(t) if t.dtype == dtype => {
            Ok(if t.is_contiguous() && !t.meta.is_tiled() { t } else { burn_cubecl::kernel::into_contiguous(t) })
        }
        _ => Err(tensor),
    }
}

/// Wraps a freshly written contiguous f32 buffer as a burn tensor.
pub fn tensor_from_handle<const D: usize>(like: &CubeTensor, handle: Handle, shape: [usize; D]) -> Tensor<D> {
    tensor_from_handle_of(like, handle, shape, DType::F32)
}

/// Wraps a freshly written contiguous buffer of `dtype` floats as a burn tensor.
pub fn tensor_from_handle_of<const D: usize>(
    like: &CubeTensor,
    handle: Handle,
    shape: [usize; D],
    dtype: DType,
) -> Tensor<D> {
    let out = CubeTensor::new_contiguous(like.client.clone(), like.device.clone(), Shape::from(shape), handle, dtype);
    Tensor::from_primitive::<Cube>(out)
}

/// Uploads the `u32` parameters a kernel reads from its last binding.
pub fn params(client: &Client, values: &[u32]) -> Handle {
    client.create(Bytes::from_elems(values.to_vec()))
}

/// Dispatches `kernel` so that at least `invocations` threads run, spread over x and y when one dimension
/// would exceed the adapter's workgroup limit. Shaders index with
/// `gid.x + gid.y * num_workgroups.x * 256` and return past the end.
pub fn launch_1d(client: &Client, kernel: WgslKernel, invocations: usize, buffers: Vec<BufferBinding>) {
    let (x, y) = grid_1d(invocations);
    dispatch(client, kernel, CubeCount::Static(x, y, 1), buffers, &[]);
}

/// Set while [`count_activation_bytes`] runs.
static COUNTING_BYTES: AtomicBool = AtomicBool::new(false);
/// What [`count_activation_bytes`] counts: activation bytes bound and launches of ours.
static ACTIVATION_BYTES: AtomicU64 = AtomicU64::new(0);
static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// Launches `kernel` on `count` workgroups: every launch of ours goes through here. `buffers` ends with the
/// kernel's parameters and holds weights at the positions `weights`; the other bindings are activations, which
/// [`count_activation_bytes`] counts.
pub fn dispatch(client: &Client, kernel: WgslKernel, count: CubeCount, buffers: Vec<BufferBinding>, weights: &[usize]) {
    if COUNTING_BYTES.load(Ordering::Relaxed) {
        let activations = buffers.len().saturating_sub(1);
        let bytes: u64 = (buffers.iter().take(activations).enumerate())
            .filter(|(i, _)| !weights.contains(i))
            .map(|(_, b)| b.size - b.offset_start.unwrap_or(0) - b.offset_end.unwrap_or(0))
            .sum();
        ACTIVATION_BYTES.fetch_add(bytes, Ordering::Relaxed);
        LAUNCHES.fetch_add(1, Ordering::Relaxed);
    }
    client.launch(Box::new(kernel), count, KernelArguments::new().with_buffers(buffers));
}

/// What our kernels bound while [`count_activation_bytes`] ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActivationBytes {
    /// Activation bytes: per launch, every binding but weights and parameters, read or written, counted once (a
    /// kernel that reads an input again, as a matmul does for each tile of outputs, counts it once).
    pub bytes: u64,
    /// Launches of ours (burn's own kernels are neither counted here nor in `bytes`).
    pub launches: u64,
}

/// Runs `f` and counts the activation bytes our kernels bind while it runs, on any thread: run nothing else on
/// the GPU meanwhile.
pub fn count_activation_bytes<R>(f: impl FnOnce() -> R) -> (R, ActivationBytes) {
    ACTIVATION_BYTES.store(0, Ordering::Relaxed);
    LAUNCHES.store(0, Ordering::Relaxed);
    COUNTING_BYTES.store(true, Ordering::Relaxed);
    let result = f();
    COUNTING_BYTES.store(false, Ordering::Relaxed);
    let counted =
        ActivationBytes { bytes: ACTIVATION_BYTES.load(Ordering::Relaxed), launches: LAUNCHES.load(Ordering::Relaxed) };
    (result, counted)
}

/// Workgroups `(x, y)` covering `invocations` threads of [`WORKGROUP`] each, see [`grid`].
pub fn grid_1d(invocations: usize) -> (u32, u32) {
    grid(invocations.div_ceil(WORKGROUP as usize))
}

/// Workgroups `(x, y)`, at least `groups` of them (and at least one), with neither dimension over the WebGPU
/// limit: kernels number their workgroup `wid.x + wid.y * num_workgroups.x` and return past the end.
pub fn grid(groups: usize) -> (u32, u32) {
    let groups = groups.max(1) as u64;
    let x = groups.min(MAX_GROUPS_PER_DIM as u64);
    (x as u32, groups.div_ceil(x) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_cover_every_invocation_within_the_dimension_limit() {
        for n in [1usize, 255, 256, 257, 65_535 * 256, 65_535 * 256 + 1, 1 << 30] {
            let (x, y) = grid_1d(n);
            assert!(x <= MAX_GROUPS_PER_DIM && y <= MAX_GROUPS_PER_DIM, "{n}: {x}×{y}");
            assert!(x as u64 * y as u64 * WORKGROUP as u64 >= n as u64, "{n}: {x}×{y} too small");
            assert!((x as u64 * (y as u64 - 1)) * (WORKGROUP as u64) < n as u64, "{n}: a whole row of groups idles");
        }
        for groups in [1usize, 65_535, 65_536, 24 * 137 * 1000] {
            let (x, y) = grid(groups);
            assert!(x <= MAX_GROUPS_PER_DIM && y <= MAX_GROUPS_PER_DIM, "{groups}: {x}×{y}");
            assert!(x as usize * y as usize >= groups, "{groups}: {x}×{y}");
        }
    }
}
