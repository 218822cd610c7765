// The bindings every packed matmul shares but its x (binding 0, which each kernel declares as it reads it):
// the repacked weights, the bias, y, the epilogue's residual and gate (matmul_epilogue.wgsl), and the parameters
// [m, n, k, has bias, first word of the high bits, of the scales, of the super-block scales, the epilogue
// (matmul_epilogue.wgsl), tokens per gate row].
@group(0) @binding(1) var<storage, read_write> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> gate: array<f32>;
@group(0) @binding(6) var<uniform> dims: array<vec4<u32>, 3>;
