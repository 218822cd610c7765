//! The flash-attention kernel (`shaders/flash_attention.wgsl`): its compile-time shape, chosen for the adapter,
//! and the straight-line WGSL that shape unrolls to.
//!
//! Every per-invocation value (a query row's slice, its accumulator, a step's scores) is a named variable,
//! because GPU compilers and llvmpipe keep arrays indexed at run time in memory, not registers. The layouts
//! ([`FlashLayout::for_adapter`]):
//! - **CPU adapters** (llvmpipe, SwiftShader): 32 invocations, 4 query rows each. Each read of workgroup memory
//!   is a loop over the SIMD lanes there, so each key or value vec4 read serves 4 rows (8 ran no faster on
//!   llvmpipe and took twice as long to compile on SwiftShader, which every fresh browser worker pays); where
//!   subgroups exist (llvmpipe: 8 lanes), each lane reads a different vec4 and `subgroupBroadcast` hands it to
//!   the others.
//!   Heads over 256 wide (the VAE's 512) are split over several invocations per row, 128 columns each.
//! - **GPUs with subgroups**: 4 invocations share a row (32 of a 128-wide head's columns each) and add their
//!   partial scores with `subgroupShuffleXor`; 2 rows per invocation, 64 invocations: about 150 registers.
//!   Wider heads take more invocations per row, up to the subgroup size (16 for the VAE's 512), so that each
//!   still holds 32 columns.
//! - **other GPUs**: one invocation per row, 64 invocations.
//!
//! `KONTEXT_FLASH=ROWS_PER_THREAD,THREADS_PER_ROW,THREADS,KEYS_PER_STEP,BROADCAST` forces a layout natively, to
//! tune one on a new device (`tests/bench/gpu.sh` tries three).

use std::fmt::Write;

use super::{LLVMPIPE_LOOP_BUDGET, WgslKernel};
use crate::{Error, Result};

const TEMPLATE: &str = include_str!("../../shaders/flash_attention.wgsl");

/// Environment variable that forces the layout natively: `ROWS_PER_THREAD,THREADS_PER_ROW,THREADS,KEYS_PER_STEP,BROADCAST`
/// (`BROADCAST` 0 or 1).
pub const SHAPE_ENV: &str = "KONTEXT_FLASH";

/// Keys per tile, the first whose key and value tiles fit the workgroup memory granted (a 512-wide head's tiles
/// of 4 keys take just over WebGPU's default 16 KiB).
const KEY_TILES: [usize; 6] = [32, 16, 8, 4, 2, 1];
/// Most vec4s (`ROWS_PER_THREAD · SLICE`) one invocation holds per query row set, which bounds the unrolled code.
const HELD_VECS_MAX: usize = 256;

/// The adapter traits the shape is chosen from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adapter {
    /// A CPU adapter (llvmpipe, SwiftShader).
    pub software: bool,
    /// The smallest subgroup size, where subgroup operations are enabled (on a GPU).
    pub subgroup_min: Option<usize>,
    /// Workgroup memory granted, in bytes.
    pub shared_bytes: usize,
}

/// How the invocations of a workgroup share the query rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashLayout {
    /// Query rows per invocation.
    pub rows_per_thread: usize,
    /// Invocations that share a query row, each with a slice of its columns (1, or a power of two that the
    /// subgroups hold).
    pub threads_per_row: usize,
    /// Invocations per workgroup.
    pub threads: usize,
    /// Keys per step of the online softmax, each step rescaling the accumulators once (1, 2, 4 or 8).
    pub keys_per_step: usize,
    /// Whether each lane of a subgroup reads a different key or value vec4 of the tile and hands it to the
    /// others with `subgroupBroadcast` (one invocation per row only): on CPU adapters a read of workgroup
    /// memory is a loop over the lanes, so this makes one such loop serve a whole subgroup's worth of vec4s.
    pub broadcast: bool,
}

impl FlashLayout {
    /// The layout for heads of width `d` on `adapter` (see the module documentation), or the one [`SHAPE_ENV`]
    /// forces natively.
    pub fn for_adapter(adapter: Adapter, d: usize) -> Result<Self> {
        if let Some(forced) = Self::forced()? {
            return Ok(forced);
        }
        let head_vecs = d.div_ceil(4);
        // Invocations per row so that each holds at most `slice` vec4s of it, within the subgroup size.
        let split = |slice: usize, subgroup: usize| head_vecs.div_ceil(slice).next_power_of_two().min(subgroup);
        let (rows_per_thread, threads_per_row, threads, keys_per_step, broadcast) = match adapter {
            Adapter { software: true, subgroup_min: Some(lanes), .. } if head_vecs > 64 => {
                let per_row = split(32, lanes);
                (4, per_row, 32 * per_row, 4, false)
            }
            Adapter { software: true, subgroup_min, .. } => (4, 1, 32, 4, subgroup_min.is_some()),
            Adapter { subgroup_min: Some(lanes @ 4..), .. } => {
                let per_row = split(8, lanes).max(4);
                (2, per_row, 16 * per_row, 4, false)
            }
            _ => (1, 1, 64, 4, false),
        };
        Ok(Self { rows_per_thread, threads_per_row, threads, keys_per_step, broadcast })
    }

    /// The layout [`SHAPE_ENV`] forces, natively.
    fn forced() -> Result<Option<Self>> {
        #[cfg(not(target_arch = "wasm32"))]
        if let Ok(text) = std::env::var(SHAPE_ENV) {
            let numbers: Vec<usize> = text.split(',').filter_map(|n| n.trim().parse().ok()).collect();
            return match numbers[..] {
                [rows_per_thread, threads_per_row, threads, keys_per_step, broadcast @ (0 | 1)] => Ok(Some(Self {
                    rows_per_thread,
                    threads_per_row,
                    threads,
                    keys_per_step,
                    broadcast: broadcast == 1,
                })),
                _ => Err(Error::Invalid(format!(
                    "{SHAPE_ENV}={text}: expected ROWS_PER_THREAD,THREADS_PER_ROW,THREADS,KEYS_PER_STEP,BROADCAST \
                     (e.g. 2,4,64,4,0; BROADCAST 0 or 1)"
                ))),
            };
        }
        Ok(None)
    }
}

/// The compile-time shape of the flash kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashShape {
    /// Head width `d`.
    pub head_dim: usize,
    /// Query rows per invocation.
    pub rows_per_thread: usize,
    /// Invocations that share a query row.
    pub threads_per_row: usize,
    /// Invocations per workgroup.
    pub threads: usize,
    /// Keys per step of the online softmax (`CHUNK`).
    pub keys_per_step: usize,
    /// Lanes that each read one vec4 of a tile row for the subgroup (`subgroupBroadcast`); 1: none.
    pub broadcast_lanes: usize,
    /// Keys per tile of workgroup memory, a multiple of `keys_per_step`.
    pub keys: usize,
    /// Whether the query, key and value buffers and the tiles hold f16 (adapters with `shader-f16`): half the
    /// workgroup memory per key and half the bytes read; scores and sums stay f32.
    pub f16_inputs: bool,
    /// Whether an additive bias `[h or 1, lq, lk]` joins every score before the softmax (T5's position bias,
    /// CLIP's causal mask).
    pub biased: bool,
}

impl FlashShape {
    /// The shape for heads of width `d` in `layout` on `adapter`, or an error when `d` is 0 or over
    /// `head_dim_max`, when the layout is not one this adapter runs or when no key tile fits its workgroup
    /// memory. Wide heads get fewer rows per invocation than the layout asks, so that the unrolled code stays
    /// bounded. With `f16_inputs` the inputs and tiles are f16 ([`FlashShape::f16_inputs`]).
    pub fn new(d: usize, head_dim_max: usize, layout: FlashLayout, adapter: Adapter, f16_inputs: bool) -> Result<Self> {
        if d == 0 || d > head_dim_max {
            return Err(Error::Invalid(format!("flash attention takes heads of width 1 to {head_dim_max}, not {d}")));
        }
        let FlashLayout { rows_per_thread, threads_per_row, threads, keys_per_step, broadcast } = layout;
        let valid = rows_per_thread >= 1
            && [1, 2, 4, 8].contains(&keys_per_step)
            && threads_per_row.is_power_of_two()
            && threads.is_multiple_of(threads_per_row)
            && (1..=256).contains(&threads);
        if !valid {
            return Err(Error::Invalid(format!(
                "flash attention: {layout:?} is no layout (rows ≥ 1, invocations per row a power of two dividing \
                 the invocations, at most 256, and 1, 2, 4 or 8 keys per step)"
            )));
        }
        if threads_per_row > 1 && adapter.subgroup_min.is_none_or(|n| n < threads_per_row) {
            return Err(Error::Invalid(format!(
                "flash attention: {threads_per_row} invocations per row need subgroups of at least that size; this adapter has {}",
                adapter.subgroup_min.map_or("none".into(), |n| format!("subgroups of {n}"))
            )));
        }
        if broadcast && (threads_per_row > 1 || adapter.subgroup_min.is_none()) {
            return Err(Error::Invalid(
                "flash attention: broadcast reads need subgroups and one invocation per row".into(),
            ));
        }
        let mut shape = Self {
            head_dim: d,
            rows_per_thread,
            threads_per_row,
            threads,
            keys_per_step,
            broadcast_lanes: 1,
            keys: KEY_TILES[0],
            f16_inputs,
            biased: false,
        };
        if broadcast {
            shape.broadcast_lanes = adapter.subgroup_min.unwrap_or(1).min(shape.slice()).min(threads);
        }
        shape.rows_per_thread = rows_per_thread.min((HELD_VECS_MAX / shape.slice()).max(1));
        shape.keys = KEY_TILES
            .into_iter()
            .find(|&keys| Self { keys, ..shape }.shared_bytes() <= adapter.shared_bytes)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "flash attention: heads of width {d} need more than the {} bytes of workgroup memory granted",
                    adapter.shared_bytes
                ))
            })?;
        shape.keys_per_step = keys_per_step.min(shape.keys);
        Ok(shape)
    }

    /// This shape adding a bias to the scores ([`FlashShape::biased`]).
    pub fn with_bias(self) -> Self {
        Self { biased: true, ..self }
    }

    /// vec4s per head row in registers and tiles: ⌈d/4⌉ rounded up to a multiple of the invocations per row.
    pub fn head_vecs(&self) -> usize {
        self.head_dim.div_ceil(4).next_multiple_of(self.threads_per_row)
    }

    /// vec4s of a row one invocation holds.
    fn slice(&self) -> usize {
        self.head_vecs() / self.threads_per_row
    }

    /// Query rows per workgroup.
    pub fn rows(&self) -> usize {
        self.threads / self.threads_per_row * self.rows_per_thread
    }

    /// Workgroup memory the shader declares: the key and value tiles and the shape it shares.
    pub fn shared_bytes(&self) -> usize {
        let vec4_bytes = if self.f16_inputs { 8 } else { 16 };
        2 * vec4_bytes * self.keys * self.head_vecs() + 16 + 8
    }

    /// Keys per dispatch that keep one invocation within [`LLVMPIPE_LOOP_BUDGET`] loop iterations, counting
    /// one more iteration than runs for every loop (its exit test).
    pub fn llvmpipe_keys_per_dispatch(&self) -> usize {
        let tile_load = (self.keys * self.head_vecs()).div_ceil(self.threads) + 1;
        let per_tile = tile_load + self.keys / self.keys_per_step + 1 + 1;
        (LLVMPIPE_LOOP_BUDGET - self.output_loops()) / per_tile * self.keys
    }

    /// Loop iterations of the output stores and the key-tile loop's exit: heads whose width is not a multiple
    /// of 4 store each vec4 in a loop of 4.
    fn output_loops(&self) -> usize {
        match self.head_dim.is_multiple_of(4) {
            true => 1,
            false => self.rows_per_thread * self.slice() * 5 + 1,
        }
    }

    /// The kernel: the template with this shape's constants and unrolled code.
    pub fn kernel(&self) -> WgslKernel {
        let Self { head_dim, rows_per_thread, threads_per_row, threads, keys_per_step, broadcast_lanes, keys, .. } =
            *self;
        let half = if self.f16_inputs { "_h" } else { "" };
        let bias = if self.biased { "_bias" } else { "" };
        let name = format!(
            "flash_attention_d{head_dim}_r{rows_per_thread}_t{threads_per_row}_w{threads}_s{keys_per_step}_b{broadcast_lanes}_k{keys}{half}{bias}"
        );
        WgslKernel::generated(name, || self.source())
    }

    /// The WGSL text.
    pub fn source(&self) -> String {
        let (head_vecs, slice, rows) = (self.head_vecs(), self.slice(), self.rows());
        let mut text = String::new();
        if self.f16_inputs {
            text.push_str("enable f16;\n");
        }
        if cfg!(target_arch = "wasm32") && (self.threads_per_row > 1 || self.broadcast_lanes > 1) {
            // Browsers need the directive; naga (natively) enables subgroups from the device's features.
            text.push_str("enable subgroups;\n");
        }
        let vec4_rows = self.head_dim.is_multiple_of(4);
        let _ = write!(
            text,
            "const HEAD_VECS: u32 = {head_vecs}u;\nconst SLICE: u32 = {slice}u;\nconst THREADS: u32 = {}u;\n\
             const THREADS_PER_ROW: u32 = {}u;\nconst ROWS_PER_THREAD: u32 = {}u;\nconst ROW_STRIDE: u32 = {}u;\n\
             const ROWS: u32 = {rows}u;\nconst KEYS: u32 = {}u;\nconst CHUNK: u32 = {}u;\n",
            self.threads,
            self.threads_per_row,
            self.rows_per_thread,
            self.threads / self.threads_per_row,
            self.keys,
            self.keys_per_step
        );
        let input = if self.f16_inputs { "f16" } else { "f32" };
        let _ = match vec4_rows {
            true => writeln!(
                text,
                "const ROW_VECS: u32 = {}u;\nalias ELEMENT = vec4<f32>;\nalias INPUT = vec4<{input}>;",
                self.head_dim / 4
            ),
            false => writeln!(
                text,
                "const HEAD_DIM: u32 = {}u;\nalias ELEMENT = f32;\nalias INPUT = {input};",
                self.head_dim
            ),
        };
        let _ = writeln!(text, "alias TILE = vec4<{input}>;");
        let mut body = TEMPLATE.to_string();
        for (marker, code) in [
            ("//@PARAMS", self.params()),
            ("//@ROW_ACCESS", self.row_access()),
            ("//@BUILTINS", self.builtins()),
            ("//@ROW_STATE", self.row_state()),
            ("//@CHUNK", self.chunk()),
            ("//@ROW_OUTPUT", self.row_output()),
        ] {
            assert!(body.contains(marker), "the template has {marker}");
            body = body.replace(marker, code.trim_end());
        }
        text + &body
    }

    /// The bias binding of a biased kernel, then the parameters.
    fn params(&self) -> String {
        let params = "var<uniform> params: array<vec4<u32>, 3>;";
        match self.biased {
            true => format!(
                "@group(0) @binding(5) var<storage, read_write> bias: array<f32>;\n@group(0) @binding(6) {params}"
            ),
            false => format!("@group(0) @binding(5) {params}"),
        }
    }

    /// `load_query`, `load_key`, `load_value`, `load_output` (vec4 `j` of a row, zeros past the head's width)
    /// and `store_output`.
    fn row_access(&self) -> String {
        let mut code = String::new();
        let padded = self.head_vecs() > self.head_dim.div_ceil(4);
        for buffer in ["query", "key", "value", "output"] {
            let _ = match (self.head_dim.is_multiple_of(4), padded) {
                (true, false) => writeln!(
                    code,
                    "fn load_{buffer}(row: u32, j: u32) -> vec4<f32> {{\n    return vec4<f32>({buffer}[row * ROW_VECS + j]);\n}}"
                ),
                (true, true) => writeln!(
                    code,
                    "fn load_{buffer}(row: u32, j: u32) -> vec4<f32> {{\n    \
                     return select(vec4<f32>(0.0), vec4<f32>({buffer}[row * ROW_VECS + min(j, ROW_VECS - 1u)]), j < ROW_VECS);\n}}"
                ),
                (false, _) => writeln!(
                    code,
                    "fn load_{buffer}(row: u32, j: u32) -> vec4<f32> {{\n    \
                     let at = 4u * j;\n    let first = row * HEAD_DIM;\n    let last = first + HEAD_DIM - 1u;\n    \
                     return vec4<f32>(\n        \
                     select(0.0, f32({buffer}[min(first + at, last)]), at < HEAD_DIM),\n        \
                     select(0.0, f32({buffer}[min(first + at + 1u, last)]), at + 1u < HEAD_DIM),\n        \
                     select(0.0, f32({buffer}[min(first + at + 2u, last)]), at + 2u < HEAD_DIM),\n        \
                     select(0.0, f32({buffer}[min(first + at + 3u, last)]), at + 3u < HEAD_DIM),\n    );\n}}"
                ),
            };
        }
        let _ = match self.head_dim.is_multiple_of(4) {
            true => writeln!(
                code,
                "fn store_output(row: u32, j: u32, x: vec4<f32>) {{\n    if (j < ROW_VECS) {{\n        \
                 output[row * ROW_VECS + j] = x;\n    }}\n}}"
            ),
            false => writeln!(
                code,
                "fn store_output(row: u32, j: u32, x: vec4<f32>) {{\n    let first = row * HEAD_DIM + 4u * j;\n    \
                 for (var c = 0u; c < 4u; c++) {{\n        if (4u * j + c < HEAD_DIM) {{\n            \
                 output[first + c] = x[c];\n        }}\n    }}\n}}"
            ),
        };
        code
    }

    /// The subgroup lane, where reads are broadcast.
    fn builtins(&self) -> String {
        match self.broadcast_lanes > 1 {
            true => "    @builtin(subgroup_invocation_id) lane: u32,\n".into(),
            false => String::new(),
        }
    }

    /// Per row `r`: `row_r`, its buffer index `index_r`, the scaled query slice `q_r_j`, the running `max_r`
    /// and `sum_r` and the accumulator `acc_r_j`, continued from the previous dispatch where there was one; in a
    /// biased kernel `bias_r`, where the row's bias starts.
    fn row_state(&self) -> String {
        let mut code = String::new();
        if self.broadcast_lanes > 1 {
            let _ = writeln!(code, "    let reader = min(lane, {}u);", self.broadcast_lanes - 1);
        }
        if self.biased {
            // [h or 1, lq, lk]: this head's, or the one shared by every head.
            code.push_str("    let bias_head = select(0u, bh % params[1].w, params[2].x == 1u);\n");
        }
        for r in 0..self.rows_per_thread {
            let _ = writeln!(
                code,
                "    let row_{r} = first_row + {r}u * ROW_STRIDE;\n    let index_{r} = bh * lq + min(row_{r}, lq - 1u);\n    \
                 var max_{r} = MASKED;\n    var sum_{r} = 0.0;"
            );
            if self.biased {
                let _ = writeln!(code, "    let bias_{r} = (bias_head * lq + min(row_{r}, lq - 1u)) * lk;");
            }
            for j in 0..self.slice() {
                let _ = writeln!(
                    code,
                    "    let q_{r}_{j} = load_query(index_{r}, part + {j}u) * scale;\n    var acc_{r}_{j} = vec4<f32>(0.0);"
                );
            }
            let _ = writeln!(
                code,
                "    if (!first_dispatch) {{\n        max_{r} = stats[2u * index_{r}];\n        \
                 sum_{r} = stats[2u * index_{r} + 1u];"
            );
            for j in 0..self.slice() {
                let _ = writeln!(code, "        acc_{r}_{j} = load_output(index_{r}, part + {j}u);");
            }
            code.push_str("    }\n");
        }
        code
    }

    /// One step of the online softmax over the keys `c .. c + CHUNK` of the tile: scores, the new maxima, the
    /// rescale of the sums and accumulators, and the values weighted by the probabilities.
    fn chunk(&self) -> String {
        let (rows, slice, step) = (self.rows_per_thread, self.slice(), self.keys_per_step);
        let indent = "            ";
        let mut code = String::new();
        for r in 0..rows {
            for u in 0..step {
                let _ = writeln!(code, "{indent}var s_{r}_{u} = 0.0;");
            }
        }
        self.read_tile(&mut code, "key_tile", |code, u, j| {
            for r in 0..rows {
                let _ = writeln!(code, "{indent}    s_{r}_{u} += dot(q_{r}_{j}, k);");
            }
        });
        let mut lane = 1;
        while lane < self.threads_per_row {
            for r in 0..rows {
                for u in 0..step {
                    let _ = writeln!(code, "{indent}s_{r}_{u} += subgroupShuffleXor(s_{r}_{u}, {lane}u);");
                }
            }
            lane *= 2;
        }
        if self.biased {
            for u in 0..step {
                let _ = writeln!(code, "{indent}let key_{u} = min(first_key + c + {u}u, lk - 1u);");
                for r in 0..rows {
                    let _ = writeln!(code, "{indent}s_{r}_{u} += max(bias[bias_{r} + key_{u}] * LOG2_E, MASKED);");
                }
            }
        }
        // The step's first key is always below `count`.
        for u in 1..step {
            let _ = writeln!(code, "{indent}let kept_{u} = c + {u}u < count;");
            for r in 0..rows {
                let _ = writeln!(code, "{indent}s_{r}_{u} = select(MASKED, s_{r}_{u}, kept_{u});");
            }
        }
        for r in 0..rows {
            let maximum = (0..step).fold(format!("max_{r}"), |m, u| format!("max({m}, s_{r}_{u})"));
            let sum = (0..step).map(|u| format!("p_{r}_{u}")).collect::<Vec<_>>().join(" + ");
            let _ = writeln!(
                code,
                "{indent}let next_max_{r} = {maximum};\n{indent}let rescale_{r} = exp2(max_{r} - next_max_{r});\n\
                 {indent}max_{r} = next_max_{r};"
            );
            for u in 0..step {
                let _ = writeln!(code, "{indent}let p_{r}_{u} = exp2(s_{r}_{u} - next_max_{r});");
            }
            let _ = writeln!(code, "{indent}sum_{r} = sum_{r} * rescale_{r} + ({sum});");
            for j in 0..slice {
                let _ = writeln!(code, "{indent}acc_{r}_{j} *= rescale_{r};");
            }
        }
        self.read_tile(&mut code, "value_tile", |code, u, j| {
            for r in 0..rows {
                let _ = writeln!(code, "{indent}    acc_{r}_{j} += p_{r}_{u} * k;");
            }
        });
        code
    }

    /// For every key `u` of the step and vec4 `j` of the slice, `k` = `tile[base + u · HEAD_VECS + j]` in a block
    /// where `use_vec(code, u, j)` writes its uses: read directly, or one vec4 per lane of a group of
    /// `broadcast_lanes` and handed round with `subgroupBroadcast`.
    fn read_tile(&self, code: &mut String, tile: &str, mut use_vec: impl FnMut(&mut String, usize, usize)) {
        let indent = "            ";
        let (slice, head_vecs, lanes) = (self.slice(), self.head_vecs(), self.broadcast_lanes);
        for first in (0..slice).step_by(lanes) {
            for u in 0..self.keys_per_step {
                let at = u * head_vecs + first;
                let _ = writeln!(code, "{indent}{{");
                if lanes > 1 {
                    let last = lanes.min(slice - first) - 1;
                    let _ = writeln!(
                        code,
                        "{indent}    let read = vec4<f32>({tile}[base + {at}u + min(reader, {last}u)]);"
                    );
                }
                for j in first..(first + lanes).min(slice) {
                    let _ = match lanes > 1 {
                        true => writeln!(
                            code,
                            "{indent}    {{\n{indent}    let k = subgroupBroadcast(read, {}u);",
                            j - first
                        ),
                        false => {
                            let at = u * head_vecs + j;
                            writeln!(code, "{indent}    {{\n{indent}    let k = vec4<f32>({tile}[base + {at}u]);")
                        }
                    };
                    use_vec(code, u, j);
                    let _ = writeln!(code, "{indent}    }}");
                }
                let _ = writeln!(code, "{indent}}}");
            }
        }
    }

    /// Per row in range: the accumulator, divided by the sum in the last dispatch, and the statistics for the
    /// next dispatch otherwise (by the row's first invocation).
    fn row_output(&self) -> String {
        let mut code = String::new();
        for r in 0..self.rows_per_thread {
            let _ = writeln!(
                code,
                "    if (row_{r} < lq) {{\n        let out_scale = select(1.0, 1.0 / sum_{r}, last_dispatch);"
            );
            for j in 0..self.slice() {
                let _ = writeln!(code, "        store_output(index_{r}, part + {j}u, acc_{r}_{j} * out_scale);");
            }
            let _ = writeln!(
                code,
                "        if (!last_dispatch && part == 0u) {{\n            stats[2u * index_{r}] = max_{r};\n            \
                 stats[2u * index_{r} + 1u] = sum_{r};\n        }}\n    }}"
            );
        }
        code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: Adapter = Adapter { software: true, subgroup_min: Some(8), shared_bytes: 32 << 10 };
    const GPU: Adapter = Adapter { software: false, subgroup_min: Some(32), shared_bytes: 48 << 10 };
    const PLAIN: Adapter = Adapter { software: false, subgroup_min: None, shared_bytes: 16 << 10 };

    fn choose(d: usize, adapter: Adapter) -> Result<FlashShape> {
        FlashShape::new(d, 512, FlashLayout::for_adapter(adapter, d).unwrap(), adapter, false)
    }

    #[test]
    fn each_adapter_gets_its_shape_and_the_tiles_fit_its_workgroup_memory() {
        let cpu = choose(128, CPU).unwrap();
        let expected = FlashShape {
            head_dim: 128,
            rows_per_thread: 4,
            threads_per_row: 1,
            threads: 32,
            keys_per_step: 4,
            broadcast_lanes: 8,
            keys: 16,
            f16_inputs: false,
            biased: false,
        };
        assert_eq!(cpu, expected);
        assert_eq!((cpu.head_vecs(), cpu.rows(), cpu.shared_bytes()), (32, 128, 16 * 1024 + 24));
        let gpu = choose(128, GPU).unwrap();
        let expected = FlashShape {
            head_dim: 128,
            rows_per_thread: 2,
            threads_per_row: 4,
            threads: 64,
            keys_per_step: 4,
            broadcast_lanes: 1,
            keys: 32,
            f16_inputs: false,
            biased: false,
        };
        assert_eq!(gpu, expected);
        assert_eq!((gpu.slice(), gpu.rows()), (8, 32));
        // WebGPU's default 16 KiB: the key and value tiles of 8 keys.
        assert_eq!(choose(128, PLAIN).unwrap().keys, 8);
        // Wide heads hold fewer rows, so the unrolled code stays bounded; narrow ones pad to whole slices.
        let software_without_subgroups = Adapter { subgroup_min: None, ..CPU };
        assert_eq!(choose(256, software_without_subgroups).unwrap().rows_per_thread, 4);
        assert_eq!(choose(512, software_without_subgroups).unwrap().rows_per_thread, 2);
        assert_eq!(choose(8, GPU).unwrap().head_vecs(), 4);
        assert_eq!(choose(7, CPU).unwrap().head_vecs(), 2);
        // The VAE's one 512-wide head: split over invocations, 32 vec4s each, and on WebGPU's default 16 KiB
        // tiles of 2 keys stepped 2 at a time.
        let cpu = choose(512, CPU).unwrap();
        assert_eq!((cpu.threads_per_row, cpu.slice(), cpu.rows_per_thread, cpu.keys), (4, 32, 4, 4));
        let gpu = choose(512, GPU).unwrap();
        assert_eq!((gpu.threads_per_row, gpu.threads, gpu.slice(), gpu.rows(), gpu.keys), (16, 256, 8, 32, 8));
        // f16 tiles take half the memory: twice the keys.
        let half = FlashShape::new(128, 512, FlashLayout::for_adapter(PLAIN, 128).unwrap(), PLAIN, true).unwrap();
        assert_eq!((half.keys, half.shared_bytes()), (16, 8 * 1024 + 24));
        let source = half.source();
        assert!(source.starts_with("enable f16;") && source.contains("alias INPUT = vec4<f16>;"), "{source}");
        assert!(half.kernel().name.ends_with("_h"));
        let browser = Adapter { shared_bytes: 16 << 10, ..CPU };
        let small = choose(512, browser).unwrap();
        assert_eq!((small.keys, small.keys_per_step), (2, 2));
        for d in [0, 513] {
            assert!(choose(d, CPU).is_err());
        }
        let tight = Adapter { shared_bytes: 1024, ..PLAIN };
        let err = choose(256, tight).unwrap_err().to_string();
        assert!(err.contains("more than the 1024 bytes"), "{err}");
        let split =
            FlashLayout { rows_per_thread: 2, threads_per_row: 4, threads: 64, keys_per_step: 4, broadcast: false };
        let err = FlashShape::new(128, 256, split, PLAIN, false).unwrap_err().to_string();
        assert!(err.contains("4 invocations per row need subgroups of at least that size; this adapter has none"));
        let odd =
            FlashLayout { rows_per_thread: 1, threads_per_row: 3, threads: 63, keys_per_step: 4, broadcast: false };
        assert!(FlashShape::new(128, 256, odd, GPU, false).is_err());
        let step = FlashLayout { keys_per_step: 3, ..split };
        assert!(FlashShape::new(128, 256, step, GPU, false).is_err());
        let shared_rows = FlashLayout { broadcast: true, ..split };
        assert!(FlashShape::new(128, 256, shared_rows, GPU, false).is_err());
    }

    #[test]
    fn llvmpipe_dispatches_take_whole_tiles_within_the_loop_budget() {
        for d in [1, 16, 64, 128, 250, 256, 512] {
            let shape = choose(d, CPU).unwrap();
            let keys = shape.llvmpipe_keys_per_dispatch();
            assert!(keys >= 100 * shape.keys && keys.is_multiple_of(shape.keys), "{shape:?}: {keys} keys");
            let tiles = keys / shape.keys;
            let loops =
                (shape.keys * shape.head_vecs()).div_ceil(shape.threads) + 1 + shape.keys / shape.keys_per_step + 1;
            let stores = if d % 4 == 0 { 0 } else { shape.rows_per_thread * shape.slice() * 5 };
            assert!(tiles * (loops + 1) + 1 + stores <= LLVMPIPE_LOOP_BUDGET, "{shape:?}");
        }
    }

    #[test]
    fn the_source_is_unrolled_with_no_run_time_indexed_arrays() {
        let shape = choose(128, GPU).unwrap();
        let source = shape.source();
        assert!(["//@ROW_ACCESS", "//@ROW_STATE", "//@CHUNK", "//@ROW_OUTPUT"].iter().all(|m| !source.contains(m)));
        assert!(source.contains("let q_1_7 = load_query(index_1, part + 7u) * scale;"));
        assert!(source.contains("s_1_3 += subgroupShuffleXor(s_1_3, 2u);"));
        assert!(!source.contains("subgroupShuffleXor(s_0_0, 4u)"));
        assert!(!source.contains("array<vec4<f32>, HEAD") && !source.contains("var q"));
        let cpu = choose(7, CPU).unwrap().source();
        assert!(cpu.contains("alias ELEMENT = f32;") && !cpu.contains("subgroupShuffleXor("));
        assert!(source.contains("@binding(5) var<uniform> params") && !source.contains("read_write> bias"));
        let biased = shape.with_bias();
        let source = biased.source();
        assert!(
            source.contains("@binding(5) var<storage, read_write> bias")
                && source.contains("@binding(6) var<uniform> params")
        );
        assert!(source.contains("s_1_3 += max(bias[bias_1 + key_3] * LOG2_E, MASKED);"), "{source}");
        assert!(biased.kernel().name.ends_with("_bias") && !shape.kernel().name.ends_with("_bias"));
    }
}
