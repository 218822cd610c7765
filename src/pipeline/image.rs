//! Images in and out of the pipeline: decoding with limits checked first, resizing, and conversion to and
//! from the VAE's `[-1, 1]` NCHW tensors.

use burn::tensor::{Device, Tensor, TensorData};
use image::{ImageReader, Limits, RgbImage};

use crate::{Error, Result};

/// Largest image accepted, in pixels (checked from the header, before decoding).
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// Decodes PNG, JPEG or WebP bytes into RGB, refusing empty, truncated, oversized and non-image input.
pub fn decode(bytes: &[u8]) -> Result<RgbImage> {
    decode_within(bytes, MAX_PIXELS)
}

/// [`decode`] with another size limit, in pixels.
pub fn decode_within(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Invalid(format!("cannot read the image: {e}")))?;
    if reader.format().is_none() {
        return Err(Error::Invalid("not an image (PNG, JPEG or WebP expected)".into()));
    }
    let (width, height) = reader.into_dimensions().map_err(|e| Error::Invalid(format!("not a readable image: {e}")))?;
    if width == 0 || height == 0 {
        return Err(Error::Invalid(format!("the image is empty ({width}×{height} pixels)")));
    }
    if width as u64 * height as u64 > max_pixels {
        return Err(Error::Invalid(format!(
            "the image is {width}×{height} pixels; images up to {:.0} megapixels are accepted",
            max_pixels as f64 / (1024.0 * 1024.0)
        )));
    }
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(max_pixels * 16);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| Error::Invalid(format!("the image is damaged or truncated: {e}")))?;
    Ok(image.to_rgb8())
}

/// Resizes with Pillow's Lanczos filter, byte for byte as the reference pipeline does, unless the size already
/// matches.
pub fn resize(image: &RgbImage, width: usize, height: usize) -> RgbImage {
    super::resample::resize(image, width, height)
}

/// RGB pixels → `[1, 3, h, w]` in `[-1, 1]` (`x / 255 · 2 − 1`).
pub fn to_tensor(image: &RgbImage, device: &Device) -> Tensor<4> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut planar = vec![0f32; 3 * w * h];
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            planar[c * w * h + i] = pixel[c] as f32 / 255.0 * 2.0 - 1.0;
        }
    }
    Tensor::from_data(TensorData::new(planar, [1, 3, h, w]), device)
}

/// A decoded `[3, h, w]` image in about `[-1, 1]` (host values, planar) → RGB, `round(clamp(x/2 + 0.5)·255)`.
pub fn from_planar(values: &[f32], width: usize, height: usize) -> Result<RgbImage> {
    let unit: Vec<f32> = values.iter().map(|v| v / 2.0 + 0.5).collect();
    from_unit_planar(&unit, width, height)
}

/// Planar `[3, h, w]` values in `[0, 1]` → RGB, `round(clamp(x)·255)`.
pub fn from_unit_planar(values: &[f32], width: usize, height: usize) -> Result<RgbImage> {
    if values.len() != 3 * width * height {
        return Err(Error::Invalid(format!("{} values are not a 3×{height}×{width} image", values.len())));
    }
    let plane = width * height;
    let to_u8 = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    Ok(RgbImage::from_fn(width as u32, height as u32, |x, y| {
        let i = y as usize * width + x as usize;
        image::Rgb([to_u8(values[i]), to_u8(values[plane + i]), to_u8(values[2 * plane + i])])
    }))
}

/// PNG keyword of the edit recipe (JSON) that the app and the CLI write into every result.
pub const RECIPE_KEY: &str = "kontext-recipe";

/// PNG `Software` text written with every result.
pub const SOFTWARE: &str = "kontext-web";

/// What made an image, written as JSON into its PNG (`kontext-recipe` chunk) by the app and the CLI.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Recipe {
    /// The instruction.
    pub prompt: String,
    /// Denoising steps.
    pub steps: usize,
    /// Distilled guidance.
    pub guidance: f32,
    /// Seed of the noise.
    pub seed: u64,
    /// Output width in pixels.
    pub width: usize,
    /// Output height in pixels.
    pub height: usize,
    /// The model, described by its configuration.
    pub model: String,
    /// How many reference images the edit took.
    pub references: usize,
    /// The LoRA adapters applied, by file name, with their strengths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<(String, f32)>,
    /// The step cache, where one was used (`fbc:0.08`, as `kontext edit --cache` takes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// The mask of a masked edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<MaskRecipe>,
}

/// How a recipe names the mask of a masked edit.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MaskRecipe {
    /// The mask's file name, or `painted` for one painted in the app.
    pub name: String,
    /// SHA-256 of the mask's RGB pixels, row by row (the same for any encoding of the same mask), in hex.
    pub sha256: String,
    /// The strength.
    pub strength: f64,
    /// The crop padding, where the edit ran on a crop around the mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop_padding: Option<u32>,
    /// Whether an extra reference conditioned the edit instead of the image.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reference: bool,
}

impl MaskRecipe {
    /// The recipe entry of `mask`, named `name`.
    pub fn of(mask: &super::mask::MaskedEdit, name: &str) -> Self {
        use sha2::{Digest, Sha256};
        Self {
            name: name.into(),
            sha256: format!("{:x}", Sha256::digest(mask.mask.as_raw())),
            strength: mask.strength,
            crop_padding: mask.crop_padding,
            reference: mask.reference.is_some(),
        }
    }
}

impl Recipe {
    /// The `model` field for a loaded model with DiT configuration `c`: its shape (the same text in the app and
    /// the CLI).
    pub fn describe_model(c: &crate::model::FluxConfig) -> String {
        format!(
            "FLUX.1 Kontext, DiT width {}, {} double + {} single blocks, {} heads",
            c.hidden_size, c.depth, c.depth_single_blocks, c.num_heads
        )
    }

    /// The recipe as JSON with every non-ASCII character escaped (`tEXt` is Latin-1 only).
    pub fn to_ascii_json(&self) -> String {
        let json = serde_json::to_string(self).expect("a recipe always serialises");
        let mut out = String::with_capacity(json.len());
        for c in json.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
        out
    }

    /// The image as PNG carrying this recipe and the `Software` chunk.
    pub fn encode_png(&self, image: &RgbImage) -> Result<Vec<u8>> {
        encode_png_with_text(image, &[("Software", SOFTWARE), (RECIPE_KEY, &self.to_ascii_json())])
    }
}

/// Encodes RGB pixels as PNG with `tEXt` chunks (`(keyword, text)`, Latin-1, keywords of 1–79 characters).
pub fn encode_png_with_text(image: &RgbImage, texts: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, image.width(), image.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    for (key, text) in texts {
        encoder
            .add_text_chunk((*key).to_string(), (*text).to_string())
            .map_err(|e| Error::Invalid(format!("PNG text chunk {key:?} cannot be written: {e}")))?;
    }
    let mut writer = encoder.write_header().map_err(|e| Error::Invalid(format!("PNG encoding failed: {e}")))?;
    writer.write_image_data(image.as_raw()).map_err(|e| Error::Invalid(format!("PNG encoding failed: {e}")))?;
    writer.finish().map_err(|e| Error::Invalid(format!("PNG encoding failed: {e}")))?;
    Ok(out)
}

/// The `tEXt` chunks of a PNG, `(keyword, text)` in file order.
pub fn png_text_chunks(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().map_err(|e| Error::Invalid(format!("not a readable PNG: {e}")))?;
    let mut buffer = vec![0; reader.output_buffer_size().unwrap_or(0)];
    reader.next_frame(&mut buffer).map_err(|e| Error::Invalid(format!("the PNG is damaged or truncated: {e}")))?;
    reader.finish().map_err(|e| Error::Invalid(format!("the PNG is damaged or truncated: {e}")))?;
    Ok(reader.info().uncompressed_latin1_text.iter().map(|t| (t.keyword.clone(), t.text.clone())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        RgbImage::from_pixel(width, height, image::Rgb([255, 0, 128]))
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn decodes_and_converts_both_ways() {
        let image = decode(&png(4, 2)).unwrap();
        assert_eq!((image.width(), image.height()), (4, 2));
        let values = to_tensor(&image, &crate::device::cpu()).into_data().try_into_vec_as::<f32>().unwrap();
        assert_eq!(&values[..1], &[1.0]);
        assert_eq!(values[8], -1.0);
        assert_eq!(from_planar(&values, 4, 2).unwrap(), image);
    }

    #[test]
    fn png_text_chunks_round_trip_and_pixels_survive() {
        let image = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
        let recipe = r#"{"prompt":"make it blue","steps":4}"#;
        let bytes = encode_png_with_text(&image, &[("Software", "kontext-web"), (RECIPE_KEY, recipe)]).unwrap();
        assert_eq!(decode(&bytes).unwrap(), image);
        let texts = png_text_chunks(&bytes).unwrap();
        assert_eq!(texts, vec![("Software".into(), "kontext-web".into()), (RECIPE_KEY.into(), recipe.into())]);
        assert!(encode_png_with_text(&image, &[("", "empty keyword")]).is_err());
    }

    #[test]
    fn recipes_survive_the_png_with_non_ascii_prompts() {
        let recipe = Recipe {
            prompt: "make the sky “stormy” — 雨".into(),
            steps: 28,
            guidance: 2.5,
            seed: u64::MAX,
            width: 1024,
            height: 768,
            model: "DiT width 64".into(),
            references: 2,
            loras: vec![("style.safetensors".into(), 0.75)],
            cache: Some("fbc:0.08".into()),
            mask: Some(MaskRecipe {
                name: "painted".into(),
                sha256: "ab".repeat(32),
                strength: 0.6,
                crop_padding: Some(32),
                reference: true,
            }),
        };
        let bytes = recipe.encode_png(&RgbImage::new(2, 2)).unwrap();
        let texts = png_text_chunks(&bytes).unwrap();
        assert_eq!(texts[0], ("Software".to_string(), SOFTWARE.to_string()));
        assert_eq!(texts[1].0, RECIPE_KEY);
        assert!(texts[1].1.is_ascii());
        assert_eq!(serde_json::from_str::<Recipe>(&texts[1].1).unwrap(), recipe);
    }

    #[test]
    fn refuses_non_images_truncated_and_empty_input() {
        assert!(decode(b"hello, not an image").unwrap_err().to_string().contains("not an image"));
        let full = png(64, 64);
        assert!(decode(&full[..full.len() / 2]).is_err());
        assert!(decode(&[]).is_err());
    }

    /// A PNG that is only a signature, an `IHDR` announcing `width × height` and an empty `IDAT` (enough for the
    /// header read, no pixels).
    fn png_header(width: u32, height: u32) -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &byte in bytes {
                crc ^= byte as u32;
                for _ in 0..8 {
                    crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
                }
            }
            !crc
        }
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(width.to_be_bytes());
        ihdr.extend(height.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter method, no interlace
        let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
        out.extend(13u32.to_be_bytes());
        out.extend(&ihdr);
        out.extend(crc32(&ihdr).to_be_bytes());
        // An empty IDAT: the header read stops at the first data chunk.
        out.extend(0u32.to_be_bytes());
        out.extend(b"IDAT");
        out.extend(crc32(b"IDAT").to_be_bytes());
        out
    }

    #[test]
    fn refuses_images_over_the_pixel_limit_from_their_header() {
        // 10000 × 10000 = 100 megapixels: refused before any pixel is decoded (the file has none).
        let err = decode(&png_header(10_000, 10_000)).unwrap_err().to_string();
        assert_eq!(err, "the image is 10000×10000 pixels; images up to 64 megapixels are accepted");
        let zero = decode(&png_header(0, 16)).unwrap_err().to_string();
        assert!(zero.contains("not a readable image") || zero.contains("empty"), "{zero}");
    }
}
