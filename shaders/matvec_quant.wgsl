// y[m, n] = Σ_k x[m, k] · W[n, k] (+ bias[n]) with W [N, K] repacked: the variant for a few rows of x (same
// bindings, `work` and `dequant8` as matmul_quant.wgsl). Reference twin: crate::kernels::quant_matmul::reference.
//
// One workgroup: 32 rows of W (lanes) × 8 slices of K, against rows 4·group.y .. +4 of x. Thread (slice, lane)
// takes row n = 32·group.x + lane, chunks slice, slice + 8, …, whole: a warp reads 32 consecutive chunks of W
// and one broadcast value of x at a time. The slices are then summed.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
// the others: matmul_bindings.wgsl

const LANES: u32 = 32u;
const SLICES: u32 = 8u;
const ROWS: u32 = 4u;

// One partial sum per thread, for the ROWS rows of x: [SLICES, LANES].
var<workgroup> partial: array<vec4<f32>, 256>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let m_len = dims[0].x;
    let n_len = dims[0].y;
    let k_len = dims[0].z;
    let has_bias = dims[0].w;
    packing = Packing(n_len, dims[1].x, dims[1].y, dims[1].z);
    let lane = tid % LANES;
    let slice = tid / LANES;
    let n = group.x * LANES + lane;
    let m0 = group.y * ROWS;

    var acc = vec4<f32>(0.0);
    if (n < n_len) {
        let chunks = k_len / 32u;
        for (var chunk = slice; chunk < chunks; chunk += SLICES) {
            for (var part = 0u; part < 4u; part++) {
                let values = dequant8(n, chunk, part);
                let first = chunk * 32u + part * 8u;
                for (var r = 0u; r < ROWS; r++) {
                    let m = m0 + r;
                    if (m < m_len) {
                        var sum = 0.0;
                        for (var t = 0u; t < 8u; t++) {
                            sum += f32(work(x[m * k_len + first + t]) * work(values[t]));
                        }
                        acc[r] += sum;
                    }
                }
            }
        }
    }
    partial[tid] = acc;
    workgroupBarrier();
    for (var stride = SLICES / 2u; stride > 0u; stride /= 2u) {
        if (slice < stride) {
            partial[tid] += partial[tid + stride * LANES];
        }
        workgroupBarrier();
    }
    if (slice == 0u && n < n_len) {
        var b = 0.0;
        if (has_bias != 0u) {
            b = bias[n];
        }
        for (var r = 0u; r < ROWS; r++) {
            let m = m0 + r;
            if (m < m_len) {
                y[m * n_len + n] = finish(m, n, n_len, partial[tid][r] + b);
            }
        }
    }
}
