// Byte access to ggml blocks in the u32 array `w` (blocks are not 4-byte aligned), shared by the quantized matmuls.
// Every read is clamped to the array, whatever the index.
fn read_u8(byte: u32) -> u32 {
    let word = min(byte >> 2u, arrayLength(&w) - 1u);
    return (w[word] >> ((byte & 3u) * 8u)) & 0xffu;
}

fn read_i8(byte: u32) -> i32 {
    let v = read_u8(byte);
    return i32(v) - select(0, 256, v >= 128u);
}

// IEEE half at `byte` (little endian) → f32, by bit manipulation (no shader-f16 needed).
fn read_f16(byte: u32) -> f32 {
    let h = read_u8(byte) | (read_u8(byte + 1u) << 8u);
    let exponent = (h >> 10u) & 0x1fu;
    let mantissa = h & 0x3ffu;
    var magnitude: f32;
    if (exponent == 0u) {
        magnitude = f32(mantissa) * 5.9604644775390625e-8;
    } else if (exponent == 31u) {
        magnitude = bitcast<f32>(0x7f800000u | (mantissa << 13u));
    } else {
        magnitude = bitcast<f32>(((exponent + 112u) << 23u) | (mantissa << 13u));
    }
    return select(magnitude, -magnitude, (h & 0x8000u) != 0u);
}

// The 6-bit (scale, min) of sub-block `s` from the 12 packed bytes at `scales` (ggml `get_scale_min_k4`),
// shared by Q4_K and Q5_K.
fn scale_min_k4(scales: u32, s: u32) -> vec2<u32> {
    if (s < 4u) {
        return vec2<u32>(read_u8(scales + s) & 63u, read_u8(scales + s + 4u) & 63u);
    }
    let low = read_u8(scales + s + 4u);
    return vec2<u32>(
        (low & 0xfu) | ((read_u8(scales + s - 4u) >> 6u) << 4u),
        (low >> 4u) | ((read_u8(scales + s) >> 6u) << 4u),
    );
}
