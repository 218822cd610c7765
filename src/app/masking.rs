//! The mask editor's state and intents: whether the next edit is masked, the mask painted over the first
//! reference (its pixels are [`MaskPainting`]), the brush, and the masked edit's strength and crop. The canvas
//! that shows and paints it is `ui::editor::mask`.

use leptos::prelude::*;
use serde_bytes::ByteBuf;

use super::history::HistoryMask;
use crate::web::mask_painting::{MaskPainting, Region};
use crate::web::protocol::MaskJob;

/// Crop paddings offered (pixels); `None` edits the whole image.
pub const CROP_PADDINGS: [Option<u32>; 4] = [None, Some(32), Some(64), Some(128)];

/// Brush radius when the editor opens, in pixels of the image.
const DEFAULT_BRUSH: f32 = 24.0;

/// The mask editor's inputs.
#[derive(Debug, Clone, Copy)]
pub struct MaskForm {
    /// Whether the next edit is masked (the editor is open over the first reference).
    pub enabled: RwSignal<bool>,
    /// Bumped on every change of the painting (the overlay redraws, undo enables).
    pub revision: RwSignal<u32>,
    /// Brush radius in pixels of the image.
    pub brush: RwSignal<f32>,
    /// Whether strokes erase.
    pub erasing: RwSignal<bool>,
    /// Whether the mask is drawn over the image.
    pub show: RwSignal<bool>,
    /// How much of the schedule runs, in (0, 1].
    pub strength: RwSignal<f64>,
    /// Pixels of margin around the mask for editing a crop; `None` edits the whole image.
    pub crop: RwSignal<Option<u32>>,
    /// The reference (its index, 1 or more) that conditions the masked edit instead of the image being edited
    /// (diffusers' `image_reference`); `None`: the image itself.
    pub reference: RwSignal<Option<usize>>,
    painting: StoredValue<Option<MaskPainting>>,
    /// The thumbnail URL of the reference the painting belongs to.
    owner: StoredValue<Option<String>>,
}

impl MaskForm {
    /// Closed, nothing painted, full strength, no crop.
    pub fn new() -> Self {
        Self {
            enabled: RwSignal::new(false),
            revision: RwSignal::new(0),
            brush: RwSignal::new(DEFAULT_BRUSH),
            erasing: RwSignal::new(false),
            show: RwSignal::new(true),
            strength: RwSignal::new(1.0),
            crop: RwSignal::new(None),
            reference: RwSignal::new(None),
            painting: StoredValue::new(None),
            owner: StoredValue::new(None),
        }
    }

    /// Makes the painting belong to `first`, the first reference given by its thumbnail URL (which tells images
    /// apart) and its size: a new, empty painting when it is another image. Returns the size in pixels, or
    /// `None` without a reference whose size is known.
    pub fn follow(self, first: Option<(&str, (usize, usize))>) -> Option<(u32, u32)> {
        let Some((owner, (width, height))) = first else {
            self.painting.set_value(None);
            self.owner.set_value(None);
            return None;
        };
        let size = (width as u32, height as u32);
        let same = self.owner.with_value(|o| o.as_deref() == Some(owner))
            && self.painting.with_value(|p| p.as_ref().map(MaskPainting::size) == Some(size));
        if !same {
            self.painting.set_value(Some(MaskPainting::new(size.0, size.1)));
            self.owner.set_value(Some(owner.to_string()));
            self.revision.update(|r| *r += 1);
        }
        Some(size)
    }

    /// Runs `f` on the painting, if there is one (tracks its changes).
    pub fn with_painting<R>(self, f: impl FnOnce(&MaskPainting) -> R) -> Option<R> {
        self.revision.track();
        self.painting.with_value(|p| p.as_ref().map(f))
    }

    /// The overlay's pixels that changed since the last call, or all of them when `all` (a fresh canvas), with
    /// their region (tracks the painting's changes); `None` when nothing changed.
    pub fn overlay_changes(self, all: bool, colors: [[u8; 3]; 2], alpha: u8) -> Option<(Region, Vec<u8>)> {
        self.revision.track();
        self.painting.try_update_value(|p| {
            let painting = p.as_mut()?;
            let changed = painting.take_changed();
            let (width, height) = painting.size();
            let region = if all { Some(Region { x0: 0, y0: 0, x1: width, y1: height }) } else { changed }?;
            Some((region, painting.overlay_rgba_of(region, colors, alpha)))
        })?
    }

    fn change(self, f: impl FnOnce(&mut MaskPainting)) {
        self.painting.update_value(|p| {
            if let Some(painting) = p {
                f(painting)
            }
        });
        self.revision.update(|r| *r += 1);
    }

    /// Starts a stroke of the current tool at `point` (image pixels).
    pub fn begin_stroke(self, point: (f32, f32)) {
        let (erase, radius) = (self.erasing.get_untracked(), self.brush.get_untracked());
        self.change(|p| p.begin_stroke(erase, radius, point));
    }

    /// Extends the current stroke to `point`.
    pub fn extend_stroke(self, point: (f32, f32)) {
        self.change(|p| p.extend_stroke(point));
    }

    /// Undoes the last stroke, clear or invert.
    pub fn undo(self) {
        self.change(MaskPainting::undo);
    }

    /// Makes the mask black (nothing may change).
    pub fn clear(self) {
        self.change(MaskPainting::clear);
    }

    /// Swaps what may change and what may not.
    pub fn invert(self) {
        self.change(MaskPainting::invert);
    }

    /// Whether there is something to undo.
    pub fn can_undo(self) -> bool {
        self.with_painting(MaskPainting::can_undo).unwrap_or(false)
    }

    /// The painted mask as PNG (untracked), if there is a painting.
    pub fn png(self) -> Option<Result<Vec<u8>, String>> {
        self.painting.with_value(|p| p.as_ref().map(|p| p.to_png().map_err(|e| e.to_string())))
    }

    /// Restores a re-run's mask over `first`: its PNG, strength, crop and conditioning reference; the editor opens.
    pub fn restore(self, first: Option<(&str, (usize, usize))>, png: &[u8], kept: &HistoryMask) -> Result<(), String> {
        self.follow(first).ok_or("the re-run's image has no readable size for its mask")?;
        let mut outcome = Ok(());
        self.change(|p| outcome = p.load(png).map_err(|e| e.to_string()));
        outcome?;
        self.strength.set(kept.strength);
        self.crop.set(kept.crop_padding);
        self.reference.set(kept.reference);
        self.enabled.set(true);
        Ok(())
    }

    /// The mask for the next edit: `None` when the edit is not masked; an error when nothing is painted.
    pub fn job(self) -> Result<Option<MaskJob>, String> {
        if !self.enabled.get_untracked() {
            return Ok(None);
        }
        let png = self.painting.with_value(|p| match p {
            None => Err("a masked edit needs an image to edit: add a reference".to_string()),
            Some(p) if p.is_empty() => {
                Err("paint where the edit may change the image, or turn the mask off".to_string())
            }
            Some(p) => p.to_png().map_err(|e| e.to_string()),
        })?;
        Ok(Some(MaskJob {
            image: ByteBuf::from(png),
            name: "painted".into(),
            strength: self.strength.get_untracked(),
            crop_padding: self.crop.get_untracked(),
            reference: None,
        }))
    }
}

impl Default for MaskForm {
    fn default() -> Self {
        Self::new()
    }
}
