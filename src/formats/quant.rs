//! ggml tensor types and their dequantization to f32, value for value as ggml's `dequantize_row_*`
//! (<https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-quants.c>).

use std::fmt;

use half::{bf16, f16};

use crate::{Error, Result};

/// Values per super-block of the K-quants (`QK_K`).
const QK_K: usize = 256;

/// A ggml tensor type, with the numeric ids GGUF files store (`enum ggml_type`).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// 32 values: f16 scale + 32 × 4-bit, value = (q − 8)·d.
    Q4_0,
    /// 32 values: f16 scale and min + 32 × 4-bit, value = q·d + m.
    Q4_1,
    /// 32 values: f16 scale + 32 × 5-bit, value = (q − 16)·d.
    Q5_0,
    /// 32 values: f16 scale and min + 32 × 5-bit, value = q·d + m.
    Q5_1,
    /// 32 values: f16 scale + 32 × i8, value = q·d.
    Q8_0,
    /// 32 values: f16 scale and sum + 32 × i8 (a matmul operand type).
    Q8_1,
    /// 256-value super-block, 2-bit.
    Q2_K,
    /// 256-value super-block, 3-bit.
    Q3_K,
    /// 256-value super-block, 4-bit with 6-bit sub-block scales and mins.
    Q4_K,
    /// 256-value super-block, 5-bit with 6-bit sub-block scales and mins.
    Q5_K,
    /// 256-value super-block, 6-bit with 8-bit sub-block scales.
    Q6_K,
    /// 256-value super-block, 8-bit (a matmul operand type).
    Q8_K,
    /// i-quant, 2.06 bits per weight.
    IQ2_XXS,
    /// i-quant, 2.31 bits per weight.
    IQ2_XS,
    /// i-quant, 3.06 bits per weight.
    IQ3_XXS,
    /// i-quant, 1.56 bits per weight.
    IQ1_S,
    /// i-quant, 4.5 bits per weight, 32-value blocks.
    IQ4_NL,
    /// i-quant, 3.44 bits per weight.
    IQ3_S,
    /// i-quant, 2.5 bits per weight.
    IQ2_S,
    /// i-quant, 4.25 bits per weight.
    IQ4_XS,
    /// 8-bit integer.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 64-bit float.
    F64,
    /// i-quant, 1.75 bits per weight.
    IQ1_M,
    /// bfloat16.
    BF16,
    /// Ternary, 1.69 bits per weight.
    TQ1_0,
    /// Ternary, 2.06 bits per weight.
    TQ2_0,
    /// OCP microscaling FP4, 32-value blocks.
    MXFP4,
}

impl GgmlType {
    /// The type with ggml id `id`, or an error naming the id.
    pub fn from_id(id: u32) -> Result<Self> {
        use GgmlType::*;
        Ok(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            other => return Err(Error::Invalid(format!("unknown ggml tensor type id {other}"))),
        })
    }

    /// The ggml id of this type.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            Q8_K => 15,
            IQ2_XXS => 16,
            IQ2_XS => 17,
            IQ3_XXS => 18,
            IQ1_S => 19,
            IQ4_NL => 20,
            IQ3_S => 21,
            IQ2_S => 22,
            IQ4_XS => 23,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            IQ1_M => 29,
            BF16 => 30,
            TQ1_0 => 34,
            TQ2_0 => 35,
            MXFP4 => 39,
        }
    }

    /// ggml's name of the type (`"Q4_K"`).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            MXFP4 => "MXFP4",
        }
    }

    /// Values per block (`ggml_blck_size`).
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL | MXFP4 => 32,
            _ => QK_K,
        }
    }

    /// Bytes per block (`ggml_type_size`), as in gguf-py's `GGML_QUANT_SIZES`.
    pub fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 => 2 + 16,
            Q4_1 => 2 + 2 + 16,
            Q5_0 => 2 + 4 + 16,
            Q5_1 => 2 + 2 + 4 + 16,
            Q8_0 => 2 + 32,
            Q8_1 => 2 + 2 + 32,
            Q2_K => 2 + 2 + QK_K / 16 + QK_K / 4,
            Q3_K => 2 + QK_K / 4 + QK_K / 8 + 12,
            Q4_K => 2 + 2 + QK_K / 2 + 12,
            Q5_K => 2 + 2 + QK_K / 2 + QK_K / 8 + 12,
            Q6_K => 2 + QK_K / 2 + QK_K / 4 + QK_K / 16,
            Q8_K => 4 + QK_K + QK_K / 8,
            IQ2_XXS => 2 + QK_K / 4,
            IQ2_XS => 2 + QK_K / 4 + QK_K / 32,
            IQ3_XXS => 2 + QK_K / 4 + QK_K / 8,
            IQ1_S => 2 + QK_K / 8 + QK_K / 16,
            IQ4_NL => 2 + 16,
            IQ3_S => 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4,
            IQ2_S => 2 + QK_K / 4 + QK_K / 16,
            IQ4_XS => 2 + 2 + QK_K / 2 + QK_K / 64,
            I8 => 1,
            I16 => 2,
            I32 => 4,
            I64 | F64 => 8,
            IQ1_M => QK_K / 8 + QK_K / 16 + QK_K / 32,
            TQ1_0 => 2 + 4 * 13,
            TQ2_0 => 2 + 64,
            MXFP4 => 1 + 16,
        }
    }

    /// Whether [`dequantize`] handles this type.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(self, F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q4_K | Q5_K | Q6_K)
    }

    /// Bytes that `n_elements` values of this type occupy, or an error when they do not fill whole blocks.
    pub fn bytes_for(self, n_elements: u64) -> Result<u64> {
        let block = self.block_size() as u64;
        if !n_elements.is_multiple_of(block) {
            return Err(Error::Invalid(format!(
                "{n_elements} values are not a whole number of {} blocks of {block}",
                self.name()
            )));
        }
        (n_elements / block)
            .checked_mul(self.type_size() as u64)
            .ok_or_else(|| Error::Invalid(format!("{n_elements} values of {} overflow a 64-bit size", self.name())))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Dequantizes `n_elements` values of type `ty` stored in `bytes` to f32, exactly as ggml does.
/// Fails (never panics) when the type is not supported or the bytes do not hold exactly that many values.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>> {
    if !ty.can_dequantize() {
        return Err(Error::Invalid(format!(
            "ggml type {ty} cannot be dequantized yet (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)"
        )));
    }
    let expected = ty.bytes_for(n_elements as u64)?;
    if bytes.len() as u64 != expected {
        return Err(Error::Invalid(format!("{n_elements} {ty} values need {expected} bytes, got {}", bytes.len())));
    }
    let mut out = Vec::with_capacity(n_elements);
    let blocks = bytes.chunks_exact(ty.type_size());
    match ty {
        GgmlType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => out.extend(blocks.map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())),
        GgmlType::BF16 => out.extend(blocks.map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        GgmlType::Q8_0 => blocks.for_each(|b| dequantize_q8_0(b, &mut out)),
        GgmlType::Q4_0 => blocks.for_each(|b| dequantize_q4_0(b, &mut out)),
        GgmlType::Q4_1 => blocks.for_each(|b| dequantize_q4_1(b, &mut out)),
        GgmlType::Q5_0 => blocks.for_each(|b| dequantize_q5_0(b, &mut out)),
        GgmlType::Q5_1 => blocks.for_each(|b| dequantize_q5_1(b, &mut out)),
        GgmlType::Q4_K => blocks.for_each(|b| dequantize_q4_k(b, &mut out)),
        GgmlType::Q5_K => blocks.for_each(|b| dequantize_q5_k(b, &mut out)),
        GgmlType::Q6_K => blocks.for_each(|b| dequantize_q6_k(b, &mut out)),
        _ => unreachable!("can_dequantize() lists exactly the types handled here"),
    }
    Ok(out)
}

/// Quantizes `values` to Q8_0 blocks as ggml's `quantize_row_q8_0_ref` does: `d = max|x| / 127`, `q = round(x / d)`.
/// Fails when the values are not whole blocks of 32.
pub fn quantize_q8_0(values: &[f32]) -> Result<Vec<u8>> {
    let blocks = whole_blocks(GgmlType::Q8_0, values)?;
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for block in blocks {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|x| (x * id).round() as i8 as u8));
    }
    Ok(out)
}

/// Quantizes `values` to Q4_0 blocks as ggml's `quantize_row_q4_0_ref` does: `d = max / -8` with `max` the value
/// of largest magnitude, `q = min(15, trunc(x / d + 8.5))`. Fails when the values are not whole blocks of 32.
pub fn quantize_q4_0(values: &[f32]) -> Result<Vec<u8>> {
    let blocks = whole_blocks(GgmlType::Q4_0, values)?;
    let mut out = Vec::with_capacity(values.len() / 32 * 18);
    for block in blocks {
        let max = block.iter().fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q = |x: f32| ((x * id + 8.5) as i8).clamp(0, 15) as u8;
        out.extend(f16::from_f32(d).to_le_bytes());
        out.extend((0..16).map(|j| q(block[j]) | (q(block[j + 16]) << 4)));
    }
    Ok(out)
}

fn whole_blocks(ty: GgmlType, values: &[f32]) -> Result<std::slice::ChunksExact<'_, f32>> {
    if !values.len().is_multiple_of(ty.block_size()) {
        return Err(Error::Invalid(format!(
            "{} values are not whole {ty} blocks of {}",
            values.len(),
            ty.block_size()
        )));
    }
    Ok(values.chunks_exact(ty.block_size()))
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `block_q8_0 { ggml_half d; int8_t qs[32]; }`
fn dequantize_q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half_at(b, 0);
    out.extend(b[2..34].iter().map(|&q| (q as i8) as f32 * d));
}

/// `block_q4_0 { ggml_half d; uint8_t qs[16]; }`: low nibbles are values 0..16, high nibbles 16..32.
fn dequantize_q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half_at(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
    out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
}

/// `block_q4_1 { ggml_half d; ggml_half m; uint8_t qs[16]; }`
fn dequantize_q4_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    let qs = &b[4..20];
    out.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
    out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
}

/// `block_q5_0 { ggml_half d; uint8_t qh[4]; uint8_t qs[16]; }`: bit j of `qh` is the 5th bit of value j.
fn dequantize_q5_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    out.extend((0..16).map(|j| ((((qs[j] & 0x0F) as u32 | ((qh >> j) << 4) & 0x10) as i32) - 16) as f32 * d));
    out.extend((0..16).map(|j| ((((qs[j] >> 4) as u32 | (qh >> (j + 12)) & 0x10) as i32) - 16) as f32 * d));
}

/// `block_q5_1 { ggml_half d; ggml_half m; uint8_t qh[4]; uint8_t qs[16]; }`
fn dequantize_q5_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    out.extend((0..16).map(|j| ((qs[j] & 0x0F) as u32 | ((qh >> j) << 4) & 0x10) as f32 * d + m));
    out.extend((0..16).map(|j| ((qs[j] >> 4) as u32 | (qh >> (j + 12)) & 0x10) as f32 * d + m));
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` from the 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// `block_q4_K { ggml_half d; ggml_half dmin; uint8_t scales[12]; uint8_t qs[128]; }`
fn dequantize_q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, min) = (half_at(b, 0), half_at(b, 2));
    let scales = &b[4..16];
    for (chunk, q) in b[16..144].chunks_exact(32).enumerate() {
        let (sc, m) = scale_min_k4(2 * chunk, scales);
        let (d1, m1) = (d * sc as f32, min * m as f32);
        let (sc, m) = scale_min_k4(2 * chunk + 1, scales);
        let (d2, m2) = (d * sc as f32, min * m as f32);
        out.extend(q.iter().map(|&q| d1 * (q & 0x0F) as f32 - m1));
        out.extend(q.iter().map(|&q| d2 * (q >> 4) as f32 - m2));
    }
}

/// `block_q5_K { ggml_half d; ggml_half dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; }`
fn dequantize_q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, min) = (half_at(b, 0), half_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    for (chunk, ql) in b[48..176].chunks_exact(32).enumerate() {
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let (sc, m) = scale_min_k4(2 * chunk, scales);
        let (d1, m1) = (d * sc as f32, min * m as f32);
        let (sc, m) = scale_min_k4(2 * chunk + 1, scales);
        let (d2, m2) = (d * sc as f32, min * m as f32);
        let high = |h: u8, u: u8| if h & u != 0 { 16.0 } else { 0.0 };
        out.extend(ql.iter().zip(qh).map(|(&q, &h)| d1 * ((q & 0x0F) as f32 + high(h, u1)) - m1));
        out.extend(ql.iter().zip(qh).map(|(&q, &h)| d2 * ((q >> 4) as f32 + high(h, u2)) - m2));
    }
}

/// `block_q6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; ggml_half d; }`
fn dequantize_q6_k(b: &[u8], out: &mut Vec<f32>) {
    let d = half_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let mut y = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
        out.extend_from_slice(&y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn ids_round_trip_and_unknown_ids_fail() {
        for id in 0..64 {
            if let Ok(ty) = GgmlType::from_id(id) {
                assert_eq!(ty.id(), id);
            }
        }
        assert_eq!(GgmlType::from_id(12).unwrap(), GgmlType::Q4_K);
        assert_eq!(GgmlType::from_id(30).unwrap(), GgmlType::BF16);
        let err = GgmlType::from_id(4).unwrap_err().to_string();
        assert!(err.contains("unknown ggml tensor type id 4"), "{err}");
    }

    #[test]
    fn block_sizes_match_ggml() {
        let expect = [
            (GgmlType::Q4_0, 32, 18),
            (GgmlType::Q4_1, 32, 20),
            (GgmlType::Q5_0, 32, 22),
            (GgmlType::Q5_1, 32, 24),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::Q2_K, 256, 84),
            (GgmlType::Q3_K, 256, 110),
            (GgmlType::Q4_K, 256, 144),
            (GgmlType::Q5_K, 256, 176),
            (GgmlType::Q6_K, 256, 210),
            (GgmlType::Q8_K, 256, 292),
        ];
        for (ty, block, size) in expect {
            assert_eq!((ty.block_size(), ty.type_size()), (block, size), "{ty}");
        }
    }

    #[test]
    fn q4_0_block_by_hand() {
        let mut b = h(0.5).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!(y[0], -4.0);
        assert_eq!(y[15], 3.5);
        assert_eq!(y[16], 3.5);
        assert_eq!(y[31], -4.0);
    }

    #[test]
    fn q5_0_high_bits_by_hand() {
        // qh bit 0 (value 0) and bit 16 (value 16) set: both become 16 + low nibble.
        let mut b = h(1.0).to_vec();
        b.extend(0x0001_0001u32.to_le_bytes());
        b.extend([0x21u8; 16]);
        let y = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
        assert_eq!((y[0], y[1], y[16], y[17]), (1.0, -15.0, 2.0, -14.0));
    }

    #[test]
    fn q5_k_block_by_hand() {
        // d = 1, dmin = 0.5; sub-block scales 1..8 and mins 8..1 through the 6-bit packing.
        let (sc, mn): (Vec<u8>, Vec<u8>) = ((1..=8).collect(), (1..=8).rev().collect());
        let mut scales = [0u8; 12];
        for j in 0..4 {
            scales[j] = sc[j];
            scales[j + 4] = mn[j];
            scales[j + 8] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4);
        }
        let mut b = h(1.0).to_vec();
        b.extend(h(0.5));
        b.extend(scales);
        b.extend([0b1000_0001u8; 32]); // qh: high bit for sub-blocks 0 and 7
        b.extend([0x53u8; 128]); // low nibble 3, high nibble 5
        let y = dequantize(GgmlType::Q5_K, &b, 256).unwrap();
        assert_eq!(y[0], 1.0 * (3.0 + 16.0) - 0.5 * 8.0);
        assert_eq!(y[32], 2.0 * 5.0 - 0.5 * 7.0);
        assert_eq!(y[64], 3.0 * 3.0 - 0.5 * 6.0);
        assert_eq!(y[255], 8.0 * (5.0 + 16.0) - 0.5 * 1.0);
    }

    #[test]
    fn q6_k_block_by_hand() {
        let mut b = vec![0u8; 210];
        b[0] = 0x21; // ql[0]: value 0 low nibble 1, value 64 low nibble 2
        b[128] = 0b1110_0100; // qh[0]: value 0 → 0, value 32 → 1, value 64 → 2, value 96 → 3
        for (i, s) in b[192..208].iter_mut().enumerate() {
            *s = (i as i8 - 4) as u8;
        }
        b[208..210].copy_from_slice(&h(0.25));
        let y = dequantize(GgmlType::Q6_K, &b, 256).unwrap();
        assert_eq!(y[0], 0.25 * -4.0 * (1 - 32) as f32);
        assert_eq!(y[32], 0.25 * -2.0 * (16 - 32) as f32);
        assert_eq!(y[64], 0.25 * 0.0 * (34 - 32) as f32);
        assert_eq!(y[96], 0.25 * 2.0 * (48 - 32) as f32);
        assert_eq!(y[128], 0.25 * 4.0 * -32.0);
    }

    #[test]
    fn wrong_sizes_and_unsupported_types_are_errors() {
        let err = dequantize(GgmlType::Q8_0, &[0u8; 33], 32).unwrap_err().to_string();
        assert!(err.contains("need 34 bytes"), "{err}");
        let err = dequantize(GgmlType::Q4_0, &[0u8; 18], 31).unwrap_err().to_string();
        assert!(err.contains("whole number"), "{err}");
        let err = dequantize(GgmlType::Q2_K, &[0u8; 84], 256).unwrap_err().to_string();
        assert!(err.contains("Q2_K cannot be dequantized"), "{err}");
    }

    #[test]
    fn quantized_blocks_dequantize_within_half_a_step() {
        let values: Vec<f32> =
            (0..32 * 8).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 * (1 + i / 32) as f32).collect();
        for (ty, bytes, steps) in [
            (GgmlType::Q8_0, quantize_q8_0(&values).unwrap(), 0.5),
            // The value opposite the largest magnitude rounds to +8, which clamps to 7: up to one step.
            (GgmlType::Q4_0, quantize_q4_0(&values).unwrap(), 1.0),
        ] {
            let back = dequantize(ty, &bytes, values.len()).unwrap();
            for ((block, got), raw) in values.chunks(32).zip(back.chunks(32)).zip(bytes.chunks(ty.type_size())) {
                let d = half_at(raw, 0).abs();
                assert!(d > 0.0, "{ty}: zero scale");
                for (x, y) in block.iter().zip(got) {
                    // f16 rounding of d moves the largest |q| (127 or 8) by up to 2⁻¹¹ of it.
                    assert!((x - y).abs() <= d * (steps + 0.07), "{ty}: {x} came back as {y} (d {d})");
                }
            }
        }
        for zeros in [quantize_q8_0(&[0.0; 32]).unwrap(), quantize_q4_0(&[0.0; 32]).unwrap()] {
            let ty = if zeros.len() == 34 { GgmlType::Q8_0 } else { GgmlType::Q4_0 };
            assert_eq!(dequantize(ty, &zeros, 32).unwrap(), [0.0; 32], "{ty}");
        }
        let err = quantize_q8_0(&[1.0; 33]).unwrap_err().to_string();
        assert_eq!(err, "33 values are not whole Q8_0 blocks of 32");
    }
}
