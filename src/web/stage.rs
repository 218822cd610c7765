//! What the editor's central stage shows: the first reference, the mask painted over it, the running edit's
//! preview or its result, or the result beside the first reference. The user picks among the views that exist;
//! the editor moves to the one that just changed (an edit started, masking turned on). Plain data, tested
//! natively; the stage itself is `ui::editor::stage`.

/// One view of the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageView {
    /// The first reference, as it will be sent.
    Reference,
    /// The first reference with the mask painted over it, and the mask's tools.
    Mask,
    /// The running edit's live preview, or the last edit's result.
    Job,
    /// The last result beside the first reference of its edit.
    Compare,
}

/// What exists to be shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Showable {
    /// There is a first reference.
    pub reference: bool,
    /// Masking is on and there is a first reference to paint over.
    pub mask: bool,
    /// An edit runs or has ended (done, cancelled or failed).
    pub job: bool,
    /// The last edit is done and had a first reference.
    pub compare: bool,
}

impl StageView {
    /// Every view, in the order of the stage's buttons, with the buttons' ids and labels.
    pub const ALL: [(StageView, &'static str, &'static str); 4] = [
        (StageView::Reference, "stage-reference", "Image"),
        (StageView::Mask, "stage-mask", "Mask"),
        (StageView::Job, "stage-job", "Result"),
        (StageView::Compare, "compare", "Before / after"),
    ];

    /// Whether this view has something to show.
    pub fn available(self, showable: Showable) -> bool {
        match self {
            StageView::Reference => showable.reference,
            StageView::Mask => showable.mask,
            StageView::Job => showable.job,
            StageView::Compare => showable.compare,
        }
    }

    /// The view shown when `self` is asked for: itself when it has something to show, otherwise the first of the
    /// edit, the mask and the reference that has; `None` when nothing exists yet (text-to-image, before any edit).
    pub fn shown(self, showable: Showable) -> Option<StageView> {
        [self, StageView::Job, StageView::Mask, StageView::Reference].into_iter().find(|view| view.available(showable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_SHOWABLE: Showable = Showable { reference: true, mask: true, job: true, compare: true };

    #[test]
    fn a_view_that_exists_is_shown_as_asked() {
        for (view, ..) in StageView::ALL {
            assert_eq!(view.shown(ALL_SHOWABLE), Some(view));
        }
    }

    #[test]
    fn a_view_that_does_not_exist_falls_back_to_the_edit_then_the_mask_then_the_image() {
        let reference_only = Showable { reference: true, ..Showable::default() };
        assert_eq!(StageView::Compare.shown(reference_only), Some(StageView::Reference));
        assert_eq!(StageView::Job.shown(reference_only), Some(StageView::Reference));
        let masked = Showable { reference: true, mask: true, ..Showable::default() };
        assert_eq!(StageView::Job.shown(masked), Some(StageView::Mask));
        let after_an_edit = Showable { reference: true, job: true, ..Showable::default() };
        assert_eq!(StageView::Mask.shown(after_an_edit), Some(StageView::Job));
        assert_eq!(StageView::Compare.shown(after_an_edit), Some(StageView::Job));
        let text_to_image = Showable { job: true, ..Showable::default() };
        assert_eq!(StageView::Reference.shown(text_to_image), Some(StageView::Job));
    }

    #[test]
    fn nothing_is_shown_before_an_image_or_an_edit_exists() {
        for (view, ..) in StageView::ALL {
            assert_eq!(view.shown(Showable::default()), None);
        }
    }
}
