//! The editor, canvas-centred: a stage with the working picture (the first reference, the mask painted over it,
//! the live preview, the result, or before and after side by side); under it the edit's progress or the result's
//! download and "use as reference"; the instruction and Generate; then references, the masked-edit switch,
//! Draft/Quality presets, shape with the output size in pixels, steps, speed, guidance and seed.
//! The inputs and what they do live in [`crate::app::edit`]; these components render them.

mod job;
mod mask;
mod prompt;
mod references;
mod settings;
mod stage;

use leptos::prelude::*;

use super::history::History;
use crate::app::edit::{self, EditForm};
use crate::app::history::Rerun;
use crate::app::{AppState, ModelState};
use job::JobView;
use mask::MaskToggle;
use prompt::{Presets, PromptField};
use references::ReferencePicker;
use settings::SettingsGrid;
use stage::Stage;

/// The editor, working picture first: the stage, the edit's progress or the result's actions, the instruction and
/// Generate, then the references, the masked-edit switch, presets and settings; followed by the history of results.
#[component]
pub fn Editor() -> impl IntoView {
    let state = expect_context::<AppState>();
    let form = EditForm::new();
    form.keep_results(state);
    let rerun = Callback::new(move |rerun: Rerun| form.rerun(state, rerun));
    let history_error = form.history_error;

    view! {
        <section class="card" id="editor" aria-labelledby="editor-title">
            <h2 id="editor-title">"Edit"</h2>
            <Stage form />
            <JobView form />
            <PromptField prompt=form.prompt />
            <Actions form />
            {move || history_error.get().map(|message| view! { <p class="status bad" role="alert">{message}</p> })}
            <ReferencePicker form />
            <MaskToggle form />
            <Presets form />
            <SettingsGrid form />
        </section>
        <History revision=form.history_revision on_rerun=rerun />
    }
}

/// Generate and Cancel, and why Generate is off when no model is loaded.
#[component]
fn Actions(
    /// The editor's inputs.
    form: EditForm,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    view! {
        <div class="row">
            <button type="button" id="generate" class="primary" on:click=move |_| form.generate(state)
                disabled=move || !form.can_generate(state)>"Generate"</button>
            <button type="button" id="cancel" on:click=move |_| edit::cancel(state)
                disabled=move || !edit::running(state)>"Cancel"</button>
            <span class="muted">{move || (!matches!(state.model.get(), ModelState::Loaded(_))).then_some("Load a model first.")}</span>
        </div>
    }
}
