// The gated residual add of the DiT blocks: out = x + gate · y, x and y [rows, width], row r of sample
// r / tokens, whose gate is a row of [batch, width]. Reference twin: crate::kernels::fused::reference::gated_add.
// One invocation per value.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// [values, width, tokens per sample]
@group(0) @binding(4) var<uniform> dims: array<vec4<u32>, 3>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= dims[0].x) {
        return;
    }
    let width = dims[0].y;
    let row = i / width;
    out[i] = x[i] + gate[(row / max(dims[0].z, 1u)) * width + i % width] * y[i];
}
