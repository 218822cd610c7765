// Reading the repacked weights (crate::kernels::repack) from the binding `w`, shared by the quantized matmuls:
// chunks of 32 values of one row stored chunk-major (chunk c of row r is number c·N + r), quants in whole
// 16-byte words, then the high bits, the per-chunk scales and the K-quants' super-block scales. Each kernel sets
// `packing` from its parameters before it reads a weight.
struct Packing {
    // N: the stride between chunks of one row.
    rows: u32,
    // First words of the high bits, the scales and the super-block scales.
    high: u32,
    scales: u32,
    supers: u32,
}

var<private> packing: Packing;

// The 16-byte word `i`, clamped to the array whatever the index.
fn quad(i: u32) -> vec4<u32> {
    return w[min(i, arrayLength(&w) - 1u)];
}

fn word(i: u32) -> u32 {
    return quad(i >> 2u)[i & 3u];
}

// Half `i` of the section starting at word `at`.
fn half_bits(at: u32, i: u32) -> u32 {
    return (word(at + (i >> 1u)) >> ((i & 1u) * 16u)) & 0xffffu;
}

// The chunk number of chunk `chunk` of row `row`.
fn chunk_index(row: u32, chunk: u32) -> u32 {
    return chunk * packing.rows + row;
}

// IEEE half bits → f32, exactly (no shader-f16 needed).
fn f16_bits_to_f32(h: u32) -> f32 {
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

// The f16 scale half `s` of chunk `i` (`halves` halves per chunk).
fn chunk_scale(i: u32, halves: u32, s: u32) -> f32 {
    return f16_bits_to_f32(half_bits(packing.scales, i * halves + s));
}

// The super-block scale half `s` (of `halves`) of the 256 values holding chunk `chunk` of row `row`.
fn super_scale(row: u32, chunk: u32, halves: u32, s: u32) -> f32 {
    return f16_bits_to_f32(half_bits(packing.supers, ((chunk / 8u) * packing.rows + row) * halves + s));
}

// The 4-bit codes of values 8·part .. +8 of chunk `i` (value 8·part + t in bits 4t).
fn nibble_word(i: u32, part: u32) -> u32 {
    return word(i * 4u + part);
}
