//! 2×2 latent packing as WGSL kernels (`shaders/pack_latents.wgsl`, `shaders/unpack_latents.wgsl`), with
//! [`crate::kernels::latent`] as their reference twins and the path used on non-wgpu devices.

use burn::tensor::Tensor;

use super::{WgslKernel, cube_tensor, launch_1d, params, tensor_from_handle};
use crate::kernels::latent;

const PACK: WgslKernel = WgslKernel::fixed("pack_latents", include_str!("../../shaders/pack_latents.wgsl"));
const UNPACK: WgslKernel = WgslKernel::fixed("unpack_latents", include_str!("../../shaders/unpack_latents.wgsl"));

/// `[b, c, h, w] → [b, (h/2)(w/2), 4c]`; one kernel on wgpu, [`latent::pack`] elsewhere.
pub fn pack(latents: Tensor<4>) -> Tensor<3> {
    let [b, c, h, w] = latents.dims();
    let input = match cube_tensor(latents) {
        Ok(t) => t,
        Err(other) => return latent::pack(other),
    };
    let n = b * c * h * w;
    let out = input.client.empty(n * size_of::<f32>());
    let dims = params(&[b as u32, c as u32, h as u32, w as u32]);
    launch_1d(&input.client, PACK, n, vec![input.handle.clone().binding(), out.clone().binding()], dims);
    tensor_from_handle(&input, out, [b, (h / 2) * (w / 2), c * 4])
}

/// `[b, (h/2)(w/2), 4c] → [b, c, h, w]`; one kernel on wgpu, [`latent::unpack`] elsewhere.
pub fn unpack(tokens: Tensor<3>, height: usize, width: usize) -> Tensor<4> {
    let [b, _, c4] = tokens.dims();
    let input = match cube_tensor(tokens) {
        Ok(t) => t,
        Err(other) => return latent::unpack(other, height, width),
    };
    let c = c4 / 4;
    let n = b * c * height * width;
    let out = input.client.empty(n * size_of::<f32>());
    let dims = params(&[b as u32, c as u32, height as u32, width as u32]);
    launch_1d(&input.client, UNPACK, n, vec![input.handle.clone().binding(), out.clone().binding()], dims);
    tensor_from_handle(&input, out, [b, c, height, width])
}
