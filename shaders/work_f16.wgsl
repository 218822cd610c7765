enable f16;
// Tiles of the packed matmuls held and multiplied in f16, on adapters with `shader-f16`: prepended to the matmul
// sources for the f16 path. x and y stay f32 in memory (converted as a tile is loaded, so no cast pass runs
// before or after), each product is widened to f32 and accumulated in f32, and the bias stays f32.
alias work = f16;
