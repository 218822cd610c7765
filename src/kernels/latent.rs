//! 2×2 patch packing of VAE latents, the layout the Flux transformer reads.
//!
//! `pack`: `[b, c, h, w] → [b, (h/2)·(w/2), c·4]`, channel-major inside each token (`c 2 2`), as diffusers'
//! `_pack_latents` and BFL's `rearrange("b c (h ph) (w pw) -> b (h w) (c ph pw)")`. `unpack` is its inverse.
//! These are the plain-tensor reference paths; `kernels::pack` runs the same maps as one WGSL pass.

use burn::tensor::Tensor;

/// `[b, c, h, w] → [b, (h/2)(w/2), 4c]`. `h` and `w` must be even.
pub fn pack(latents: Tensor<4>) -> Tensor<3> {
    let [b, c, h, w] = latents.dims();
    let (h2, w2) = (h / 2, w / 2);
    latents
        .reshape([b, c, h2, 2, w2, 2]) // [b, c, h/2, ph, w/2, pw]
        .permute([0, 2, 4, 1, 3, 5]) // [b, h/2, w/2, c, ph, pw]
        .reshape([b, h2 * w2, c * 4])
}

/// `[b, (h/2)(w/2), 4c] → [b, c, h, w]`; `h` and `w` are the unpacked latent height and width.
pub fn unpack(tokens: Tensor<3>, height: usize, width: usize) -> Tensor<4> {
    let [b, _, c4] = tokens.dims();
    let (h2, w2, c) = (height / 2, width / 2, c4 / 4);
    tokens
        .reshape([b, h2, w2, c, 2, 2]) // [b, h/2, w/2, c, ph, pw]
        .permute([0, 3, 1, 4, 2, 5]) // [b, c, h/2, ph, w/2, pw]
        .reshape([b, c, height, width])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData, Tolerance};

    #[test]
    fn pack_puts_each_2x2_patch_channel_major_in_one_token() {
        let device = Device::flex();
        // c=2, h=2, w=4: two tokens of 8 values.
        let values: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let x = Tensor::<4>::from_data(TensorData::new(values, [1, 2, 2, 4]), &device);
        let packed = pack(x.clone());
        let expected =
            TensorData::new(vec![0., 1., 4., 5., 8., 9., 12., 13., 2., 3., 6., 7., 10., 11., 14., 15.], [1, 2, 8]);
        packed.to_data().assert_approx_eq::<f32>(&expected, Tolerance::absolute(0.0));
        unpack(packed, 2, 4).into_data().assert_approx_eq::<f32>(&x.into_data(), Tolerance::absolute(0.0));
    }
}
