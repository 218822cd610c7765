//! Scaled dot-product attention `softmax(q·kᵀ / √d)·v` over `[b, heads, L, d]`: a tiled online-softmax WGSL
//! kernel (`shaders/flash_attention.wgsl`, memory O(L·d), never an L×L buffer) on wgpu, and its reference twin
//! in plain tensor ops ([`reference`], the materialised scores) everywhere else.

use burn::cubecl::prelude::CubeCount;
use burn::cubecl::server::KernelArguments;
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;

use super::{WgslKernel, cube_tensor, grid, params, tensor_from_handle};
use crate::{Error, Result};

const FLASH: WgslKernel =
    WgslKernel { name: "flash_attention", source: include_str!("../../shaders/flash_attention.wgsl") };

/// Query rows per workgroup (`ROWS` in the shader).
const ROWS: usize = 64;
/// Largest head width the kernel takes (`HEAD_DIM_MAX` in the shader); wider heads use [`reference`].
pub const HEAD_DIM_MAX: usize = 256;
/// vec4s per key or value tile (`TILE_VECS` in the shader).
const TILE_VECS: usize = 480;
/// Most keys per tile (`KEYS_MAX` in the shader).
const KEYS_MAX: usize = 64;
/// Loop iterations one invocation may run on Mesa's llvmpipe (lavapipe) before the driver silently ends every
/// loop of the shader (`LP_MAX_TGSI_LOOP_ITERATIONS` = 65535, shared by all loops); we plan for three quarters.
const LLVMPIPE_LOOP_BUDGET: usize = 49_152;

/// Attention as the models use it: [`flash_attention`] where it applies (wgpu, f32, head width at most
/// [`HEAD_DIM_MAX`]), [`reference`] otherwise.
///
/// `q` `[b, h, lq, d]`, `k` `[b, h, lk, d]`, `v` `[b, h, lk, d]` → `[b, h, lq, d]`; no mask.
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    flash_attention(q.clone(), k.clone(), v.clone()).unwrap_or_else(|_| reference(q, k, v))
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
/// agree (`q` `[b, h, lq, d]`, `k` and `v` `[b, h, lk, d]`), when a dimension is zero, or when `d` exceeds
/// [`HEAD_DIM_MAX`].
pub fn flash_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Result<Tensor<4>> {
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
    let (q, k, v) = (cube_tensor(q), cube_tensor(k), cube_tensor(v));
    let (Ok(q), Ok(k), Ok(v)) = (q, k, v) else { return Err(not_wgpu()) };

    let client = &q.client;
    let out = client.empty(b * h * lq * d * size_of::<f32>());
    let stats = client.empty(b * h * lq * 2 * size_of::<f32>());
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    let (x, y) = grid(b * h * lq.div_ceil(ROWS));
    let keys_per_dispatch = match client.properties().identity.name.contains("llvmpipe") {
        true => llvmpipe_keys_per_dispatch(d),
        false => lk,
    };
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
        client.launch(Box::new(FLASH), CubeCount::Static(x, y, 1), KernelArguments::new().with_buffers(buffers));
    }
    Ok(tensor_from_handle(&q, out, [b, h, lq, d]))
}

/// Keys in one tile of the shader for heads of width `d`.
fn keys_per_tile(d: usize) -> usize {
    KEYS_MAX.min(TILE_VECS / d.div_ceil(4))
}

/// Keys per dispatch that keep one invocation within [`LLVMPIPE_LOOP_BUDGET`] loop iterations, counting one
/// more iteration than runs for every loop (its exit test), for heads of width `d` (`d4` vec4s).
fn llvmpipe_keys_per_dispatch(d: usize) -> usize {
    let (d4, keys) = (d.div_ceil(4), keys_per_tile(d));
    // Tile load, then per key: score (d4 + 1), max and exp (2), and per tile: the loops' exits and the
    // accumulator update (d4 · (keys + 1)).
    let per_tile = (keys * d4).div_ceil(ROWS) + keys * (2 * d4 + 4) + 2 * d4 + 8;
    // Query, state and output loops.
    let per_dispatch = 3 * (d4 + 1) + 4;
    (LLVMPIPE_LOOP_BUDGET - per_dispatch) / per_tile * keys
}

/// Times [`attention`] (the flash kernel on wgpu) and, where its `[heads, L, L]` scores stay under 1 GiB,
/// [`reference`] on `device`, for self-attention over each length in `lengths` with `heads` heads of width `d`
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
) -> Vec<AttentionTiming> {
    use burn::tensor::TensorData;

    const REFERENCE_SCORE_BYTES_MAX: usize = 1 << 30;
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
            let fits = heads * l * l * size_of::<f32>() <= REFERENCE_SCORE_BYTES_MAX;
            let reference = fits.then(|| time(&reference, &qkv));
            AttentionTiming {
                l,
                flash_s,
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
    /// Device memory its first call added to the allocator's pools, when the backend reports pools.
    pub flash_peak_bytes: Option<u64>,
    /// Seconds per call of [`reference`], when its scores fit 1 GiB.
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
    fn llvmpipe_dispatches_take_whole_tiles_within_the_loop_budget() {
        assert_eq!([16, 32, 128, 256].map(keys_per_tile), [64, 60, 15, 7]);
        for d in [1, 16, 30, 32, 100, 128, 256] {
            let (keys, per_tile, d4) = (llvmpipe_keys_per_dispatch(d), keys_per_tile(d), d.div_ceil(4));
            assert!(keys >= per_tile && keys.is_multiple_of(per_tile), "d {d}: {keys} keys");
            // Every loop of the shader, with one extra iteration each for its exit test.
            let tiles = keys / per_tile;
            let tile_loops =
                (per_tile * d4).div_ceil(ROWS) + 1 + per_tile * (d4 + 2) + 1 + per_tile + 1 + d4 * (per_tile + 2) + 1;
            assert!(3 * (d4 + 1) + tiles * (tile_loops + 1) < LLVMPIPE_LOOP_BUDGET, "d {d}: {keys} keys");
        }
    }
}
