// The attention's output back to token-major rows: src [batch, heads, total, d], tokens
// token_start..token_start + tokens → rows of heads·d values at column col_offset of rows dst_width wide; the
// first `split` tokens go to dst_a ([batch, split, dst_width]), the rest to dst_b ([batch, tokens − split,
// dst_width]): the text and image streams of a double block, or a single block's attention beside its MLP.
// Reference twin: crate::kernels::fused::reference::merge_heads. One invocation per value, in dst order.
@group(0) @binding(0) var<storage, read_write> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst_a: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst_b: array<f32>;
// [batch, heads, total, d, token_start, tokens, split, dst_width, col_offset]
@group(0) @binding(3) var<uniform> dims: array<vec4<u32>, 3>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let heads = dims[0].y;
    let total = dims[0].z;
    let d = dims[0].w;
    let tokens = dims[1].y;
    let split = dims[1].z;
    let dst_width = dims[1].w;
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= dims[0].x * tokens * heads * d) {
        return;
    }
    // i = ((b · tokens + t) · heads + h) · d + e
    let e = i % d;
    let h = (i / d) % heads;
    let t = (i / (d * heads)) % tokens;
    let b = i / (d * heads * tokens);
    let value = src[((b * heads + h) * total + dims[1].x + t) * d + e];
    let column = dims[2].x + h * d + e;
    if (t < split) {
        dst_a[(b * split + t) * dst_width + column] = value;
    } else {
        dst_b[(b * (tokens - split) + t - split) * dst_width + column] = value;
    }
}
