// Tiles of the packed matmuls held and multiplied in f32: prepended to the matmul sources for the f32 path.
alias work = f32;
