// bfloat16 values (the high half of an f32), two per word: values 8·part .. +8 of a chunk are one 16-byte word.
fn dequant8(row: u32, chunk: u32, part: u32) -> array<f32, 8> {
    let q = quad(chunk_index(row, chunk) * 4u + part);
    var out: array<f32, 8>;
    for (var t = 0u; t < 4u; t++) {
        out[2u * t] = bitcast<f32>(q[t] << 16u);
        out[2u * t + 1u] = bitcast<f32>(q[t] & 0xffff0000u);
    }
    return out;
}
