// Q5_1: value j = code · d + m, the code's 5th bit in bit j of the chunk's high word, f16 d and m per chunk.
fn dequant8(row: u32, chunk: u32, part: u32) -> array<f32, 8> {
    let i = chunk_index(row, chunk);
    let d = chunk_scale(i, 2u, 0u);
    let m = chunk_scale(i, 2u, 1u);
    let q = nibble_word(i, part);
    let high = word(packing.high + i) >> (8u * part);
    var out: array<f32, 8>;
    for (var t = 0u; t < 8u; t++) {
        let code = ((q >> (4u * t)) & 0xfu) | (((high >> t) & 1u) << 4u);
        out[t] = f32(code) * d + m;
    }
    return out;
}
