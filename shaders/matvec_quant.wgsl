// y[m, n] = Σ_k x[m, k] · W[n, k] (+ bias[n]) with W [N, K] in ggml blocks: the variant for a few rows of x
// (same bindings, `act` and `dequant8` as matmul_quant.wgsl). Reference twin: crate::kernels::quant_matmul::reference.
//
// One workgroup: 8 teams of 32 threads, team r computing row n = 8·group.x + r of W against rows
// 4·group.y .. +4 of x. Lane l takes the 8-value parts l, l + 32, … of the row; the team then sums its lanes.
@group(0) @binding(0) var<storage, read_write> x: array<act>;
@group(0) @binding(1) var<storage, read_write> w: array<u32>;
@group(0) @binding(2) var<storage, read_write> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<act>;
// [m, n, k, bytes per row of W, has bias]
@group(0) @binding(4) var<storage, read_write> dims: array<u32>;

const TEAM: u32 = 32u;
const TEAMS: u32 = 8u;
const ROWS: u32 = 4u;

// One partial sum per thread, for the ROWS rows of x.
var<workgroup> partial: array<vec4<f32>, 256>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let m_len = dims[0];
    let n_len = dims[1];
    let k_len = dims[2];
    let row_bytes = dims[3];
    let has_bias = dims[4];
    let lane = tid % TEAM;
    let n = group.x * TEAMS + tid / TEAM;
    let m0 = group.y * ROWS;

    var acc = vec4<f32>(0.0);
    if (n < n_len) {
        let parts = k_len / 8u;
        for (var p = lane; p < parts; p += TEAM) {
            let values = dequant8(n * row_bytes, p / 4u, p % 4u);
            for (var r = 0u; r < ROWS; r++) {
                let m = m0 + r;
                if (m < m_len) {
                    var sum = 0.0;
                    for (var t = 0u; t < 8u; t++) {
                        sum += f32(x[m * k_len + p * 8u + t]) * values[t];
                    }
                    acc[r] += sum;
                }
            }
        }
    }
    partial[tid] = acc;
    workgroupBarrier();
    for (var stride = TEAM / 2u; stride > 0u; stride /= 2u) {
        if (lane < stride) {
            partial[tid] += partial[tid + stride];
        }
        workgroupBarrier();
    }
    if (lane == 0u && n < n_len) {
        var b = 0.0;
        if (has_bias != 0u) {
            b = bias[n];
        }
        for (var r = 0u; r < ROWS; r++) {
            let m = m0 + r;
            if (m < m_len) {
                y[m * n_len + n] = act(partial[tid][r] + b);
            }
        }
    }
}
