// 2×2 patch packing: latents [b, c, h, w] → tokens [b, (h/2)(w/2), 4c], channel-major inside a token.
// Reference twin: crate::latent::pack. One invocation writes one output value.
@group(0) @binding(0) var<storage, read_write> latents: array<f32>;
@group(0) @binding(1) var<storage, read_write> tokens: array<f32>;
// [batch, channels, height, width]
@group(0) @binding(2) var<uniform> dims: array<vec4<u32>, 3>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let batch = dims[0].x;
    let channels = dims[0].y;
    let height = dims[0].z;
    let width = dims[0].w;
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= batch * channels * height * width) {
        return;
    }
    // i = ((b · tokens + t) · 4c + k), k = ch · 4 + dy · 2 + dx, t = y2 · (w/2) + x2
    let per_token = channels * 4u;
    let k = i % per_token;
    let t = (i / per_token) % ((height / 2u) * (width / 2u));
    let b = i / (per_token * (height / 2u) * (width / 2u));
    let ch = k / 4u;
    let y = (t / (width / 2u)) * 2u + (k / 2u) % 2u;
    let x = (t % (width / 2u)) * 2u + k % 2u;
    tokens[i] = latents[((b * channels + ch) * height + y) * width + x];
}
