//! Scaled dot-product attention `softmax(q·kᵀ / √d)·v` over `[b, heads, L, d]`: online-softmax WGSL kernels
//! (memory O(L·d), never an L×L buffer) on wgpu, and their reference twin in plain tensor ops ([`reference`],
//! the materialised scores) everywhere else.
//!
//! Three ways on wgpu, chosen by [`AttentionKernel::current`]: `scores` (the reference in blocks whose scores
//! stay within [`SCORE_BLOCK_BYTES`], through burn's matmul and softmax), and two flash kernels, `rows`
//! (`shaders/flash_attention_rows.wgsl`, one query row per invocation) and `tiles`
//! (`shaders/flash_attention_tiles.wgsl`, compile-time head width, score and output micro-tiles per
//! invocation). The default, `auto`, runs `scores` where a block holds whole heads and `rows` otherwise: so it
//! measured fastest on an H200 and on lavapipe. `kontext bench` times them side by side; the README has the
//! figures.

use burn::cubecl::prelude::CubeCount;
use burn::cubecl::server::KernelArguments;
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;

use super::{WgslKernel, cube_tensor, grid, params, tensor_from_handle};
use crate::{Error, Result};

const FLASH_TEMPLATE: &str = include_str!("../../shaders/flash_attention_tiles.wgsl");
const FLASH_ROWS: WgslKernel =
    WgslKernel::fixed("flash_attention_rows", include_str!("../../shaders/flash_attention_rows.wgsl"));

/// Environment variable that picks the attention natively: `auto` (the default), `scores`, `rows` or `tiles`.
pub const KERNEL_ENV: &str = "KONTEXT_ATTENTION";

/// Largest score block `[heads, rows, lk]` of the `scores` path, in bytes: WebGPU's default storage binding.
pub const SCORE_BLOCK_BYTES: usize = 128 << 20;

/// How attention runs on wgpu.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKernel {
    /// `Scores` where one block of [`SCORE_BLOCK_BYTES`] holds at least one head's whole score matrix, `Rows`
    /// otherwise (where blocks of query rows would re-read a head's keys and values once per block).
    Auto,
    /// The reference in blocks of at most [`SCORE_BLOCK_BYTES`] of scores ([`blocked_reference`]).
    Scores,
    /// The flash kernel with one query row per invocation (`shaders/flash_attention_rows.wgsl`).
    Rows,
    /// The flash kernel with micro-tiles per invocation and a compile-time head width
    /// (`shaders/flash_attention_tiles.wgsl`).
    Tiles,
}

impl AttentionKernel {
    /// [`KERNEL_ENV`] where set (natively), else [`AttentionKernel::Auto`].
    ///
    /// Panics on a value that names no kernel, so that a typo never measures the wrong one.
    pub fn current() -> Self {
        #[cfg(not(target_arch = "wasm32"))]
        if let Ok(name) = std::env::var(KERNEL_ENV) {
            return match name.trim() {
                "auto" => Self::Auto,
                "scores" => Self::Scores,
                "rows" => Self::Rows,
                "tiles" => Self::Tiles,
                other => panic!("{KERNEL_ENV}={other}: the attention kernels are auto, scores, rows and tiles"),
            };
        }
        Self::Auto
    }

    /// The kernel that runs for `lq` queries and `lk` keys: [`AttentionKernel::Auto`] resolved as it says,
    /// with blocks of `score_block_bytes`; every other kernel is itself.
    pub fn resolve(self, lq: usize, lk: usize, score_block_bytes: usize) -> Self {
        match self {
            Self::Auto if lq.saturating_mul(lk).saturating_mul(size_of::<f32>()) <= score_block_bytes => Self::Scores,
            Self::Auto => Self::Rows,
            kernel => kernel,
        }
    }
}

/// Query rows per workgroup of the `rows` kernel (`ROWS` in its shader).
const ROWS_PER_GROUP: usize = 64;
/// vec4s per key or value tile of the `rows` kernel (`TILE_VECS` in its shader).
const ROWS_TILE_VECS: usize = 480;
/// Most keys per tile of the `rows` kernel (`KEYS_MAX` in its shader).
const ROWS_KEYS_MAX: usize = 64;

/// Invocations per workgroup (`THREADS` in the shader), an 8 × 8 grid of row and column groups (`GROUPS`).
const THREADS: usize = 64;
const GROUPS: usize = 8;
/// Widest head the kernels take; wider heads (the VAE's single 512-wide head) use [`reference`].
pub const HEAD_DIM_MAX: usize = 256;
/// `(query rows, keys)` per tile, the first whose tiles fit the workgroup memory the device granted.
const TILE_CHOICES: [(usize, usize); 3] = [(32, 16), (16, 16), (16, 8)];
/// Loop iterations one invocation may run on Mesa's llvmpipe (lavapipe) before the driver silently ends every
/// loop of the shader (`LP_MAX_TGSI_LOOP_ITERATIONS` = 65535, shared by all loops); we plan for three quarters.
const LLVMPIPE_LOOP_BUDGET: usize = 49_152;

/// The compile-time shape of one flash kernel: the constants the host prepends to the shader template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashTiles {
    /// Head width `d` (`HEAD_DIM`).
    pub head_dim: usize,
    /// vec4s per tile row: ⌈d/4⌉ rounded up to a multiple of 8 (`HEAD_VECS`).
    pub head_vecs: usize,
    /// Query rows per workgroup (`ROWS`).
    pub rows: usize,
    /// Keys per tile (`KEYS`).
    pub keys: usize,
}

impl FlashTiles {
    /// The largest tiles for heads of width `d` that fit `shared_bytes` of workgroup memory, or `None` when
    /// `d` is 0 or wider than [`HEAD_DIM_MAX`] or no tiles fit.
    pub fn choose(d: usize, shared_bytes: usize) -> Option<Self> {
        if d == 0 || d > HEAD_DIM_MAX {
            return None;
        }
        let head_vecs = d.div_ceil(4).next_multiple_of(GROUPS);
        TILE_CHOICES
            .iter()
            .map(|&(rows, keys)| Self { head_dim: d, head_vecs, rows, keys })
            .find(|tiles| tiles.shared_bytes() <= shared_bytes)
    }

    /// Workgroup memory the shader declares: the query and key/value tiles (rows padded by one vec4), the
    /// scores (rows padded by one float), three statistics per row and the shape it shares.
    pub fn shared_bytes(&self) -> usize {
        16 * (self.rows + self.keys) * (self.head_vecs + 1) + 4 * self.rows * (self.keys + 1 + 3) + 16 + 8
    }

    /// The shader with these constants.
    fn kernel(&self) -> WgslKernel {
        let Self { head_dim, head_vecs, rows, keys } = *self;
        WgslKernel {
            name: format!("flash_attention_d{head_dim}_r{rows}_k{keys}").into(),
            source: format!(
                "const HEAD_DIM: u32 = {head_dim}u;\nconst HEAD_VECS: u32 = {head_vecs}u;\n\
                 const ROWS: u32 = {rows}u;\nconst KEYS: u32 = {keys}u;\n{FLASH_TEMPLATE}"
            )
            .into(),
        }
    }

    /// Keys per dispatch that keep one invocation within [`LLVMPIPE_LOOP_BUDGET`] loop iterations, counting
    /// every loop of the shader as if none were unrolled, with one more iteration for its exit test.
    fn llvmpipe_keys_per_dispatch(&self) -> usize {
        let (hv, rows, keys) = (self.head_vecs, self.rows / GROUPS, self.keys / GROUPS);
        let vecs = self.head_vecs / GROUPS;
        let tile_load = (self.keys * hv).div_ceil(THREADS) + 1;
        let scores = (hv + 1) + hv * ((keys + 1) + (rows + 1) + rows * (keys + 1));
        let masked = (rows + 1) + rows * (keys + 1);
        let softmax = 2 * (self.keys + 1) + (rows + 1) + rows * (vecs + 1);
        let values = (self.keys + 1) + self.keys * ((vecs + 1) + (rows + 1) + rows * (vecs + 1));
        let per_tile = 2 * tile_load + scores + masked + softmax + values + 1;
        // Query tile, state and output loops.
        let per_dispatch = (self.rows * hv).div_ceil(THREADS) + 1 + 2 * ((rows + 1) + rows * (vecs + 1));
        (LLVMPIPE_LOOP_BUDGET - per_dispatch) / per_tile * self.keys
    }
}

/// Attention as the models use it: through [`AttentionKernel::current`] where a flash kernel applies (wgpu,
/// f32, head width at most [`HEAD_DIM_MAX`], tiles that fit the workgroup memory), [`reference`] otherwise.
///
/// `q` `[b, h, lq, d]`, `k` `[b, h, lk, d]`, `v` `[b, h, lk, d]` → `[b, h, lq, d]`; no mask.
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    attention_with(AttentionKernel::current(), q, k, v)
}

/// [`attention`] through `kernel`.
pub fn attention_with(kernel: AttentionKernel, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    gpu_attention(kernel, q.clone(), k.clone(), v.clone()).unwrap_or_else(|_| reference(q, k, v))
}

/// Device memory the `auto` attention adds for `heads` heads of `lq` queries and `lk` keys where it takes the
/// `scores` path, with blocks of [`SCORE_BLOCK_BYTES`] within `max_binding_bytes`: one block of scores and its
/// softmax; 0 where it runs the flash kernel.
pub fn auto_score_bytes(heads: usize, lq: usize, lk: usize, max_binding_bytes: u64) -> u64 {
    let block = SCORE_BLOCK_BYTES.min(usize::try_from(max_binding_bytes).unwrap_or(usize::MAX));
    let head_scores = lq.saturating_mul(lk).saturating_mul(size_of::<f32>());
    match AttentionKernel::Auto.resolve(lq, lk, block) {
        AttentionKernel::Scores => 2 * (block / head_scores.max(1)).clamp(1, heads.max(1)) as u64 * head_scores as u64,
        _ => 0,
    }
}

/// The reference computed for blocks of query rows (of one or more heads) whose scores fit `max_score_bytes`,
/// so that its memory stays bounded at any length: the same values as [`reference`] (each row's softmax sees
/// all of its keys).
pub fn blocked_reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, max_score_bytes: usize) -> Tensor<4> {
    let [b, h, lq, d] = q.dims();
    let lk = k.dims()[2];
    let heads = b * h;
    let rows_fit = (max_score_bytes / (lk * size_of::<f32>())).max(1);
    let (heads_per_block, rows_per_block) = match rows_fit >= lq {
        true => ((rows_fit / lq).min(heads), lq),
        false => (1, rows_fit),
    };
    if heads_per_block == heads && rows_per_block == lq {
        return reference(q, k, v);
    }
    let (q, k, v) = (q.reshape([1, heads, lq, d]), k.reshape([1, heads, lk, d]), v.reshape([1, heads, lk, d]));
    let head_blocks = (0..heads).step_by(heads_per_block).map(|first| {
        let n = heads_per_block.min(heads - first);
        let (q, k, v) = (q.clone().narrow(1, first, n), k.clone().narrow(1, first, n), v.clone().narrow(1, first, n));
        let row_blocks = (0..lq).step_by(rows_per_block).map(|row| {
            reference(q.clone().narrow(2, row, rows_per_block.min(lq - row)), k.clone(), v.clone()) // [1, n, rows, d]
        });
        Tensor::cat(row_blocks.collect(), 2)
    });
    Tensor::cat(head_blocks.collect(), 1).reshape([b, h, lq, d])
}

/// The materialised `softmax(q·kᵀ / √d)·v`: the kernel's reference twin, with a `[b, h, lq, lk]` score buffer.
pub fn reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let d = q.dims()[3];
    let scores = q.matmul(k.transpose()) * (1.0 / (d as f64).sqrt()); // [b, h, lq, lk]
    softmax(scores, 3).matmul(v)
}

/// The flash kernel: one pass, keys and values streamed through workgroup memory in tiles.
///
/// Errors, without touching the GPU, when the tensors are not burn wgpu f32 tensors, when the shapes do not
/// agree (`q` `[b, h, lq, d]`, `k` and `v` `[b, h, lk, d]`), when a dimension is zero, when `d` exceeds
/// [`HEAD_DIM_MAX`], or when no tiles fit the device's workgroup memory.
pub fn flash_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Result<Tensor<4>> {
    gpu_attention(AttentionKernel::Rows, q, k, v)
}

/// Attention on wgpu through `kernel`, with [`flash_attention`]'s checks: the flash kernels, or for
/// [`AttentionKernel::Scores`] [`blocked_reference`] within [`SCORE_BLOCK_BYTES`] and the binding limit, or
/// for [`AttentionKernel::Auto`] the one of those two it names for these shapes.
pub fn gpu_attention(kernel: AttentionKernel, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Result<Tensor<4>> {
    let [b, h, lq, d] = q.dims();
    let lk = k.dims()[2];
    if k.dims() != [b, h, lk, d] || v.dims() != [b, h, lk, d] {
        return Err(Error::Invalid(format!(
            "attention: query {:?}, key {:?} and value {:?} do not agree (expected [b, h, L, d] with one b, h, d)",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    let indexable = b * h * lq.max(lk) * d <= u32::MAX as usize;
    if [b, h, lq, lk, d].contains(&0) || d > HEAD_DIM_MAX || !indexable {
        return Err(Error::Invalid(format!(
            "flash attention takes non-empty shapes under 2³² values with head width at most {HEAD_DIM_MAX}, not query {:?} and key {:?}",
            q.dims(),
            k.dims()
        )));
    }
    let not_wgpu = || Error::Invalid("flash attention runs on burn's wgpu backend with f32 tensors only".into());
    let device = q.device();
    let score_block_bytes = SCORE_BLOCK_BYTES.min(crate::device::max_binding_bytes(&device) as usize);
    let kernel = kernel.resolve(lq, lk, score_block_bytes);
    if kernel == AttentionKernel::Scores {
        if !super::packs_on(&device) {
            return Err(not_wgpu());
        }
        return Ok(blocked_reference(q, k, v, score_block_bytes));
    }
    let (q, k, v) = (cube_tensor(q), cube_tensor(k), cube_tensor(v));
    let (Ok(q), Ok(k), Ok(v)) = (q, k, v) else { return Err(not_wgpu()) };

    let client = &q.client;
    let out = client.empty(b * h * lq * d * size_of::<f32>());
    let stats = client.empty(b * h * lq * 2 * size_of::<f32>());
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    let llvmpipe = client.properties().identity.name.contains("llvmpipe");
    let (shader, rows_per_group, keys_per_dispatch) = match kernel {
        AttentionKernel::Auto | AttentionKernel::Scores => unreachable!("resolved and returned above"),
        AttentionKernel::Rows => (FLASH_ROWS, ROWS_PER_GROUP, rows_llvmpipe_keys_per_dispatch(d)),
        AttentionKernel::Tiles => {
            let shared = client.properties().hardware.max_shared_memory_size;
            let tiles = FlashTiles::choose(d, shared).ok_or_else(|| {
                Error::Invalid(format!(
                    "flash attention: heads of width {d} need more than the {shared} bytes of workgroup memory granted"
                ))
            })?;
            (tiles.kernel(), tiles.rows, tiles.llvmpipe_keys_per_dispatch())
        }
    };
    let keys_per_dispatch = if llvmpipe { keys_per_dispatch } else { lk };
    let (x, y) = grid(b * h * lq.div_ceil(rows_per_group));
    for begin in (0..lk).step_by(keys_per_dispatch) {
        let end = (begin + keys_per_dispatch).min(lk);
        let shape = [(b * h) as u32, lq as u32, lk as u32, d as u32, scale.to_bits(), begin as u32, end as u32];
        let buffers = vec![
            q.handle.clone().binding(),
            k.handle.clone().binding(),
            v.handle.clone().binding(),
            out.clone().binding(),
            stats.clone().binding(),
            params(client, &shape).binding(),
        ];
        client.launch(
            Box::new(shader.clone()),
            CubeCount::Static(x, y, 1),
            KernelArguments::new().with_buffers(buffers),
        );
    }
    Ok(tensor_from_handle(&q, out, [b, h, lq, d]))
}

/// Keys in one tile of the `rows` kernel for heads of width `d`.
fn rows_keys_per_tile(d: usize) -> usize {
    ROWS_KEYS_MAX.min(ROWS_TILE_VECS / d.div_ceil(4))
}

/// Keys per dispatch of the `rows` kernel that keep one invocation within [`LLVMPIPE_LOOP_BUDGET`] loop
/// iterations, counting one more iteration than runs for every loop (its exit test), for heads of width `d`.
fn rows_llvmpipe_keys_per_dispatch(d: usize) -> usize {
    let (d4, keys) = (d.div_ceil(4), rows_keys_per_tile(d));
    // Tile load, then per key: score (d4 + 1), max and exp (2), and per tile: the loops' exits and the
    // accumulator update (d4 · (keys + 1)).
    let per_tile = (keys * d4).div_ceil(ROWS_PER_GROUP) + keys * (2 * d4 + 4) + 2 * d4 + 8;
    // Query, state and output loops.
    let per_dispatch = 3 * (d4 + 1) + 4;
    (LLVMPIPE_LOOP_BUDGET - per_dispatch) / per_tile * keys
}

/// Times [`attention`] (the flash kernel on wgpu) and, where its `[heads, L, L]` scores stay within
/// `reference_score_bytes_max`, [`reference`] on `device`, for self-attention over each length in `lengths` with `heads` heads of width `d`
/// (batch 1). Each timing is [`BENCH_REPEATS`] chained calls (the output becomes the next query, so no call
/// can be skipped as a repeat) and one readback, after one untimed warm-up call that compiles the kernels.
///
/// Returns `(L, seconds per kernel call, seconds per reference call)`. Native only: it reads back
/// synchronously.
#[cfg(not(target_arch = "wasm32"))]
pub fn bench_attention(
    device: &burn::tensor::Device,
    lengths: &[usize],
    d: usize,
    heads: usize,
    reference_score_bytes_max: u64,
) -> Vec<AttentionTiming> {
    use burn::tensor::TensorData;

    // `into_data` may hand back lazy storage: only reading the values waits for the device.
    let read_back = |x: Tensor<4>| x.into_data().try_to_vec::<f32>().map(|values| values.len()).unwrap_or(0);
    let reserved = || device.memory_pool_usage().map(|usage| usage.bytes_reserved);
    // Seconds per call, and the device memory the warm-up call added to the allocator's pools (its peak).
    let time = |run: &dyn Fn(Tensor<4>, Tensor<4>, Tensor<4>) -> Tensor<4>, qkv: &[Tensor<4>; 3]| {
        let [q, k, v] = qkv.clone();
        device.memory_cleanup();
        let before = reserved();
        read_back(run(q.clone(), k.clone(), v.clone()));
        let peak = before.zip(reserved()).map(|(before, after)| after.saturating_sub(before));
        let start = std::time::Instant::now();
        let mut x = q;
        for _ in 0..BENCH_REPEATS {
            x = run(x, k.clone(), v.clone());
        }
        read_back(x);
        (start.elapsed().as_secs_f64() / BENCH_REPEATS as f64, peak)
    };
    lengths
        .iter()
        .map(|&l| {
            let shape = [1, heads, l, d];
            let qkv = [1, 2, 3].map(|salt| {
                let values = crate::device::selfcheck::test_matrix(heads * l, d, salt);
                Tensor::<4>::from_data(TensorData::new(values, shape), device)
            });
            let (flash_s, flash_peak_bytes) = time(&attention, &qkv);
            let flash_applies = crate::kernels::packs_on(device) && d <= HEAD_DIM_MAX;
            let [rows, tiles] = [AttentionKernel::Rows, AttentionKernel::Tiles]
                .map(|kernel| flash_applies.then(|| time(&|q, k, v| attention_with(kernel, q, k, v), &qkv)));
            let fits = (heads * l * l * size_of::<f32>()) as u64 <= reference_score_bytes_max;
            let reference = fits.then(|| time(&reference, &qkv));
            AttentionTiming {
                l,
                flash_s,
                rows_s: rows.map(|r| r.0),
                rows_peak_bytes: rows.and_then(|r| r.1),
                tiles_s: tiles.map(|t| t.0),
                flash_peak_bytes,
                reference_s: reference.map(|r| r.0),
                reference_peak_bytes: reference.and_then(|r| r.1),
            }
        })
        .collect()
}

/// One sequence length of [`bench_attention`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionTiming {
    /// Sequence length.
    pub l: usize,
    /// Seconds per call of [`attention`].
    pub flash_s: f64,
    /// Seconds per call of the `rows` flash kernel, where a flash kernel applies.
    pub rows_s: Option<f64>,
    /// Device memory its first call added to the allocator's pools.
    pub rows_peak_bytes: Option<u64>,
    /// Seconds per call of the `tiles` flash kernel, where a flash kernel applies.
    pub tiles_s: Option<f64>,
    /// Device memory its first call added to the allocator's pools, when the backend reports pools.
    pub flash_peak_bytes: Option<u64>,
    /// Seconds per call of [`reference`], when its scores fit the limit.
    pub reference_s: Option<f64>,
    /// Device memory the reference's first call added.
    pub reference_peak_bytes: Option<u64>,
}

/// Calls per timing in [`bench_attention`].
pub const BENCH_REPEATS: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu;
    use burn::tensor::{TensorData, Tolerance};

    #[test]
    fn reference_is_softmax_of_scaled_scores_times_values() {
        let device = cpu();
        // d = 4, scale 1/2; one query, two keys with scores 2·1/2 = 1 and 0.
        let q = Tensor::<4>::from_data(TensorData::new(vec![1f32, 1.0, 0.0, 0.0], [1, 1, 1, 4]), &device);
        let k =
            Tensor::from_data(TensorData::new(vec![1f32, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0], [1, 1, 2, 4]), &device);
        let v =
            Tensor::from_data(TensorData::new(vec![1f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0], [1, 1, 2, 4]), &device);
        let w = std::f32::consts::E / (std::f32::consts::E + 1.0);
        let expected = TensorData::new(vec![w, 0.0, 0.0, 2.0 * (1.0 - w)], [1, 1, 1, 4]);
        reference(q, k, v).into_data().assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-6));
    }

    #[test]
    fn the_kernel_refuses_cpu_tensors_and_bad_shapes_and_attention_falls_back() {
        let device = cpu();
        let t = |shape: [usize; 4]| {
            let n = shape.iter().product();
            Tensor::<4>::from_data(TensorData::new(crate::device::selfcheck::test_matrix(1, n, 3), shape), &device)
        };
        let err = flash_attention(t([1, 2, 5, 8]), t([1, 2, 7, 8]), t([1, 2, 7, 8])).unwrap_err().to_string();
        assert_eq!(err, "flash attention runs on burn's wgpu backend with f32 tensors only");
        let err = flash_attention(t([1, 2, 5, 8]), t([1, 2, 7, 8]), t([1, 2, 6, 8])).unwrap_err().to_string();
        assert!(err.starts_with("attention: query [1, 2, 5, 8], key [1, 2, 7, 8] and value [1, 2, 6, 8]"), "{err}");
        let err = flash_attention(t([1, 1, 2, 300]), t([1, 1, 2, 300]), t([1, 1, 2, 300])).unwrap_err().to_string();
        assert!(err.contains("head width at most 256"), "{err}");
        let ours = attention(t([1, 2, 5, 8]), t([1, 2, 7, 8]), t([1, 2, 7, 8]));
        ours.into_data().assert_approx_eq::<f32>(
            &reference(t([1, 2, 5, 8]), t([1, 2, 7, 8]), t([1, 2, 7, 8])).into_data(),
            Tolerance::absolute(0.0),
        );
    }

    #[test]
    fn auto_takes_the_scores_where_a_block_holds_a_whole_head() {
        let block = SCORE_BLOCK_BYTES;
        // 24 heads of the 512² edit (2,560 tokens) and of the 1024² edit (8,704 tokens) with 128 MiB blocks.
        assert_eq!(AttentionKernel::Auto.resolve(2560, 2560, block), AttentionKernel::Scores);
        assert_eq!(AttentionKernel::Auto.resolve(4096, 4096, block), AttentionKernel::Scores);
        assert_eq!(AttentionKernel::Auto.resolve(8704, 8704, block), AttentionKernel::Rows);
        assert_eq!(AttentionKernel::Auto.resolve(usize::MAX, 2, block), AttentionKernel::Rows);
        assert_eq!(AttentionKernel::Tiles.resolve(1, 1, block), AttentionKernel::Tiles);
        assert_eq!(AttentionKernel::Scores.resolve(8704, 8704, block), AttentionKernel::Scores);
        // 2,560² scores are 25 MiB a head: five heads fit a 128 MiB block, twice for the softmax.
        assert_eq!(auto_score_bytes(24, 2560, 2560, 2 << 30), 2 * 5 * 2560 * 2560 * 4);
        assert_eq!(auto_score_bytes(2, 2560, 2560, 2 << 30), 2 * 2 * 2560 * 2560 * 4);
        assert_eq!(auto_score_bytes(24, 8704, 8704, 2 << 30), 0);
        assert_eq!(auto_score_bytes(24, 2560, 2560, 16 << 20), 0);
    }

    #[test]
    fn tiles_fit_the_granted_workgroup_memory_and_pad_heads_to_whole_column_groups() {
        let big = FlashTiles::choose(128, 32 * 1024).unwrap();
        assert_eq!(big, FlashTiles { head_dim: 128, head_vecs: 32, rows: 32, keys: 16 });
        assert_eq!(big.shared_bytes(), 16 * 48 * 33 + 4 * 32 * 20 + 24);
        assert_eq!(FlashTiles::choose(128, 16 * 1024).unwrap().rows, 16);
        assert_eq!(FlashTiles::choose(7, 16 * 1024).unwrap().head_vecs, 8);
        assert_eq!(FlashTiles::choose(250, 32 * 1024).unwrap().head_vecs, 64);
        assert_eq!(FlashTiles::choose(256, 16 * 1024), None);
        assert_eq!(FlashTiles::choose(257, 1 << 20), None);
        assert_eq!(FlashTiles::choose(0, 1 << 20), None);
        for d in [1, 16, 64, 128, 200, 256] {
            let tiles = FlashTiles::choose(d, 64 * 1024).unwrap();
            assert!(tiles.shared_bytes() <= 64 * 1024 && tiles.head_vecs * 4 >= d, "{tiles:?}");
            assert!(
                tiles.rows.is_multiple_of(GROUPS)
                    && tiles.keys.is_multiple_of(GROUPS)
                    && tiles.head_vecs.is_multiple_of(GROUPS)
            );
        }
    }

    #[test]
    fn rows_kernel_llvmpipe_dispatches_take_whole_tiles_within_the_loop_budget() {
        assert_eq!([16, 32, 128, 256].map(rows_keys_per_tile), [64, 60, 15, 7]);
        for d in [1, 16, 30, 32, 100, 128, 256] {
            let (keys, per_tile, d4) = (rows_llvmpipe_keys_per_dispatch(d), rows_keys_per_tile(d), d.div_ceil(4));
            assert!(keys >= per_tile && keys.is_multiple_of(per_tile), "d {d}: {keys} keys");
            // Every loop of the shader, with one extra iteration each for its exit test.
            let tiles = keys / per_tile;
            let tile_loops = (per_tile * d4).div_ceil(ROWS_PER_GROUP)
                + 1
                + per_tile * (d4 + 2)
                + 1
                + per_tile
                + 1
                + d4 * (per_tile + 2)
                + 1;
            assert!(3 * (d4 + 1) + tiles * (tile_loops + 1) < LLVMPIPE_LOOP_BUDGET, "d {d}: {keys} keys");
        }
    }

    #[test]
    fn llvmpipe_dispatches_take_whole_tiles_within_the_loop_budget() {
        for d in [1, 16, 32, 100, 128, 256] {
            for shared in [16 * 1024, 32 * 1024, 64 * 1024] {
                let Some(tiles) = FlashTiles::choose(d, shared) else { continue };
                let keys = tiles.llvmpipe_keys_per_dispatch();
                assert!(keys >= tiles.keys && keys.is_multiple_of(tiles.keys), "{tiles:?}: {keys} keys");
            }
        }
        // 128-wide heads in the largest tiles: at least 30 tiles per dispatch.
        assert!(FlashTiles::choose(128, 32 * 1024).unwrap().llvmpipe_keys_per_dispatch() >= 30 * 16);
    }
}
