// block_q4_1 { f16 d; f16 m; u8 qs[16]; } (20 bytes): value j = nibble · d + m, low nibbles for j < 16.
fn dequant8(row: u32, chunk: u32, part: u32) -> array<f32, 8> {
    let block = row + chunk * 20u;
    let d = read_f16(block);
    let m = read_f16(block + 2u);
    let shift = (part / 2u) * 4u;
    var out: array<f32, 8>;
    for (var t = 0u; t < 8u; t++) {
        let q = (read_u8(block + 4u + (part % 2u) * 8u + t) >> shift) & 0xfu;
        out[t] = f32(q) * d + m;
    }
    return out;
}
