// Draws a picture held in a GPU buffer onto a render target (a canvas's texture), nearest-sampled to the
// target's size: the decoded image, planar `[3, h, w]` in [0, 1], or packed latents `[(h/2)(w/2), 64]` mapped
// to colour by the preview's linear projection (`pipeline::preview`). One full-screen triangle; no vertex buffer.

struct Params {
    // Source width, height (pixels of the image, or latent pixels), kind (0 image, 1 latents), unused.
    source: vec4<u32>,
    // Output (target) width, height, unused, unused.
    output: vec4<u32>,
    // The projection `rgb[c] = Σ_k w[c·17 + k]·z[k] + w[c·17 + 16]`, 51 values in 13 vec4s.
    projection: array<vec4<f32>, 13>,
}

@group(0) @binding(0) var<storage, read> picture: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;

const IMAGE: u32 = 0u;
const CHANNELS: u32 = 16u;
const FEATURES: u32 = 17u;

@vertex
fn vertex(@builtin(vertex_index) index: u32) -> @builtin(position) vec4<f32> {
    // (-1, -1), (3, -1), (-1, 3): a triangle covering the whole target.
    let corner = vec2<f32>(f32((index << 1u) & 2u), f32(index & 2u));
    return vec4<f32>(corner * 2.0 - 1.0, 0.0, 1.0);
}

fn weight(c: u32, k: u32) -> f32 {
    let flat = c * FEATURES + k;
    return params.projection[flat / 4u][flat % 4u];
}

@fragment
fn fragment(@builtin(position) position: vec4<f32>) -> @location(0) vec4<f32> {
    let source = params.source.xy;
    let target_size = params.output.xy;
    // The source pixel under this target pixel (nearest).
    let x = min(u32(position.x) * source.x / target_size.x, source.x - 1u);
    let y = min(u32(position.y) * source.y / target_size.y, source.y - 1u);
    var rgb: vec3<f32>;
    if params.source.z == IMAGE {
        let plane = source.x * source.y;
        let at = y * source.x + x;
        rgb = vec3<f32>(picture[at], picture[plane + at], picture[2u * plane + at]);
    } else {
        // Token (y/2, x/2) holds channel-major 2×2 patches: channel k at k·4 + (y%2)·2 + x%2.
        let token = (y / 2u) * (source.x / 2u) + x / 2u;
        let base = token * CHANNELS * 4u + (y % 2u) * 2u + x % 2u;
        for (var c = 0u; c < 3u; c++) {
            var value = weight(c, CHANNELS);
            for (var k = 0u; k < CHANNELS; k++) {
                value += weight(c, k) * picture[base + k * 4u];
            }
            rgb[c] = value;
        }
    }
    return vec4<f32>(clamp(rgb, vec3<f32>(0.0), vec3<f32>(1.0)), 1.0);
}
