// Inverse of pack_latents: tokens [b, (h/2)(w/2), 4c] → latents [b, c, h, w].
// Reference twin: crate::latent::unpack. One invocation writes one output value.
@group(0) @binding(0) var<storage, read_write> tokens: array<f32>;
@group(0) @binding(1) var<storage, read_write> latents: array<f32>;
// [batch, channels, height, width] of the unpacked latents
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
    let x = i % width;
    let y = (i / width) % height;
    let ch = (i / (width * height)) % channels;
    let b = i / (width * height * channels);
    let t = (y / 2u) * (width / 2u) + x / 2u;
    let k = ch * 4u + (y % 2u) * 2u + x % 2u;
    latents[i] = tokens[(b * (height / 2u) * (width / 2u) + t) * channels * 4u + k];
}
