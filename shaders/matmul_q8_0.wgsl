// block_q8_0 { f16 d; i8 qs[32]; } (34 bytes): value j = qs[j] · d.
fn dequant8(row: u32, chunk: u32, part: u32) -> array<f32, 8> {
    let block = row + chunk * 34u;
    let d = read_f16(block);
    var out: array<f32, 8>;
    for (var t = 0u; t < 8u; t++) {
        out[t] = f32(read_i8(block + 2u + part * 8u + t)) * d;
    }
    return out;
}
