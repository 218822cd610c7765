//! The result canvas in the page: the element the worker draws previews and results on (see
//! [`crate::web::canvas`]), placed in whichever view shows it. It is made once per worker and moved between
//! views, never re-created: its drawing surface belongs to the worker.

use leptos::prelude::*;

use crate::app::{AppState, JobState};

/// A slot the result canvas moves into while this view is shown.
#[component]
pub fn ResultCanvas(
    /// What the canvas shows, for assistive technology ("preview after step 3", "the generated image, …").
    label: Signal<String>,
    /// What it shows, as `data-showing`: `preview` or `result`.
    showing: &'static str,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    let slot = NodeRef::<leptos::html::Div>::new();
    Effect::new(move |_| {
        let (Some(slot), Some(canvas)) = (slot.get(), state.canvas.get()) else { return };
        canvas.set_id("result-canvas");
        let _ = canvas.set_attribute("role", "img");
        let _ = canvas.set_attribute("aria-label", &label.get());
        let _ = canvas.set_attribute("data-showing", showing);
        if canvas.parent_node().as_ref() != Some(slot.as_ref()) {
            slot.replace_children_with_node_1(&canvas);
        }
    });
    view! { <div class="canvas-slot" node_ref=slot></div> }
}

/// The result canvas showing the running edit's latest preview, labelled with its step.
#[component]
pub fn PreviewCanvas() -> impl IntoView {
    let state = expect_context::<AppState>();
    let label = Signal::derive(move || {
        state.preview.get().map(|(_, step)| format!("preview after step {step}")).unwrap_or_default()
    });
    view! { <ResultCanvas label showing="preview" /> }
}

/// What a view of the running or finished edit shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Picture {
    /// No edit running or finished (none yet, cancelled, failed).
    Nothing,
    /// An edit running, before its first preview.
    Waiting,
    /// An edit running, its latest preview on the result canvas.
    Preview,
    /// A finished edit, by its PNG's object URL (a new one per result).
    Result(String),
}

impl Picture {
    /// What `state` shows, as a memo that changes when the picture does, not with each progress message (so
    /// that a view built from it is not rebuilt per step).
    pub fn of(state: AppState) -> Memo<Self> {
        Memo::new(move |_| match state.job.get() {
            JobState::Running { id, .. } => match state.preview.get().is_some_and(|(job, _)| job == id) {
                true => Self::Preview,
                false => Self::Waiting,
            },
            JobState::Done { url, .. } => Self::Result(url),
            _ => Self::Nothing,
        })
    }
}
