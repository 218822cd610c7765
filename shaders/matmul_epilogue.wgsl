// What the packed matmuls do with each output v = Σ_k x[m, k] · W[n, k] + bias[n] before storing it, by the
// parameter dims[1].w (one kernel serves every epilogue: a pipeline fewer to compile for each, a uniform branch
// per output): 0 nothing; 1 GELU (an MLP's first layer; gelu.wgsl); 2 the gated residual add
// residual[m, n] + gate[m / tokens, n] · v (a block's last projection), with dims[2].x tokens per gate row. Reference twin:
// crate::kernels::quant_matmul::Epilogue::reference. Appended to every packed matmul; residual, gate and `dims`
// are in matmul_bindings.wgsl.

fn finish(m: u32, n: u32, n_len: u32, v: f32) -> f32 {
    switch dims[1].w {
        case 1u: {
            return gelu_tanh(v);
        }
        case 2u: {
            return residual[m * n_len + n] + gate[(m / max(dims[2].x, 1u)) * n_len + n] * v;
        }
        default: {
            return v;
        }
    }
}
