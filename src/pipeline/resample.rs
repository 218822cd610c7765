//! Resizing exactly as Pillow does it (`Image.resize` with `LANCZOS`, 8 bits per channel, `Resample.c`), and
//! the resize modes of diffusers' `VaeImageProcessor` built on it (`fill`, `crop`), so that references and masks
//! come out of our resizes with the bytes the reference pipeline sees.

use image::{GrayImage, ImageBuffer, Pixel, RgbImage};

/// Bits of fraction in Pillow's fixed-point filter weights (`PRECISION_BITS`, 32 − 8 − 2).
const PRECISION_BITS: u32 = 22;
/// Half-width of the Lanczos filter in source pixels at scale 1.
const LANCZOS_SUPPORT: f64 = 3.0;

/// A source rectangle `(x0, y0, x1, y1)` in pixels, as Pillow's `box` argument.
pub type SourceBox = [f32; 4];

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    libm::sin(x) / x
}

fn lanczos(x: f64) -> f64 {
    if (-LANCZOS_SUPPORT..LANCZOS_SUPPORT).contains(&x) { sinc(x) * sinc(x / LANCZOS_SUPPORT) } else { 0.0 }
}

/// The filter taps of one axis: for each output pixel the first source pixel, how many follow, and their
/// fixed-point weights (`precompute_coeffs` and `normalize_coeffs_8bpc`).
struct Taps {
    /// `(first, count)` per output pixel.
    bounds: Vec<(usize, usize)>,
    /// Weights per output pixel, `stride` apart.
    weights: Vec<i32>,
    stride: usize,
}

impl Taps {
    fn new(in_size: usize, in0: f32, in1: f32, out_size: usize) -> Self {
        let scale = f64::from(in1 - in0) / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = LANCZOS_SUPPORT * filter_scale;
        let stride = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * stride];
        let mut taps = vec![0f64; stride];
        for xx in 0..out_size {
            let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero, as `as i64` does.
            let first = ((center - support + 0.5) as i64).max(0);
            let count = ((center + support + 0.5) as i64).min(in_size as i64) - first;
            let count = count.max(0) as usize;
            let mut total = 0.0;
            for (x, tap) in taps.iter_mut().enumerate().take(count) {
                *tap = lanczos(((x as i64 + first) as f64 - center + 0.5) / filter_scale);
                total += *tap;
            }
            for (x, tap) in taps.iter().enumerate().take(count) {
                let k = if total != 0.0 { tap / total } else { *tap };
                let fixed = k * f64::from(1u32 << PRECISION_BITS);
                weights[xx * stride + x] = if k < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
            }
            bounds.push((first as usize, count));
        }
        Self { bounds, weights, stride }
    }

    /// One output value from the `count` source values `value(first + i)`.
    fn apply(&self, out: usize, value: impl Fn(usize) -> u8) -> u8 {
        let (first, count) = self.bounds[out];
        let weights = &self.weights[out * self.stride..];
        let mut sum: i32 = 1 << (PRECISION_BITS - 1);
        for (i, &w) in weights.iter().enumerate().take(count) {
            sum += i32::from(value(first + i)) * w;
        }
        clip8(sum)
    }
}

fn clip8(sum: i32) -> u8 {
    if sum >= (1 << PRECISION_BITS << 8) {
        255
    } else if sum <= 0 {
        0
    } else {
        (sum >> PRECISION_BITS) as u8
    }
}

/// Pillow's `image.resize((width, height), LANCZOS, box=source)`: the horizontal pass, then the vertical one,
/// each skipped when it would change nothing.
pub fn resize_box<P: Pixel<Subpixel = u8>>(
    image: &ImageBuffer<P, Vec<u8>>,
    width: usize,
    height: usize,
    source: SourceBox,
) -> ImageBuffer<P, Vec<u8>> {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let channels = P::CHANNEL_COUNT as usize;
    let horizontal = width != in_w || source[0] != 0.0 || source[2] != width as f32;
    let vertical = height != in_h || source[1] != 0.0 || source[3] != height as f32;
    let mut rows = image.as_raw().clone();
    let mut row_width = in_w;
    if horizontal {
        let taps = Taps::new(in_w, source[0], source[2], width);
        let mut out = vec![0u8; width * in_h * channels];
        for y in 0..in_h {
            let row = &rows[y * in_w * channels..];
            for x in 0..width {
                for c in 0..channels {
                    out[(y * width + x) * channels + c] = taps.apply(x, |i| row[i * channels + c]);
                }
            }
        }
        rows = out;
        row_width = width;
    }
    if vertical {
        let taps = Taps::new(in_h, source[1], source[3], height);
        let mut out = vec![0u8; row_width * height * channels];
        for y in 0..height {
            for x in 0..row_width {
                for c in 0..channels {
                    out[(y * row_width + x) * channels + c] =
                        taps.apply(y, |i| rows[(i * row_width + x) * channels + c]);
                }
            }
        }
        rows = out;
    }
    ImageBuffer::from_raw(row_width as u32, if vertical { height } else { in_h } as u32, rows)
        .expect("sizes computed above")
}

/// Pillow's `image.resize((width, height), LANCZOS)`: a copy when the size already matches.
pub fn resize<P: Pixel<Subpixel = u8>>(
    image: &ImageBuffer<P, Vec<u8>>,
    width: usize,
    height: usize,
) -> ImageBuffer<P, Vec<u8>> {
    if image.width() as usize == width && image.height() as usize == height {
        return image.clone();
    }
    resize_box(image, width, height, [0.0, 0.0, image.width() as f32, image.height() as f32])
}

/// A region `(x0, y0, x1, y1)` in pixels, `x1`/`y1` exclusive; it may reach outside the image.
pub type Region = [i64; 4];

/// Pillow's `image.crop(region)`: pixels outside the image are black.
pub fn crop<P: Pixel<Subpixel = u8>>(image: &ImageBuffer<P, Vec<u8>>, region: Region) -> ImageBuffer<P, Vec<u8>> {
    let [x0, y0, x1, y1] = region;
    let (w, h) = ((x1 - x0).max(0) as u32, (y1 - y0).max(0) as u32);
    let mut out = ImageBuffer::new(w, h);
    paste(&mut out, image, -x0, -y0);
    out
}

/// Pillow's `canvas.paste(image, (x, y))`: what falls outside the canvas is dropped.
pub fn paste<P: Pixel<Subpixel = u8>>(
    canvas: &mut ImageBuffer<P, Vec<u8>>,
    image: &ImageBuffer<P, Vec<u8>>,
    x: i64,
    y: i64,
) {
    for (sx, sy, pixel) in image.enumerate_pixels() {
        let (cx, cy) = (sx as i64 + x, sy as i64 + y);
        if (0..canvas.width() as i64).contains(&cx) && (0..canvas.height() as i64).contains(&cy) {
            canvas.put_pixel(cx as u32, cy as u32, *pixel);
        }
    }
}

/// `image` resized keeping its aspect — to cover `width × height` when `cover`, else to fit inside it — and
/// pasted centred on a black `width × height` canvas (the shared part of diffusers' "fill" and "crop" modes);
/// returns the canvas and the resized image.
fn resize_centred<P: Pixel<Subpixel = u8>>(
    image: &ImageBuffer<P, Vec<u8>>,
    width: usize,
    height: usize,
    cover: bool,
) -> (ImageBuffer<P, Vec<u8>>, ImageBuffer<P, Vec<u8>>) {
    let (iw, ih) = (image.width() as usize, image.height() as usize);
    let ratio = width as f64 / height as f64;
    let src_ratio = iw as f64 / ih as f64;
    let full_width = if cover { ratio > src_ratio } else { ratio < src_ratio };
    let full_height = if cover { ratio <= src_ratio } else { ratio >= src_ratio };
    let src_w = if full_width { width } else { iw * height / ih };
    let src_h = if full_height { height } else { ih * width / iw };
    let resized = resize(image, src_w, src_h);
    let mut canvas = ImageBuffer::new(width as u32, height as u32);
    paste(&mut canvas, &resized, (width / 2) as i64 - (src_w / 2) as i64, (height / 2) as i64 - (src_h / 2) as i64);
    (canvas, resized)
}

/// diffusers' `VaeImageProcessor._resize_and_fill`: resized to fit inside `width × height` keeping its aspect,
/// centred, and the uncovered bands filled from the image's first and last rows (or columns).
pub fn resize_fill<P: Pixel<Subpixel = u8>>(
    image: &ImageBuffer<P, Vec<u8>>,
    width: usize,
    height: usize,
) -> ImageBuffer<P, Vec<u8>> {
    let (mut out, resized) = resize_centred(image, width, height, false);
    let (src_w, src_h) = (resized.width() as usize, resized.height() as usize);
    let (rw, rh) = (src_w as f32, src_h as f32);
    let ratio = width as f64 / height as f64;
    let src_ratio = image.width() as f64 / image.height() as f64;
    if ratio < src_ratio {
        let fill = (height / 2) as i64 - (src_h / 2) as i64;
        if fill > 0 {
            let band = fill as usize;
            paste(&mut out, &resize_box(&resized, width, band, [0.0, 0.0, width as f32, 0.0]), 0, 0);
            paste(&mut out, &resize_box(&resized, width, band, [0.0, rh, width as f32, rh]), 0, fill + src_h as i64);
        }
    } else if ratio > src_ratio {
        let fill = (width / 2) as i64 - (src_w / 2) as i64;
        if fill > 0 {
            let band = fill as usize;
            paste(&mut out, &resize_box(&resized, band, height, [0.0, 0.0, 0.0, height as f32]), 0, 0);
            paste(&mut out, &resize_box(&resized, band, height, [rw, 0.0, rw, height as f32]), fill + src_w as i64, 0);
        }
    }
    out
}

/// diffusers' `VaeImageProcessor._resize_and_crop`: resized to cover `width × height` keeping its aspect,
/// centred, the excess cut off.
pub fn resize_crop<P: Pixel<Subpixel = u8>>(
    image: &ImageBuffer<P, Vec<u8>>,
    width: usize,
    height: usize,
) -> ImageBuffer<P, Vec<u8>> {
    resize_centred(image, width, height, true).0
}

/// Pillow's `image.convert("L")`: ITU-R 601 luma in 16-bit fixed point, rounded.
pub fn luma(image: &RgbImage) -> GrayImage {
    GrayImage::from_fn(image.width(), image.height(), |x, y| {
        let [r, g, b] = image.get_pixel(x, y).0.map(u32::from);
        image::Luma([((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_same_size_resize_is_a_copy_and_a_flat_image_stays_flat() {
        let image = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 50, 9]));
        assert_eq!(resize(&image, 7, 5), image);
        let flat = GrayImage::from_pixel(13, 9, image::Luma([200]));
        for (w, h) in [(5, 3), (26, 18), (13, 4)] {
            let out = resize(&flat, w, h);
            assert_eq!((out.width() as usize, out.height() as usize), (w, h));
            assert!(out.pixels().all(|p| p.0 == [200]), "{w}×{h}");
        }
    }

    /// Weights Pillow computes for a 2× downscale of a 12-pixel row: support 6, at most 13 taps, summing to 2²²
    /// up to rounding, symmetric about each output pixel's centre.
    #[test]
    fn downscale_taps_are_normalised_and_symmetric() {
        let taps = Taps::new(12, 0.0, 12.0, 6);
        assert_eq!(taps.stride, 13);
        assert_eq!(taps.bounds[0], (0, 7));
        assert_eq!(taps.bounds[3], (1, 11));
        for out in 0..6 {
            let (_, count) = taps.bounds[out];
            let sum: i32 = taps.weights[out * taps.stride..][..count].iter().sum();
            assert!((sum - (1 << 22)).abs() <= count as i32, "{out}: {sum}");
        }
        // Pixels 2 and 11 lie 4.5 either side of the centre, 6 and 7 half a pixel.
        let middle = &taps.weights[3 * taps.stride..][..11];
        assert_eq!(middle[1], middle[10]);
        assert_eq!(middle[5], middle[6]);
    }

    /// Pillow's own resizes of a noisy 96×64 image (`tests/fixtures/generator/inpaint_golden.py`), down and up.
    #[test]
    fn resizes_equal_pillows_byte_for_byte() {
        let png = |name: &str| {
            let path = crate::harness::testing::fixture(&format!("golden/{name}"));
            crate::pipeline::image::decode(&std::fs::read(path).unwrap()).unwrap()
        };
        let source = png("inpaint_part.png");
        for (w, h) in [(37, 23), (131, 90)] {
            let expected = png(&format!("resize_{w}x{h}.png"));
            assert_eq!(resize(&source, w, h), expected, "{w}×{h}");
            // Control: the image crate's Lanczos3, which we used before, is not Pillow's.
            let theirs = image::imageops::resize(&source, w as u32, h as u32, image::imageops::FilterType::Lanczos3);
            assert_ne!(theirs, expected, "{w}×{h}");
        }
    }

    #[test]
    fn luma_matches_pillow_on_primaries() {
        // Pillow: Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0)) for red, green, blue, grey 128.
        let image = RgbImage::from_fn(4, 1, |x, _| {
            image::Rgb([[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]][x as usize])
        });
        assert_eq!(luma(&image).as_raw(), &vec![76, 150, 29, 128]);
    }

    #[test]
    fn crops_outside_the_image_are_black() {
        let image = GrayImage::from_pixel(4, 4, image::Luma([9]));
        let out = crop(&image, [-1, 2, 3, 6]);
        assert_eq!((out.width(), out.height()), (4, 4));
        assert_eq!(out.get_pixel(0, 0).0, [0]);
        assert_eq!(out.get_pixel(1, 1).0, [9]);
        assert_eq!(out.get_pixel(1, 2).0, [0]);
    }
}
