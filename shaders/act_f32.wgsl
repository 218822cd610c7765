// Activations (x and y of the packed matmuls) in f32: prepended to the matmul sources for the f32 path.
alias act = f32;
