// block_q5_1 { f16 d; f16 m; u8 qh[4]; u8 qs[16]; } (24 bytes): value j = (nibble | bit j of qh << 4) · d + m.
fn dequant8(row: u32, chunk: u32, part: u32) -> array<f32, 8> {
    let block = row + chunk * 24u;
    let d = read_f16(block);
    let m = read_f16(block + 2u);
    let qh = read_u8(block + 4u) | (read_u8(block + 5u) << 8u) | (read_u8(block + 6u) << 16u) | (read_u8(block + 7u) << 24u);
    let shift = (part / 2u) * 4u;
    var out: array<f32, 8>;
    for (var t = 0u; t < 8u; t++) {
        let j = part * 8u + t;
        let q = ((read_u8(block + 8u + (part % 2u) * 8u + t) >> shift) & 0xfu) | (((qh >> j) & 1u) << 4u);
        out[t] = f32(q) * d + m;
    }
    return out;
}
