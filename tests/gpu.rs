//! GPU tests on burn's wgpu backend (Mesa lavapipe on machines without a GPU): the device opens, computes a
//! matmul equal to the CPU, and every WGSL kernel of ours equals its plain-tensor reference twin.
#![cfg(not(target_arch = "wasm32"))]

use burn::tensor::{Device, Tensor, TensorData, Tolerance};
use kontext_web::device::{self, selfcheck};
use kontext_web::harness::testing::gpu;
use kontext_web::kernels::quant_matmul::self_check_multiply;
use kontext_web::kernels::{self, latent};

fn ramp(shape: [usize; 4], device: &Device) -> Tensor<4> {
    let n: usize = shape.iter().product();
    let values = selfcheck::test_matrix(1, n, 7);
    Tensor::from_data(TensorData::new(values, shape), device)
}

#[test]
fn wgpu_adapter_reports_limits_and_uses_wgsl() {
    let (_, report) = device::wgpu().unwrap();
    assert!(!report.name.is_empty());
    assert!(report.max_buffer_size >= 256 << 20, "{report:?}");
    assert!(report.max_storage_buffer_binding_size >= 128 << 20, "{report:?}");
}

/// The self-check passes with burn's matmul and with the packed f32 kernel that the app and the CLI check, on
/// wgpu and on the CPU; a multiply that reads `b` transposed fails it (the negative control).
#[test]
fn wgpu_matmul_equals_the_cpu() {
    let burn_matmul = |a: Tensor<2>, b: &[f32]| {
        let [k, n] = [a.dims()[1], b.len() / a.dims()[1]];
        Ok(a.clone().matmul(Tensor::from_data(TensorData::new(b.to_vec(), [k, n]), &a.device())))
    };
    let transposed = |a: Tensor<2>, b: &[f32]| {
        let [k, n] = [a.dims()[1], b.len() / a.dims()[1]];
        Ok(a.clone().matmul(Tensor::<2>::from_data(TensorData::new(b.to_vec(), [k, n]), &a.device()).transpose()))
    };
    for device in [gpu(), device::cpu()] {
        for size in [96, 64, 40] {
            let check = pollster::block_on(selfcheck::matmul_check(&device, size, burn_matmul)).unwrap();
            assert!(check.passed, "burn: {check:?}");
            let check = pollster::block_on(selfcheck::matmul_check(&device, size, self_check_multiply)).unwrap();
            assert!(check.passed, "packed f32: {check:?}");
            let wrong = pollster::block_on(selfcheck::matmul_check(&device, size, transposed)).unwrap();
            assert!(!wrong.passed, "b transposed passes: {wrong:?}");
        }
    }
}

#[test]
fn pack_kernel_equals_its_reference_twin() {
    let gpu = gpu();
    // Awkward sizes: batch 2, 16 channels, a non-square grid, more than one workgroup.
    for shape in [[1, 16, 2, 2], [2, 16, 10, 6], [1, 3, 34, 18]] {
        let [_, c, h, w] = shape;
        let on_gpu = kernels::pack::pack(ramp(shape, &gpu));
        let reference = latent::pack(ramp(shape, &device::cpu()));
        assert_eq!(on_gpu.dims(), [shape[0], (h / 2) * (w / 2), c * 4]);
        on_gpu.to_data().assert_approx_eq::<f32>(&reference.to_data(), Tolerance::absolute(0.0));

        let back = kernels::pack::unpack(on_gpu, h, w);
        back.to_data().assert_approx_eq::<f32>(&ramp(shape, &device::cpu()).to_data(), Tolerance::absolute(0.0));
    }
}

#[test]
fn pack_kernel_reads_strided_views() {
    let gpu = gpu();
    // A transposed view is not contiguous: the kernel path must make it so before binding.
    let base = ramp([1, 4, 6, 8], &gpu);
    let view = base.clone().swap_dims(2, 3); // [1, 4, 8, 6]
    let on_gpu = kernels::pack::pack(view);
    let reference = latent::pack(ramp([1, 4, 6, 8], &device::cpu()).swap_dims(2, 3));
    on_gpu.to_data().assert_approx_eq::<f32>(&reference.to_data(), Tolerance::absolute(0.0));
}

/// The most any channel of `a` differs from `b`'s, and how many pixels differ by more than one step.
fn pixel_difference(a: &image::RgbImage, b: &image::RgbImage) -> (u8, usize) {
    assert_eq!(a.dimensions(), b.dimensions());
    let per_pixel = a.pixels().zip(b.pixels()).map(|(p, q)| (0..3).map(|c| p[c].abs_diff(q[c])).max().unwrap());
    per_pixel.fold((0, 0), |(most, over), d| (most.max(d), over + usize::from(d > 1)))
}

/// The display pass (`shaders/display.wgsl`) draws an image and coloured packed latents, nearest-sampled to
/// its target, as its CPU twin does, within one 8-bit step; a wrong picture is far from it.
#[test]
fn the_display_pass_draws_images_and_latents_like_its_cpu_twin() {
    use kontext_web::kernels::display::{self, Display, Picture, TextureTarget};
    let handles = device::wgpu_handles().unwrap();
    let display = Display::new(&handles, TextureTarget::FORMAT);
    let values = |n: usize, salt: u32| selfcheck::test_matrix(1, n, salt).into_iter().map(|v| v * 0.7 + 0.5).collect();

    // An image with values past [0, 1] (clamped), drawn at a size that is no multiple of its own.
    let (width, height, target) = (29, 37, (50, 61));
    let pixels: Vec<f32> = values(3 * width * height, 3);
    let image = Tensor::<4>::from_data(TensorData::new(pixels.clone(), [1, 3, height, width]), &gpu());
    let texture = TextureTarget::new(&handles, target);
    display.draw(&handles, Picture::Image(&image), &texture.view, target).unwrap();
    let drawn = pollster::block_on(texture.read(&handles)).unwrap();
    let expected = display::reference(&pixels, (width, height), None, target).unwrap();
    let reversed: Vec<f32> = pixels.iter().rev().copied().collect();
    let control = display::reference(&reversed, (width, height), None, target).unwrap();
    let ((most, over), (_, control_over)) = (pixel_difference(&drawn, &expected), pixel_difference(&drawn, &control));
    eprintln!("image: most {most} off, control {control_over} pixels off");
    assert!(most <= 1 && over == 0, "{most}");
    assert!(control_over > drawn.len() / 3 / 2, "{control_over}");

    // Packed latents of a 6×4 latent, each latent pixel an 8×8 block of the target.
    let (width, height, target) = (6, 4, (48, 32));
    let packed: Vec<f32> = selfcheck::test_matrix(1, 16 * width * height, 5);
    let latents = Tensor::<3>::from_data(TensorData::new(packed.clone(), [1, width * height / 4, 64]), &gpu());
    let projection: display::Projection = std::array::from_fn(|c| {
        std::array::from_fn(|k| if k == 16 { 0.5 } else { 0.2 * ((c * 7 + k) % 5) as f32 - 0.4 })
    });
    let texture = TextureTarget::new(&handles, target);
    let picture = Picture::Latents { packed: &latents, width, height, projection: &projection };
    display.draw(&handles, picture, &texture.view, target).unwrap();
    let drawn = pollster::block_on(texture.read(&handles)).unwrap();
    let expected = display::reference(&packed, (width, height), Some(&projection), target).unwrap();
    let mut other = projection;
    other[0].swap(0, 1);
    other[1].swap(2, 3);
    let control = display::reference(&packed, (width, height), Some(&other), target).unwrap();
    let ((most, over), (_, control_over)) = (pixel_difference(&drawn, &expected), pixel_difference(&drawn, &control));
    eprintln!("latents: most {most} off, control {control_over} pixels off");
    assert!(most <= 1 && over == 0, "{most}");
    assert!(control_over > 0, "{control_over}");
    let wrong = Picture::Latents { packed: &latents, width: 8, height, projection: &projection };
    assert!(display.draw(&handles, wrong, &texture.view, target).unwrap_err().to_string().contains("not [1, 6, 64]"));
}
