// y[m, n] = Σ_k x[m, k] · W[n, k] (+ bias[n]) with W [N, K] repacked (crate::kernels::repack), dequantized while a
// tile of it is loaded (f32 accumulation). Reference twin: crate::kernels::quant_matmul::reference.
// Prepended by one matmul_<type>.wgsl, which defines `fn dequant8(row, chunk, part) -> array<f32, 8>`:
// values chunk·32 + part·8 .. +8 of row `row`, and by packed_weights.wgsl; first of all by work_f32.wgsl or
// work_f16.wgsl, which name the type `work` the tiles are held and multiplied in (x, y and the bias are f32).
// Followed by gelu.wgsl and matmul_epilogue.wgsl, whose `finish` applies the output's epilogue.
//
// One workgroup of 16×16 threads computes a 64×64 tile of y; thread (tx, ty) owns rows ty + 16i and columns
// tx + 16j (i, j < 4), so shared-memory reads are broadcasts (xs) or consecutive (ws). Four consecutive threads
// load the four parts of one row's chunk: a warp reads consecutive words of W. Double-buffered through
// registers: the next chunk's x values and dequantized W values are loaded while the current chunk's tiles are
// multiplied, so the loads' latency overlaps the arithmetic.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
// the others: matmul_bindings.wgsl

const TILE_M: u32 = 64u;
const TILE_N: u32 = 64u;
const TILE_K: u32 = 32u;

// [TILE_M, TILE_K]
var<workgroup> xs: array<work, 2048>;
// [TILE_K, TILE_N], swizzled (ws_at) so that the stores of a warp hit 32 banks
var<workgroup> ws: array<work, 2048>;

// Where W's value (k, n) of the tile lies in ws: column n XOR 8·(k / 8).
fn ws_at(k: u32, n: u32) -> u32 {
    return k * TILE_N + (n ^ ((k >> 3u) << 3u));
}

// x[m + 8r, column] for r < 8, 0 past the last row.
fn load_x(m: u32, m_len: u32, k_len: u32, column: u32) -> array<f32, 8> {
    var out: array<f32, 8>;
    for (var r = 0u; r < 8u; r++) {
        if (m + 8u * r < m_len) {
            out[r] = x[(m + 8u * r) * k_len + column];
        }
    }
    return out;
}

// Values part·8 .. +8 of chunk `chunk` of W's row `row`, 0 past the last row.
fn load_w(row: u32, n_len: u32, chunk: u32, part: u32) -> array<f32, 8> {
    var out: array<f32, 8>;
    if (row < n_len) {
        out = dequant8(row, chunk, part);
    }
    return out;
}

// K, the bound of the loop that holds the barriers: read through workgroup memory by invocation 0 so that it is
// uniform for WGSL's uniformity analysis (browsers refuse a barrier in a loop over a storage buffer's value).
var<workgroup> k_shared: u32;

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let m_len = dims[0].x;
    let n_len = dims[0].y;
    if (tid == 0u) {
        k_shared = dims[0].z;
    }
    let k_len = workgroupUniformLoad(&k_shared);
    let has_bias = dims[0].w;
    packing = Packing(n_len, dims[1].x, dims[1].y, dims[1].z);
    let m0 = group.y * TILE_M;
    let n0 = group.x * TILE_N;

    // Loading roles: x row xm + 8r, column xk; W row n0 + wn, values part·8 .. +8 of the chunk.
    let xk = tid % TILE_K;
    let xm = tid / TILE_K;
    let wn = tid / 4u;
    let part = tid % 4u;
    let w_row = n0 + wn;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    let chunks = k_len / TILE_K;
    var x_next: array<f32, 8>;
    var w_next: array<f32, 8>;
    if (chunks > 0u) {
        x_next = load_x(m0 + xm, m_len, k_len, xk);
        w_next = load_w(w_row, n_len, 0u, part);
    }
    for (var chunk = 0u; chunk < chunks; chunk++) {
        for (var r = 0u; r < 8u; r++) {
            xs[(xm + 8u * r) * TILE_K + xk] = work(x_next[r]);
        }
        for (var t = 0u; t < 8u; t++) {
            ws[ws_at(part * 8u + t, wn)] = work(w_next[t]);
        }
        workgroupBarrier();
        if (chunk + 1u < chunks) {
            x_next = load_x(m0 + xm, m_len, k_len, (chunk + 1u) * TILE_K + xk);
            w_next = load_w(w_row, n_len, chunk + 1u, part);
        }
        for (var group8 = 0u; group8 < TILE_K / 8u; group8++) {
            // Where columns local.x + 16j of ws rows 8·group8 .. +8 lie (ws_at's swizzle, once per 8 rows).
            let cols = (vec4<u32>(0u, 16u, 32u, 48u) + local.x) ^ vec4<u32>(group8 * 8u);
            for (var t = 0u; t < 8u; t++) {
                let kk = group8 * 8u + t;
                let a = vec4<work>(
                    xs[local.y * TILE_K + kk],
                    xs[(local.y + 16u) * TILE_K + kk],
                    xs[(local.y + 32u) * TILE_K + kk],
                    xs[(local.y + 48u) * TILE_K + kk],
                );
                let row = kk * TILE_N;
                let b = vec4<work>(ws[row + cols.x], ws[row + cols.y], ws[row + cols.z], ws[row + cols.w]);
                acc0 += vec4<f32>(a.x * b);
                acc1 += vec4<f32>(a.y * b);
                acc2 += vec4<f32>(a.z * b);
                acc3 += vec4<f32>(a.w * b);
            }
        }
        workgroupBarrier();
    }

    var b = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let n = n0 + local.x + 16u * j;
        if (has_bias != 0u && n < n_len) {
            b[j] = bias[n];
        }
    }
    let rows = array<vec4<f32>, 4>(acc0 + b, acc1 + b, acc2 + b, acc3 + b);
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + local.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + local.x + 16u * j;
            if (m < m_len && n < n_len) {
                y[m * n_len + n] = finish(m, n, n_len, rows[i][j]);
            }
        }
    }
}
