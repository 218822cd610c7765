// f32 values, one per word: values 8·part .. +8 of a chunk are two 16-byte words.
fn dequant8(row: u32, chunk: u32, part: u32) -> array<f32, 8> {
    let at = chunk_index(row, chunk) * 8u + 2u * part;
    let low = quad(at);
    let high = quad(at + 1u);
    return array<f32, 8>(
        bitcast<f32>(low.x), bitcast<f32>(low.y), bitcast<f32>(low.z), bitcast<f32>(low.w),
        bitcast<f32>(high.x), bitcast<f32>(high.y), bitcast<f32>(high.z), bitcast<f32>(high.w),
    );
}
