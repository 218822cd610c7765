//! The WGSL every packed matmul is assembled from, the plain kernels of [`super::quant_matmul`] and the coop
//! kernel of [`super::coop_matmul`] alike: each block type's dequantizer (`shaders/matmul_<type>.wgsl`, its
//! `dequant8`), the reader of the repacked layout (`shaders/packed_weights.wgsl`), the shared bindings
//! (`shaders/matmul_bindings.wgsl`), GELU and the epilogues (`shaders/matmul_epilogue.wgsl`).

use crate::formats::GgmlType;

/// The dequantizing part of a block type's kernels, or `None` for types without kernels.
pub fn dequant_source(ty: GgmlType) -> Option<&'static str> {
    Some(match ty {
        GgmlType::Q8_0 => include_str!("../../shaders/matmul_q8_0.wgsl"),
        GgmlType::Q4_0 => include_str!("../../shaders/matmul_q4_0.wgsl"),
        GgmlType::Q4_1 => include_str!("../../shaders/matmul_q4_1.wgsl"),
        GgmlType::Q5_0 => include_str!("../../shaders/matmul_q5_0.wgsl"),
        GgmlType::Q5_1 => include_str!("../../shaders/matmul_q5_1.wgsl"),
        GgmlType::Q4_K => include_str!("../../shaders/matmul_q4_k.wgsl"),
        GgmlType::Q5_K => include_str!("../../shaders/matmul_q5_k.wgsl"),
        GgmlType::Q6_K => include_str!("../../shaders/matmul_q6_k.wgsl"),
        GgmlType::F16 => include_str!("../../shaders/matmul_f16.wgsl"),
        GgmlType::BF16 => include_str!("../../shaders/matmul_bf16.wgsl"),
        GgmlType::F32 => include_str!("../../shaders/matmul_f32.wgsl"),
        _ => return None,
    })
}

/// The text of a packed matmul over `ty` weights: `prelude` (enables and constants), the type's dequantizer, the
/// layout reader, the shared bindings, `body` (the kernel, which declares its `x`), GELU and the epilogues (one
/// picked per launch by a parameter).
///
/// # Panics
/// For types without a dequantizing part ([`dequant_source`]).
pub fn matmul_source(prelude: &str, ty: GgmlType, body: &str) -> String {
    let dequant = dequant_source(ty).unwrap_or_else(|| panic!("no packed kernel reads {ty}"));
    [
        prelude,
        dequant,
        include_str!("../../shaders/packed_weights.wgsl"),
        include_str!("../../shaders/matmul_bindings.wgsl"),
        body,
        include_str!("../../shaders/gelu.wgsl"),
        include_str!("../../shaders/matmul_epilogue.wgsl"),
    ]
    .concat()
}

/// The name of `ty` in kernel names: `q8_0`, `q4_k`, `bf16`.
pub fn type_name(ty: GgmlType) -> String {
    ty.to_string().to_lowercase()
}
