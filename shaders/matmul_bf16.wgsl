// bfloat16, one value per 2 bytes: the high half of an f32.
fn dequant8(row: u32, chunk: u32, part: u32) -> array<f32, 8> {
    let first = row + (chunk * 32u + part * 8u) * 2u;
    var out: array<f32, 8>;
    for (var t = 0u; t < 8u; t++) {
        out[t] = bitcast<f32>((read_u8(first + 2u * t) | (read_u8(first + 2u * t + 1u) << 8u)) << 16u);
    }
    return out;
}
