// Q5_0: value j = (code − 16) · d, the code's 5th bit in bit j of the chunk's high word, one f16 d per chunk.
fn dequant8(row: u32, chunk: u32, part: u32) -> array<f32, 8> {
    let i = chunk_index(row, chunk);
    let d = chunk_scale(i, 1u, 0u);
    let q = nibble_word(i, part);
    let high = word(packing.high + i) >> (8u * part);
    var out: array<f32, 8>;
    for (var t = 0u; t < 8u; t++) {
        let code = ((q >> (4u * t)) & 0xfu) | (((high >> t) & 1u) << 4u);
        out[t] = f32(i32(code) - 16) * d;
    }
    return out;
}
