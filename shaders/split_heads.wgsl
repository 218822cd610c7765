// Attention heads from the projections of up to two streams, with the QK-norm and RoPE on the way: x_a
// [batch, tokens_a, heads·d] and x_b [batch, tokens_b, heads·d] → out [batch, heads, total, d] at tokens
// offset..offset + tokens_a + tokens_b (stream a first), each head vector first RMS-normalised with its
// stream's learned scale (flags 1 and 2: x / √(mean(x²) + ε) · scale), then its channel pairs (2j, 2j + 1)
// rotated by the angles of its position (flag 4: cos and sin [total, d / 2]). Reference twin:
// crate::kernels::fused::reference::split_heads. A row (one head of one token) has LANES invocations, each
// owning the pairs lane, lane + LANES, …; a workgroup has ROWS rows. The host prepends LANES and ROWS (chosen from
// the head width), the output's element type OUT and `to_out`: f32 as it is, or f16 clamped to ±65504 for the f16
// heads of the flash and coop kernels (computed in f32, rounded once as stored, as the coop kernel rounds f32
// heads).
@group(0) @binding(0) var<storage, read_write> x_a: array<f32>;
@group(0) @binding(1) var<storage, read_write> x_b: array<f32>;
@group(0) @binding(2) var<storage, read_write> scale_a: array<f32>;
@group(0) @binding(3) var<storage, read_write> scale_b: array<f32>;
@group(0) @binding(4) var<storage, read_write> cos_table: array<f32>;
@group(0) @binding(5) var<storage, read_write> sin_table: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<OUT>;
// [batch, tokens_a, tokens_b, heads, d, total, offset, flags, ε as f32 bits]
@group(0) @binding(7) var<uniform> dims: array<vec4<u32>, 3>;

// row_sum: shaders/row_sum.wgsl, appended by src/kernels/fused.rs.

fn load(in_a: bool, i: u32) -> f32 {
    if (in_a) {
        return x_a[i];
    }
    return x_b[i];
}

fn norm_scale(in_a: bool, i: u32) -> f32 {
    if (in_a) {
        return scale_a[i];
    }
    return scale_b[i];
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let tokens_a = dims[0].y;
    let tokens_b = dims[0].z;
    let tokens = tokens_a + tokens_b;
    let heads = dims[0].w;
    let d = dims[1].x;
    let offset = dims[1].z;
    let flags = dims[1].w;
    let lane = local % LANES;
    // row = (b · tokens + t) · heads + h
    let row = (wid.x + wid.y * groups.x) * ROWS + local / LANES;
    let pairs = (d + 1u) / 2u;
    // No early return: every invocation reaches the barriers; a row past the end reads and writes nothing.
    let end = select(0u, pairs, row < dims[0].x * tokens * heads);
    let h = row % heads;
    let t = (row / heads) % tokens;
    let b = row / (heads * tokens);
    let in_a = t < tokens_a;
    let src = select(((b * tokens_b + t - tokens_a) * heads + h) * d, ((b * tokens_a + t) * heads + h) * d, in_a);
    let dst = ((b * heads + h) * dims[1].y + offset + t) * d;

    // The sum of squares runs with or without the norm: barriers need control flow the whole workgroup shares.
    var squares = 0.0;
    for (var p = lane; p < end; p = p + LANES) {
        let v0 = load(in_a, src + 2u * p);
        squares = squares + v0 * v0;
        if (2u * p + 1u < d) {
            let v1 = load(in_a, src + 2u * p + 1u);
            squares = squares + v1 * v1;
        }
    }
    let sum_of_squares = row_sum(squares, local);
    let normed = (flags & select(2u, 1u, in_a)) != 0u;
    let inv_rms = select(1.0, 1.0 / sqrt(sum_of_squares / f32(d) + bitcast<f32>(dims[2].x)), normed);
    for (var p = lane; p < end; p = p + LANES) {
        var v0 = load(in_a, src + 2u * p) * inv_rms;
        if (normed) {
            v0 = v0 * norm_scale(in_a, 2u * p);
        }
        if (2u * p + 1u >= d) {
            out[dst + 2u * p] = to_out(v0);
            continue;
        }
        var v1 = load(in_a, src + 2u * p + 1u) * inv_rms;
        if (normed) {
            v1 = v1 * norm_scale(in_a, 2u * p + 1u);
        }
        if ((flags & 4u) != 0u) {
            let angle = (offset + t) * (d / 2u) + p;
            let c = cos_table[angle];
            let s = sin_table[angle];
            out[dst + 2u * p] = to_out(v0 * c - v1 * s);
            out[dst + 2u * p + 1u] = to_out(v0 * s + v1 * c);
        } else {
            out[dst + 2u * p] = to_out(v0);
            out[dst + 2u * p + 1u] = to_out(v1);
        }
    }
}
