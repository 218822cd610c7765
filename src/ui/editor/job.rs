//! The current or last edit: progress and preview while it runs; the result, its recipe, a download, "use as
//! reference" and a comparison with the first reference when it is done.

use std::sync::Arc;

use leptos::prelude::*;

use crate::app::edit::{self, EditForm, MAX_REFERENCES, Reference};
use crate::app::{AppState, JobState};

/// Progress while running; the image, its recipe, a download, "use as reference" and a comparison when done.
#[component]
pub fn JobView(
    /// The editor's inputs: results are appended to its references, its job's first reference is compared.
    form: EditForm,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    let compare = RwSignal::new(false);
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
                JobState::Running { id, phase, done, total, reused, started, phase_started } => {
                    let preview = state.preview.get().filter(|(job, ..)| *job == id);
                    view! { <JobProgress phase done total reused started phase_started preview /> }.into_any()
                }
                JobState::Done { url, png, seed, width, height, millis } => {
                    let first = form.first_of_job.get();
                    view! { <JobResult form compare first url png seed width height millis /> }.into_any()
                }
                JobState::Cancelled => view! { <p>"Cancelled."</p> }.into_any(),
                JobState::Failed(message) => view! { <p class="status bad" role="alert">{message}</p> }.into_any(),
            }}
        </div>
    }
}

/// The running edit's phase, progress, elapsed and remaining time, and its latest preview.
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
    /// This job's latest preview: job, steps done and the image's object URL.
    preview: Option<(u32, u64, String)>,
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
        {preview.map(|(_, step, url)| view! {
            <img id="preview" class="preview" src=url alt=format!("preview after step {step}") />
        })}
    }
}

/// The finished image (or, comparing, the first reference beside it), its recipe, and the result's actions.
#[component]
fn JobResult(
    /// The editor's inputs, to which "use as reference" appends the result.
    form: EditForm,
    /// Whether the comparison with the first reference is shown.
    compare: RwSignal<bool>,
    /// The job's first reference, if it had one.
    first: Option<Reference>,
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
    /// Time the edit took.
    millis: f64,
) -> impl IntoView {
    let references = form.references;
    let result_url = url.clone();
    let use_as_reference =
        move |_| form.append_reference(Reference::from_result(seed, &png, result_url.clone(), width, height));
    let has_first = first.is_some();
    let result_image = {
        let url = url.clone();
        move || {
            view! {
                <img id="result-image" src=url.clone() alt=format!("the generated image, {width}×{height} pixels")
                    width=width height=height />
            }
        }
    };
    view! {
        <figure class="result">
            {move || match (compare.get(), first.clone()) {
                (true, Some(first)) => view! {
                    <div class="compare" id="compare-view">
                        <figure>
                            <img src=first.thumbnail.clone() alt=format!("the first reference, {}", first.name) />
                            <figcaption>{format!("First reference · {}", first.name)}</figcaption>
                        </figure>
                        <figure>
                            {result_image.clone()()}
                            <figcaption>"Result"</figcaption>
                        </figure>
                    </div>
                }.into_any(),
                _ => result_image.clone()().into_any(),
            }}
            <figcaption>
                {format!("{width}×{height} · seed {seed} · {:.1} s ", millis / 1000.0)}
            </figcaption>
        </figure>
        <div class="row" role="group" aria-label="result actions">
            <a id="download" href=url download=format!("kontext-{seed}.png")
                title="The PNG carries its recipe (prompt, steps, guidance, seed, size, model)">"Download PNG"</a>
            <button type="button" id="use-as-reference" on:click=use_as_reference
                disabled=move || references.with(|r| r.len() >= MAX_REFERENCES)
                title="Append this result to the references, to edit it further">"Use as reference"</button>
            <button type="button" id="compare" aria-pressed=move || compare.get().to_string()
                aria-controls="job" disabled=!has_first
                on:click=move |_| compare.update(|c| *c = !*c)>"Compare with the first reference"</button>
        </div>
    }
}
