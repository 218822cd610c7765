// Scaled dot-product attention softmax(q·kᵀ·scale)·v over [b, h, L, d], flash-style: keys and values stream
// through workgroup memory one tile at a time while every query row keeps a running maximum, a running sum
// and its output accumulator (online softmax), so no L×L buffer exists anywhere. f32 throughout.
// Reference twin: crate::kernels::attention::reference.
//
// One workgroup handles ROWS consecutive query rows of one (batch, head); one invocation owns one query row.
// Workgroups are numbered group = wid.x + wid.y · num_workgroups.x; group = bh · query_tiles + query_tile.
// Rows are held as vec4s, the last one zero-padded when d is not a multiple of 4.
//
// One dispatch covers the keys [key_begin, key_end). When the host splits the keys over several dispatches
// (Mesa's llvmpipe silently ends every loop of a shader once it has run 65535 loop iterations in total), the
// running maximum and sum of every row wait in `stats` and its unnormalised accumulator in `output` between
// dispatches; the dispatch that reaches the last key divides by the sum.

// Query rows per workgroup, one per invocation (the workgroup size).
const ROWS: u32 = 64u;
// Largest head width, in vec4s (d ≤ 256): the size of the per-row query and accumulator arrays.
const HEAD_VECS_MAX: u32 = 64u;
// vec4s in each of the key and the value tile; together 15 KiB of workgroup memory.
const TILE_VECS: u32 = 480u;
// Most keys in one tile: the size of the per-row score array. A tile holds min(KEYS_MAX, TILE_VECS / ⌈d/4⌉)
// keys: 64 for d = 16, 60 for d = 32, 15 for d = 128, 7 for d = 256.
const KEYS_MAX: u32 = 64u;

// [b·h, lq, d], then [b·h, lk, d] twice, and the output [b·h, lq, d]
@group(0) @binding(0) var<storage, read_write> query: array<f32>;
@group(0) @binding(1) var<storage, read_write> key: array<f32>;
@group(0) @binding(2) var<storage, read_write> value: array<f32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;
// [b·h, lq, 2]: running maximum and sum of every row between dispatches
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
// [b·h, lq, lk, d, bits of the f32 scale, key_begin, key_end]
@group(0) @binding(5) var<uniform> params: array<vec4<u32>, 3>;

var<workgroup> key_tile: array<vec4<f32>, TILE_VECS>;
var<workgroup> value_tile: array<vec4<f32>, TILE_VECS>;
// (lq, lk, d, b·h) and (key_begin, key_end), copied by invocation 0 so that every invocation sees them as
// uniform values.
var<workgroup> shape_shared: vec4<u32>;
var<workgroup> keys_shared: vec2<u32>;

// Elements i..i+4 of a row that ends before `end` (i < end), zeros past the end. Indices are clamped so that
// no read leaves the row.
fn query4(i: u32, end: u32) -> vec4<f32> {
    return vec4<f32>(
        query[i],
        select(0.0, query[min(i + 1u, end - 1u)], i + 1u < end),
        select(0.0, query[min(i + 2u, end - 1u)], i + 2u < end),
        select(0.0, query[min(i + 3u, end - 1u)], i + 3u < end),
    );
}

fn key4(i: u32, end: u32) -> vec4<f32> {
    return vec4<f32>(
        key[i],
        select(0.0, key[min(i + 1u, end - 1u)], i + 1u < end),
        select(0.0, key[min(i + 2u, end - 1u)], i + 2u < end),
        select(0.0, key[min(i + 3u, end - 1u)], i + 3u < end),
    );
}

fn value4(i: u32, end: u32) -> vec4<f32> {
    return vec4<f32>(
        value[i],
        select(0.0, value[min(i + 1u, end - 1u)], i + 1u < end),
        select(0.0, value[min(i + 2u, end - 1u)], i + 2u < end),
        select(0.0, value[min(i + 3u, end - 1u)], i + 3u < end),
    );
}

fn output4(i: u32, end: u32) -> vec4<f32> {
    return vec4<f32>(
        output[i],
        select(0.0, output[min(i + 1u, end - 1u)], i + 1u < end),
        select(0.0, output[min(i + 2u, end - 1u)], i + 2u < end),
        select(0.0, output[min(i + 3u, end - 1u)], i + 3u < end),
    );
}

fn write_output4(i: u32, end: u32, x: vec4<f32>) {
    output[i] = x.x;
    if (i + 1u < end) {
        output[i + 1u] = x.y;
    }
    if (i + 2u < end) {
        output[i + 2u] = x.z;
    }
    if (i + 3u < end) {
        output[i + 3u] = x.w;
    }
}

@compute @workgroup_size(ROWS)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (lid == 0u) {
        shape_shared = vec4<u32>(params[0].y, params[0].z, params[0].w, params[0].x);
        keys_shared = vec2<u32>(params[1].y, params[1].z);
    }
    let shape = workgroupUniformLoad(&shape_shared);
    let keys = workgroupUniformLoad(&keys_shared);
    let lq = shape.x;
    let lk = shape.y;
    let d = min(shape.z, HEAD_VECS_MAX * 4u);
    let heads = shape.w;
    let key_begin = keys.x;
    let key_end = min(keys.y, lk);
    if (d == 0u || key_begin >= key_end) {
        return;
    }
    let d4 = (d + 3u) / 4u;
    let first_dispatch = key_begin == 0u;
    let last_dispatch = key_end == lk;
    let query_tiles = (lq + ROWS - 1u) / ROWS;
    let group = wid.x + wid.y * groups.x;
    if (group >= query_tiles * heads) {
        return;
    }
    let bh = group / query_tiles;
    let row = (group % query_tiles) * ROWS + lid;
    let in_range = row < lq;
    let scale = bitcast<f32>(params[1].x);

    var q: array<vec4<f32>, HEAD_VECS_MAX>;
    var acc: array<vec4<f32>, HEAD_VECS_MAX>;
    var scores: array<f32, KEYS_MAX>;
    let row_index = bh * lq + row;
    let row_begin = row_index * d;
    let row_end = row_begin + d;
    var running_max = 0.0;
    var running_sum = 0.0;
    if (in_range) {
        for (var j = 0u; j < d4; j++) {
            q[j] = query4(row_begin + 4u * j, row_end) * scale;
        }
        if (!first_dispatch) {
            running_max = stats[2u * row_index];
            running_sum = stats[2u * row_index + 1u];
            for (var j = 0u; j < d4; j++) {
                acc[j] = output4(row_begin + 4u * j, row_end);
            }
        }
    }

    let keys_per_tile = min(KEYS_MAX, TILE_VECS / d4);
    let key_tiles = (key_end - key_begin + keys_per_tile - 1u) / keys_per_tile;
    for (var t = 0u; t < key_tiles; t++) {
        let first = key_begin + t * keys_per_tile;
        let count = min(keys_per_tile, key_end - first);
        // The first tile of all has no running values to rescale.
        let fresh = first_dispatch && t == 0u;
        // Every invocation is done with the previous tile before it is overwritten.
        workgroupBarrier();
        for (var i = lid; i < count * d4; i += ROWS) {
            let key_row = (bh * lk + first + i / d4) * d;
            let at = key_row + 4u * (i % d4);
            key_tile[i] = key4(at, key_row + d);
            value_tile[i] = value4(at, key_row + d);
        }
        workgroupBarrier();

        var tile_max = 0.0;
        for (var c = 0u; c < count; c++) {
            var s = 0.0;
            for (var j = 0u; j < d4; j++) {
                s += dot(q[j], key_tile[c * d4 + j]);
            }
            scores[c] = s;
            tile_max = select(max(tile_max, s), s, c == 0u);
        }
        let new_max = select(max(running_max, tile_max), tile_max, fresh);
        let rescale = select(exp(running_max - new_max), 0.0, fresh);
        running_sum *= rescale;
        for (var c = 0u; c < count; c++) {
            let p = exp(scores[c] - new_max);
            scores[c] = p;
            running_sum += p;
        }
        for (var j = 0u; j < d4; j++) {
            var o = acc[j] * rescale;
            for (var c = 0u; c < count; c++) {
                o += scores[c] * value_tile[c * d4 + j];
            }
            acc[j] = o;
        }
        running_max = new_max;
    }

    if (in_range) {
        let out_scale = select(1.0, 1.0 / running_sum, last_dispatch);
        for (var j = 0u; j < d4; j++) {
            write_output4(row_begin + 4u * j, row_end, acc[j] * out_scale);
        }
        if (!last_dispatch) {
            stats[2u * row_index] = running_max;
            stats[2u * row_index + 1u] = running_sum;
        }
    }
}
