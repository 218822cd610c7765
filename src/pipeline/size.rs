//! Image sizes: how references are resized and how large the output is.
//!
//! diffusers' Kontext pipeline snaps a reference to the preferred ~1 MP bucket with the closest aspect ratio
//! and makes a 1024² output whatever the input (users hate the silent square). We snap references to that
//! bucket scaled to the chosen area, and default the output to the first reference's aspect at that area.

use crate::{Error, Result};

/// `(width, height)` of the 17 preferred Kontext resolutions (diffusers `PREFERRED_KONTEXT_RESOLUTIONS`).
pub const PREFERRED_KONTEXT_RESOLUTIONS: [(usize, usize); 17] = [
    (672, 1568),
    (688, 1504),
    (720, 1456),
    (752, 1392),
    (800, 1328),
    (832, 1248),
    (880, 1184),
    (944, 1104),
    (1024, 1024),
    (1104, 944),
    (1184, 880),
    (1248, 832),
    (1328, 800),
    (1392, 752),
    (1456, 720),
    (1504, 688),
    (1568, 672),
];

/// Area (pixels) of the preferred buckets and of the default output.
pub const DEFAULT_MAX_AREA: usize = 1024 * 1024;
/// Every side is a multiple of this (VAE ×8, then 2×2 patches).
pub const MULTIPLE: usize = 16;
/// Largest side accepted for a generated image.
pub const MAX_SIDE: usize = 4096;

/// How references are brought to a size the model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Snap to the preferred bucket of the closest aspect ratio, scaled to the chosen area (the default).
    Bucket,
    /// Keep the reference's own size, floored to multiples of 16.
    None,
}

fn floor16(v: usize) -> usize {
    v / MULTIPLE * MULTIPLE
}

/// The size a `width × height` reference is resized to before encoding.
pub fn reference_size(width: usize, height: usize, resize: Resize, max_area: usize) -> Result<(usize, usize)> {
    if width == 0 || height == 0 {
        return Err(Error::Invalid(format!("a reference of {width}×{height} pixels is empty")));
    }
    let (w, h) = match resize {
        Resize::None => (floor16(width), floor16(height)),
        Resize::Bucket => {
            let aspect = width as f64 / height as f64;
            let (bw, bh) = PREFERRED_KONTEXT_RESOLUTIONS
                .iter()
                .copied()
                .min_by(|a, b| {
                    let da = (aspect - a.0 as f64 / a.1 as f64).abs();
                    let db = (aspect - b.0 as f64 / b.1 as f64).abs();
                    da.total_cmp(&db).then(a.cmp(b))
                })
                .expect("non-empty table");
            let scale = (max_area as f64 / DEFAULT_MAX_AREA as f64).sqrt();
            (floor16((bw as f64 * scale) as usize), floor16((bh as f64 * scale) as usize))
        }
    };
    if w == 0 || h == 0 {
        return Err(Error::Invalid(format!(
            "a reference of {width}×{height} pixels is smaller than {MULTIPLE}×{MULTIPLE} after resizing"
        )));
    }
    Ok((w, h))
}

/// The output size: explicit when given (floored to ×16), else the first reference's aspect ratio at
/// `max_area` (diffusers' `round(sqrt(area·w/h))` rule), else a square of `max_area`.
pub fn output_size(
    explicit: Option<(usize, usize)>,
    first_reference: Option<(usize, usize)>,
    max_area: usize,
) -> Result<(usize, usize)> {
    let (w, h) = match (explicit, first_reference) {
        (Some((w, h)), _) => (floor16(w), floor16(h)),
        (None, Some((rw, rh))) if rw > 0 && rh > 0 => {
            let aspect = rw as f64 / rh as f64;
            (
                floor16((max_area as f64 * aspect).sqrt().round() as usize),
                floor16((max_area as f64 / aspect).sqrt().round() as usize),
            )
        }
        _ => {
            let side = floor16((max_area as f64).sqrt() as usize);
            (side, side)
        }
    };
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(Error::Invalid(format!(
            "output size {w}×{h} is outside {MULTIPLE}…{MAX_SIDE} pixels per side (sizes are floored to multiples of {MULTIPLE})"
        )));
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_sizes_match_the_diffusers_table() {
        // golden_meta.json size_table: (input w, h, auto_resize) → reference (w, h).
        let table = [
            (96, 64, true, 1248, 832),
            (96, 64, false, 96, 64),
            (1024, 1024, true, 1024, 1024),
            (1920, 1080, true, 1392, 752),
            (1920, 1080, false, 1920, 1072),
            (1080, 1920, true, 752, 1392),
            (800, 600, true, 1184, 880),
            (800, 600, false, 800, 592),
            (512, 768, true, 832, 1248),
            (3000, 1000, true, 1568, 672),
            (3000, 1000, false, 2992, 992),
            (100, 70, true, 1248, 832),
            (100, 70, false, 96, 64),
        ];
        for (w, h, bucket, rw, rh) in table {
            let mode = if bucket { Resize::Bucket } else { Resize::None };
            assert_eq!(reference_size(w, h, mode, DEFAULT_MAX_AREA).unwrap(), (rw, rh), "{w}×{h} {mode:?}");
        }
    }

    #[test]
    fn buckets_scale_to_the_chosen_area_and_tiny_images_are_refused() {
        assert_eq!(reference_size(96, 64, Resize::Bucket, 512 * 512).unwrap(), (624, 416));
        assert!(reference_size(10, 10, Resize::None, DEFAULT_MAX_AREA).is_err());
        assert!(reference_size(0, 10, Resize::Bucket, DEFAULT_MAX_AREA).is_err());
    }

    #[test]
    fn output_follows_the_first_reference_never_a_silent_square() {
        assert_eq!(output_size(None, Some((1920, 1080)), DEFAULT_MAX_AREA).unwrap(), (1360, 768));
        assert_eq!(output_size(None, Some((64, 80)), 80 * 64).unwrap(), (64, 80));
        assert_eq!(output_size(Some((70, 90)), Some((1920, 1080)), DEFAULT_MAX_AREA).unwrap(), (64, 80));
        assert_eq!(output_size(None, None, DEFAULT_MAX_AREA).unwrap(), (1024, 1024));
        assert!(output_size(Some((8, 8)), None, DEFAULT_MAX_AREA).is_err());
    }
}
