//! wasm test inside a dedicated Web Worker, where inference runs: burn opens WebGPU there and a matmul
//! equals the CPU result. Read back only through async APIs.
#![cfg(target_arch = "wasm32")]

use kontext_web::harness::kernel_checks;
use kontext_web::web::protocol::{FromWorker, ToWorker};
use kontext_web::web::worker;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_dedicated_worker);

#[wasm_bindgen_test]
async fn the_worker_opens_webgpu_and_its_matmul_equals_the_cpu() {
    match worker::answer(ToWorker::SelfCheck { size: 48 }).await {
        FromWorker::SelfCheck { check, millis, display, kernels } => {
            assert!(check.passed, "{check:?}");
            assert!(millis > 0.0);
            assert_eq!(display, None, "no canvas was given to this worker");
            // SwiftShader has no cooperative matrices (nor, here, shader-f16): the worker falls back to f32 and
            // says so.
            use kontext_web::kernels::path::KernelPath;
            let kernels = kernels.expect("the self-check names the kernel paths");
            console_log!("kernel paths in the worker: {kernels:?}");
            assert_eq!(kernels.chosen, KernelPath::F32);
            assert!(!kernels.available.contains(&KernelPath::Coop), "{kernels:?}");
            assert_eq!((kernels.matmul, kernels.attention), (KernelPath::F32, KernelPath::F32));
            // wgpu's own device request has no subgroups; the app's worker adds them (www/device-request.js).
            assert_eq!(kernels.subgroup_size, None, "{kernels:?}");
        }
        other => panic!("unexpected answer: {other:?}"),
    }
}

/// The quantization vectors' every ggml type on WebGPU inside the worker, as in the page (`tests/web.rs`), with f32
/// and (where the adapter has `shader-f16`) f16 compute; the output says which ran.
#[wasm_bindgen_test]
async fn every_quant_vector_type_multiplies_on_webgpu_in_the_worker_like_its_golden() {
    let (gpu, _) = kontext_web::device::wgpu_async().await.expect("WebGPU device");
    let gguf = include_bytes!("fixtures/tiny/bfl_gguf/quant_vectors.gguf").to_vec();
    let expected = include_bytes!("fixtures/tiny/bfl_gguf/quant_vectors_expected.safetensors").to_vec();
    let report = kernel_checks::assert_quant_vectors_at_each_precision(gguf, expected, &gpu).await;
    console_log!("quantization vectors in the worker: {report}");
}

/// The display pass (`shaders/display.wgsl`) on WebGPU in the worker draws an image and coloured packed latents
/// held on the GPU into a texture as its CPU twin does (±1 per channel), read back through a buffer; a reversed
/// picture is far from what was drawn. (The path a WebGPU canvas context takes on hardware GPUs, minus the canvas.)
#[wasm_bindgen_test]
async fn the_display_pass_draws_like_its_cpu_twin_in_the_worker() {
    use burn::tensor::{Tensor, TensorData};
    use kontext_web::kernels::display::{self, Display, Picture, TextureTarget};

    let (device, _) = kontext_web::device::wgpu_async().await.expect("WebGPU device");
    let gpu = kontext_web::device::wgpu_handles_async().await.unwrap();
    let display = Display::new(&gpu, TextureTarget::FORMAT);
    let ramp = |n: usize| -> Vec<f32> { (0..n).map(|i| ((i * 37) % 101) as f32 / 90.0 - 0.05).collect() };

    let (width, height, target) = (24, 16, (37, 29));
    let values = ramp(3 * width * height);
    let image = Tensor::<4>::from_data(TensorData::new(values.clone(), [1, 3, height, width]), &device);
    let texture = TextureTarget::new(&gpu, target);
    display.draw(&gpu, Picture::Image(&image), &texture.view, target).unwrap();
    let drawn = texture.read(&gpu).await.unwrap();
    let expected = display::reference(&values, (width, height), None, target).unwrap();
    let reversed: Vec<f32> = values.iter().rev().copied().collect();
    let control = display::reference(&reversed, (width, height), None, target).unwrap();
    let (off, control_off) = (most_off(&drawn, &expected), most_off(&drawn, &control));
    console_log!("display pass, image: at most {off} off its CPU twin; a reversed image {control_off}");
    assert!(off <= 1 && control_off > 1, "{off}, control {control_off}");

    let (width, height, target) = (6, 4, (48, 32));
    let packed: Vec<f32> = ramp(16 * width * height).iter().map(|v| 2.0 * v - 1.0).collect();
    let latents = Tensor::<3>::from_data(TensorData::new(packed.clone(), [1, width * height / 4, 64]), &device);
    let projection: display::Projection = std::array::from_fn(|c| {
        std::array::from_fn(|k| if k == 16 { 0.5 } else { 0.1 * ((c * 7 + k) % 5) as f32 - 0.2 })
    });
    let texture = TextureTarget::new(&gpu, target);
    let picture = Picture::Latents { packed: &latents, width, height, projection: &projection };
    display.draw(&gpu, picture, &texture.view, target).unwrap();
    let drawn = texture.read(&gpu).await.unwrap();
    let expected = display::reference(&packed, (width, height), Some(&projection), target).unwrap();
    let reversed: Vec<f32> = packed.iter().rev().copied().collect();
    let control = display::reference(&reversed, (width, height), Some(&projection), target).unwrap();
    let (off, control_off) = (most_off(&drawn, &expected), most_off(&drawn, &control));
    console_log!("display pass, latents: at most {off} off its CPU twin; reversed latents {control_off}");
    assert!(off <= 1 && control_off > 1, "{off}, control {control_off}");
}

/// The largest channel difference of two images of one size.
fn most_off(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.pixels().flat_map(|p| p.0).zip(b.pixels().flat_map(|p| p.0)).map(|(x, y)| x.abs_diff(y)).max().unwrap()
}

/// The result canvas in the worker: on this software adapter `auto` takes the 2D path (as `2d` does), and the
/// canvas then holds the result's pixels, read back here through an `ImageBitmap`; a reversed image is far from
/// them.
#[wasm_bindgen_test]
async fn the_result_canvas_takes_the_2d_path_on_a_software_adapter_and_shows_the_result() {
    use burn::tensor::{Tensor, TensorData};
    use kontext_web::kernels::display;
    use kontext_web::web::canvas::{DisplayChoice, DisplayPath, ResultCanvas};
    use wasm_bindgen::JsCast;
    use web_sys::{OffscreenCanvas, OffscreenCanvasRenderingContext2d};

    let (device, report) = kontext_web::device::wgpu_async().await.expect("WebGPU device");
    assert!(report.software, "the test browser runs WebGPU on SwiftShader: {report:?}");
    let gpu = kontext_web::device::wgpu_handles_async().await.unwrap();
    let (width, height) = (24usize, 16usize);
    let values: Vec<f32> = (0..3 * width * height).map(|i| ((i * 37) % 101) as f32 / 90.0 - 0.05).collect();
    let size = (width as u32, height as u32);
    let expected = display::reference(&values, (width, height), None, size).unwrap();
    let reversed: Vec<f32> = values.iter().rev().copied().collect();
    let control = display::reference(&reversed, (width, height), None, size).unwrap();
    let pixels = Tensor::<4>::from_data(TensorData::new(values, [1, 3, height, width]), &device);
    for choice in [DisplayChoice::Auto, DisplayChoice::TwoD] {
        let canvas = OffscreenCanvas::new(1, 1).unwrap();
        let mut result = ResultCanvas::new(canvas.clone(), choice);
        assert_eq!(result.open(&gpu).unwrap(), DisplayPath::TwoD, "{choice:?}");
        result.show_result(&gpu, &pixels, &expected).expect("the result is drawn");
        assert_eq!((canvas.width(), canvas.height()), size);
        let bitmap = canvas.transfer_to_image_bitmap().unwrap();
        let reader = OffscreenCanvas::new(size.0, size.1).unwrap();
        let context: OffscreenCanvasRenderingContext2d = reader.get_context("2d").unwrap().unwrap().unchecked_into();
        context.draw_image_with_image_bitmap(&bitmap, 0.0, 0.0).unwrap();
        let rgba = context.get_image_data(0.0, 0.0, width as f64, height as f64).unwrap().data().0;
        let drawn = image::RgbImage::from_fn(size.0, size.1, |x, y| {
            let at = 4 * (y as usize * width + x as usize);
            image::Rgb([rgba[at], rgba[at + 1], rgba[at + 2]])
        });
        let (off, control_off) = (most_off(&drawn, &expected), most_off(&drawn, &control));
        console_log!(
            "result canvas ({choice:?}): 2D path, at most {off} off the result; a reversed image {control_off}"
        );
        assert!(off <= 1 && control_off > 1, "{off}, control {control_off}");
    }
}
