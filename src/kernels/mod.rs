//! Our WGSL kernels (`shaders/*.wgsl`) and the plumbing that runs them on burn's wgpu tensors.
//!
//! Every kernel has a reference path in plain burn tensor ops, used on devices that are not wgpu (the CPU
//! backend) and compared with the kernel in tests.
//!
//! Shaders declare every buffer `var<storage, read_write>`, inputs included: natively, cubecl's memory pool
//! places several allocations in one wgpu buffer, and wgpu refuses one buffer bound both read-only and
//! read-write in a dispatch. Their parameters come last, in a uniform ([`Params`]).

pub mod attention;
pub mod coop_attention;
pub mod coop_dialect;
pub mod coop_matmul;
pub mod dequant;
pub mod display;
pub mod flash;
pub mod fused;
pub mod latent;
pub mod pack;
pub mod path;
pub mod precision;
pub mod quant_matmul;
pub mod repack;
pub mod report;

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
use burn::cubecl::server::{BufferBinding, Handle, KernelArguments, MetadataBindingInfo};
use burn::tensor::{DType, Device, Shape, Tensor};

/// Threads per workgroup in every elementwise kernel of ours (`@workgroup_size(256)`).
pub const WORKGROUP: u32 = 256;
/// Workgroups per dispatch dimension that every WebGPU adapter accepts.
const MAX_GROUPS_PER_DIM: u32 = 65_535;

/// Loop iterations one invocation may run on Mesa's llvmpipe (lavapipe) before the driver silently ends every
/// loop of the shader (`LP_MAX_TGSI_LOOP_ITERATIONS` = 65535, shared by all loops); we plan for three quarters.
pub const LLVMPIPE_LOOP_BUDGET: usize = 49_152;

/// A hand-written WGSL compute shader with entry point `main` (renamed after the kernel when compiled): a fixed
/// text, or one generated from a template with compile-time constants (then the name carries their values).
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
        let entry = entry_point(self.name);
        let source = self.source.replacen("fn main(", &format!("fn {entry}("), 1);
        Some(PrecompiledSource { source, entrypoint_name: entry, lang: "wgsl" })
    }
}

/// The entry point a kernel's `main` is renamed to: its name as a WGSL identifier, so that driver traces and
/// pipeline labels say which kernel they are.
fn entry_point(name: &str) -> String {
    let identifier: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("k_{identifier}")
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

/// `u32` values a launch's parameters hold at most.
pub const PARAMS_MAX: usize = 12;

/// The `u32` parameters of one launch. Shaders read them from the binding after their buffers, a uniform
/// `array<vec4<u32>, 3>` (value `i` at `[i / 4][i % 4]`), which cubecl stages in its pool of uniforms once per
/// distinct content and reuses for every later launch with the same values: no buffer per dispatch.
#[derive(Debug, Clone)]
pub struct Params(Vec<u64>);

/// [`Params`] holding `values`, zero-padded to [`PARAMS_MAX`].
///
/// # Panics
/// With more than [`PARAMS_MAX`] values.
pub fn params(values: &[u32]) -> Params {
    assert!(values.len() <= PARAMS_MAX, "{} kernel parameters, at most {PARAMS_MAX}", values.len());
    let mut words = [0u32; PARAMS_MAX];
    words[..values.len()].copy_from_slice(values);
    // Little-endian: the first u32 of each pair is the low half of its u64.
    let pairs = words.chunks_exact(2).map(|pair| pair[0] as u64 | (pair[1] as u64) << 32).collect();
    Params(pairs)
}

/// Dispatches `kernel` so that at least `invocations` threads run, spread over x and y when one dimension
/// would exceed the adapter's workgroup limit. Shaders index with
/// `gid.x + gid.y * num_workgroups.x * 256` and return past the end.
pub fn launch_1d(client: &Client, kernel: WgslKernel, invocations: usize, buffers: Vec<BufferBinding>, params: Params) {
    let (x, y) = grid_1d(invocations);
    dispatch(client, kernel, CubeCount::Static(x, y, 1), buffers, params, &[]);
}

/// Set while [`count_activation_bytes`] runs.
static COUNTING_BYTES: AtomicBool = AtomicBool::new(false);
/// What [`count_activation_bytes`] counts: activation bytes bound and launches of ours.
static ACTIVATION_BYTES: AtomicU64 = AtomicU64::new(0);
static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// Launches `kernel` on `count` workgroups with `params` bound after `buffers`: every launch of ours goes
/// through here. `buffers` holds weights (or unread placeholders) at the positions `weights`; the other bindings
/// are activations, which [`count_activation_bytes`] counts.
pub fn dispatch(
    client: &Client,
    kernel: WgslKernel,
    count: CubeCount,
    buffers: Vec<BufferBinding>,
    params: Params,
    weights: &[usize],
) {
    if COUNTING_BYTES.load(Ordering::Relaxed) {
        let bytes: u64 = (buffers.iter().enumerate())
            .filter(|(i, _)| !weights.contains(i))
            .map(|(_, b)| b.size - b.offset_start.unwrap_or(0) - b.offset_end.unwrap_or(0))
            .sum();
        ACTIVATION_BYTES.fetch_add(bytes, Ordering::Relaxed);
        LAUNCHES.fetch_add(1, Ordering::Relaxed);
    }
    client.launch(
        Box::new(kernel),
        count,
        KernelArguments::new().with_buffers(buffers).with_info(MetadataBindingInfo::custom(params.0)),
    );
}

/// What our kernels bound while [`count_activation_bytes`] ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActivationBytes {
    /// Activation bytes: per launch, every buffer but weights, read or written, counted once (a
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
    fn every_shader_reads_its_parameters_from_a_uniform() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        let mut with_params = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.ends_with("display.wgsl") {
                continue; // a render pass that wgpu runs directly (kernels::display), not a kernel cubecl launches
            }
            let source = std::fs::read_to_string(&path).unwrap();
            for line in source.lines().filter(|l| l.contains("@binding(")) {
                let is_params = line.contains(" dims:") || line.contains(" params:");
                assert_eq!(
                    is_params,
                    line.contains("var<uniform>"),
                    "{}: parameters go in the uniform after the buffers, buffers in storage: {line}",
                    path.display()
                );
                if is_params {
                    assert!(line.contains("array<vec4<u32>, 3>"), "{}: {line}", path.display());
                    with_params += 1;
                }
            }
        }
        // The packed matmuls declare theirs once, in matmul_bindings.wgsl.
        assert!(with_params >= 11, "{with_params} shaders declare parameters");
        // PARAMS_MAX values fill that array exactly, two per u64 word of the metadata cubecl stages.
        assert_eq!(params(&[1, 2, 3]).0, [1 | 2 << 32, 3, 0, 0, 0, 0]);
        assert_eq!(PARAMS_MAX, 3 * 4);
    }

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

    #[test]
    fn kernels_compile_with_their_name_as_entry_point() {
        let kernel = WgslKernel::fixed("matmul_q8_0.w64-f16", "@compute @workgroup_size(1)\nfn main() {}\n");
        let source = kernel.source().unwrap();
        assert_eq!(source.entrypoint_name, "k_matmul_q8_0_w64_f16");
        assert_eq!(source.source, "@compute @workgroup_size(1)\nfn k_matmul_q8_0_w64_f16() {}\n");
    }
}
