// Scaled dot-product attention softmax(q·kᵀ·scale)·v over [b, h, L, d], flash-style: keys and values stream
// through workgroup memory one tile at a time while every query row keeps a running maximum, a running sum
// and its output accumulator (online softmax), so no L×L buffer exists anywhere. f32 throughout.
// Reference twin: crate::kernels::attention::reference.
//
// The host prepends the compile-time shape (crate::kernels::attention::FlashTiles):
//   HEAD_DIM   the head width d;
//   HEAD_VECS  vec4s per row, ⌈d/4⌉ rounded up to a multiple of GROUPS (the padding reads as zeros);
//   ROWS       query rows per workgroup, KEYS keys per tile (both multiples of GROUPS).
//
// One workgroup of 64 invocations handles ROWS consecutive query rows of one (batch, head). The invocations
// form a GROUPS × GROUPS grid: row group `rg` owns the rows rg, rg + GROUPS, …; column group `cg` owns the
// keys cg, cg + GROUPS, … of each score tile and the vec4 columns cg, cg + GROUPS, … of the output; the
// invocation r < ROWS turns row r of the scores into probabilities and keeps its running statistics. Every
// per-invocation array has a compile-time length and is indexed by loops with compile-time bounds, so it
// lives in registers. Tiles in workgroup memory are padded by one vec4 per row: the lanes of a warp that read
// one column of different rows hit different banks.
//
// Workgroups are numbered group = wid.x + wid.y · num_workgroups.x; group = bh · query_tiles + query_tile.
//
// One dispatch covers the keys [key_begin, key_end). When the host splits the keys over several dispatches
// (Mesa's llvmpipe silently ends every loop of a shader once it has run 65535 loop iterations in total), the
// running maximum and sum of every row wait in `stats` and its unnormalised accumulator in `output` between
// dispatches; the dispatch that reaches the last key divides by the sum.

const THREADS: u32 = 64u;
const GROUPS: u32 = 8u;
const ROWS_PER_THREAD: u32 = ROWS / GROUPS;
const KEYS_PER_THREAD: u32 = KEYS / GROUPS;
const VECS_PER_THREAD: u32 = HEAD_VECS / GROUPS;
// Row strides of the tiles, padded (see above).
const STRIDE: u32 = HEAD_VECS + 1u;
const SCORE_STRIDE: u32 = KEYS + 1u;
// Below every score: a masked key's exp(score − max) is 0.
const MASKED: f32 = -3.0e38;

// [b·h, lq, d], then [b·h, lk, d] twice, and the output [b·h, lq, d]
@group(0) @binding(0) var<storage, read_write> query: array<f32>;
@group(0) @binding(1) var<storage, read_write> key: array<f32>;
@group(0) @binding(2) var<storage, read_write> value: array<f32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;
// [b·h, lq, 2]: running maximum and sum of every row between dispatches
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
// [b·h, lq, lk, d (HEAD_DIM here), bits of the f32 scale, key_begin, key_end]: the `rows` kernel's layout
@group(0) @binding(5) var<storage, read_write> params: array<u32>;

// [ROWS, STRIDE]: this workgroup's query rows, scaled
var<workgroup> query_tile: array<vec4<f32>, ROWS * STRIDE>;
// [KEYS, STRIDE]: the key tile, then the value tile
var<workgroup> key_value_tile: array<vec4<f32>, KEYS * STRIDE>;
// [ROWS, SCORE_STRIDE]: the tile's scores, MASKED past the last key
var<workgroup> scores: array<f32, ROWS * SCORE_STRIDE>;
// [ROWS] each: the running maximum and sum of every row, and the factor the last tile rescaled them by
var<workgroup> row_max: array<f32, ROWS>;
var<workgroup> row_sum: array<f32, ROWS>;
var<workgroup> row_rescale: array<f32, ROWS>;
// (lq, lk, b·h, scale bits) and (key_begin, key_end), copied by invocation 0 so that every invocation sees
// them as uniform values.
var<workgroup> shape_shared: vec4<u32>;
var<workgroup> keys_shared: vec2<u32>;

// Elements 4v..4v+4 of the row that starts at `base`, zeros past HEAD_DIM.
fn query4(base: u32, v: u32) -> vec4<f32> {
    let e = 4u * v;
    let last = base + HEAD_DIM - 1u;
    return vec4<f32>(
        select(0.0, query[min(base + e, last)], e < HEAD_DIM),
        select(0.0, query[min(base + e + 1u, last)], e + 1u < HEAD_DIM),
        select(0.0, query[min(base + e + 2u, last)], e + 2u < HEAD_DIM),
        select(0.0, query[min(base + e + 3u, last)], e + 3u < HEAD_DIM),
    );
}

fn key4(base: u32, v: u32) -> vec4<f32> {
    let e = 4u * v;
    let last = base + HEAD_DIM - 1u;
    return vec4<f32>(
        select(0.0, key[min(base + e, last)], e < HEAD_DIM),
        select(0.0, key[min(base + e + 1u, last)], e + 1u < HEAD_DIM),
        select(0.0, key[min(base + e + 2u, last)], e + 2u < HEAD_DIM),
        select(0.0, key[min(base + e + 3u, last)], e + 3u < HEAD_DIM),
    );
}

fn value4(base: u32, v: u32) -> vec4<f32> {
    let e = 4u * v;
    let last = base + HEAD_DIM - 1u;
    return vec4<f32>(
        select(0.0, value[min(base + e, last)], e < HEAD_DIM),
        select(0.0, value[min(base + e + 1u, last)], e + 1u < HEAD_DIM),
        select(0.0, value[min(base + e + 2u, last)], e + 2u < HEAD_DIM),
        select(0.0, value[min(base + e + 3u, last)], e + 3u < HEAD_DIM),
    );
}

fn output4(base: u32, v: u32) -> vec4<f32> {
    let e = 4u * v;
    let last = base + HEAD_DIM - 1u;
    return vec4<f32>(
        select(0.0, output[min(base + e, last)], e < HEAD_DIM),
        select(0.0, output[min(base + e + 1u, last)], e + 1u < HEAD_DIM),
        select(0.0, output[min(base + e + 2u, last)], e + 2u < HEAD_DIM),
        select(0.0, output[min(base + e + 3u, last)], e + 3u < HEAD_DIM),
    );
}

fn write_output4(base: u32, v: u32, x: vec4<f32>) {
    let e = 4u * v;
    if (e < HEAD_DIM) {
        output[base + e] = x.x;
    }
    if (e + 1u < HEAD_DIM) {
        output[base + e + 1u] = x.y;
    }
    if (e + 2u < HEAD_DIM) {
        output[base + e + 2u] = x.z;
    }
    if (e + 3u < HEAD_DIM) {
        output[base + e + 3u] = x.w;
    }
}

@compute @workgroup_size(THREADS)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (lid == 0u) {
        shape_shared = vec4<u32>(params[1], params[2], params[0], params[4]);
        keys_shared = vec2<u32>(params[5], params[6]);
    }
    let shape = workgroupUniformLoad(&shape_shared);
    let keys = workgroupUniformLoad(&keys_shared);
    let lq = shape.x;
    let lk = shape.y;
    let heads = shape.z;
    let scale = bitcast<f32>(shape.w);
    let key_begin = keys.x;
    let key_end = min(keys.y, lk);
    let query_tiles = (lq + ROWS - 1u) / ROWS;
    let group = wid.x + wid.y * groups.x;
    if (key_begin >= key_end || group >= query_tiles * heads) {
        return;
    }
    let first_dispatch = key_begin == 0u;
    let last_dispatch = key_end == lk;
    let bh = group / query_tiles;
    let row0 = (group % query_tiles) * ROWS;
    let rg = lid / GROUPS;
    let cg = lid % GROUPS;

    for (var i = lid; i < ROWS * HEAD_VECS; i += THREADS) {
        let r = i / HEAD_VECS;
        let v = i % HEAD_VECS;
        let row = row0 + r;
        let base = (bh * lq + min(row, lq - 1u)) * HEAD_DIM;
        query_tile[r * STRIDE + v] = select(vec4<f32>(0.0), query4(base, v) * scale, row < lq);
    }

    // Rows rg + GROUPS·i, output columns cg + GROUPS·u: acc[i · VECS_PER_THREAD + u].
    var acc: array<vec4<f32>, ROWS_PER_THREAD * VECS_PER_THREAD>;
    // Invocation r < ROWS keeps row r's running maximum and sum in workgroup memory.
    if (lid < ROWS) {
        let row_index = bh * lq + min(row0 + lid, lq - 1u);
        row_max[lid] = select(stats[2u * row_index], 0.0, first_dispatch);
        row_sum[lid] = select(stats[2u * row_index + 1u], 0.0, first_dispatch);
    }
    if (!first_dispatch) {
        for (var i = 0u; i < ROWS_PER_THREAD; i++) {
            let row_index = bh * lq + min(row0 + rg + GROUPS * i, lq - 1u);
            for (var u = 0u; u < VECS_PER_THREAD; u++) {
                acc[i * VECS_PER_THREAD + u] = output4(row_index * HEAD_DIM, cg + GROUPS * u);
            }
        }
    }

    let key_tiles = (key_end - key_begin + KEYS - 1u) / KEYS;
    for (var t = 0u; t < key_tiles; t++) {
        let first = key_begin + t * KEYS;
        let count = min(KEYS, key_end - first);
        // The first tile of all has no running values to rescale.
        let fresh = first_dispatch && t == 0u;

        // Every invocation is done with the previous value tile and probabilities before they are overwritten.
        workgroupBarrier();
        for (var i = lid; i < KEYS * HEAD_VECS; i += THREADS) {
            let c = i / HEAD_VECS;
            key_value_tile[c * STRIDE + i % HEAD_VECS] = key4((bh * lk + min(first + c, lk - 1u)) * HEAD_DIM, i % HEAD_VECS);
        }
        workgroupBarrier();

        // Scores of rows rg + GROUPS·i against keys cg + GROUPS·j: s[i · KEYS_PER_THREAD + j].
        var s: array<f32, ROWS_PER_THREAD * KEYS_PER_THREAD>;
        for (var v = 0u; v < HEAD_VECS; v++) {
            var k: array<vec4<f32>, KEYS_PER_THREAD>;
            for (var j = 0u; j < KEYS_PER_THREAD; j++) {
                k[j] = key_value_tile[(cg + GROUPS * j) * STRIDE + v];
            }
            for (var i = 0u; i < ROWS_PER_THREAD; i++) {
                let q = query_tile[(rg + GROUPS * i) * STRIDE + v];
                for (var j = 0u; j < KEYS_PER_THREAD; j++) {
                    s[i * KEYS_PER_THREAD + j] += dot(q, k[j]);
                }
            }
        }
        for (var i = 0u; i < ROWS_PER_THREAD; i++) {
            for (var j = 0u; j < KEYS_PER_THREAD; j++) {
                let c = cg + GROUPS * j;
                scores[(rg + GROUPS * i) * SCORE_STRIDE + c] = select(MASKED, s[i * KEYS_PER_THREAD + j], c < count);
            }
        }
        workgroupBarrier();
        for (var i = lid; i < KEYS * HEAD_VECS; i += THREADS) {
            let c = i / HEAD_VECS;
            key_value_tile[c * STRIDE + i % HEAD_VECS] = value4((bh * lk + min(first + c, lk - 1u)) * HEAD_DIM, i % HEAD_VECS);
        }
        workgroupBarrier();

        // Invocation r < ROWS turns row r's scores into exp(score − new maximum), once each.
        if (lid < ROWS) {
            let r = lid * SCORE_STRIDE;
            var tile_max = scores[r];
            for (var c = 1u; c < count; c++) {
                tile_max = max(tile_max, scores[r + c]);
            }
            let new_max = select(max(row_max[lid], tile_max), tile_max, fresh);
            let rescale = select(exp(row_max[lid] - new_max), 0.0, fresh);
            var sum = row_sum[lid] * rescale;
            for (var c = 0u; c < count; c++) {
                let p = exp(scores[r + c] - new_max);
                scores[r + c] = p;
                sum += p;
            }
            row_max[lid] = new_max;
            row_sum[lid] = sum;
            row_rescale[lid] = rescale;
        }
        workgroupBarrier();

        for (var i = 0u; i < ROWS_PER_THREAD; i++) {
            let rescale = row_rescale[rg + GROUPS * i];
            for (var u = 0u; u < VECS_PER_THREAD; u++) {
                acc[i * VECS_PER_THREAD + u] *= rescale;
            }
        }
        for (var c = 0u; c < count; c++) {
            var v: array<vec4<f32>, VECS_PER_THREAD>;
            for (var u = 0u; u < VECS_PER_THREAD; u++) {
                v[u] = key_value_tile[c * STRIDE + cg + GROUPS * u];
            }
            for (var i = 0u; i < ROWS_PER_THREAD; i++) {
                let p = scores[(rg + GROUPS * i) * SCORE_STRIDE + c];
                for (var u = 0u; u < VECS_PER_THREAD; u++) {
                    acc[i * VECS_PER_THREAD + u] += p * v[u];
                }
            }
        }
    }

    for (var i = 0u; i < ROWS_PER_THREAD; i++) {
        let row = row0 + rg + GROUPS * i;
        if (row < lq) {
            let row_index = bh * lq + row;
            let out_scale = select(1.0, 1.0 / row_sum[rg + GROUPS * i], last_dispatch);
            for (var u = 0u; u < VECS_PER_THREAD; u++) {
                write_output4(row_index * HEAD_DIM, cg + GROUPS * u, acc[i * VECS_PER_THREAD + u] * out_scale);
            }
            if (!last_dispatch && cg == 0u) {
                stats[2u * row_index] = row_max[rg + GROUPS * i];
                stats[2u * row_index + 1u] = row_sum[rg + GROUPS * i];
            }
        }
    }
}
