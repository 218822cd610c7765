//! GPU tests on burn's wgpu backend (Mesa lavapipe on machines without a GPU): the device opens, computes a
//! matmul equal to the CPU, and every WGSL kernel of ours equals its plain-tensor reference twin.
#![cfg(not(target_arch = "wasm32"))]

use burn::tensor::{Device, Tensor, TensorData, Tolerance};
use kontext_web::device::{self, selfcheck};
use kontext_web::harness::testing::gpu;
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

#[test]
fn wgpu_matmul_equals_the_cpu() {
    let check = pollster::block_on(selfcheck::matmul_check(&gpu(), 96)).unwrap();
    assert!(check.passed, "{check:?}");
    let cpu = pollster::block_on(selfcheck::matmul_check(&device::cpu(), 96)).unwrap();
    assert!(cpu.passed, "{cpu:?}");
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
