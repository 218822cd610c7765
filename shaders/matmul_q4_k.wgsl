// Q4_K: value j = (D · scale) · code − Dmin · min, with the sub-block's 6-bit scale | min << 8 per chunk and the
// f16 D, Dmin per 256 values.
fn dequant8(row: u32, chunk: u32, part: u32) -> array<f32, 8> {
    let i = chunk_index(row, chunk);
    let scale_min = half_bits(packing.scales, i);
    let scale = super_scale(row, chunk, 2u, 0u) * f32(scale_min & 0xffu);
    let min = super_scale(row, chunk, 2u, 1u) * f32(scale_min >> 8u);
    let q = nibble_word(i, part);
    var out: array<f32, 8>;
    for (var t = 0u; t < 8u; t++) {
        out[t] = scale * f32((q >> (4u * t)) & 0xfu) - min;
    }
    return out;
}
