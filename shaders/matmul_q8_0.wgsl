// Q8_0: value j = (signed byte j) · d, eight quant words per chunk, one f16 d per chunk.
fn dequant8(row: u32, chunk: u32, part: u32) -> array<f32, 8> {
    let i = chunk_index(row, chunk);
    let d = chunk_scale(i, 1u, 0u);
    let both = quad(i * 2u + part / 2u);
    let q = select(both.xy, both.zw, (part & 1u) != 0u);
    var out: array<f32, 8>;
    for (var t = 0u; t < 4u; t++) {
        out[t] = f32(bitcast<i32>(q.x << (24u - 8u * t)) >> 24u) * d;
        out[t + 4u] = f32(bitcast<i32>(q.y << (24u - 8u * t)) >> 24u) * d;
    }
    return out;
}
