//! The current or last edit's status under the stage: its phase, progress, elapsed and remaining time while it
//! runs; when done, a download and "use as reference"; a cancellation or failure. The pictures are on the stage.

use std::sync::Arc;

use leptos::prelude::*;

use crate::app::edit::{self, EditForm, MAX_REFERENCES, Reference};
use crate::app::{AppState, JobState};

/// Progress while running; a download and "use as reference" when done; why it stopped otherwise.
#[component]
pub fn JobView(
    /// The editor's inputs: results are appended to its references.
    form: EditForm,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    view! {
        <div id="job" role="status" data-state=move || match state.job.get() {
            JobState::Idle => "idle",
            JobState::Running { .. } => "running",
            JobState::Done { .. } => "done",
            JobState::Cancelled => "cancelled",
            JobState::Failed(_) => "failed",
        }>
            {move || match state.job.get() {
                JobState::Idle => ().into_any(),
                JobState::Running { phase, done, total, reused, started, phase_started, .. } => {
                    view! { <JobProgress phase done total reused started phase_started /> }.into_any()
                }
                JobState::Done { url, png, seed, width, height, .. } => {
                    view! { <ResultActions form url png seed width height /> }.into_any()
                }
                JobState::Cancelled => view! { <p>"Cancelled."</p> }.into_any(),
                JobState::Failed(message) => view! { <p class="status bad" role="alert">{message}</p> }.into_any(),
            }}
        </div>
    }
}

/// The running edit's phase, progress, elapsed and remaining time.
#[component]
fn JobProgress(
    /// The worker's phase name.
    phase: String,
    /// Units done in the phase.
    done: u64,
    /// Units in the phase.
    total: u64,
    /// Whether the last step reused the step cache.
    reused: bool,
    /// `Date.now()` when the edit started.
    started: f64,
    /// `Date.now()` when the phase started.
    phase_started: f64,
) -> impl IntoView {
    let now = js_sys::Date::now();
    let elapsed = (now - started) / 1000.0;
    // The steps' measured pace predicts the rest of the denoising.
    let eta = edit::seconds_left(&phase, done, total, phase_started, now)
        .map(|left| format!(" · about {left:.0} s left"))
        .unwrap_or_default();
    view! {
        <p id="job-phase">{format!("{phase}: {done}/{total}{} · {elapsed:.1} s{eta}", if reused { " · reused" } else { "" })}</p>
        <progress max=total.max(1) value=done aria-label="generation progress"></progress>
    }
}

/// A download of the result (its PNG carries the recipe) and "use as reference".
#[component]
fn ResultActions(
    /// The editor's inputs, to which "use as reference" appends the result.
    form: EditForm,
    /// `blob:` URL of the PNG.
    url: String,
    /// The PNG itself.
    png: Arc<[u8]>,
    /// Seed used.
    seed: u64,
    /// Width in pixels.
    width: usize,
    /// Height in pixels.
    height: usize,
) -> impl IntoView {
    let references = form.references;
    let result_url = url.clone();
    let use_as_reference =
        move |_| form.append_reference(Reference::from_result(seed, &png, result_url.clone(), width, height));
    view! {
        <div class="row" role="group" aria-label="result actions">
            <a id="download" href=url download=format!("kontext-{seed}.png")
                title="The PNG carries its recipe (prompt, steps, guidance, seed, size, model)">"Download PNG"</a>
            <button type="button" id="use-as-reference" on:click=use_as_reference
                disabled=move || references.with(|r| r.len() >= MAX_REFERENCES)
                title="Append this result to the references, to edit it further">"Use as reference"</button>
        </div>
    }
}
