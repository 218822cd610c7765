// The gated residual add and the next sub-layer's LayerNorm with its modulation, in one pass over each row:
// sum = x + gate · y, normed = (sum − mean) / √(var + ε) · (1 + scale) + shift, x and y [rows, width], row r of
// sample r / tokens, whose gate, shift and scale are rows of [batch, width]. Reference twin:
// crate::kernels::fused::reference::residual_layer_norm_modulate. ROWS rows per workgroup, LANES
// invocations per row (prepended by the host, chosen from the width); each invocation reads back only the sums it
// wrote.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> shift: array<f32>;
@group(0) @binding(4) var<storage, read_write> scale: array<f32>;
@group(0) @binding(5) var<storage, read_write> sum: array<f32>;
@group(0) @binding(6) var<storage, read_write> normed: array<f32>;
// [rows, width, tokens per sample, ε as f32 bits]
@group(0) @binding(7) var<uniform> dims: array<vec4<u32>, 3>;

// row_sum: shaders/row_sum.wgsl, appended by src/kernels/fused.rs.

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let rows = dims[0].x;
    let width = dims[0].y;
    let lane = local % LANES;
    let row = (wid.x + wid.y * groups.x) * ROWS + local / LANES;
    // No early return: every invocation reaches the barriers; a row past the end reads and writes nothing.
    let end = select(0u, width, row < rows);
    let base = row * width;
    let sample = (row / max(dims[0].z, 1u)) * width;
    var total = 0.0;
    for (var i = lane; i < end; i = i + LANES) {
        let s = x[base + i] + gate[sample + i] * y[base + i];
        sum[base + i] = s;
        total = total + s;
    }
    let mean = row_sum(total, local) / f32(width);
    var squares = 0.0;
    for (var i = lane; i < end; i = i + LANES) {
        let centred = sum[base + i] - mean;
        squares = squares + centred * centred;
    }
    let inv_std = 1.0 / sqrt(row_sum(squares, local) / f32(width) + bitcast<f32>(dims[0].w));
    for (var i = lane; i < end; i = i + LANES) {
        normed[base + i] = (sum[base + i] - mean) * inv_std * (1.0 + scale[sample + i]) + shift[sample + i];
    }
}
