// Q6_K: value j = (D · scale) · (code − 32), the code's two high bits at bits 2·(j % 16) of the chunk's high word
// j / 16, the i8 scales of values 0..16 and 16..32 as the chunk's scale half and the f16 D per 256 values.
fn dequant8(row: u32, chunk: u32, part: u32) -> array<f32, 8> {
    let i = chunk_index(row, chunk);
    let scale_byte = (half_bits(packing.scales, i) >> (8u * (part / 2u))) & 0xffu;
    let scale = super_scale(row, chunk, 1u, 0u) * f32(bitcast<i32>(scale_byte << 24u) >> 24u);
    let q = nibble_word(i, part);
    let high = word(packing.high + i * 2u + part / 2u) >> (16u * (part & 1u));
    var out: array<f32, 8>;
    for (var t = 0u; t < 8u; t++) {
        let code = ((q >> (4u * t)) & 0xfu) | (((high >> (2u * t)) & 3u) << 4u);
        out[t] = scale * f32(i32(code) - 32);
    }
    return out;
}
