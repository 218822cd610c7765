// y[m, n] = Σ_k x[m, k] · W[n, k] (+ bias[n]) with W [N, K] repacked: the variant for many rows of x (same
// `work` and `dequant8` as matmul_quant.wgsl, x read as vec4s). Reference twin:
// crate::kernels::quant_matmul::reference.
//
// One workgroup of 16×16 threads computes a 128×128 tile of y in steps of 16 along K; thread (tx, ty) owns the
// 8×8 outputs at rows 4ty + i and 64 + 4ty + i, columns 4tx + j and 64 + 4tx + j (i, j < 4), read from shared
// memory as vec4s: 4 loads per 64 multiply-adds. Two consecutive threads load the two halves of a step of one
// row of W, so that a warp reads consecutive words. Double-buffered through registers like matmul_quant.wgsl:
// the next step's values are loaded while the current tiles are multiplied.
@group(0) @binding(0) var<storage, read_write> x: array<vec4<f32>>;
// the others: matmul_bindings.wgsl

const TILE: u32 = 128u;
const STEP: u32 = 16u;

// [STEP, TILE / 4]: x values at (k, m = 4·q + c) in xs[k · 32 + q][c]
var<workgroup> xs: array<vec4<work>, 512>;
// [STEP, TILE / 4]: W values at (k, n = 4·q + c) in ws[ws_at(k, q)][c], swizzled so that the stores of a warp hit
// 32 banks
var<workgroup> ws: array<vec4<work>, 512>;

fn ws_at(k: u32, q: u32) -> u32 {
    return k * 32u + (q ^ ((k >> 3u) << 2u));
}

fn store(m: u32, n_len: u32, n: u32, value: vec4<f32>, b: vec4<f32>) {
    let sum = value + b;
    for (var j = 0u; j < 4u; j++) {
        if (n + j < n_len) {
            y[m * n_len + n + j] = finish(m, n + j, n_len, sum[j]);
        }
    }
}

// The vec4 `vec4s` (counted along the row) of x's row m, 0 past the last row.
fn load_x(m: u32, m_len: u32, k_len: u32, vec4s: u32) -> vec4<f32> {
    if (m < m_len) {
        return x[m * k_len / 4u + vec4s];
    }
    return vec4<f32>(0.0);
}

// Values 8·half .. +8 of step `step` (16 values) of W's row `row`, 0 past the last row.
fn load_w(row: u32, n_len: u32, step: u32, half: u32) -> array<f32, 8> {
    var out: array<f32, 8>;
    if (row < n_len) {
        out = dequant8(row, step / 2u, (step % 2u) * 2u + half);
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
    let m0 = group.y * TILE;
    let n0 = group.x * TILE;

    // Loading roles: x rows xm and 64 + xm, columns 4·xq .. +4; W row n0 + wn, values 8·half .. +8 of the step.
    let xq = tid % 4u;
    let xm = tid / 4u;
    let wn = tid / 2u;
    let half = tid % 2u;
    let w_row = n0 + wn;

    var c00 = vec4<f32>(0.0); var c01 = vec4<f32>(0.0); var c02 = vec4<f32>(0.0); var c03 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0); var c11 = vec4<f32>(0.0); var c12 = vec4<f32>(0.0); var c13 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0); var c21 = vec4<f32>(0.0); var c22 = vec4<f32>(0.0); var c23 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0); var c31 = vec4<f32>(0.0); var c32 = vec4<f32>(0.0); var c33 = vec4<f32>(0.0);

    let steps = k_len / STEP;
    var x_lo = vec4<f32>(0.0);
    var x_hi = vec4<f32>(0.0);
    var w_next: array<f32, 8>;
    if (steps > 0u) {
        x_lo = load_x(m0 + xm, m_len, k_len, xq);
        x_hi = load_x(m0 + 64u + xm, m_len, k_len, xq);
        w_next = load_w(w_row, n_len, 0u, half);
    }
    for (var step = 0u; step < steps; step++) {
        for (var c = 0u; c < 4u; c++) {
            xs[(4u * xq + c) * 32u + xm / 4u][xm % 4u] = work(x_lo[c]);
            xs[(4u * xq + c) * 32u + 16u + xm / 4u][xm % 4u] = work(x_hi[c]);
        }
        for (var t = 0u; t < 8u; t++) {
            ws[ws_at(half * 8u + t, wn / 4u)][wn % 4u] = work(w_next[t]);
        }
        workgroupBarrier();
        if (step + 1u < steps) {
            let vec4s = (step + 1u) * (STEP / 4u) + xq;
            x_lo = load_x(m0 + xm, m_len, k_len, vec4s);
            x_hi = load_x(m0 + 64u + xm, m_len, k_len, vec4s);
            w_next = load_w(w_row, n_len, step + 1u, half);
        }
        for (var group8 = 0u; group8 < STEP / 8u; group8++) {
            // Where vec4s local.x and 16 + local.x of ws rows 8·group8 .. +8 lie (ws_at's swizzle).
            let q0 = local.x ^ (group8 * 4u);
            let q1 = (16u + local.x) ^ (group8 * 4u);
            for (var t = 0u; t < 8u; t++) {
                let kk = group8 * 8u + t;
                let a0 = xs[kk * 32u + local.y];
                let a1 = xs[kk * 32u + 16u + local.y];
                let b0 = ws[kk * 32u + q0];
                let b1 = ws[kk * 32u + q1];
                c00 += vec4<f32>(a0.x * b0); c01 += vec4<f32>(a0.y * b0);
                c02 += vec4<f32>(a0.z * b0); c03 += vec4<f32>(a0.w * b0);
                c10 += vec4<f32>(a0.x * b1); c11 += vec4<f32>(a0.y * b1);
                c12 += vec4<f32>(a0.z * b1); c13 += vec4<f32>(a0.w * b1);
                c20 += vec4<f32>(a1.x * b0); c21 += vec4<f32>(a1.y * b0);
                c22 += vec4<f32>(a1.z * b0); c23 += vec4<f32>(a1.w * b0);
                c30 += vec4<f32>(a1.x * b1); c31 += vec4<f32>(a1.y * b1);
                c32 += vec4<f32>(a1.z * b1); c33 += vec4<f32>(a1.w * b1);
            }
        }
        workgroupBarrier();
    }

    let n_lo = n0 + 4u * local.x;
    let n_hi = n_lo + 64u;
    var b_lo = vec4<f32>(0.0);
    var b_hi = vec4<f32>(0.0);
    if (has_bias != 0u) {
        for (var j = 0u; j < 4u; j++) {
            if (n_lo + j < n_len) { b_lo[j] = bias[n_lo + j]; }
            if (n_hi + j < n_len) { b_hi[j] = bias[n_hi + j]; }
        }
    }
    let m_lo = m0 + 4u * local.y;
    let m_hi = m_lo + 64u;
    if (m_lo < m_len) { store(m_lo, n_len, n_lo, c00, b_lo); store(m_lo, n_len, n_hi, c10, b_hi); }
    if (m_lo + 1u < m_len) { store(m_lo + 1u, n_len, n_lo, c01, b_lo); store(m_lo + 1u, n_len, n_hi, c11, b_hi); }
    if (m_lo + 2u < m_len) { store(m_lo + 2u, n_len, n_lo, c02, b_lo); store(m_lo + 2u, n_len, n_hi, c12, b_hi); }
    if (m_lo + 3u < m_len) { store(m_lo + 3u, n_len, n_lo, c03, b_lo); store(m_lo + 3u, n_len, n_hi, c13, b_hi); }
    if (m_hi < m_len) { store(m_hi, n_len, n_lo, c20, b_lo); store(m_hi, n_len, n_hi, c30, b_hi); }
    if (m_hi + 1u < m_len) { store(m_hi + 1u, n_len, n_lo, c21, b_lo); store(m_hi + 1u, n_len, n_hi, c31, b_hi); }
    if (m_hi + 2u < m_len) { store(m_hi + 2u, n_len, n_lo, c22, b_lo); store(m_hi + 2u, n_len, n_hi, c32, b_hi); }
    if (m_hi + 3u < m_len) { store(m_hi + 3u, n_len, n_lo, c23, b_lo); store(m_hi + 3u, n_len, n_hi, c33, b_hi); }
}
