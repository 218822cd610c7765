//! Drawing a picture that lives on the GPU onto a render target (a canvas's current texture in the browser, a
//! texture natively) with one render pass on the model's own device and queue, reading nothing back: the decoded
//! image, or an edit's packed latents coloured by the preview projection (`pipeline::preview`), each
//! nearest-sampled to the target's size (`shaders/display.wgsl`).
//!
//! [`reference`] draws the same on the CPU: the kernel's twin in the tests, and the 2D canvas's picture where a
//! device cannot present to a canvas.

use burn::backend::wgpu::{AutoCompiler, wgpu};
use burn::cubecl::wgpu::WgpuServer;
use burn::tensor::Tensor;
use image::{Rgb, RgbImage};
use wgpu::util::DeviceExt;

use super::cube_tensor;
use crate::device::GpuHandles;
use crate::{Error, Result};

/// Latent channels a packed token holds per latent pixel (its 64 values are 16 channels × a 2×2 patch).
pub const LATENT_CHANNELS: usize = 16;

/// The preview projection: `rgb[c] = Σ_k p[c][k]·z[k] + p[c][16]`, in `[0, 1]` before clamping.
pub type Projection = [[f32; LATENT_CHANNELS + 1]; 3];

/// What to draw, as it lies in a GPU buffer.
#[derive(Clone, Copy)]
pub enum Picture<'a> {
    /// An image `[1, 3, h, w]` with values in `[0, 1]` (the VAE's output, scaled).
    Image(&'a Tensor<4>),
    /// Packed latents `[1, (h/2)(w/2), 64]` of a `width × height` latent, each latent pixel coloured by
    /// `projection`.
    Latents {
        /// The latents.
        packed: &'a Tensor<3>,
        /// Latent pixels across (even).
        width: usize,
        /// Latent pixels down (even).
        height: usize,
        /// The colour map.
        projection: &'a Projection,
    },
}

impl Picture<'_> {
    /// `(width, height)` of the picture in its own pixels.
    pub fn size(&self) -> Result<(usize, usize)> {
        match self {
            Picture::Image(image) => match image.dims() {
                [1, 3, h, w] => Ok((w, h)),
                dims => Err(Error::Invalid(format!("an image to draw is [1, 3, h, w], not {dims:?}"))),
            },
            Picture::Latents { packed, width, height, .. } => {
                let expected = [1, (width / 2) * (height / 2), LATENT_CHANNELS * 4];
                if packed.dims() != expected || width % 2 != 0 || height % 2 != 0 {
                    return Err(Error::Invalid(format!(
                        "packed latents of a {width}×{height} latent are {expected:?}, not {:?}",
                        packed.dims()
                    )));
                }
                Ok((*width, *height))
            }
        }
    }
}

/// The render pipeline of `shaders/display.wgsl` for one target format.
pub struct Display {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
    /// The format of the targets it draws on.
    pub format: wgpu::TextureFormat,
}

/// The shader's parameters (`Params` in `shaders/display.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    source: [u32; 4],
    output: [u32; 4],
    projection: [f32; 52],
}

impl Display {
    /// Compiles the pipeline for targets of `format` (a canvas's preferred format, or a texture's).
    pub fn new(gpu: &GpuHandles, format: wgpu::TextureFormat) -> Self {
        let device = &gpu.device;
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("display"),
            source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/display.wgsl").into()),
        });
        let entry = |binding, ty| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::FRAGMENT,
            ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("display"),
            entries: &[
                entry(0, wgpu::BufferBindingType::Storage { read_only: true }),
                entry(1, wgpu::BufferBindingType::Uniform),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("display"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("display"),
            layout: Some(&pipeline_layout),
            vertex: wgpu::VertexState {
                module: &shader,
                entry_point: Some("vertex"),
                compilation_options: Default::default(),
                buffers: &[],
            },
            fragment: Some(wgpu::FragmentState {
                module: &shader,
                entry_point: Some("fragment"),
                compilation_options: Default::default(),
                targets: &[Some(wgpu::ColorTargetState { format, blend: None, write_mask: wgpu::ColorWrites::ALL })],
            }),
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            multiview_mask: None,
            cache: None,
        });
        Self { pipeline, layout, format }
    }

    /// Queues, on the model's queue after everything burn queued so far, the drawing of `picture` over the whole
    /// `target` (`target_size` pixels, of this display's format). Nothing is read back; the picture's buffer
    /// stays in use by the GPU until the pass has run.
    pub fn draw(
        &self,
        gpu: &GpuHandles,
        picture: Picture<'_>,
        target: &wgpu::TextureView,
        target_size: (u32, u32),
    ) -> Result<()> {
        let (width, height) = picture.size()?;
        let (values, kind, projection) = match picture {
            Picture::Image(image) => (cube_tensor(image.clone()).map_err(|_| not_on_wgpu())?, 0, [0.0; 52]),
            Picture::Latents { packed, projection, .. } => {
                let mut flat = [0.0; 52];
                for (slot, value) in flat.iter_mut().zip(projection.iter().flatten()) {
                    *slot = *value;
                }
                (cube_tensor(packed.clone()).map_err(|_| not_on_wgpu())?, 1, flat)
            }
        };
        let (target_width, target_height) = target_size;
        if target_width == 0 || target_height == 0 {
            return Err(Error::Invalid("a display target has no pixels".into()));
        }
        let resource = values
            .client
            .get_resource::<WgpuServer<AutoCompiler>>(values.handle.clone())
            .map_err(|e| Error::Gpu(format!("the picture's buffer: {e:?}")))?;
        // burn's commands (those that wrote the picture) go to the queue before the pass that reads it.
        values.client.flush().map_err(|e| Error::Gpu(format!("flushing burn's commands: {e:?}")))?;
        let params = Params {
            source: [width as u32, height as u32, kind, 0],
            output: [target_width, target_height, 0, 0],
            projection,
        };
        let device = &gpu.device;
        let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("display parameters"),
            contents: bytemuck::bytes_of(&params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("display"),
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: resource.resource().as_wgpu_bind_resource() },
                wgpu::BindGroupEntry { binding: 1, resource: uniform.as_entire_binding() },
            ],
        });
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("display") });
        {
            let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
                label: Some("display"),
                color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                    view: target,
                    depth_slice: None,
                    resolve_target: None,
                    ops: wgpu::Operations {
                        load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                        store: wgpu::StoreOp::Store,
                    },
                })],
                depth_stencil_attachment: None,
                timestamp_writes: None,
                occlusion_query_set: None,
                multiview_mask: None,
            });
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.draw(0..3, 0..1);
        }
        gpu.queue.submit([encoder.finish()]);
        Ok(())
    }
}

fn not_on_wgpu() -> Error {
    Error::Invalid("only a picture on burn's wgpu device can be drawn on a GPU target".into())
}

/// What [`Display::draw`] draws, computed on the CPU from the picture's values as read back (planar `[3, h, w]`
/// for an image, packed `[(h/2)(w/2), 64]` for latents), at `target_size`.
pub fn reference(
    values: &[f32],
    source: (usize, usize),
    projection: Option<&Projection>,
    target_size: (u32, u32),
) -> Result<RgbImage> {
    let (width, height) = source;
    let channels = if projection.is_some() { LATENT_CHANNELS } else { 3 };
    let expected = channels * width * height;
    if values.len() != expected {
        return Err(Error::Invalid(format!("{} values for a {width}×{height} picture, not {expected}", values.len())));
    }
    let to_u8 = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    let (target_width, target_height) = target_size;
    Ok(RgbImage::from_fn(target_width, target_height, |tx, ty| {
        // The source pixel under this target pixel, as the shader picks it.
        let x = (tx as usize * width / target_width as usize).min(width - 1);
        let y = (ty as usize * height / target_height as usize).min(height - 1);
        match projection {
            None => {
                let (plane, at) = (width * height, y * width + x);
                Rgb([to_u8(values[at]), to_u8(values[plane + at]), to_u8(values[2 * plane + at])])
            }
            Some(projection) => {
                // Token (y/2, x/2) holds channel-major 2×2 patches: channel k at k·4 + (y%2)·2 + x%2.
                let token = (y / 2) * (width / 2) + x / 2;
                let base = token * LATENT_CHANNELS * 4 + (y % 2) * 2 + x % 2;
                Rgb(std::array::from_fn(|c| {
                    let w = &projection[c];
                    let z = (0..LATENT_CHANNELS).map(|k| w[k] * values[base + k * 4]).sum::<f32>();
                    to_u8(z + w[LATENT_CHANNELS])
                }))
            }
        }
    }))
}

/// A texture to draw on outside a browser (the tests, `kontext bench`'s previews), `Rgba8Unorm`.
pub struct TextureTarget {
    /// The texture.
    pub texture: wgpu::Texture,
    /// Its view, to draw on.
    pub view: wgpu::TextureView,
    /// `(width, height)` in pixels.
    pub size: (u32, u32),
}

impl TextureTarget {
    /// The format of every texture target.
    pub const FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8Unorm;

    /// A `size` texture to draw on and copy from.
    pub fn new(gpu: &GpuHandles, size: (u32, u32)) -> Self {
        let texture = gpu.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("display target"),
            size: wgpu::Extent3d { width: size.0, height: size.1, depth_or_array_layers: 1 },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: Self::FORMAT,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        Self { texture, view, size }
    }

    /// Reads the texture's pixels back (waiting for the GPU); counted in [`crate::device::readbacks`].
    pub async fn read(&self, gpu: &GpuHandles) -> Result<RgbImage> {
        crate::device::note_readback();
        let (width, height) = self.size;
        let row_bytes = (width * 4).next_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT);
        let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("display readback"),
            size: row_bytes as u64 * height as u64,
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        encoder.copy_texture_to_buffer(
            self.texture.as_image_copy(),
            wgpu::TexelCopyBufferInfo {
                buffer: &buffer,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(row_bytes),
                    rows_per_image: Some(height),
                },
            },
            wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
        );
        gpu.queue.submit([encoder.finish()]);
        let slice = buffer.slice(..);
        let (sender, receiver) = burn::cubecl::future::channel::bounded(1);
        slice.map_async(wgpu::MapMode::Read, move |mapped| {
            let _ = sender.try_send(mapped);
        });
        #[cfg(not(target_arch = "wasm32"))]
        gpu.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Readback(e.to_string()))?;
        receiver
            .recv()
            .await
            .map_err(|e| Error::Readback(e.to_string()))?
            .map_err(|e| Error::Readback(e.to_string()))?;
        let bytes = slice.get_mapped_range().map_err(|e| Error::Readback(e.to_string()))?;
        Ok(RgbImage::from_fn(width, height, |x, y| {
            let at = (y * row_bytes + x * 4) as usize;
            Rgb([bytes[at], bytes[at + 1], bytes[at + 2]])
        }))
    }
}
