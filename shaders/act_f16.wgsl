enable f16;
// Activations (x and y of the packed matmuls) in f16, on adapters with `shader-f16`: prepended to the matmul
// sources for the f16 path. Weights still dequantize to f32 and products still accumulate in f32.
alias act = f16;
