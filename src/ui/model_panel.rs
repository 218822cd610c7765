//! The Model panel: which model is loaded in the worker; the sources a model can be stored from (catalog,
//! custom URLs, local files or folder, the demo pack); the stored models and their downloads; loading one.
//! Once a model is loaded the panel folds to one line (its state and "Change model").

use leptos::prelude::*;
use leptos::task::spawn_local;

use super::model_list::{StoredModels, TransferView};
use super::model_sources::{
    CatalogSource, DemoSource, LocalPick, LocalSource, UrlSourceForm, dropped_entries, dropped_files,
};
use crate::app::models::{Notice, StoreController, page_url};
use crate::app::{AppState, ModelState, loading};
use crate::store::js;
use crate::store::manifest::{DEFAULT_CHUNK_SIZE, human_bytes};
use crate::store::sources::UrlSource;

/// Folder of the built-in demo model, next to the page (`Trunk.toml` copies it into `dist/`).
pub const DEMO_MODEL_BASE: &str = "demo-model/";

/// Where a new model comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceKind {
    Catalog,
    Urls,
    Local,
    Demo,
}

const SOURCES: [(SourceKind, &str, &str); 4] = [
    (SourceKind::Catalog, "source-catalog", "FLUX.1 Kontext [dev] (catalog)"),
    (SourceKind::Urls, "source-urls", "Custom URLs"),
    (SourceKind::Local, "source-local", "Files on this computer"),
    (SourceKind::Demo, "source-demo", "Demo pack"),
];

/// Loads and stores models, and shows the model's state with measured progress.
#[component]
pub fn ModelPanel() -> impl IntoView {
    let state = expect_context::<AppState>();
    let ui = StoreController::new();
    provide_context(ui);
    let pick = LocalPick::new();
    provide_context(pick);
    ui.start();
    let source = RwSignal::new(SourceKind::Catalog);
    let dragging = RwSignal::new(false);
    let fold = RwSignal::new(false);
    let loaded = move || matches!(state.model.get(), ModelState::Loaded(_));
    let folded = move || fold.get() && loaded();

    // A model loaded or failed: the list may have changed (a load never writes, but a refresh is cheap). A
    // model that has just loaded folds the panel (once: unfolded by hand, it stays open).
    Effect::new(move |was_loaded: Option<bool>| {
        let model = state.model.get();
        if matches!(model, ModelState::Loaded(_) | ModelState::Failed(_)) {
            ui.refresh();
        }
        let is_loaded = matches!(model, ModelState::Loaded(_));
        if is_loaded && was_loaded != Some(true) {
            fold.set(true);
        }
        is_loaded
    });
    // A problem with the store is never folded away.
    Effect::new(move |_| {
        if matches!(ui.notice.get(), Some(Notice::Error(_))) {
            fold.set(false);
        }
    });

    let load_demo = move |_| {
        let source = UrlSource { base: Some(page_url(DEMO_MODEL_BASE)), ..Default::default() }.normalized();
        let gpu_memory = ui.budget();
        spawn_local(async move {
            // Failures show in the model state; a cancel leaves it empty.
            let _ = loading::load_urls(state, source, gpu_memory, DEFAULT_CHUNK_SIZE, &mut |_| {}).await;
        });
    };
    let busy = move || matches!(state.model.get(), ModelState::Loading { .. });

    let on_drop = move |ev: leptos::ev::DragEvent| {
        ev.prevent_default();
        dragging.set(false);
        let Some(data) = js::get(&ev, "dataTransfer") else { return };
        let entries = dropped_entries(&data);
        source.set(SourceKind::Local);
        spawn_local(async move {
            match dropped_files(entries).await {
                Ok(files) if files.is_empty() => {
                    ui.notice.set(Some(Notice::Error("nothing usable was dropped: drop files or a folder".into())))
                }
                Ok(files) => {
                    if let Err(e) = pick.set(files) {
                        ui.notice.set(Some(Notice::Error(e)));
                    }
                }
                Err(e) => ui.notice.set(Some(Notice::Error(format!("the dropped files could not be read: {e}")))),
            }
        });
    };

    view! {
        <section class="card" id="model-panel" aria-labelledby="model-title" class:dragging=move || dragging.get()
            class:folded=folded
            on:dragover=move |ev: leptos::ev::DragEvent| { ev.prevent_default(); dragging.set(true); }
            on:dragleave=move |_| dragging.set(false)
            on:drop=on_drop>
            <div class="row panel-head">
                <h2 id="model-title">"Model"</h2>
                <ModelStatus />
                {move || loaded().then(|| view! {
                    <button type="button" id="model-panel-toggle" class="small" aria-controls="model-details"
                        aria-expanded=move || (!folded()).to_string()
                        on:click=move |_| fold.update(|f| *f = !*f)>
                        {move || if folded() { "Change model" } else { "Fold" }}
                    </button>
                })}
            </div>
            <div id="model-details" hidden=folded>
                <div class="row">
                    <button type="button" id="load-demo" on:click=load_demo disabled=busy>"Load the demo model"</button>
                </div>
                <p class="muted">
                    "The built-in demo model is a 5 MB FLUX.1 Kontext with tiny random weights: it runs the whole pipeline "
                    "on your GPU in seconds, but its pictures are abstract noise, not real edits. Real models are stored in "
                    "this browser first (once), then loaded from there, also offline."
                </p>
                <fieldset class="sources">
                    <legend>"Add a model from"</legend>
                    <div class="row" role="radiogroup" aria-label="model source">
                        {SOURCES.iter().map(|(kind, id, label)| {
                            let kind = *kind;
                            view! {
                                <label for=*id class="radio">
                                    <input type="radio" name="model-source" id=*id prop:checked=move || source.get() == kind
                                        on:change=move |_| source.set(kind) />
                                    {*label}
                                </label>
                            }
                        }).collect_view()}
                    </div>
                    <div id="source-form" data-source=move || format!("{:?}", source.get()).to_lowercase()>
                        {move || match source.get() {
                            SourceKind::Catalog => view! { <CatalogSource /> }.into_any(),
                            SourceKind::Urls => view! { <UrlSourceForm /> }.into_any(),
                            SourceKind::Local => view! { <LocalSource /> }.into_any(),
                            SourceKind::Demo => view! { <DemoSource /> }.into_any(),
                        }}
                    </div>
                </fieldset>
                {move || ui.notice.get().map(|n| match n {
                    Notice::Info(text) => view! { <p id="store-message" data-kind="info" class="status ok" role="status">{text}</p> }.into_any(),
                    Notice::Error(text) => view! { <p id="store-message" data-kind="error" class="status bad" role="alert">{text}</p> }.into_any(),
                })}
                <TransferView />
                <StoredModels />
            </div>
        </section>
    }
}

/// The loaded model's state, with measured progress.
#[component]
fn ModelStatus() -> impl IntoView {
    let state = expect_context::<AppState>();
    view! {
        <span id="model-state" role="status" data-state=move || match state.model.get() {
            ModelState::Empty => "empty",
            ModelState::Loading { .. } => "loading",
            ModelState::Loaded(_) => "loaded",
            ModelState::Failed(_) => "failed",
        }>
            {move || match state.model.get() {
                ModelState::Empty => "No model loaded.".to_string(),
                ModelState::Loading { phase, done, total } if phase == "reading" => {
                    format!("reading from storage… {} of {}", human_bytes(done), human_bytes(total))
                }
                ModelState::Loading { phase, done, total } if phase == "loading" => {
                    format!("uploading to the GPU… {} of {}", human_bytes(done), human_bytes(total))
                }
                ModelState::Loading { phase, done, total } if phase == "downloading" => {
                    format!("storing in this browser… {} of {}", human_bytes(done), human_bytes(total))
                }
                ModelState::Loading { phase, done, total } => format!("{phase}… {done}/{total}"),
                ModelState::Loaded(description) => format!("Loaded: {description}"),
                ModelState::Failed(message) => format!("Could not load: {message}"),
            }}
        </span>
        {move || match state.model.get() {
            ModelState::Loading { done, total, .. } => Some(view! {
                <progress max=total.max(1) value=done aria-label="model loading progress"></progress>
                <button type="button" id="cancel-load" on:click=move |_| {
                    loading::cancel_load(state);
                }>"Cancel"</button>
            }),
            _ => None,
        }}
    }
}
