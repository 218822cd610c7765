// block_q4_0 { f16 d; u8 qs[16]; } (18 bytes): value j = (nibble − 8) · d, low nibbles for j < 16.
fn dequant8(row: u32, chunk: u32, part: u32) -> array<f32, 8> {
    let block = row + chunk * 18u;
    let d = read_f16(block);
    let shift = (part / 2u) * 4u;
    var out: array<f32, 8>;
    for (var t = 0u; t < 8u; t++) {
        let q = (read_u8(block + 2u + (part % 2u) * 8u + t) >> shift) & 0xfu;
        out[t] = f32(i32(q) - 8) * d;
    }
    return out;
}
