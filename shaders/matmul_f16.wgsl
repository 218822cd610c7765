// IEEE half, one value per 2 bytes.
fn dequant8(row: u32, chunk: u32, part: u32) -> array<f32, 8> {
    let first = row + (chunk * 32u + part * 8u) * 2u;
    var out: array<f32, 8>;
    for (var t = 0u; t < 8u; t++) {
        out[t] = read_f16(first + 2u * t);
    }
    return out;
}
