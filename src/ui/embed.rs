//! The compact `/?embed` view (result, progress, cancel); the postMessage API behind it is [`crate::app::embed`].

use leptos::prelude::*;

use crate::app::{self, AppState, JobState, ModelState};
use crate::ui::result_canvas::{Picture, PreviewCanvas, ResultCanvas};

/// The compact view: the result (or a placeholder), one progress bar for loads and edits, and Cancel.
#[component]
pub fn EmbedView() -> impl IntoView {
    let state = expect_context::<AppState>();
    let picture = Picture::of(state);
    let running = move || matches!(state.job.get(), JobState::Running { .. });
    let cancel = move |_| app::edit::cancel(state);
    let progress = move || match (state.model.get(), state.job.get()) {
        (_, JobState::Running { phase, done, total, .. }) | (ModelState::Loading { phase, done, total }, _) => {
            Some((phase, done, total))
        }
        _ => None,
    };
    let status = move || match (state.model.get(), state.job.get()) {
        (_, JobState::Running { phase, done, total, reused, .. }) => {
            format!("{phase}: {done}/{total}{}", if reused { " · reused" } else { "" })
        }
        (ModelState::Loading { phase, done, total }, _) => format!("{phase}… {done}/{total}"),
        (ModelState::Failed(message), _) => format!("Could not load the model: {message}"),
        (_, JobState::Done { width, height, seed, millis, .. }) => {
            format!("{width}×{height} · seed {seed} · {:.1} s", millis / 1000.0)
        }
        (_, JobState::Cancelled) => "Cancelled.".to_string(),
        (_, JobState::Failed(message)) => message,
        (ModelState::Loaded(_), _) => "Ready.".to_string(),
        (ModelState::Empty, _) => "Waiting for a model.".to_string(),
    };
    view! {
        <main class="embed" id="embed" aria-label="Kontext image editing">
            <div class="embed-stage">
                {move || match (picture.get(), state.job.get_untracked()) {
                    (Picture::Result(_), JobState::Done { shown: true, width, height, .. }) => {
                        let label = Signal::stored(format!("the generated image, {width}×{height} pixels"));
                        view! { <ResultCanvas label showing="result" /> }.into_any()
                    }
                    (Picture::Result(_), JobState::Done { url, width, height, .. }) => view! {
                        <img id="result-image" src=url alt=format!("the generated image, {width}×{height} pixels") width=width height=height />
                    }.into_any(),
                    (Picture::Preview, _) => view! { <PreviewCanvas /> }.into_any(),
                    _ => view! { <div class="embed-placeholder" aria-hidden="true"></div> }.into_any(),
                }}
            </div>
            <div class="row embed-bar">
                {move || progress().map(|(phase, done, total)| view! {
                    <progress id="embed-progress" max=total.max(1) value=done aria-label=format!("{phase} progress")></progress>
                })}
                <span id="embed-status" class="muted" role="status" data-state=move || match state.job.get() {
                    JobState::Idle => "idle",
                    JobState::Running { .. } => "running",
                    JobState::Done { .. } => "done",
                    JobState::Cancelled => "cancelled",
                    JobState::Failed(_) => "failed",
                }>{status}</span>
                <button type="button" id="embed-cancel" on:click=cancel disabled=move || !running()>"Cancel"</button>
            </div>
        </main>
    }
}
