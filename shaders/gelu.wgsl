// GELU with the tanh approximation: v · (1 + tanh(√(2/π) · (v + 0.044715 v³))) / 2. Reference twin:
// crate::kernels::fused::reference::gelu_tanh. Prepended to the kernels that apply it.
fn gelu_tanh(v: f32) -> f32 {
    // tanh of large arguments is 1 (or −1): WGSL's tanh may return NaN past the f32 range of its exponentials.
    let inner = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0);
    return v * (1.0 + tanh(inner)) * 0.5;
}
