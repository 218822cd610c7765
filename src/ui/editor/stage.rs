//! The editor's central stage: one large picture, switched between the first reference, the mask painted over it,
//! the running edit's live preview or its result, and the result beside the first reference. Which one is
//! [`crate::web::stage::StageView`]; the stage is also a drop target for references.

use leptos::prelude::*;

use super::mask::{MaskStage, MaskTools};
use super::references::drop_files;
use crate::app::edit::{EditForm, Reference};
use crate::app::{AppState, JobState};
use crate::ui::result_canvas::{Picture, PreviewCanvas, ResultCanvas};
use crate::web::stage::StageView;

/// The view buttons and the view shown.
#[component]
pub fn Stage(
    /// The editor's inputs: its references, mask, last job's first reference and the view asked for.
    form: EditForm,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    let showable = Memo::new(move |_| form.showable(state));
    let shown = Memo::new(move |_| form.stage.get().shown(showable.get()));
    let dragging = RwSignal::new(false);
    let choose = move |view: StageView| {
        // "Before / after" toggles back to the result.
        let back = view == StageView::Compare && shown.get_untracked() == Some(StageView::Compare);
        form.stage.set(if back { StageView::Job } else { view });
    };
    view! {
        <div id="stage" class="stage" class:dragging=move || dragging.get()
            data-view=move || shown.get().map_or("empty".to_string(), |v| format!("{v:?}").to_lowercase())
            on:dragover=move |ev: web_sys::DragEvent| { ev.prevent_default(); dragging.set(true); }
            on:dragleave=move |_| dragging.set(false)
            on:drop=move |ev: web_sys::DragEvent| { dragging.set(false); drop_files(form, &ev); }>
            <div class="row stage-views" role="group" aria-label="what the stage shows">
                {StageView::ALL.iter().map(|&(view, id, label)| view! {
                    <button type="button" id=id class="small" aria-controls="stage"
                        aria-pressed=move || (shown.get() == Some(view)).to_string()
                        disabled=move || !view.available(showable.get())
                        on:click=move |_| choose(view)>{label}</button>
                }).collect_view()}
            </div>
            {move || match shown.get() {
                None => view! {
                    <p class="stage-empty muted">
                        "Drop, paste or choose the image to edit (References, below), or describe a new picture and Generate."
                    </p>
                }.into_any(),
                Some(StageView::Reference) => view! { <FirstReference form /> }.into_any(),
                Some(StageView::Mask) => view! { <MaskView form /> }.into_any(),
                Some(StageView::Job) => view! { <JobPicture /> }.into_any(),
                Some(StageView::Compare) => view! { <Comparison form /> }.into_any(),
            }}
        </div>
    }
}

/// The first reference, large.
#[component]
fn FirstReference(
    /// The editor's inputs.
    form: EditForm,
) -> impl IntoView {
    move || {
        form.references.with(|r| r.first().cloned()).map(|first| {
            let size = first.size.map(|(w, h)| format!(" · {w}×{h}")).unwrap_or_default();
            view! {
                <figure class="stage-picture">
                    <img src=first.thumbnail.clone() alt=format!("the first reference, {}", first.name) />
                    <figcaption>{format!("First reference · {}{size}", first.name)}</figcaption>
                </figure>
            }
        })
    }
}

/// The mask over the first reference, with its tools.
#[component]
fn MaskView(
    /// The editor's inputs: the mask belongs to the first of its references.
    form: EditForm,
) -> impl IntoView {
    let mask = form.mask;
    move || {
        form.references
            .with(|r| r.first().and_then(|first| Some((first.thumbnail.clone(), first.name.clone(), first.size?))))
            .map(|(url, name, (width, height))| {
                let (width, height) = (width as u32, height as u32);
                view! { <MaskStage mask width height image=Some((url, name)) /> <MaskTools mask references=form.references /> }
            })
    }
}

/// The running edit's latest preview (a placeholder before the first), or the finished image with its size,
/// seed and time: both on the result canvas the worker draws on (the kept PNG where it drew nothing).
#[component]
fn JobPicture() -> impl IntoView {
    let state = expect_context::<AppState>();
    let picture = Picture::of(state);
    move || match (picture.get(), state.job.get_untracked()) {
        (Picture::Preview, _) => view! { <PreviewCanvas /> }.into_any(),
        (Picture::Waiting, _) => {
            view! { <p class="stage-empty muted">"The preview appears after the first step."</p> }.into_any()
        }
        (Picture::Result(_), JobState::Done { url, seed, width, height, millis, shown, readbacks, .. }) => {
            let alt = format!("the generated image, {width}×{height} pixels");
            let picture = match shown {
                true => view! { <ResultCanvas label=Signal::stored(alt) showing="result" /> }.into_any(),
                false => {
                    view! { <img id="result-image" class="stage-image" src=url alt=alt width=width height=height /> }
                        .into_any()
                }
            };
            view! {
                <figure class="result" data-readbacks=readbacks.0 data-step-readbacks=readbacks.1>
                    {picture}
                    <figcaption>{format!("{width}×{height} · seed {seed} · {:.1} s", millis / 1000.0)}</figcaption>
                </figure>
            }
            .into_any()
        }
        _ => ().into_any(),
    }
}

/// The result beside the first reference of its edit.
#[component]
fn Comparison(
    /// The editor's inputs: the last job's first reference.
    form: EditForm,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    move || match (state.job.get(), form.first_of_job.get()) {
        (JobState::Done { url, seed, width, height, .. }, Some(Reference { thumbnail, name, .. })) => Some(view! {
            <figure class="result">
                <div class="compare" id="compare-view">
                    <figure>
                        <img src=thumbnail alt=format!("the first reference, {name}") />
                        <figcaption>{format!("First reference · {name}")}</figcaption>
                    </figure>
                    <figure>
                        <img id="compare-result" src=url alt=format!("the generated image, {width}×{height} pixels")
                            width=width height=height />
                        <figcaption>"Result"</figcaption>
                    </figure>
                </div>
                <figcaption>{format!("{width}×{height} · seed {seed}")}</figcaption>
            </figure>
        }),
        _ => None,
    }
}
