// block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; } (210 bytes, 256 values in two halves of 128).
// Value 128h + 32g + l (g < 4, l < 32) = d · scales[8h + 2g + l/16] · (q − 32), with q's low nibble from
// ql[64h + 32·(g%2) + l] (high nibble when g ≥ 2) and its two high bits from bits 2g of qh[32h + l].
fn dequant8(row: u32, chunk: u32, part: u32) -> array<f32, 8> {
    let block = row + (chunk / 8u) * 210u;
    let s = chunk % 8u;
    let h = s / 4u;
    let g = s % 4u;
    let l = part * 8u;
    let scale = read_f16(block + 208u) * f32(read_i8(block + 192u + 8u * h + 2u * g + l / 16u));
    let ql = block + 64u * h + 32u * (g % 2u) + l;
    let qh = block + 128u + 32u * h + l;
    let shift = (g / 2u) * 4u;
    var out: array<f32, 8>;
    for (var t = 0u; t < 8u; t++) {
        let q = ((read_u8(ql + t) >> shift) & 0xfu) | (((read_u8(qh + t) >> (2u * g)) & 3u) << 4u);
        out[t] = scale * f32(i32(q) - 32);
    }
    return out;
}
