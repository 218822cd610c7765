//! Linear layers whose weights stay quantized on the GPU: `y = x · Wᵀ (+ b)` with `W [n, k]` the blocks of a GGUF
//! tensor, repacked once at load into aligned chunk-major sections ([`super::repack`]) and dequantized inside the
//! matmul, accumulating in f32. Three kernels by rows of x ([`PlainKernel::for_shape`]): `shaders/matvec_quant.wgsl`
//! (up to 8 rows: 8 threads split one row of W), `matmul_quant.wgsl` (64×64 outputs per workgroup) and
//! `matmul_quant_wide.wgsl` (128×128, from 256 rows; on CPU adapters from 9), each completed by one
//! `shaders/matmul_<type>.wgsl` per block type,
//! `shaders/packed_weights.wgsl`, which reads the layout, and the shared bindings and epilogues
//! ([`super::dequant::matmul_source`]).
//!
//! Each kernel comes in two precisions ([`Precision`]), generated from the same sources by a first line
//! `shaders/work_f32.wgsl` or `shaders/work_f16.wgsl` (`enable f16; alias work = f16;`): the tiles of x and of
//! the dequantized W are held in workgroup memory and multiplied as `work`, each product accumulating in f32.
//! x, y and the bias are f32 in memory either way, so the f16 path needs no cast pass before or after it.
//! The square and wide kernels double-buffer through registers: the next step's values are loaded while the
//! current tiles are multiplied.
//!
//! The reference twin, [`reference`], dequantizes on the host ([`crate::formats::dequantize`]) and multiplies with
//! plain tensor ops; it is the path on devices that are not wgpu.

use burn::backend::Cube;
use burn::backend::wgpu::CubeTensor;
use burn::cubecl::prelude::CubeCount;
use burn::module::Module;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use super::coop_matmul::{self, CoopMatmul};
use super::path::KernelPath;
use super::precision::Precision;
use super::repack::{self, Layout};
use super::{WgslKernel, cube_tensor, dequant, fused, packs_on, params, tensor_from_handle};
use crate::formats::{GgmlType, GgufFile, dequantize};
use crate::{Error, Result};

/// Values of W the kernels dequantize per row and step of the K loop; K must be a multiple of it.
const TILE_K: usize = 32;
/// Outputs along M and N one workgroup of the square kernel computes (`TILE_M`, `TILE_N`).
const TILE: usize = 64;
/// Outputs along M and N one workgroup of the wide kernel computes (`TILE` in `matmul_quant_wide.wgsl`).
const WIDE_TILE: usize = 128;
/// Rows of x from which the wide kernel (8×8 outputs per thread) replaces the square one (4×4) on GPUs.
const WIDE_FROM_ROWS: usize = 256;
/// Rows of x up to which the matrix-vector kernel (W read once per 4 rows) replaces the square one.
const MATVEC_MAX_ROWS: usize = 8;
/// Rows of W and of x one workgroup of the matrix-vector kernel covers (`LANES`, `ROWS`).
const MATVEC_TILE: (usize, usize) = (32, 4);
/// Rows of W the matrix-vector kernel reaches within WebGPU's 65 535 workgroups per dimension.
const MAX_PACKED_ROWS: usize = 65_535 * MATVEC_TILE.0;

/// The plain kernels (the `f32` and `subgroup-f16` paths), by rows of x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainKernel {
    /// Up to [`MATVEC_MAX_ROWS`] rows: `shaders/matvec_quant.wgsl`.
    Matvec,
    /// `shaders/matmul_quant.wgsl`, [`TILE`]² outputs per workgroup.
    Square,
    /// From [`WIDE_FROM_ROWS`] rows on GPUs, beyond [`MATVEC_MAX_ROWS`] on CPU adapters:
    /// `shaders/matmul_quant_wide.wgsl`, [`WIDE_TILE`]² outputs per workgroup.
    Wide,
}

impl PlainKernel {
    /// The kernel for x of `m` rows and a weight of `n` rows. CPU adapters (`software`: llvmpipe, SwiftShader)
    /// take the wide kernel wherever the matrix-vector one does not serve: there it ran 2× (64 rows) to 4× (256
    /// rows) as fast as the square one on llvmpipe (`kontext bench --quick --only matmul`, side by side), and one
    /// kernel fewer per block type is one pipeline fewer for every fresh browser worker to compile.
    pub fn for_shape(m: usize, n: usize, software: bool) -> Self {
        if m <= MATVEC_MAX_ROWS {
            Self::Matvec
        } else if software || (m >= WIDE_FROM_ROWS && n >= WIDE_TILE) {
            Self::Wide
        } else {
            Self::Square
        }
    }

    /// Outputs along N and M one workgroup computes.
    fn tile(self) -> (usize, usize) {
        match self {
            Self::Matvec => MATVEC_TILE,
            Self::Square => (TILE, TILE),
            Self::Wide => (WIDE_TILE, WIDE_TILE),
        }
    }

    /// The kernel reading `ty` blocks, multiplying at `precision` (every epilogue, picked by a parameter): the
    /// shader completed by [`dequant::matmul_source`] after `shaders/work_<precision>.wgsl`.
    fn kernel(self, ty: GgmlType, precision: Precision) -> WgslKernel {
        let (body, suffix) = match self {
            Self::Matvec => (include_str!("../../shaders/matvec_quant.wgsl"), "_vec"),
            Self::Square => (include_str!("../../shaders/matmul_quant.wgsl"), ""),
            Self::Wide => (include_str!("../../shaders/matmul_quant_wide.wgsl"), "_wide"),
        };
        let (work, half) = match precision {
            Precision::F32 => (include_str!("../../shaders/work_f32.wgsl"), ""),
            Precision::F16 => (include_str!("../../shaders/work_f16.wgsl"), "_f16"),
        };
        let name = format!("matmul_{}{half}{suffix}", dequant::type_name(ty));
        WgslKernel::generated(name, || dequant::matmul_source(work, ty, body))
    }
}

/// Whether [`PackedWeight`] keeps `ty` packed on wgpu (it dequantizes the other dequantizable types).
pub fn has_kernel(ty: GgmlType) -> bool {
    dequant::dequant_source(ty).is_some()
}

/// Whether [`PackedWeight::new`] keeps a `ty` weight of PyTorch-order `shape` in blocks on `device`: on wgpu,
/// for types with a kernel and 2-D shapes the kernels cover (other weights load dequantized).
pub fn keeps_blocks(ty: GgmlType, shape: &[usize], device: &Device) -> bool {
    let fits = matches!(*shape, [n, k] if n <= MAX_PACKED_ROWS && k.is_multiple_of(TILE_K) && k.is_multiple_of(ty.block_size()));
    packs_on(device) && has_kernel(ty) && fits
}

/// Where a [`PackedWeight`] keeps its values.
#[derive(Module, Debug)]
pub enum WeightStorage {
    /// The blocks repacked ([`repack::repack`]) as `u32` words, on wgpu.
    Blocks(Tensor<1, Int>),
    /// The dequantized `[n, k]` matrix, on devices without our kernels.
    Dense(Tensor<2>),
}

/// A ggml weight `[n, k]` (`ne0 = k` input features) for `y = x · Wᵀ`.
#[derive(Module, Debug)]
pub struct PackedWeight {
    /// Storage type of the blocks.
    #[module(skip)]
    pub ty: GgmlType,
    /// Output features (rows of W).
    pub n: usize,
    /// Input features (values per row of W).
    pub k: usize,
    /// Where the sections of the packed words lie (unused by dense storage).
    #[module(skip)]
    pub layout: Option<Layout>,
    /// The values, packed or dequantized.
    pub storage: WeightStorage,
}

impl PackedWeight {
    /// Uploads a weight from its ggml type, PyTorch-order shape `[n, k]` and block bytes (as
    /// [`GgufFile::raw`] returns them): repacked on wgpu when a kernel reads `ty`, dequantized otherwise.
    pub fn new(ty: GgmlType, shape: &[usize], bytes: &[u8], device: &Device) -> Result<Self> {
        let (n, k) = check(ty, shape, bytes)?;
        if !packs_on(device) || !has_kernel(ty) {
            return Self::dense(ty, shape, bytes, device);
        }
        if n > MAX_PACKED_ROWS {
            return Err(Error::Invalid(format!("a packed {ty} weight {shape:?} has more than {MAX_PACKED_ROWS} rows")));
        }
        if !k.is_multiple_of(TILE_K) {
            return Err(Error::Invalid(format!(
                "a packed {ty} weight {shape:?} needs input features in multiples of {TILE_K}, got {k}"
            )));
        }
        let (layout, words) = repack::repack(ty, n, k, bytes)?;
        let len = words.len();
        let blocks = Tensor::<1, Int>::from_data(TensorData::new(words, [len]), (device, DType::U32));
        Ok(Self { ty, n, k, layout: Some(layout), storage: WeightStorage::Blocks(blocks) })
    }

    /// The reference twin: the weight dequantized on the host to an f32 `[n, k]` tensor on `device`.
    pub fn dense(ty: GgmlType, shape: &[usize], bytes: &[u8], device: &Device) -> Result<Self> {
        let (n, k) = check(ty, shape, bytes)?;
        let values = dequantize(ty, bytes, n * k)?;
        let dense = Tensor::<2>::from_data(TensorData::new(values, [n, k]), device);
        Ok(Self { ty, n, k, layout: None, storage: WeightStorage::Dense(dense) })
    }

    /// An f32 matrix `[n, k]` (row-major) as an F32 weight: in blocks where [`keeps_blocks`] keeps it, else
    /// dense (for shapes the kernels do not cover, and on devices without them).
    pub fn from_f32(values: &[f32], [n, k]: [usize; 2], device: &Device) -> Result<Self> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        match keeps_blocks(GgmlType::F32, &[n, k], device) {
            true => Self::new(GgmlType::F32, &[n, k], &bytes, device),
            false => Self::dense(GgmlType::F32, &[n, k], &bytes, device),
        }
    }

    /// The GGUF tensor `name` as a weight on `device` (see [`PackedWeight::new`]).
    pub fn from_gguf(file: &GgufFile, name: &str, device: &Device) -> Result<Self> {
        let (ty, shape, bytes) = file.raw(name)?;
        Self::new(ty, &shape, &bytes, device).map_err(|e| Error::Invalid(format!("tensor `{name}`: {e}")))
    }

    /// Whether the weight stays quantized (repacked blocks, wgpu) rather than dequantized.
    pub fn is_packed(&self) -> bool {
        matches!(self.storage, WeightStorage::Blocks(_))
    }

    /// Bytes the weight occupies on its device.
    pub fn device_bytes(&self) -> usize {
        match &self.storage {
            WeightStorage::Blocks(words) => words.dims()[0] * size_of::<u32>(),
            WeightStorage::Dense(dense) => dense.shape().num_elements() * size_of::<f32>(),
        }
    }
}

/// Validates a ggml weight `[n, k]` and its bytes; returns `(n, k)`.
fn check(ty: GgmlType, shape: &[usize], bytes: &[u8]) -> Result<(usize, usize)> {
    let &[n, k] = shape else {
        return Err(Error::Invalid(format!("a linear weight must be 2-D [out, in], got {ty} {shape:?}")));
    };
    if !ty.can_dequantize() {
        return Err(Error::Invalid(format!("{ty} weights {shape:?} cannot be used yet")));
    }
    if k % ty.block_size() != 0 {
        return Err(Error::Invalid(format!(
            "{ty} weight {shape:?}: {k} input features are not whole blocks of {}",
            ty.block_size()
        )));
    }
    let expected = (n * k / ty.block_size()) as u64 * ty.type_size() as u64;
    if bytes.len() as u64 != expected {
        return Err(Error::Invalid(format!("{ty} weight {shape:?} needs {expected} bytes, got {}", bytes.len())));
    }
    Ok((n, k))
}

/// `x [m, k] · Wᵀ (+ bias [n]) → [m, n]` in f32: the kernel for packed weights on the kernel path of x's device
/// ([`KernelPath::for_matmul`]), [`reference`] for dense ones.
///
/// # Panics
/// When `x` has not `k` columns, or `x` and the weight live on different devices (like burn's own ops).
pub fn matmul(x: Tensor<2>, weight: &PackedWeight, bias: Option<&Tensor<1>>) -> Tensor<2> {
    matmul_with(x, weight, bias, Epilogue::Plain)
}

/// What a packed matmul does with each output `y = x · Wᵀ + b` before storing it (`finish` in
/// `shaders/matmul_epilogue.wgsl`), so that an MLP's GELU and a block's gated residual add take no launch of
/// their own.
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// `y` as it is.
    Plain,
    /// `gelu_tanh(y)`: an MLP's first layer.
    Gelu,
    /// `residual + gate · y` with `residual` `[m, n]` and `gate` `[g, n]`, `m` a multiple of `g`: row `r` takes
    /// gate row `r / (m / g)` (a block's gated residual add, one gate row per sample).
    GatedAdd {
        /// `[m, n]`.
        residual: &'a Tensor<2>,
        /// `[g, n]`.
        gate: &'a Tensor<2>,
    },
}

impl Epilogue<'_> {
    /// The parameter `dims[1].w` that picks the epilogue in `shaders/matmul_epilogue.wgsl`.
    pub fn code(&self) -> u32 {
        match self {
            Self::Plain => 0,
            Self::Gelu => 1,
            Self::GatedAdd { .. } => 2,
        }
    }

    /// The reference twin: the epilogue applied to `y` `[m, n]` in plain tensor ops.
    pub fn reference(&self, y: Tensor<2>) -> Tensor<2> {
        let [m, n] = y.dims();
        match self {
            Self::Plain => y,
            Self::Gelu => fused::reference::gelu_tanh(y.reshape([1, m, n])).reshape([m, n]),
            Self::GatedAdd { residual, gate } => {
                let g = gate.dims()[0];
                let per_gate = |t: Tensor<2>| t.reshape([g, m / g, n]); // [m, n] → [g, m / g, n]
                let sum = per_gate((*residual).clone()) + (*gate).clone().reshape([g, 1, n]) * per_gate(y);
                sum.reshape([m, n])
            }
        }
    }

    /// Panics when a gated add's tensors do not fit an output `[m, n]`.
    fn check(&self, m: usize, n: usize) {
        if let Self::GatedAdd { residual, gate } = self {
            let g = gate.dims()[0];
            assert!(
                residual.dims() == [m, n] && gate.dims()[1] == n && g > 0 && m.is_multiple_of(g),
                "a gated add of residual {:?} and gate {:?} to an output [{m}, {n}]",
                residual.dims(),
                gate.dims()
            );
        }
    }
}

/// [`matmul`] followed by `epilogue`, inside the kernel for packed weights.
///
/// # Panics
/// As [`matmul`], and when a [`Epilogue::GatedAdd`]'s tensors do not fit the output.
pub fn matmul_with(x: Tensor<2>, weight: &PackedWeight, bias: Option<&Tensor<1>>, epilogue: Epilogue) -> Tensor<2> {
    let path = KernelPath::for_matmul(x.dims()[0], &x.device());
    matmul_on_with(x, weight, bias, path, epilogue)
}

/// [`matmul`] at a given precision: with F16, a packed weight's kernel holds and multiplies its tiles in f16
/// (x and y stay f32). Dense weights ignore `precision` ([`reference`] in f32).
///
/// # Panics
/// As [`matmul`]; also for F16 with a packed weight on a device without `shader-f16`
/// ([`Precision::f16_available`]).
pub fn matmul_at(x: Tensor<2>, weight: &PackedWeight, bias: Option<&Tensor<1>>, precision: Precision) -> Tensor<2> {
    matmul_on_with(x, weight, bias, KernelPath::from(precision), Epilogue::Plain)
}

/// [`matmul_with`] on a given kernel path: `coop` takes the cooperative-matrix kernel from
/// [`coop_matmul::MIN_ROWS`] + 1 rows on (fewer rows the matrix-vector kernel, in f32). Dense weights ignore
/// `path` ([`reference`] in f32).
///
/// # Panics
/// As [`matmul_with`]; also for a path the device cannot run ([`KernelPath::missing_on`]) with a packed weight.
pub fn matmul_on_with(
    x: Tensor<2>,
    weight: &PackedWeight,
    bias: Option<&Tensor<1>>,
    path: KernelPath,
    epilogue: Epilogue,
) -> Tensor<2> {
    let m = x.dims()[0];
    let software = crate::device::software_adapter(&x.device());
    let launch = match crate::device::coop_fragment() {
        Some(fragment) if path == KernelPath::Coop && m > coop_matmul::MIN_ROWS => {
            Launch::Coop { fragment, tile: coop_matmul::tile_for(m, weight.n, software) }
        }
        _ => Launch::Plain(PlainKernel::for_shape(m, weight.n, software)),
    };
    packed_matmul(x, weight, bias, path, launch, epilogue)
}

/// [`matmul_with`] in the coop kernel with tiles `tile` wide (one of [`coop_matmul::TILES`]), whatever
/// [`coop_matmul::tile_for`] would take: tests and the benchmark check each tile on any adapter with the path.
///
/// # Panics
/// As [`matmul_on_with`] on the `coop` path, and on an adapter without cooperative matrices.
pub fn matmul_coop(
    x: Tensor<2>,
    weight: &PackedWeight,
    bias: Option<&Tensor<1>>,
    tile: usize,
    epilogue: Epilogue,
) -> Tensor<2> {
    let fragment = crate::device::coop_fragment().expect("a coop matmul on an adapter without cooperative matrices");
    packed_matmul(x, weight, bias, KernelPath::Coop, Launch::Coop { fragment, tile }, epilogue)
}

/// [`matmul_with`] in the plain kernel `kernel` at `precision`, whatever [`PlainKernel::for_shape`] would take:
/// tests check each kernel on any adapter with it. Dense weights ignore both ([`reference`] in f32).
///
/// # Panics
/// As [`matmul_at`].
pub fn matmul_in(
    x: Tensor<2>,
    weight: &PackedWeight,
    bias: Option<&Tensor<1>>,
    kernel: PlainKernel,
    precision: Precision,
    epilogue: Epilogue,
) -> Tensor<2> {
    packed_matmul(x, weight, bias, KernelPath::from(precision), Launch::Plain(kernel), epilogue)
}

/// `a [m, k] · b [k, n]` (`b` as host values) for the device self-check
/// ([`crate::device::selfcheck::matmul_check`]): `b` becomes an F32 weight in the matrix-vector kernel, in f32
/// whatever the device's path. That kernel serves any number of rows, and every model runs it (its modulation
/// layers take one row), so the check tests what the model runs, to f32's tolerance, and a fresh worker compiles
/// its pipeline once for both.
pub fn self_check_multiply(a: Tensor<2>, b: &[f32]) -> Result<Tensor<2>> {
    let k = a.dims()[1];
    let n = b.len() / k.max(1);
    let mut weight = vec![0f32; n * k]; // b [k, n] → W = bᵀ [n, k]
    for (row, values) in b.chunks_exact(n.max(1)).enumerate() {
        for (column, &value) in values.iter().enumerate() {
            weight[column * k + row] = value;
        }
    }
    let weight = PackedWeight::from_f32(&weight, [n, k], &a.device())?;
    Ok(matmul_in(a, &weight, None, PlainKernel::Matvec, Precision::F32, Epilogue::Plain))
}

/// The kernel a packed matmul launches.
#[derive(Debug, Clone, Copy)]
enum Launch {
    /// The cooperative-matrix kernel with fragments `fragment` wide computing tiles `tile` wide.
    Coop {
        /// Side of the fragments.
        fragment: usize,
        /// Side of the tiles of y.
        tile: usize,
    },
    /// A plain kernel, at the precision of the path.
    Plain(PlainKernel),
}

impl Launch {
    /// The kernel over `ty` blocks and the outputs (along N, M) each of its workgroups computes.
    fn kernel(self, ty: GgmlType, precision: Precision) -> (WgslKernel, (usize, usize)) {
        match self {
            Self::Coop { fragment, tile } => {
                let subgroup_max = crate::device::subgroup_max_size().unwrap_or(32);
                (CoopMatmul::new(ty, fragment, subgroup_max).with_tile(tile).kernel(), (tile, tile))
            }
            Self::Plain(plain) => (plain.kernel(ty, precision), plain.tile()),
        }
    }
}

/// `x · Wᵀ (+ bias)` then `epilogue`: the reference twin for dense weights, `launch` for packed ones.
fn packed_matmul(
    x: Tensor<2>,
    weight: &PackedWeight,
    bias: Option<&Tensor<1>>,
    path: KernelPath,
    launch: Launch,
    epilogue: Epilogue,
) -> Tensor<2> {
    let [m, k] = x.dims();
    assert_eq!(k, weight.k, "matmul of x [{m}, {k}] with a {} weight [{}, {}]", weight.ty, weight.n, weight.k);
    epilogue.check(m, weight.n);
    match &weight.storage {
        WeightStorage::Dense(dense) => epilogue.reference(reference(x, dense.clone(), bias.cloned())),
        WeightStorage::Blocks(words) => {
            if let Some(why) = path.missing_on(&x.device()) {
                panic!("a packed matmul on the kernel path {path}, which this device cannot run: {why}");
            }
            let x = cube_tensor(x).unwrap_or_else(|_| panic!("x is not on the wgpu device of its packed weight"));
            quant_kernel(x, words.clone(), weight, bias, launch.kernel(weight.ty, path.precision()), epilogue)
        }
    }
}

/// The reference twin: `x [m, k] · dense [n, k]ᵀ (+ bias [n])` in plain tensor ops.
pub fn reference(x: Tensor<2>, dense: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    let y = x.matmul(dense.transpose());
    match bias {
        Some(bias) => y + bias.unsqueeze_dim::<2>(0),
        None => y,
    }
}

fn quant_kernel(
    x: CubeTensor,
    words: Tensor<1, Int>,
    weight: &PackedWeight,
    bias: Option<&Tensor<1>>,
    (kernel, (tile_n, tile_m)): (WgslKernel, (usize, usize)),
    epilogue: Epilogue,
) -> Tensor<2> {
    let (m, n, k) = (x.meta.shape()[0], weight.n, weight.k);
    let client = x.client.clone();
    let out = client.empty((m * n).max(1) * size_of::<f32>());
    if m == 0 || n == 0 {
        return tensor_from_handle(&x, out, [m, n]);
    }
    let words: CubeTensor =
        words.try_into_primitive::<Cube>().unwrap_or_else(|_| panic!("packed blocks are not on wgpu"));
    let on_device =
        |t: &Tensor<2>| cube_tensor(t.clone()).unwrap_or_else(|_| panic!("an epilogue input is not on wgpu"));
    let bias = bias.map(|b| cube_tensor(b.clone()).unwrap_or_else(|_| panic!("the bias is not on the wgpu device")));
    let (residual, gate, tokens) = match epilogue {
        Epilogue::GatedAdd { residual, gate } => (Some(on_device(residual)), Some(on_device(gate)), m / gate.dims()[0]),
        _ => (None, None, 0),
    };
    // Inputs the kernel does not read: any 4 bytes fill their bindings.
    let unread = || client.empty(size_of::<f32>());
    let handle = |t: &Option<CubeTensor>| t.as_ref().map_or_else(unread, |t| t.handle.clone());
    let layout = weight.layout.expect("packed weights have a layout");
    let dims = params(&packed_params([m, n, k], &layout, bias.is_some(), epilogue.code(), tokens));
    let buffers = vec![
        x.handle.clone().binding(),
        words.handle.clone().binding(),
        handle(&bias).binding(),
        out.clone().binding(),
        handle(&residual).binding(),
        handle(&gate).binding(),
    ];
    let groups = CubeCount::Static(n.div_ceil(tile_n) as u32, m.div_ceil(tile_m) as u32, 1);
    // The blocks and the bias are weights; without a gated add, its two bindings are unread.
    let not_activations: &[usize] = match epilogue {
        Epilogue::GatedAdd { .. } => &[1, 2],
        _ => &[1, 2, 4, 5],
    };
    super::dispatch(&client, kernel, groups, buffers, dims, not_activations);
    tensor_from_handle(&x, out, [m, n])
}

/// The parameters of a packed matmul's launch (`dims` in `shaders/matmul_bindings.wgsl`): `[m, n, k]`, whether a
/// bias is bound, where the `layout`'s high bits, scales and super-block scales start, the epilogue's code and
/// the tokens per gate row.
pub fn packed_params([m, n, k]: [usize; 3], layout: &Layout, has_bias: bool, epilogue: u32, tokens: usize) -> [u32; 9] {
    let values =
        [m, n, k, has_bias as usize, layout.high_at, layout.scales_at, layout.supers_at, epilogue as usize, tokens];
    values.map(|v| v as u32)
}

/// A linear layer `y = x · Wᵀ + b` over a [`PackedWeight`] (field names as in the checkpoints).
#[derive(Module, Debug)]
pub struct PackedLinear {
    /// The weight `[out, in]`.
    pub weight: PackedWeight,
    /// The bias `[out]`, in f32.
    pub bias: Option<Tensor<1>>,
}

impl PackedLinear {
    /// A layer from its weight and optional bias, checking that the bias has one value per output.
    pub fn new(weight: PackedWeight, bias: Option<Tensor<1>>) -> Result<Self> {
        if let Some(b) = &bias
            && b.dims()[0] != weight.n
        {
            return Err(Error::Invalid(format!(
                "a bias of {} values for a {} weight with {} outputs",
                b.dims()[0],
                weight.ty,
                weight.n
            )));
        }
        Ok(Self { weight, bias })
    }

    /// `[..., in] → [..., out]` in f32; a packed weight computes at the device's [`Precision`] ([`matmul`]).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_with(x, Epilogue::Plain)
    }

    /// [`PackedLinear::forward`] followed by `epilogue` ([`matmul_with`]), whose tensors are `[b·n, out]` and
    /// `[g, out]` for `x` `[..., in]` of b·n rows.
    pub fn forward_with<const D: usize>(&self, x: Tensor<D>, epilogue: Epilogue) -> Tensor<D> {
        let dims = x.dims();
        let k = dims[D - 1];
        let rows = dims[..D - 1].iter().product();
        let y = matmul_with(x.reshape([rows, k]), &self.weight, self.bias.as_ref(), epilogue); // [b·n, out]
        let mut out = dims;
        out[D - 1] = self.weight.n;
        y.reshape(out)
    }

    /// Bytes the weight and bias occupy on their device.
    pub fn device_bytes(&self) -> usize {
        self.weight.device_bytes() + self.bias.as_ref().map_or(0, |b| b.dims()[0] * size_of::<f32>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tolerance;
    use half::f16;

    fn q8_0_rows(n: usize, blocks: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for r in 0..n * blocks {
            bytes.extend(f16::from_f32(0.25 * (r % 3 + 1) as f32).to_le_bytes());
            bytes.extend((0..32i32).map(|j| ((j * 7 + r as i32 * 3) % 255 - 127) as i8 as u8));
        }
        bytes
    }

    #[test]
    fn gpus_take_the_square_kernel_below_256_rows_and_cpu_adapters_the_wide_one() {
        use PlainKernel::{Matvec, Square, Wide};
        for (m, n, gpu, cpu) in [
            (1, 3072, Matvec, Matvec),
            (8, 3072, Matvec, Matvec),
            (9, 3072, Square, Wide),
            (255, 3072, Square, Wide),
            (256, 3072, Wide, Wide),
            (4096, 64, Square, Wide),
        ] {
            assert_eq!(PlainKernel::for_shape(m, n, false), gpu, "{m}×{n} on a GPU");
            assert_eq!(PlainKernel::for_shape(m, n, true), cpu, "{m}×{n} on a CPU adapter");
        }
    }

    #[test]
    fn weights_and_shapes_are_checked() {
        let cpu = crate::device::cpu();
        let bytes = q8_0_rows(3, 2);
        let err = PackedWeight::new(GgmlType::Q8_0, &[3, 64, 1], &bytes, &cpu).unwrap_err().to_string();
        assert!(err.contains("2-D"), "{err}");
        let err = PackedWeight::new(GgmlType::Q8_0, &[3, 48], &bytes, &cpu).unwrap_err().to_string();
        assert!(err.contains("not whole blocks of 32"), "{err}");
        let err = PackedWeight::new(GgmlType::Q8_0, &[3, 64], &bytes[1..], &cpu).unwrap_err().to_string();
        assert!(err.contains("needs 204 bytes, got 203"), "{err}");
        let err = PackedWeight::new(GgmlType::Q2_K, &[1, 256], &[0; 84], &cpu).unwrap_err().to_string();
        assert!(err.contains("Q2_K"), "{err}");
        let w = PackedWeight::new(GgmlType::Q8_0, &[3, 64], &bytes, &cpu).unwrap();
        let err = PackedLinear::new(w, Some(Tensor::zeros([4], &cpu))).unwrap_err().to_string();
        assert!(err.contains("bias of 4 values"), "{err}");
    }

    #[test]
    fn cpu_weights_are_dense_and_forward_keeps_leading_dims() {
        let cpu = crate::device::cpu();
        let bytes = q8_0_rows(3, 2);
        let w = PackedWeight::new(GgmlType::Q8_0, &[3, 64], &bytes, &cpu).unwrap();
        assert!(!w.is_packed());
        assert_eq!(w.device_bytes(), 3 * 64 * 4);
        let dense = dequantize(GgmlType::Q8_0, &bytes, 3 * 64).unwrap();
        let bias = Tensor::<1>::from_floats([1.0, -2.0, 0.5], &cpu);
        let layer = PackedLinear::new(w, Some(bias)).unwrap();
        let x: Vec<f32> = (0..2 * 2 * 64).map(|i| ((i * 13) % 17) as f32 / 8.0 - 1.0).collect();
        let y = layer.forward(Tensor::<3>::from_data(TensorData::new(x.clone(), [2, 2, 64]), &cpu));
        assert_eq!(y.dims(), [2, 2, 3]);
        let mut expected = Vec::new();
        for row in x.chunks(64) {
            for (o, b) in [1.0f32, -2.0, 0.5].iter().enumerate() {
                expected.push(row.iter().zip(&dense[o * 64..(o + 1) * 64]).map(|(a, w)| a * w).sum::<f32>() + b);
            }
        }
        y.into_data().assert_approx_eq::<f32>(&TensorData::new(expected, [2, 2, 3]), Tolerance::absolute(1e-4));
    }
}
