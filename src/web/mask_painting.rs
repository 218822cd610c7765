//! The mask a user paints over the image to edit: brush and eraser strokes, clear, invert and a loaded mask,
//! replayed onto a raster of the image's size (255 = the edit may change this pixel). Undo drops the last
//! operation. Pure data, so that the page's overlay, the PNG the worker receives and the tests see the same
//! pixels.

use image::{GrayImage, Luma, RgbImage};

use crate::pipeline::image as images;
use crate::{Error, Result};

/// One change to the mask.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskOp {
    /// A brush (or, with `erase`, eraser) stroke of `radius` pixels through `points` (image pixels).
    Stroke {
        /// Paints black (keep) instead of white (may change).
        erase: bool,
        /// Half the brush's width, in image pixels.
        radius: f32,
        /// The pointer's path, in image pixels.
        points: Vec<(f32, f32)>,
    },
    /// Everything black.
    Clear,
    /// White and black swapped.
    Invert,
    /// A whole mask replacing what was painted (a re-run's mask), 0 or 255 per pixel.
    Load(GrayImage),
}

/// A rectangle of pixels: `x0..x1` × `y0..y1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First column.
    pub x0: u32,
    /// First row.
    pub y0: u32,
    /// One past the last column.
    pub x1: u32,
    /// One past the last row.
    pub y1: u32,
}

impl Region {
    /// Width and height.
    pub fn size(&self) -> (u32, u32) {
        (self.x1 - self.x0, self.y1 - self.y0)
    }

    fn union(self, other: Region) -> Region {
        Region {
            x0: self.x0.min(other.x0),
            y0: self.y0.min(other.y0),
            x1: self.x1.max(other.x1),
            y1: self.y1.max(other.y1),
        }
    }
}

/// A painted mask and how it was painted.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskPainting {
    ops: Vec<MaskOp>,
    raster: GrayImage,
    /// The pixels changed since [`MaskPainting::take_changed`] was last called.
    changed: Option<Region>,
}

const WHITE: Luma<u8> = Luma([255]);
const BLACK: Luma<u8> = Luma([0]);

impl MaskPainting {
    /// An empty (all black) mask of `width × height` pixels.
    pub fn new(width: u32, height: u32) -> Self {
        Self { ops: Vec::new(), raster: GrayImage::new(width, height), changed: None }
    }

    /// The region whose pixels changed since the last call (so that an overlay redraws only that), and forgets it.
    pub fn take_changed(&mut self) -> Option<Region> {
        self.changed.take()
    }

    fn mark(&mut self, region: Option<Region>) {
        self.changed = match (self.changed, region) {
            (Some(a), Some(b)) => Some(a.union(b)),
            (a, b) => a.or(b),
        };
    }

    fn mark_all(&mut self) {
        let (x1, y1) = self.size();
        self.mark(Some(Region { x0: 0, y0: 0, x1, y1 }));
    }

    /// `(width, height)` in pixels.
    pub fn size(&self) -> (u32, u32) {
        self.raster.dimensions()
    }

    /// The mask: 255 where the edit may change the image, 0 elsewhere.
    pub fn raster(&self) -> &GrayImage {
        &self.raster
    }

    /// Whether no pixel is white.
    pub fn is_empty(&self) -> bool {
        self.raster.pixels().all(|p| p.0[0] == 0)
    }

    /// Whether there is an operation to undo.
    pub fn can_undo(&self) -> bool {
        !self.ops.is_empty()
    }

    /// Starts a stroke at `point` (a dot until it is extended).
    pub fn begin_stroke(&mut self, erase: bool, radius: f32, point: (f32, f32)) {
        let radius = radius.max(0.5);
        let region = paint_segment(&mut self.raster, point, point, radius, if erase { BLACK } else { WHITE });
        self.mark(region);
        self.ops.push(MaskOp::Stroke { erase, radius, points: vec![point] });
    }

    /// Extends the stroke begun last to `point`; nothing when the last operation is not a stroke.
    pub fn extend_stroke(&mut self, point: (f32, f32)) {
        if let Some(MaskOp::Stroke { erase, radius, points }) = self.ops.last_mut() {
            let from = *points.last().expect("a stroke has a point");
            points.push(point);
            let region = paint_segment(&mut self.raster, from, point, *radius, if *erase { BLACK } else { WHITE });
            self.mark(region);
        }
    }

    /// Makes the whole mask black.
    pub fn clear(&mut self) {
        self.apply(MaskOp::Clear);
    }

    /// Swaps white and black.
    pub fn invert(&mut self) {
        self.apply(MaskOp::Invert);
    }

    /// Replaces the mask by `mask` (a PNG, JPEG or WebP of this size, cut at grey 128), undoably.
    pub fn load(&mut self, mask: &[u8]) -> Result<()> {
        let image = images::decode(mask)?;
        if image.dimensions() != self.size() {
            let ((w, h), (mw, mh)) = (self.size(), image.dimensions());
            return Err(Error::Invalid(format!("the mask is {mw}×{mh} pixels; this image is {w}×{h}")));
        }
        let grey = crate::pipeline::resample::luma(&image);
        self.apply(MaskOp::Load(GrayImage::from_fn(grey.width(), grey.height(), |x, y| {
            if grey.get_pixel(x, y).0[0] >= 128 { WHITE } else { BLACK }
        })));
        Ok(())
    }

    /// Drops the last operation and paints the rest again.
    pub fn undo(&mut self) {
        if self.ops.pop().is_some() {
            let (w, h) = self.size();
            let mut raster = GrayImage::new(w, h);
            for op in &self.ops {
                replay(&mut raster, op);
            }
            self.raster = raster;
            self.mark_all();
        }
    }

    fn apply(&mut self, op: MaskOp) {
        replay(&mut self.raster, &op);
        self.ops.push(op);
        self.mark_all();
    }

    /// The mask as an RGB PNG (white and black), as the worker and `kontext edit --mask` take it.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let rgb = RgbImage::from_fn(self.raster.width(), self.raster.height(), |x, y| {
            let v = self.raster.get_pixel(x, y).0[0];
            image::Rgb([v, v, v])
        });
        images::encode_png_with_text(&rgb, &[])
    }

    /// RGBA pixels for an overlay on the image: where the mask is white, diagonal stripes of the two `colors`
    /// at `alpha` (so that one of them stands out on any image, a red one included), each about 1 % of the
    /// image's longer side wide; clear elsewhere.
    pub fn overlay_rgba(&self, colors: [[u8; 3]; 2], alpha: u8) -> Vec<u8> {
        let (x1, y1) = self.size();
        self.overlay_rgba_of(Region { x0: 0, y0: 0, x1, y1 }, colors, alpha)
    }

    /// [`MaskPainting::overlay_rgba`] of `region` only (row by row, `region.size()` pixels). The stripes lie at
    /// the image's coordinates, so a region redrawn continues them.
    pub fn overlay_rgba_of(&self, region: Region, colors: [[u8; 3]; 2], alpha: u8) -> Vec<u8> {
        let (w, h) = self.size();
        let stripe = (w.max(h) / 96).max(4);
        (region.y0..region.y1)
            .flat_map(|y| (region.x0..region.x1).map(move |x| (x, y)))
            .flat_map(|(x, y)| match self.raster.get_pixel(x, y).0[0] > 0 {
                true => {
                    let [r, g, b] = colors[((x + y) / stripe % 2) as usize];
                    [r, g, b, alpha]
                }
                false => [0; 4],
            })
            .collect()
    }
}

fn replay(raster: &mut GrayImage, op: &MaskOp) {
    match op {
        MaskOp::Stroke { erase, radius, points } => {
            let value = if *erase { BLACK } else { WHITE };
            paint_segment(raster, points[0], points[0], *radius, value);
            for pair in points.windows(2) {
                paint_segment(raster, pair[0], pair[1], *radius, value);
            }
        }
        MaskOp::Clear => raster.pixels_mut().for_each(|p| *p = BLACK),
        MaskOp::Invert => raster.pixels_mut().for_each(|p| p.0[0] = 255 - p.0[0]),
        MaskOp::Load(mask) => raster.clone_from(mask),
    }
}

/// Sets every pixel whose centre lies within `radius` of the segment `a`–`b` to `value`; returns the region it
/// looked at (`None` when that lies outside the raster).
fn paint_segment(raster: &mut GrayImage, a: (f32, f32), b: (f32, f32), radius: f32, value: Luma<u8>) -> Option<Region> {
    let (w, h) = (raster.width() as f32, raster.height() as f32);
    let x0 = (a.0.min(b.0) - radius).floor().clamp(0.0, w) as u32;
    let y0 = (a.1.min(b.1) - radius).floor().clamp(0.0, h) as u32;
    let x1 = (a.0.max(b.0) + radius).ceil().clamp(0.0, w) as u32;
    let y1 = (a.1.max(b.1) + radius).ceil().clamp(0.0, h) as u32;
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let length_squared = dx * dx + dy * dy;
    for y in y0..y1 {
        for x in x0..x1 {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let t = if length_squared > 0.0 {
                (((px - a.0) * dx + (py - a.1) * dy) / length_squared).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let (cx, cy) = (a.0 + t * dx - px, a.1 + t * dy - py);
            if cx * cx + cy * cy <= radius * radius {
                raster.put_pixel(x, y, value);
            }
        }
    }
    (x0 < x1 && y0 < y1).then_some(Region { x0, y0, x1, y1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn white(painting: &MaskPainting) -> usize {
        painting.raster().pixels().filter(|p| p.0[0] == 255).count()
    }

    #[test]
    fn strokes_paint_round_capped_lines_and_the_eraser_takes_them_back() {
        let mut mask = MaskPainting::new(40, 20);
        assert!(mask.is_empty() && !mask.can_undo());
        mask.begin_stroke(false, 3.0, (5.0, 10.0));
        let dot = white(&mask);
        assert!((25..=32).contains(&dot), "a dot of radius 3 covers about 28 pixels, got {dot}");
        mask.extend_stroke((35.0, 10.0));
        // A 30-pixel line 6 wide with round ends: about 30·6 + 28.
        let line = white(&mask);
        assert!((190..=230).contains(&line), "{line}");
        assert_eq!(mask.raster().get_pixel(20, 10).0, [255]);
        assert_eq!(mask.raster().get_pixel(20, 2).0, [0]);
        mask.begin_stroke(true, 2.0, (20.0, 10.0));
        assert_eq!(mask.raster().get_pixel(20, 10).0, [0]);
        mask.undo();
        assert_eq!(white(&mask), line, "undo takes the eraser back");
        mask.undo();
        assert!(mask.is_empty() && !mask.can_undo());
    }

    #[test]
    fn clear_invert_load_and_undo_replay_in_order() {
        let mut mask = MaskPainting::new(16, 8);
        mask.begin_stroke(false, 2.0, (4.0, 4.0));
        let painted = mask.raster().clone();
        mask.invert();
        assert_eq!(white(&mask), 16 * 8 - painted.pixels().filter(|p| p.0[0] == 255).count());
        mask.clear();
        assert!(mask.is_empty());
        mask.undo();
        mask.undo();
        assert_eq!(mask.raster(), &painted);

        let png = mask.to_png().unwrap();
        let mut other = MaskPainting::new(16, 8);
        other.load(&png).unwrap();
        assert_eq!(other.raster(), &painted, "a mask survives its PNG");
        let err = MaskPainting::new(8, 8).load(&png).unwrap_err().to_string();
        assert_eq!(err, "the mask is 16×8 pixels; this image is 8×8");
        let overlay = other.overlay_rgba([[255, 0, 0], [0, 0, 255]], 100);
        assert_eq!(&overlay[..4], &[0, 0, 0, 0]);
        // Stripes of both colours (4 pixels wide on this small image) over the painted pixels.
        assert!(overlay.chunks(4).any(|p| p == [255, 0, 0, 100]) && overlay.chunks(4).any(|p| p == [0, 0, 255, 100]));
        let painted_count = painted.pixels().filter(|p| p.0[0] > 0).count();
        assert_eq!(overlay.chunks(4).filter(|p| p[3] == 100).count(), painted_count);
    }

    #[test]
    fn changes_are_reported_as_the_region_to_redraw() {
        let mut mask = MaskPainting::new(40, 20);
        assert_eq!(mask.take_changed(), None);
        mask.begin_stroke(false, 2.0, (10.0, 10.0));
        mask.extend_stroke((20.0, 10.0));
        let region = mask.take_changed().unwrap();
        assert_eq!(region, Region { x0: 8, y0: 8, x1: 22, y1: 12 });
        assert_eq!(mask.take_changed(), None, "taken once");
        // The region's overlay is the whole overlay's rows and columns of it.
        let colors = [[9, 8, 7], [1, 2, 3]];
        let (whole, part) = (mask.overlay_rgba(colors, 6), mask.overlay_rgba_of(region, colors, 6));
        let (w, h) = region.size();
        for (row, y) in (region.y0..region.y1).enumerate() {
            let start = ((y * 40 + region.x0) * 4) as usize;
            assert_eq!(&part[row * w as usize * 4..][..w as usize * 4], &whole[start..start + w as usize * 4]);
        }
        assert_eq!(part.len(), (w * h * 4) as usize);
        // Every pixel outside the region is as before: clear.
        let white_outside = (0..20)
            .flat_map(|y| (0..40).map(move |x| (x, y)))
            .filter(|&(x, y)| !(region.x0..region.x1).contains(&x) || !(region.y0..region.y1).contains(&y));
        assert!(white_outside.into_iter().all(|(x, y)| mask.raster().get_pixel(x, y).0 == [0]));
        // Strokes off the image change nothing; invert, clear, load and undo change everything.
        mask.begin_stroke(false, 2.0, (-50.0, -50.0));
        assert_eq!(mask.take_changed(), None);
        mask.invert();
        assert_eq!(mask.take_changed(), Some(Region { x0: 0, y0: 0, x1: 40, y1: 20 }));
        mask.undo();
        assert_eq!(mask.take_changed(), Some(Region { x0: 0, y0: 0, x1: 40, y1: 20 }));
    }
}
