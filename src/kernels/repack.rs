//! GGUF weights rearranged at load into the layout the packed matmuls read (`shaders/packed_weights.wgsl`).
//!
//! A weight `[n, k]` is cut into chunks of 32 values of one row. Chunks are stored chunk-major (chunk `c` of
//! row `r` is chunk number `c · n + r`), so that threads working on consecutive rows read consecutive memory.
//! One buffer of `u32` words holds four sections, each starting on a 16-byte boundary:
//! - **quants**, a whole number of 16-byte words per chunk: the low 4 bits of every value (4-, 5- and 6-bit
//!   types; value `j` in bits `4·(j % 8)` of word `j / 8`), the bytes of Q8_0 (value `j` in byte `j % 4` of
//!   word `j / 4`), the halves of F16/BF16 (value `j` in half `j % 2` of word `j / 2`) or the words of F32
//!   (value `j` in word `j`);
//! - **high bits** of 5-bit types (one word per chunk, bit `j` for value `j`) and Q6_K (two words, bits
//!   `2·(j % 16)` of word `j / 16`);
//! - **scales**, halves per chunk: the f16 `d` (and `m`) of the legacy types, the unpacked 6-bit
//!   `scale | min << 8` of a Q4_K/Q5_K sub-block, the two i8 scales of Q6_K's 16-value groups;
//! - **super-block scales** of the K-quants, halves per 256 values (`d`, `dmin`; Q6_K's `d`), chunk-major too.
//!
//! Values keep their codes and scales exactly, so dequantizing the layout equals ggml's dequantization bit for
//! bit ([`dequantize`], the host twin of the shader functions, is compared with
//! [`crate::formats::dequantize`]); the layout takes at most a few words more than the file (section padding,
//! and Q4_K/Q5_K's 6-bit scales unpacked to bytes: 2.8 % and 2.3 %).

use crate::formats::GgmlType;
use crate::{Error, Result};

/// Values per chunk.
pub const CHUNK: usize = 32;
/// Chunks per K-quant super-block (256 values).
const CHUNKS_PER_SUPER: usize = 8;

/// How one type's chunks are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Format {
    /// Bits of each value's code: 4, 5, 6, 8, 16 or 32.
    bits: u32,
    /// Scale halves per chunk.
    scale_halves: usize,
    /// Super-block scale halves per 256 values.
    super_halves: usize,
}

fn format(ty: GgmlType) -> Option<Format> {
    use GgmlType::*;
    let (bits, scale_halves, super_halves) = match ty {
        Q4_0 => (4, 1, 0),
        Q4_1 => (4, 2, 0),
        Q5_0 => (5, 1, 0),
        Q5_1 => (5, 2, 0),
        Q8_0 => (8, 1, 0),
        Q4_K => (4, 1, 2),
        Q5_K => (5, 1, 2),
        Q6_K => (6, 1, 1),
        F16 | BF16 => (16, 0, 0),
        F32 => (32, 0, 0),
        _ => return None,
    };
    Some(Format { bits, scale_halves, super_halves })
}

/// Whether [`repack`] takes `ty`.
pub fn has_layout(ty: GgmlType) -> bool {
    format(ty).is_some()
}

/// Where the sections of one repacked weight lie, in `u32` words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Rows of the weight (`n`): the stride between chunks of the same row.
    pub rows: usize,
    /// Chunks per row (`k / 32`).
    pub chunks: usize,
    /// Quant words per chunk (4, 8, 16 or 32).
    pub quant_words: usize,
    /// High-bit words per chunk (0, 1 or 2).
    pub high_words: usize,
    /// Scale halves per chunk.
    pub scale_halves: usize,
    /// Super-block scale halves per 256 values of a row.
    pub super_halves: usize,
    /// First word of the high bits.
    pub high_at: usize,
    /// First word of the scales.
    pub scales_at: usize,
    /// First word of the super-block scales.
    pub supers_at: usize,
    /// Words in all.
    pub words: usize,
}

impl Layout {
    /// The layout of a `ty` weight `[n, k]`; `None` for types without one. `k` must be whole chunks (and whole
    /// 256-value blocks for the K-quants), as [`repack`] checks.
    pub fn new(ty: GgmlType, n: usize, k: usize) -> Option<Self> {
        let f = format(ty)?;
        let chunks = k / CHUNK;
        let count = n * chunks;
        let quant_words = match f.bits {
            4..=6 => 4,
            8 => 8,
            16 => 16,
            _ => 32,
        };
        let high_words = match f.bits {
            5 => 1,
            6 => 2,
            _ => 0,
        };
        let aligned = |words: usize| words.next_multiple_of(4);
        let high_at = aligned(count * quant_words);
        let scales_at = aligned(high_at + count * high_words);
        let supers_at = aligned(scales_at + (count * f.scale_halves).div_ceil(2));
        let supers = n * chunks.div_ceil(CHUNKS_PER_SUPER) * f.super_halves;
        let words = aligned(supers_at + supers.div_ceil(2));
        Some(Self {
            rows: n,
            chunks,
            quant_words,
            high_words,
            scale_halves: f.scale_halves,
            super_halves: f.super_halves,
            high_at,
            scales_at,
            supers_at,
            words,
        })
    }

    /// Bytes the repacked weight takes.
    pub fn bytes(&self) -> usize {
        self.words * size_of::<u32>()
    }
}

/// One chunk as decoded from its ggml block: the unsigned code of each value and the chunk's scale halves.
#[derive(Debug, Clone, Copy, Default)]
struct Chunk {
    codes: [u32; CHUNK],
    scales: [u16; 2],
}

fn half(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` from the 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u16, u16) {
    let (scale, min) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    };
    (scale as u16, min as u16)
}

/// Decodes the ggml block `b` into its chunks (1 for the legacy types, 8 for the K-quants, `block / 32` of the
/// float types' single values) and its super-block scale halves.
fn decode(ty: GgmlType, b: &[u8], chunks: &mut [Chunk], supers: &mut [u16; 2]) {
    use GgmlType::*;
    let nibbles = |qs: &[u8], j: usize| (qs[j % 16] >> (4 * (j / 16))) as u32 & 0xF;
    match ty {
        Q8_0 => {
            chunks[0].scales[0] = half(b, 0);
            chunks[0].codes.iter_mut().zip(&b[2..34]).for_each(|(c, &q)| *c = q as u32);
        }
        Q4_0 | Q4_1 => {
            let qs_at = if ty == Q4_0 { 2 } else { 4 };
            chunks[0].scales = [half(b, 0), if ty == Q4_1 { half(b, 2) } else { 0 }];
            (0..CHUNK).for_each(|j| chunks[0].codes[j] = nibbles(&b[qs_at..], j));
        }
        Q5_0 | Q5_1 => {
            let qh_at = if ty == Q5_0 { 2 } else { 4 };
            let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
            chunks[0].scales = [half(b, 0), if ty == Q5_1 { half(b, 2) } else { 0 }];
            let qs = &b[qh_at + 4..];
            (0..CHUNK).for_each(|j| chunks[0].codes[j] = nibbles(qs, j) | ((qh >> j) & 1) << 4);
        }
        Q4_K | Q5_K => {
            *supers = [half(b, 0), half(b, 2)];
            let qs_at = if ty == Q4_K { 16 } else { 48 };
            for (s, chunk) in chunks.iter_mut().enumerate() {
                let (scale, min) = scale_min_k4(s, &b[4..16]);
                chunk.scales[0] = scale | min << 8;
                let qs = &b[qs_at + 32 * (s / 2)..];
                for (l, code) in chunk.codes.iter_mut().enumerate() {
                    *code = (qs[l] >> (4 * (s % 2))) as u32 & 0xF;
                    if ty == Q5_K {
                        *code |= (((b[16 + l] >> s) & 1) as u32) << 4;
                    }
                }
            }
        }
        Q6_K => {
            supers[0] = half(b, 208);
            for (s, chunk) in chunks.iter_mut().enumerate() {
                let (h, g) = (s / 4, s % 4);
                let scale = 192 + 8 * h + 2 * g;
                chunk.scales[0] = b[scale] as u16 | (b[scale + 1] as u16) << 8;
                for (l, code) in chunk.codes.iter_mut().enumerate() {
                    let low = (b[64 * h + 32 * (g % 2) + l] >> (4 * (g / 2))) & 0xF;
                    let high = (b[128 + 32 * h + l] >> (2 * g)) & 3;
                    *code = (low | high << 4) as u32;
                }
            }
        }
        F16 | BF16 => {
            for (c, chunk) in chunks.iter_mut().enumerate() {
                (0..CHUNK).for_each(|j| chunk.codes[j] = half(b, 2 * (c * CHUNK + j)) as u32);
            }
        }
        F32 => {
            let word = |j: usize| u32::from_le_bytes([b[4 * j], b[4 * j + 1], b[4 * j + 2], b[4 * j + 3]]);
            (0..CHUNK).for_each(|j| chunks[0].codes[j] = word(j));
        }
        _ => unreachable!("types without a layout are refused before decoding"),
    }
}

/// The block bytes of a `ty` weight `[n, k]` (as [`crate::formats::GgufFile::raw`] returns them) in the
/// layout of [`Layout::new`].
pub fn repack(ty: GgmlType, n: usize, k: usize, bytes: &[u8]) -> Result<(Layout, Vec<u32>)> {
    let block_values = ty.block_size().max(CHUNK);
    let layout = Layout::new(ty, n, k)
        .filter(|_| k.is_multiple_of(block_values))
        .ok_or_else(|| Error::Invalid(format!("{ty} weights [{n}, {k}] have no packed layout")))?;
    let block_bytes = block_values / ty.block_size() * ty.type_size();
    if bytes.len() != n * k / block_values * block_bytes {
        return Err(Error::Invalid(format!("{ty} weight [{n}, {k}]: {} bytes do not fill its blocks", bytes.len())));
    }
    let bits = format(ty).expect("Layout::new knows the type").bits;
    let chunks_per_block = block_values / CHUNK;
    let mut words = vec![0u32; layout.words];
    let mut decoded = vec![Chunk::default(); chunks_per_block];
    let mut supers = [0u16; 2];
    for (b, block) in bytes.chunks_exact(block_bytes).enumerate() {
        let (row, first_chunk) = (b / (k / block_values), (b % (k / block_values)) * chunks_per_block);
        decode(ty, block, &mut decoded, &mut supers);
        for (offset, chunk) in decoded.iter().enumerate() {
            let i = (first_chunk + offset) * n + row;
            store_chunk(&mut words, &layout, bits, i, chunk);
        }
        for (s, &value) in supers.iter().take(layout.super_halves).enumerate() {
            let super_block = first_chunk / CHUNKS_PER_SUPER;
            store_half(&mut words, layout.supers_at, (super_block * n + row) * layout.super_halves + s, value);
        }
    }
    Ok((layout, words))
}

fn store_half(words: &mut [u32], at: usize, index: usize, value: u16) {
    words[at + index / 2] |= (value as u32) << (16 * (index % 2));
}

fn store_chunk(words: &mut [u32], layout: &Layout, bits: u32, i: usize, chunk: &Chunk) {
    let quants = &mut words[i * layout.quant_words..(i + 1) * layout.quant_words];
    for (j, &code) in chunk.codes.iter().enumerate() {
        match bits {
            8 => quants[j / 4] |= code << (8 * (j % 4)),
            16 => quants[j / 2] |= code << (16 * (j % 2)),
            32 => quants[j] = code,
            _ => quants[j / 8] |= (code & 0xF) << (4 * (j % 8)),
        }
    }
    let high = layout.high_at + i * layout.high_words;
    for (j, &code) in chunk.codes.iter().enumerate() {
        match bits {
            5 => words[high] |= ((code >> 4) & 1) << j,
            6 => words[high + j / 16] |= ((code >> 4) & 3) << (2 * (j % 16)),
            _ => {}
        }
    }
    for (s, &value) in chunk.scales.iter().take(layout.scale_halves).enumerate() {
        store_half(words, layout.scales_at, i * layout.scale_halves + s, value);
    }
}

/// The host twin of `dequant8` in `shaders/matmul_<type>.wgsl`: the `[n, k]` values of a repacked weight, by
/// the same formulas in the same f32 order as ggml's dequantization.
pub fn dequantize(ty: GgmlType, layout: &Layout, words: &[u32]) -> Vec<f32> {
    use GgmlType::*;
    let half_at = |at: usize, index: usize| (words[at + index / 2] >> (16 * (index % 2))) as u16;
    let f16 = |bits: u16| half::f16::from_bits(bits).to_f32();
    let bits = format(ty).expect("a repacked type").bits;
    let (n, k) = (layout.rows, layout.chunks * CHUNK);
    let mut out = vec![0f32; n * k];
    for row in 0..n {
        for c in 0..layout.chunks {
            let i = c * n + row;
            let quants = &words[i * layout.quant_words..];
            let scale = |s: usize| half_at(layout.scales_at, i * layout.scale_halves + s);
            let sup =
                |s: usize| half_at(layout.supers_at, ((c / CHUNKS_PER_SUPER) * n + row) * layout.super_halves + s);
            for j in 0..CHUNK {
                let code = match bits {
                    8 => (quants[j / 4] >> (8 * (j % 4))) & 0xFF,
                    16 => (quants[j / 2] >> (16 * (j % 2))) & 0xFFFF,
                    32 => quants[j],
                    _ => {
                        let low = (quants[j / 8] >> (4 * (j % 8))) & 0xF;
                        let high_at = layout.high_at + i * layout.high_words;
                        low | match bits {
                            5 => ((words[high_at] >> j) & 1) << 4,
                            6 => ((words[high_at + j / 16] >> (2 * (j % 16))) & 3) << 4,
                            _ => 0,
                        }
                    }
                };
                out[row * k + c * CHUNK + j] = match ty {
                    Q8_0 => (code as u8 as i8) as f32 * f16(scale(0)),
                    Q4_0 => (code as i32 - 8) as f32 * f16(scale(0)),
                    Q5_0 => (code as i32 - 16) as f32 * f16(scale(0)),
                    Q4_1 | Q5_1 => code as f32 * f16(scale(0)) + f16(scale(1)),
                    Q4_K | Q5_K => {
                        let [scale, min] = scale(0).to_le_bytes();
                        f16(sup(0)) * scale as f32 * code as f32 - f16(sup(1)) * min as f32
                    }
                    Q6_K => f16(sup(0)) * (scale(0).to_le_bytes()[j / 16] as i8) as f32 * (code as i32 - 32) as f32,
                    F16 => f16(code as u16),
                    BF16 => f32::from_bits(code << 16),
                    F32 => f32::from_bits(code),
                    _ => unreachable!("a repacked type"),
                };
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats;
    use crate::harness::testing::pseudo_random_bytes;

    /// `n · k` values' worth of pseudo-random blocks of `ty` whose f16 scales at `scales` (byte offsets in each
    /// block) are finite.
    fn random_blocks(ty: GgmlType, n: usize, k: usize, scales: &[usize], seed: u32) -> Vec<u8> {
        let mut bytes = pseudo_random_bytes(n * k / ty.block_size() * ty.type_size(), seed | 1);
        let stride = if ty.block_size() == 1 { 2 } else { ty.type_size() };
        for (b, block) in bytes.chunks_mut(stride).enumerate() {
            for (s, &at) in scales.iter().enumerate() {
                let value =
                    half::f16::from_f32(0.001 * (1 + (b * 7 + s) % 13) as f32 * if b % 3 == 0 { -1.0 } else { 1.0 });
                block[at..at + 2].copy_from_slice(&value.to_le_bytes());
            }
        }
        bytes
    }

    #[test]
    fn every_layout_dequantizes_bit_for_bit_like_ggml() {
        use GgmlType::*;
        let cases: [(GgmlType, &[usize]); 11] = [
            (Q8_0, &[0]),
            (Q4_0, &[0]),
            (Q4_1, &[0, 2]),
            (Q5_0, &[0]),
            (Q5_1, &[0, 2]),
            (Q4_K, &[0, 2]),
            (Q5_K, &[0, 2]),
            (Q6_K, &[208]),
            (F16, &[0]),
            (BF16, &[]),
            (F32, &[]),
        ];
        for (ty, scales) in cases {
            for (n, k) in [(1, 256), (3, 512), (7, 768)] {
                let bytes = random_blocks(ty, n, k, scales, (n * k) as u32 ^ ty.id());
                let (layout, words) = repack(ty, n, k, &bytes).unwrap();
                assert_eq!(words.len(), layout.words);
                let want = formats::dequantize(ty, &bytes, n * k).unwrap();
                let got = dequantize(ty, &layout, &words);
                let differ = want.iter().zip(&got).filter(|(a, b)| a.to_bits() != b.to_bits() && !a.is_nan()).count();
                assert_eq!(differ, 0, "{ty} [{n}, {k}]: {differ} values differ from ggml's");
                // The section padding and Q4_K/Q5_K's unpacked scales stay within 5 % of the file at real widths.
                if n * k >= 3 * 512 {
                    let ratio = layout.bytes() as f64 / bytes.len() as f64;
                    assert!((1.0..=1.05).contains(&ratio), "{ty} [{n}, {k}]: {ratio:.3} × the file bytes");
                }
            }
        }
    }

    #[test]
    fn a_wrong_layout_is_caught_by_the_comparison() {
        // Control for the test above: one chunk's scale swapped with its neighbour's changes the values.
        let bytes = random_blocks(GgmlType::Q4_0, 2, 64, &[0], 9);
        let (layout, mut words) = repack(GgmlType::Q4_0, 2, 64, &bytes).unwrap();
        words[layout.scales_at] = words[layout.scales_at].rotate_left(16);
        let want = formats::dequantize(GgmlType::Q4_0, &bytes, 128).unwrap();
        assert_ne!(dequantize(GgmlType::Q4_0, &layout, &words), want);
    }

    #[test]
    fn sections_start_on_16_bytes_and_odd_shapes_are_refused() {
        let layout = Layout::new(GgmlType::Q5_K, 3, 256).unwrap();
        assert_eq!((layout.quant_words, layout.high_words, layout.scale_halves, layout.super_halves), (4, 1, 1, 2));
        assert!([layout.high_at, layout.scales_at, layout.supers_at, layout.words].iter().all(|w| w % 4 == 0));
        assert_eq!(layout.high_at, 3 * 8 * 4);
        let err = repack(GgmlType::Q4_K, 1, 32, &[0; 18]).unwrap_err().to_string();
        assert!(err.contains("no packed layout"), "{err}");
        let err = repack(GgmlType::Q4_0, 1, 32, &[0; 17]).unwrap_err().to_string();
        assert!(err.contains("do not fill"), "{err}");
        assert!(!has_layout(GgmlType::Q2_K));
    }
}
