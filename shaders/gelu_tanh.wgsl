// GELU with the tanh approximation, elementwise: y = x · (1 + tanh(√(2/π) · (x + 0.044715 x³))) / 2, x [rows,
// width] into the columns col_offset.. of y's rows, dst_width wide (a single block's MLP beside its attention).
// Reference twin: crate::kernels::fused::reference::gelu_tanh. One invocation per value.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
// [values, width, dst_width, col_offset]
@group(0) @binding(2) var<uniform> dims: array<vec4<u32>, 3>;

const SQRT_2_OVER_PI: f32 = 0.7978845608028654;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= dims[0].x) {
        return;
    }
    let v = x[i];
    // tanh of large arguments is 1 (or −1): WGSL's tanh may return NaN past the f32 range of its exponentials.
    let inner = clamp(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v), -15.0, 15.0);
    let width = dims[0].y;
    y[(i / width) * dims[0].z + dims[0].w + i % width] = v * (1.0 + tanh(inner)) * 0.5;
}
