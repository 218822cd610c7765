//! The result canvas, on the worker's side: the page transfers an `OffscreenCanvas` to the worker once, and the
//! worker draws each edit's live previews and its result on it.
//!
//! On a hardware GPU the drawing is a render pass on the model's own device and queue through a WebGPU canvas
//! context ([`crate::kernels::display`]): the previews straight from the latents on the GPU, the result straight
//! from the VAE's output, nothing read back. On a software adapter, where the browser has no WebGPU canvas
//! context, or when the page asks (`?display=2d`), a 2D context shows the same pictures from one readback per
//! preview. Software adapters take the 2D path because presenting there can end the whole WebGPU instance: in
//! headless Chromium 156 on SwiftShader, the first presented frame loses every device of the page, the model's
//! with it. `?display=webgpu` asks for the WebGPU context whatever the adapter.

use burn::backend::wgpu::wgpu;
use burn::tensor::Tensor;
use image::RgbImage;
use wasm_bindgen::{Clamped, JsCast};
use web_sys::{ImageData, OffscreenCanvas, OffscreenCanvasRenderingContext2d};

use crate::device::{self, GpuHandles};
use crate::kernels::display::{self, Display, Picture, Projection};
use crate::store::js;
use crate::{Error, Result};

/// How the canvas is drawn on, as the device report says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayPath {
    /// A WebGPU canvas context on the model's device: drawn by the GPU, nothing read back.
    WebGpu,
    /// A 2D context fed from one readback per picture.
    TwoD,
}

impl DisplayPath {
    /// The name the protocol and the device report use.
    pub fn name(self) -> &'static str {
        match self {
            DisplayPath::WebGpu => "webgpu",
            DisplayPath::TwoD => "2d",
        }
    }
}

/// Which path the page asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayChoice {
    /// WebGPU on hardware adapters, 2D on software ones.
    Auto,
    /// The 2D context.
    TwoD,
    /// The WebGPU context, whatever the adapter (2D only where it cannot be had).
    WebGpu,
}

impl DisplayChoice {
    /// The choice named `name` (`auto`, `2d`, `webgpu`; anything else is `auto`), as `?display=` gives it.
    pub fn named(name: &str) -> Self {
        match name {
            "2d" => DisplayChoice::TwoD,
            "webgpu" => DisplayChoice::WebGpu,
            _ => DisplayChoice::Auto,
        }
    }

    fn name(self) -> &'static str {
        match self {
            DisplayChoice::Auto => "auto",
            DisplayChoice::TwoD => "2d",
            DisplayChoice::WebGpu => "webgpu",
        }
    }
}

enum Drawing {
    /// Not drawn on yet: opened at the first picture or device report.
    Unopened(DisplayChoice),
    /// A WebGPU context on the model's device.
    Gpu { surface: wgpu::Surface<'static>, config: wgpu::SurfaceConfiguration, display: Display },
    /// A 2D context.
    TwoD(OffscreenCanvasRenderingContext2d),
}

/// The canvas the page gave the worker.
pub struct ResultCanvas {
    canvas: OffscreenCanvas,
    drawing: Drawing,
}

impl ResultCanvas {
    /// The canvas as transferred, to be drawn on as `choice` asks.
    pub fn new(canvas: OffscreenCanvas, choice: DisplayChoice) -> Self {
        Self { canvas, drawing: Drawing::Unopened(choice) }
    }

    /// Opens the canvas on the model's device if it is not open yet, and says how it is drawn on.
    pub fn open(&mut self, gpu: &GpuHandles) -> Result<DisplayPath> {
        if let Drawing::Unopened(choice) = self.drawing {
            let software = gpu.adapter.get_info().device_type == wgpu::DeviceType::Cpu;
            let webgpu = match choice {
                DisplayChoice::Auto => !software,
                DisplayChoice::TwoD => false,
                DisplayChoice::WebGpu => true,
            };
            self.drawing = match webgpu.then(|| Self::open_gpu(&self.canvas, gpu)) {
                Some(Ok(drawing)) => drawing,
                failed => {
                    if let Some(Err(e)) = failed {
                        web_sys::console::warn_1(&format!("the result canvas falls back to 2D: {e}").into());
                    }
                    let context = self
                        .canvas
                        .get_context("2d")
                        .map_err(js::describe)
                        .map_err(Error::Invalid)?
                        .ok_or_else(|| Error::Invalid("the canvas has no 2D context".into()))?;
                    Drawing::TwoD(context.unchecked_into())
                }
            };
        }
        Ok(match self.drawing {
            Drawing::Gpu { .. } => DisplayPath::WebGpu,
            _ => DisplayPath::TwoD,
        })
    }

    fn open_gpu(canvas: &OffscreenCanvas, gpu: &GpuHandles) -> Result<Drawing> {
        let surface = gpu
            .instance
            .create_surface(wgpu::SurfaceTarget::OffscreenCanvas(canvas.clone()))
            .map_err(|e| Error::Gpu(format!("no WebGPU canvas context: {e}")))?;
        let (width, height) = (canvas.width().max(1), canvas.height().max(1));
        let mut config = surface
            .get_default_config(&gpu.adapter, width, height)
            .ok_or_else(|| Error::Gpu("the canvas cannot be drawn on by this GPU".into()))?;
        let formats = surface.get_capabilities(&gpu.adapter).formats;
        // Unorm, not sRGB: the canvas holds the same 8-bit values as the PNG.
        config.format = [wgpu::TextureFormat::Bgra8Unorm, wgpu::TextureFormat::Rgba8Unorm]
            .into_iter()
            .find(|f| formats.contains(f))
            .ok_or_else(|| Error::Gpu(format!("no 8-bit unorm canvas format among {formats:?}")))?;
        config.alpha_mode = wgpu::CompositeAlphaMode::Opaque;
        config.view_formats = vec![];
        let display = Display::new(gpu, config.format);
        Ok(Drawing::Gpu { surface, config, display })
    }

    /// Draws the packed latents `[1, (h/2)(w/2), 64]` of a `latent_size` latent coloured by `projection`, over
    /// the whole canvas sized `output_size`: on the GPU with no readback, or (2D) from one readback.
    pub async fn show_latents(
        &mut self,
        gpu: &GpuHandles,
        packed: &Tensor<3>,
        latent_size: (usize, usize),
        projection: &Projection,
        output_size: (usize, usize),
    ) -> Result<()> {
        let (width, height) = latent_size;
        let picture = Picture::Latents { packed, width, height, projection };
        match self.open(gpu)? {
            DisplayPath::WebGpu => self.draw_on_gpu(gpu, picture, output_size),
            DisplayPath::TwoD => {
                let values = device::read_f32(packed.clone()).await?;
                let size = (output_size.0 as u32, output_size.1 as u32);
                self.put(&display::reference(&values, latent_size, Some(projection), size)?)
            }
        }
    }

    /// Draws the finished image: from `pixels` (`[1, 3, h, w]` in `[0, 1]`) on the GPU, or on the 2D path from
    /// `image` (the same pixels as read back for the PNG).
    pub fn show_result(&mut self, gpu: &GpuHandles, pixels: &Tensor<4>, image: &RgbImage) -> Result<()> {
        let size = (image.width() as usize, image.height() as usize);
        match self.open(gpu)? {
            DisplayPath::WebGpu => self.draw_on_gpu(gpu, Picture::Image(pixels), size),
            DisplayPath::TwoD => self.put(image),
        }
    }

    /// Whether the result must be read back before [`ResultCanvas::show_result`] can show it.
    pub fn draws_on_gpu(&self) -> bool {
        matches!(self.drawing, Drawing::Gpu { .. })
    }

    fn draw_on_gpu(&mut self, gpu: &GpuHandles, picture: Picture<'_>, size: (usize, usize)) -> Result<()> {
        let Drawing::Gpu { surface, config, display } = &mut self.drawing else {
            return Err(Error::Invalid("the canvas is not drawn by the GPU".into()));
        };
        let (width, height) = (size.0 as u32, size.1 as u32);
        if (config.width, config.height) != (width, height) {
            (config.width, config.height) = (width, height);
            surface.configure(&gpu.device, config);
        }
        let frame = match surface.get_current_texture() {
            wgpu::CurrentSurfaceTexture::Success(frame) | wgpu::CurrentSurfaceTexture::Suboptimal(frame) => frame,
            other => return Err(Error::Gpu(format!("the canvas gave no texture to draw on: {other:?}"))),
        };
        let view = frame.texture.create_view(&wgpu::TextureViewDescriptor::default());
        display.draw(gpu, picture, &view, (width, height))?;
        gpu.queue.present(frame);
        Ok(())
    }

    fn put(&mut self, image: &RgbImage) -> Result<()> {
        let Drawing::TwoD(context) = &self.drawing else {
            return Err(Error::Invalid("the canvas has no 2D context".into()));
        };
        let (width, height) = image.dimensions();
        if (self.canvas.width(), self.canvas.height()) != (width, height) {
            self.canvas.set_width(width);
            self.canvas.set_height(height);
        }
        let mut rgba = Vec::with_capacity(image.len() / 3 * 4);
        for pixel in image.pixels() {
            rgba.extend_from_slice(&[pixel[0], pixel[1], pixel[2], 255]);
        }
        let data = ImageData::new_with_u8_clamped_array_and_sh(Clamped(&rgba), width, height)
            .map_err(|e| Error::Invalid(js::describe(e)))?;
        context.put_image_data(&data, 0.0, 0.0).map_err(|e| Error::Invalid(js::describe(e)))
    }
}

/// The `type` of the message that hands the worker its canvas (outside [`crate::web::protocol::ToWorker`]: an
/// `OffscreenCanvas` is transferred, not serialised).
pub const ATTACH: &str = "attach_canvas";

/// The message that hands the worker `canvas`: `{type: "attach_canvas", canvas, display}`, to be posted with
/// `canvas` in its transfer list.
pub fn attach_message(canvas: &OffscreenCanvas, choice: DisplayChoice) -> wasm_bindgen::JsValue {
    let message = js_sys::Object::new();
    let set = |key: &str, value: &wasm_bindgen::JsValue| js_sys::Reflect::set(&message, &key.into(), value).map(|_| ());
    let _ = set("type", &ATTACH.into()).and(set("canvas", canvas)).and(set("display", &choice.name().into()));
    message.into()
}

/// The canvas, to be drawn on as asked, when `data` is an [`attach_message`].
pub fn attached(data: &wasm_bindgen::JsValue) -> Option<ResultCanvas> {
    let get = |key: &str| js_sys::Reflect::get(data, &key.into()).ok();
    if get("type")?.as_string()? != ATTACH {
        return None;
    }
    let canvas = get("canvas")?.dyn_into::<OffscreenCanvas>().ok()?;
    let choice = DisplayChoice::named(&get("display").and_then(|v| v.as_string()).unwrap_or_default());
    Some(ResultCanvas::new(canvas, choice))
}
