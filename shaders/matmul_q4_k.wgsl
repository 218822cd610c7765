// block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; } (144 bytes, 256 values in 8 sub-blocks of 32).
// Sub-block s: value l = d · scale_s · nibble − dmin · min_s, the nibble of qs[32·(s/2) + l], high when s is odd.
fn dequant8(row: u32, chunk: u32, part: u32) -> array<f32, 8> {
    let block = row + (chunk / 8u) * 144u;
    let s = chunk % 8u;
    let sm = scale_min_k4(block + 4u, s);
    let scale = read_f16(block) * f32(sm.x);
    let min = read_f16(block + 2u) * f32(sm.y);
    let shift = (s % 2u) * 4u;
    let qs = block + 16u + (s / 2u) * 32u + part * 8u;
    var out: array<f32, 8>;
    for (var t = 0u; t < 8u; t++) {
        out[t] = scale * f32((read_u8(qs + t) >> shift) & 0xfu) - min;
    }
    return out;
}
