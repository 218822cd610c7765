//! Masked edits, as diffusers' `FluxKontextInpaintPipeline` makes them: the mask says where the image may
//! change; the edit starts from the image noised to the strength's first step, and after every step the latents
//! outside the mask are put back to the image's, noised to the next step's σ. With a crop padding, the edit runs
//! on a crop around the mask (scaled up to the edit's size) and is pasted back into the image.
//!
//! Everything here is host-side preparation of pixels; the blend itself is two tensor ops in
//! [`crate::pipeline::edit`].

use image::{GrayImage, RgbImage};

use super::resample::{self, Region};
use crate::{Error, Result};

/// What a masked edit adds to an edit of one image (the edit's first reference).
#[derive(Debug, Clone)]
pub struct MaskedEdit {
    /// White where the edit may change the image, black where it must not; any size with the image's aspect
    /// ratio (resized as diffusers resizes it, then cut at grey 128).
    pub mask: RgbImage,
    /// How much of the schedule runs, in (0, 1]: 1 starts from noise; 0.6 starts from the image noised to the
    /// step 40 % of the way in and runs the remaining steps (diffusers' `strength`).
    pub strength: f64,
    /// Pixels of margin around the mask's bounding box when editing a crop (diffusers' `padding_mask_crop`);
    /// `None` edits the whole image.
    pub crop_padding: Option<u32>,
    /// An image that conditions the edit instead of the image being edited (diffusers' `image_reference`).
    pub reference: Option<RgbImage>,
}

/// Masks at least this aspect-ratio apart from the image are refused (1 %).
const ASPECT_TOLERANCE: f64 = 0.01;
/// Mask values from this grey up are white (diffusers' binarisation at 0.5 of `x / 255`).
const WHITE_FROM: u8 = 128;
/// Pixels per latent pixel.
const LATENT_SCALE: usize = 8;

impl MaskedEdit {
    /// Steps of a `steps`-step schedule that the strength skips (diffusers' `get_timesteps`).
    pub fn skipped_steps(&self, steps: usize) -> usize {
        let initial = (steps as f64 * self.strength).min(steps as f64);
        (steps as f64 - initial).max(0.0) as usize
    }

    /// Refuses a strength outside (0, 1], one that leaves no step, and a mask whose aspect ratio is not the
    /// image's (`image` is the image as given).
    pub fn check(&self, image: (u32, u32), steps: usize) -> Result<()> {
        if !(self.strength > 0.0 && self.strength <= 1.0) {
            return Err(Error::Invalid(format!("the strength must be in (0, 1], not {}", self.strength)));
        }
        if self.skipped_steps(steps) >= steps {
            return Err(Error::Invalid(format!(
                "strength {} leaves none of the {steps} steps to run: raise the strength or the steps",
                self.strength
            )));
        }
        let (mw, mh) = (self.mask.width(), self.mask.height());
        let (iw, ih) = image;
        let (mask_aspect, image_aspect) = (mw as f64 / mh as f64, iw as f64 / ih as f64);
        if (mask_aspect / image_aspect - 1.0).abs() > ASPECT_TOLERANCE {
            return Err(Error::Invalid(format!(
                "the mask is {mw}×{mh} pixels and the image {iw}×{ih}: the mask must have the image's aspect ratio"
            )));
        }
        if !resample::luma(&self.mask).pixels().any(|p| p.0[0] >= WHITE_FROM) {
            return Err(Error::Invalid(
                "the mask has no white pixel: paint white where the edit may change the image".into(),
            ));
        }
        Ok(())
    }

    /// Prepares the pixels of the edit: `image` (as given) at the edit's `size`, and the reference (when any) at
    /// `reference_size`. Call [`MaskedEdit::check`] first.
    pub fn prepare(
        &self,
        image: &RgbImage,
        size: (usize, usize),
        reference_size: Option<(usize, usize)>,
    ) -> Result<PreparedMask> {
        let (width, height) = size;
        let original = resample::resize(image, width, height);
        let (mw, mh) = (self.mask.width() as usize, self.mask.height() as usize);
        // The region is found on the mask as given (as diffusers does) and scaled to the image at the edit's size
        // (the same numbers when the mask has that size; diffusers applies them unscaled).
        let crop = self.crop_padding.map(|pad| {
            let in_mask = crop_region(&resample::luma(&self.mask), width, height, pad as i64);
            let scale = |v: i64, to: usize, from: usize| (v * to as i64 + from as i64 / 2) / from as i64;
            let [x0, y0, x1, y1] = in_mask;
            let in_image = [scale(x0, width, mw), scale(y0, height, mh), scale(x1, width, mw), scale(y1, height, mh)];
            (in_mask, in_image)
        });
        // diffusers: crop, then resize ("fill" after a crop), then grey, then cut at 0.5.
        let (edited, mask) = match crop {
            Some((in_mask, in_image)) => (
                resample::resize_fill(&resample::crop(&original, in_image), width, height),
                resample::resize_fill(&resample::crop(&self.mask, in_mask), width, height),
            ),
            None => (original.clone(), resample::resize(&self.mask, width, height)),
        };
        let mut pixels = resample::luma(&mask);
        pixels.pixels_mut().for_each(|p| p.0[0] = u8::from(p.0[0] >= WHITE_FROM));
        let (latent_w, latent_h) = (width / LATENT_SCALE, height / LATENT_SCALE);
        // torch's nearest interpolation by exactly 1/8 samples pixel (8i, 8j).
        let latent: Vec<f32> = (0..latent_h)
            .flat_map(|i| (0..latent_w).map(move |j| (i, j)))
            .map(|(i, j)| f32::from(pixels.get_pixel((j * LATENT_SCALE) as u32, (i * LATENT_SCALE) as u32).0[0]))
            .collect();
        if !latent.contains(&1.0) {
            return Err(Error::Invalid(
                "the mask's white area is too small for the model's 8-pixel grid: paint a larger area".into(),
            ));
        }
        let reference = match (&self.reference, reference_size) {
            (Some(reference), Some((rw, rh))) => {
                let sized = resample::resize(reference, rw, rh);
                Some(match crop {
                    Some((_, in_image)) => resample::resize_fill(&resample::crop(&sized, in_image), rw, rh),
                    None => sized,
                })
            }
            _ => None,
        };
        let paste_back = crop.map(|(_, region)| PasteBack {
            region,
            soft_mask: resample::luma(&resample::resize(&self.mask, width, height)),
            original,
        });
        Ok(PreparedMask { image: edited, reference, pixels, latent, latent_size: (latent_w, latent_h), paste_back })
    }
}

/// A masked edit's pixels, ready to encode.
#[derive(Debug, Clone)]
pub struct PreparedMask {
    /// What the edit changes and what the blend restores: the image at the edit's size, or the crop around the
    /// mask scaled to it.
    pub image: RgbImage,
    /// The reference that conditions the edit instead of `image`, at its own size (cropped like `image`).
    pub reference: Option<RgbImage>,
    /// The mask at the edit's size: 1 where the edit may change the image, else 0.
    pub pixels: GrayImage,
    /// The mask on the latent grid, row-major `[h/8, w/8]`, 0 or 1.
    pub latent: Vec<f32>,
    /// `(width, height)` of the latent grid.
    pub latent_size: (usize, usize),
    /// How the edited crop goes back into the image, for an edit of a crop.
    pub paste_back: Option<PasteBack>,
}

/// The edited crop's way back into the image.
#[derive(Debug, Clone)]
pub struct PasteBack {
    /// Where the crop came from, in the image at the edit's size.
    pub region: Region,
    /// The image at the edit's size.
    pub original: RgbImage,
    /// The mask at the edit's size, grey (not cut at 128): how much of the edit each pixel takes.
    pub soft_mask: GrayImage,
}

impl PasteBack {
    /// The edited crop (`edited`, at the edit's size) scaled into its region and laid over the original under
    /// the mask, as diffusers' `VaeImageProcessor.apply_overlay` does (Pillow's integer alpha arithmetic).
    pub fn apply(&self, edited: &RgbImage) -> RgbImage {
        let [x0, y0, x1, y1] = self.region;
        let mut canvas = RgbImage::new(self.original.width(), self.original.height());
        let scaled = resample::resize_crop(edited, (x1 - x0) as usize, (y1 - y0) as usize);
        resample::paste(&mut canvas, &scaled, x0, y0);
        let div255 = |v: u32| ((v + 128) + ((v + 128) >> 8)) >> 8;
        RgbImage::from_fn(canvas.width(), canvas.height(), |x, y| {
            let keep = 255 - u32::from(self.soft_mask.get_pixel(x, y).0[0]);
            let under = canvas.get_pixel(x, y).0.map(u32::from);
            if keep == 0 {
                return image::Rgb(under.map(|v| v as u8));
            }
            let original = self.original.get_pixel(x, y).0.map(u32::from);
            image::Rgb(std::array::from_fn(|c| {
                // The original with alpha `keep`, premultiplied by the paste and back (RGBa → RGBA)…
                let premultiplied = div255(original[c] * keep);
                let over = if keep == 255 { premultiplied } else { (255 * premultiplied / keep).min(255) };
                // …composited over the opaque edit (`alpha_composite`, 7 bits of extra precision).
                let mixed = over * keep * 128 + under[c] * (255 - keep) * 128 + (0x80 << 7);
                ((((mixed >> 8) + mixed) >> 8) >> 7) as u8
            }))
        })
    }
}

/// diffusers' `VaeImageProcessor.get_crop_region`: the bounding box of the mask's non-black pixels, grown by
/// `pad` and then widened (or heightened) to the aspect ratio of `width × height`, kept inside the mask.
pub fn crop_region(mask: &GrayImage, width: usize, height: usize, pad: i64) -> Region {
    let (w, h) = (mask.width() as i64, mask.height() as i64);
    let column_black = |x: i64| (0..h).all(|y| mask.get_pixel(x as u32, y as u32).0[0] == 0);
    let row_black = |y: i64| (0..w).all(|x| mask.get_pixel(x as u32, y as u32).0[0] == 0);
    let left = (0..w).take_while(|&x| column_black(x)).count() as i64;
    let right = (0..w).rev().take_while(|&x| column_black(x)).count() as i64;
    let top = (0..h).take_while(|&y| row_black(y)).count() as i64;
    let bottom = (0..h).rev().take_while(|&y| row_black(y)).count() as i64;
    let (mut x1, mut y1, mut x2, mut y2) =
        ((left - pad).max(0), (top - pad).max(0), (w - right + pad).min(w), (h - bottom + pad).min(h));
    let ratio_crop = (x2 - x1) as f64 / (y2 - y1) as f64;
    let ratio = width as f64 / height as f64;
    if ratio_crop > ratio {
        let grow = ((x2 - x1) as f64 / ratio - (y2 - y1) as f64) as i64;
        (y1, y2) = widen(y1, y2, grow, h);
    } else {
        let grow = ((y2 - y1) as f64 * ratio - (x2 - x1) as f64) as i64;
        (x1, x2) = widen(x1, x2, grow, w);
    }
    [x1, y1, x2, y2]
}

/// The span `lo..hi` grown by `grow` pixels (half before it, the rest after), shifted back inside `0..limit` and
/// cut at `limit`, as `get_crop_region` widens one axis (`grow` is never negative there, so `/` is Python's `//`).
fn widen(lo: i64, hi: i64, grow: i64, limit: i64) -> (i64, i64) {
    let (mut lo, mut hi) = (lo - grow / 2, hi + grow - grow / 2);
    if hi >= limit {
        let over = hi - limit;
        (lo, hi) = (lo - over, hi - over);
    }
    if lo < 0 {
        (lo, hi) = (0, hi - lo);
    }
    (lo, hi.min(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square_mask(w: u32, h: u32, region: [u32; 4]) -> GrayImage {
        GrayImage::from_fn(w, h, |x, y| {
            image::Luma([u8::from((region[0]..=region[2]).contains(&x) && (region[1]..=region[3]).contains(&y)) * 255])
        })
    }

    #[test]
    fn crop_regions_follow_diffusers() {
        // Worked by hand through `get_crop_region`: the 13×13 square at (61, 9) padded by 5 is 23×23 at (56, 4);
        // widened to 3:2, 34.5 wide, int(11.5) = 11 more columns, 5 left and 6 right.
        assert_eq!(crop_region(&square_mask(96, 64, [61, 9, 73, 21]), 96, 64, 5), [51, 4, 85, 27]);
        // Against the right edge: shifted back inside.
        assert_eq!(crop_region(&square_mask(96, 64, [90, 30, 95, 35]), 96, 64, 0), [87, 30, 96, 36]);
        // A wide box made taller, against the top.
        assert_eq!(crop_region(&square_mask(96, 64, [10, 0, 69, 3]), 96, 64, 0), [10, 0, 70, 40]);
    }

    #[test]
    fn strength_skips_steps_as_diffusers_rounds() {
        let edit = |strength| MaskedEdit { mask: RgbImage::new(1, 1), strength, crop_padding: None, reference: None };
        assert_eq!(edit(1.0).skipped_steps(28), 0);
        assert_eq!(edit(0.6).skipped_steps(6), 2); // int(6 − 3.5999999999999996)
        assert_eq!(edit(0.8).skipped_steps(6), 1);
        assert_eq!(edit(0.5).skipped_steps(4), 2);
        assert_eq!(edit(0.01).skipped_steps(4), 3);
    }

    #[test]
    fn bad_masks_and_strengths_are_refused_in_one_line() {
        let white = RgbImage::from_pixel(48, 32, image::Rgb([255, 255, 255]));
        let edit = |mask: RgbImage, strength| MaskedEdit { mask, strength, crop_padding: None, reference: None };
        assert!(edit(white.clone(), 1.0).check((96, 64), 4).is_ok());
        let err = |e: Error| e.to_string();
        assert_eq!(
            err(edit(RgbImage::from_pixel(64, 64, image::Rgb([255; 3])), 1.0).check((96, 64), 4).unwrap_err()),
            "the mask is 64×64 pixels and the image 96×64: the mask must have the image's aspect ratio"
        );
        assert!(err(edit(RgbImage::new(96, 64), 1.0).check((96, 64), 4).unwrap_err()).contains("no white pixel"));
        assert!(err(edit(white.clone(), 0.0).check((96, 64), 4).unwrap_err()).contains("(0, 1]"));
        assert!(err(edit(white.clone(), 1.5).check((96, 64), 4).unwrap_err()).contains("(0, 1]"));
        // diffusers truncates `steps − steps · strength`: only a strength too small to move 4.0 leaves no step.
        assert!(edit(white.clone(), 0.01).check((96, 64), 4).is_ok());
        assert!(err(edit(white, 1e-17).check((96, 64), 4).unwrap_err()).contains("leaves none of the 4 steps"));
        // White only between the latent grid's sample points.
        let speck = RgbImage::from_fn(96, 64, |x, y| image::Rgb([if (x, y) == (3, 3) { 255 } else { 0 }; 3]));
        let prepared = edit(speck, 1.0).prepare(&RgbImage::new(96, 64), (96, 64), None);
        assert!(err(prepared.unwrap_err()).contains("too small for the model's 8-pixel grid"));
    }

    #[test]
    fn the_paste_back_keeps_the_original_where_the_mask_is_black() {
        let original = RgbImage::from_fn(32, 16, |x, y| image::Rgb([x as u8 * 7, y as u8 * 15, 200]));
        let mut soft_mask = square_mask(32, 16, [8, 4, 15, 11]);
        soft_mask.put_pixel(16, 8, image::Luma([100]));
        let paste = PasteBack { region: [4, 0, 28, 16], original: original.clone(), soft_mask };
        let edited = RgbImage::from_pixel(32, 16, image::Rgb([10, 250, 0]));
        let out = paste.apply(&edited);
        assert_eq!(out.get_pixel(0, 0), original.get_pixel(0, 0));
        assert_eq!(out.get_pixel(31, 15), original.get_pixel(31, 15));
        assert_eq!(out.get_pixel(10, 6).0, [10, 250, 0]);
        // Grey 100: 100/255 of the edit over the original, within Pillow's rounding.
        let mixed = out.get_pixel(16, 8).0;
        let expected = |e: f64, o: f64| (e * 100.0 + o * 155.0) / 255.0;
        assert!((f64::from(mixed[1]) - expected(250.0, 120.0)).abs() <= 1.0, "{mixed:?}");
    }
}
