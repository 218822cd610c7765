// Q4_0: value j = (code − 8) · d, one f16 d per chunk.
fn dequant8(row: u32, chunk: u32, part: u32) -> array<f32, 8> {
    let i = chunk_index(row, chunk);
    let d = chunk_scale(i, 1u, 0u);
    let q = nibble_word(i, part);
    var out: array<f32, 8>;
    for (var t = 0u; t < 8u; t++) {
        out[t] = f32(i32((q >> (4u * t)) & 0xfu) - 8) * d;
    }
    return out;
}
