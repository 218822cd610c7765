// Scaled dot-product attention softmax(q·kᵀ·scale)·v over [b, h, L, d], flash-style: keys and values stream
// through workgroup memory one tile at a time while every query row keeps a running maximum, a running sum
// and its output accumulator in registers (online softmax), so no L×L buffer exists anywhere. Scores, softmax
// statistics and accumulators are f32; the query, key and value buffers and the tiles are f32, or f16 where
// the adapter has `shader-f16` and the inputs are f16 (INPUT and TILE; every value is widened to f32 as it is
// read). Reference twin: crate::kernels::attention::reference.
//
// A template: crate::kernels::flash::FlashShape prepends the compile-time shape and writes the `//@` lines as
// straight-line code, unrolled over rows, keys and head columns, so that every per-invocation value is a named
// variable (no array is indexed at run time):
//   HEAD_VECS        vec4s per head row in registers and tiles: ⌈d/4⌉ rounded up to THREADS_PER_ROW;
//   ROW_VECS         vec4s per row in the buffers (⌈d/4⌉), when they are bound as vec4s (d a multiple of 4);
//   HEAD_DIM         d, when the buffers are bound as scalars;
//   ELEMENT, INPUT   an element of the output buffer (f32) and of the query, key and value buffers (f32 or f16):
//                    vec4s or scalars;
//   TILE             a vec4 of the key and value tiles, vec4<f32> or vec4<f16>;
//   SLICE            vec4s of a row one invocation holds: HEAD_VECS / THREADS_PER_ROW;
//   THREADS          invocations per workgroup; THREADS_PER_ROW of them share a query row, each owning one
//                    slice of its columns and adding its partial scores to theirs with subgroup shuffles;
//   ROWS_PER_THREAD  query rows per invocation: each key and value vec4 read from workgroup memory serves that
//                    many rows (on a CPU adapter every read is a loop over the SIMD lanes, so reuse is speed);
//   ROW_STRIDE       THREADS / THREADS_PER_ROW: invocation i holds rows i / THREADS_PER_ROW + ROW_STRIDE · r;
//   ROWS             query rows per workgroup, ROW_STRIDE · ROWS_PER_THREAD;
//   KEYS             keys per tile, CHUNK keys per step of the online softmax (KEYS a multiple of CHUNK).
// Where the layout broadcasts reads (CPU adapters with subgroups), each lane of a subgroup reads a different vec4
// of a tile row (`reader`) and subgroupBroadcast hands it to the others.
//
// Workgroups are numbered group = wid.x + wid.y · num_workgroups.x; group = bh · query_tiles + query_tile.
//
// One dispatch covers the keys [key_begin, key_end). When the host splits the keys over several dispatches
// (Mesa's llvmpipe silently ends every loop of a shader once it has run 65535 loop iterations in total), the
// running maximum and sum of every row wait in `stats` and its unnormalised accumulator in `output` between
// dispatches; the dispatch that reaches the last key divides by the sum. Scores are kept in base 2 (the
// queries are scaled by scale · log2(e)), so the softmax uses exp2.
//
// A biased kernel adds bias[head, row, key] to every score before the softmax (T5's relative-position bias, CLIP's
// causal mask as −∞ above the diagonal): the bias is [h or 1, lq, lk], the same for every batch, and broadcast over
// the heads where it has one. A bias below MASKED counts as MASKED.

// Below every score: a masked key's exp2(score − max) is 0, and so is the first step's rescale.
const MASKED: f32 = -3.0e38;
const LOG2_E: f32 = 1.4426950408889634;

// [b·h, lq, d], then [b·h, lk, d] twice, and the output [b·h, lq, d]
@group(0) @binding(0) var<storage, read_write> query: array<INPUT>;
@group(0) @binding(1) var<storage, read_write> key: array<INPUT>;
@group(0) @binding(2) var<storage, read_write> value: array<INPUT>;
@group(0) @binding(3) var<storage, read_write> output: array<ELEMENT>;
// [b·h, lq, 2]: running maximum (base 2) and sum of every row between dispatches
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
// [b·h, lq, lk, d, bits of the f32 scale, key_begin, key_end, h, bias per head (0 or 1)]: binding 5, or 6 where a
// biased kernel binds its bias [h or 1, lq, lk] as 5
//@PARAMS

// [KEYS, HEAD_VECS] each: the key tile and the value tile, zeros past the last key
var<workgroup> key_tile: array<TILE, KEYS * HEAD_VECS>;
var<workgroup> value_tile: array<TILE, KEYS * HEAD_VECS>;
// (lq, lk, b·h, scale bits) and (key_begin, key_end), copied by invocation 0 so that every invocation sees
// them as uniform values.
var<workgroup> shape_shared: vec4<u32>;
var<workgroup> keys_shared: vec2<u32>;

//@ROW_ACCESS

@compute @workgroup_size(THREADS)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
//@BUILTINS
) {
    if (lid == 0u) {
        shape_shared = vec4<u32>(params[0].y, params[0].z, params[0].x, params[1].x);
        keys_shared = vec2<u32>(params[1].y, params[1].z);
    }
    let shape = workgroupUniformLoad(&shape_shared);
    let keys = workgroupUniformLoad(&keys_shared);
    let lq = shape.x;
    let lk = shape.y;
    let heads = shape.z;
    let scale = bitcast<f32>(shape.w) * LOG2_E;
    let key_begin = keys.x;
    let key_end = min(keys.y, lk);
    let query_tiles = (lq + ROWS - 1u) / ROWS;
    let group = wid.x + wid.y * groups.x;
    // Uniform across the workgroup: every invocation returns or none does.
    if (group >= query_tiles * heads || key_begin >= key_end) {
        return;
    }
    let bh = group / query_tiles;
    let first_row = (group % query_tiles) * ROWS + lid / THREADS_PER_ROW;
    // First vec4 of this invocation's slice of every row.
    let part = (lid % THREADS_PER_ROW) * SLICE;
    let first_dispatch = key_begin == 0u;
    let last_dispatch = key_end == lk;

//@ROW_STATE

    let key_tiles = (key_end - key_begin + KEYS - 1u) / KEYS;
    for (var tile = 0u; tile < key_tiles; tile++) {
        let first_key = key_begin + tile * KEYS;
        let count = min(KEYS, key_end - first_key);
        // Every invocation is done with the previous tile before it is overwritten.
        workgroupBarrier();
        for (var i = lid; i < KEYS * HEAD_VECS; i += THREADS) {
            let key_index = bh * lk + min(first_key + i / HEAD_VECS, lk - 1u);
            let kept = i / HEAD_VECS < count;
            key_tile[i] = TILE(select(vec4<f32>(0.0), load_key(key_index, i % HEAD_VECS), kept));
            value_tile[i] = TILE(select(vec4<f32>(0.0), load_value(key_index, i % HEAD_VECS), kept));
        }
        workgroupBarrier();
        for (var c = 0u; c < count; c += CHUNK) {
            let base = c * HEAD_VECS + part;
//@CHUNK
        }
    }

//@ROW_OUTPUT
}
