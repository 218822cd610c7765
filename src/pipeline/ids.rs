//! Position ids of the joint sequence `[text, noise, reference…]`: three RoPE axes `(index, row, col)`.
//!
//! Text tokens are all zero; noise tokens are `(0, row, col)`; reference tokens `(1, row, col)` over their own
//! grid. Several references are placed with ComfyUI's "offset" rule (`comfy/ldm/flux/model.py`,
//! `ref_latents_method="offset"`): each further reference goes beside the canvas built so far — to the
//! right when the canvas is taller than wide, below otherwise — all with index 1.

/// One token's position `(index, row, col)`.
pub type Position = [f32; 3];

/// `n` zero positions for text tokens.
pub fn text_ids(n: usize) -> Vec<Position> {
    vec![[0.0; 3]; n]
}

/// Row-major `(index, row_offset + r, col_offset + c)` over a `rows × cols` token grid.
pub fn grid_ids(index: f32, rows: usize, cols: usize, row_offset: usize, col_offset: usize) -> Vec<Position> {
    (0..rows).flat_map(|r| (0..cols).map(move |c| [index, (row_offset + r) as f32, (col_offset + c) as f32])).collect()
}

/// Ids of the noise tokens of a latent of `height × width` latent pixels (tokens are 2×2 patches).
pub fn noise_ids(latent_height: usize, latent_width: usize) -> Vec<Position> {
    grid_ids(0.0, latent_height / 2, latent_width / 2, 0, 0)
}

/// Ids of each reference, given each reference latent's `(height, width)` in latent pixels, in order.
pub fn reference_ids(latent_sizes: &[(usize, usize)]) -> Vec<Vec<Position>> {
    let (mut canvas_h, mut canvas_w) = (0usize, 0usize);
    latent_sizes
        .iter()
        .map(|&(rh, rw)| {
            let (mut h_off, mut w_off) = (0, 0);
            if rh + canvas_h > rw + canvas_w {
                w_off = canvas_w;
            } else {
                h_off = canvas_h;
            }
            canvas_h = canvas_h.max(rh + h_off);
            canvas_w = canvas_w.max(rw + w_off);
            grid_ids(1.0, rh / 2, rw / 2, h_off.div_ceil(2), w_off.div_ceil(2))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiref_golden_offsets() {
        // golden_multiref_meta.json: ref1 latent 8×12 → (1, 0..3, 0..5); ref2 latent 8×6 → (1, 4..7, 0..2).
        let ids = reference_ids(&[(8, 12), (8, 6)]);
        assert_eq!(ids[0], grid_ids(1.0, 4, 6, 0, 0));
        assert_eq!(ids[1], grid_ids(1.0, 4, 3, 4, 0));
        assert_eq!(ids[1][0], [1.0, 4.0, 0.0]);
        assert_eq!(ids[1][11], [1.0, 7.0, 2.0]);
    }

    #[test]
    fn taller_canvas_puts_the_next_reference_to_the_right() {
        // A tall first reference (16×8 latent) → the second goes right, at column 8/2 = 4 tokens.
        let ids = reference_ids(&[(16, 8), (8, 8)]);
        assert_eq!(ids[1][0], [1.0, 0.0, 4.0]);
        let noise = noise_ids(10, 8);
        assert_eq!(noise.len(), 20);
        assert_eq!(noise[19], [0.0, 4.0, 3.0]);
    }
}
