// GELU with the tanh approximation (gelu.wgsl, prepended), elementwise: x [rows, width] into the columns
// col_offset.. of y's rows, dst_width wide (a single block's MLP beside its attention). Reference twin:
// crate::kernels::fused::reference::gelu_tanh. One invocation per value.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
// [values, width, dst_width, col_offset]
@group(0) @binding(2) var<uniform> dims: array<vec4<u32>, 3>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= dims[0].x) {
        return;
    }
    let width = dims[0].y;
    y[(i / width) * dims[0].z + dims[0].w + i % width] = gelu_tanh(x[i]);
}
