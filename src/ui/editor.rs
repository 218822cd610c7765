//! The editor: references, prompt, size, steps, guidance, seed; generate and cancel with measured
//! progress; the result with its recipe and a download.

use leptos::prelude::*;
use leptos::task::spawn_local;
use serde_bytes::ByteBuf;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use super::{AppState, JobState, ModelState, send};
use crate::pipeline::size::DEFAULT_MAX_AREA;
use crate::protocol::{EditJob, ToWorker};

/// Most references one edit takes.
pub const MAX_REFERENCES: usize = 4;

/// A reference the user added: encoded bytes and a thumbnail URL.
#[derive(Debug, Clone, PartialEq)]
struct Reference {
    name: String,
    bytes: Vec<u8>,
    thumbnail: String,
}

/// Output size choices: the first reference's aspect, or a preset ratio, at the chosen area.
const ASPECTS: [(&str, Option<(f64, f64)>); 7] = [
    ("match the first reference", None),
    ("1:1", Some((1.0, 1.0))),
    ("4:3", Some((4.0, 3.0))),
    ("3:4", Some((3.0, 4.0))),
    ("16:9", Some((16.0, 9.0))),
    ("9:16", Some((9.0, 16.0))),
    ("21:9", Some((21.0, 9.0))),
];

/// `(width, height)` of `ratio` at `area`, snapped to multiples of 16.
fn preset_size(ratio: (f64, f64), area: usize) -> (usize, usize) {
    let aspect = ratio.0 / ratio.1;
    let w = ((area as f64 * aspect).sqrt().round() as usize) / 16 * 16;
    let h = ((area as f64 / aspect).sqrt().round() as usize) / 16 * 16;
    (w.max(16), h.max(16))
}

async fn read_file(file: web_sys::File) -> Result<Reference, String> {
    let buffer = JsFuture::from(file.array_buffer()).await.map_err(crate::web::js::describe)?;
    let bytes = js_sys::Uint8Array::new(&buffer).to_vec();
    let thumbnail = web_sys::Url::create_object_url_with_blob(&file).map_err(crate::web::js::describe)?;
    Ok(Reference { name: file.name(), bytes, thumbnail })
}

/// The edit form and its result.
#[component]
pub fn Editor() -> impl IntoView {
    let state = expect_context::<AppState>();
    let references = RwSignal::new(Vec::<Reference>::new());
    let prompt = RwSignal::new(String::new());
    let aspect = RwSignal::new(0usize);
    let area_side = RwSignal::new(512usize);
    let steps = RwSignal::new(4usize);
    let guidance = RwSignal::new(2.5f32);
    let seed = RwSignal::new(String::new());
    let next_id = StoredValue::new(1u32);

    let add_files = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = ev.target().unwrap().unchecked_into();
        let Some(list) = input.files() else { return };
        let files: Vec<web_sys::File> = (0..list.length()).filter_map(|i| list.get(i)).collect();
        input.set_value("");
        spawn_local(async move {
            for file in files {
                if references.with_untracked(Vec::len) >= MAX_REFERENCES {
                    break;
                }
                match read_file(file).await {
                    Ok(reference) => references.update(|r| r.push(reference)),
                    Err(e) => state.job.set(JobState::Failed(format!("could not read the file: {e}"))),
                }
            }
        });
    };

    let running = move || matches!(state.job.get(), JobState::Running { .. });
    let can_generate = move || matches!(state.model.get(), ModelState::Loaded(_)) && !running() && !prompt.get().trim().is_empty();

    let generate = move |_| {
        let id = next_id.get_value();
        next_id.set_value(id + 1);
        let seed_value = seed.get_untracked().trim().parse::<u64>().unwrap_or_else(|_| crate::pipeline::rng::random_seed());
        seed.set(seed_value.to_string());
        let area = area_side.get_untracked() * area_side.get_untracked();
        let (width, height) = match ASPECTS[aspect.get_untracked()].1 {
            Some(ratio) => {
                let (w, h) = preset_size(ratio, area);
                (Some(w), Some(h))
            }
            None if references.with_untracked(Vec::is_empty) => (Some(area_side.get_untracked()), Some(area_side.get_untracked())),
            None => (None, None),
        };
        let job = EditJob {
            id,
            prompt: prompt.get_untracked(),
            images: references.get_untracked().into_iter().map(|r| ByteBuf::from(r.bytes)).collect(),
            width,
            height,
            max_area: area.min(DEFAULT_MAX_AREA * 4),
            keep_reference_size: false,
            steps: steps.get_untracked().max(1),
            guidance: guidance.get_untracked(),
            seed: seed_value,
        };
        state.job.set(JobState::Running { id, phase: "starting".into(), done: 0, total: 1, started: js_sys::Date::now() });
        if let Err(e) = send(&ToWorker::Edit(job)) {
            state.job.set(JobState::Failed(e));
        }
    };
    let cancel = move |_| {
        if let JobState::Running { id, .. } = state.job.get_untracked()
            && let Err(e) = send(&ToWorker::Cancel { id })
        {
            state.job.set(JobState::Failed(e));
        }
    };

    view! {
        <section class="card" id="editor" aria-labelledby="editor-title">
            <h2 id="editor-title">"Edit"</h2>
            <div class="field">
                <label for="reference-input">"Reference images (up to 4; none for text-to-image)"</label>
                <input id="reference-input" type="file" accept="image/png,image/jpeg,image/webp" multiple on:change=add_files />
                <ul class="thumbs" aria-label="reference images">
                    <For each=move || references.get().into_iter().enumerate() key=|(i, r)| (*i, r.thumbnail.clone()) let:item>
                        <li>
                            <img src=item.1.thumbnail.clone() alt=item.1.name.clone() />
                            <button class="small" aria-label=format!("remove {}", item.1.name)
                                on:click=move |_| references.update(|r| { if item.0 < r.len() { r.remove(item.0); } })>"✕"</button>
                        </li>
                    </For>
                </ul>
            </div>
            <div class="field">
                <label for="prompt">"Instruction"</label>
                <textarea id="prompt" rows="2" placeholder="Describe the change, not the subject: “make the sky stormy”"
                    prop:value=move || prompt.get() on:input=move |ev| prompt.set(event_target_value(&ev))></textarea>
            </div>
            <div class="grid">
                <div class="field">
                    <label for="aspect">"Output shape"</label>
                    <select id="aspect" on:change=move |ev| aspect.set(event_target_value(&ev).parse().unwrap_or(0))>
                        {ASPECTS.iter().enumerate().map(|(i, (name, _))| view! { <option value=i.to_string()>{*name}</option> }).collect_view()}
                    </select>
                </div>
                <div class="field">
                    <label for="area">"Size (side of the same-area square, px)"</label>
                    <input id="area" type="number" min="64" max="2048" step="16" prop:value=move || area_side.get().to_string()
                        on:change=move |ev| area_side.set(event_target_value(&ev).parse::<usize>().map(|v| v.clamp(64, 2048) / 16 * 16).unwrap_or(512)) />
                </div>
                <div class="field">
                    <label for="steps">"Steps"</label>
                    <input id="steps" type="number" min="1" max="100" prop:value=move || steps.get().to_string()
                        on:change=move |ev| steps.set(event_target_value(&ev).parse::<usize>().map(|v| v.clamp(1, 100)).unwrap_or(4)) />
                </div>
                <div class="field">
                    <label for="guidance">"Guidance"</label>
                    <input id="guidance" type="number" min="1" max="10" step="0.1" prop:value=move || guidance.get().to_string()
                        on:change=move |ev| guidance.set(event_target_value(&ev).parse::<f32>().map(|v| v.clamp(1.0, 10.0)).unwrap_or(2.5)) />
                </div>
                <div class="field">
                    <label for="seed">"Seed (empty: random)"</label>
                    <input id="seed" type="text" inputmode="numeric" prop:value=move || seed.get()
                        on:input=move |ev| seed.set(event_target_value(&ev)) />
                </div>
            </div>
            <div class="row">
                <button id="generate" class="primary" on:click=generate disabled=move || !can_generate()>"Generate"</button>
                <button id="cancel" on:click=cancel disabled=move || !running()>"Cancel"</button>
                <span class="muted">{move || (!matches!(state.model.get(), ModelState::Loaded(_))).then_some("Load a model first.")}</span>
            </div>
            <JobView />
        </section>
    }
}

/// Progress while running; the image, its recipe and a download when done.
#[component]
fn JobView() -> impl IntoView {
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
                JobState::Running { phase, done, total, started, .. } => {
                    let elapsed = (js_sys::Date::now() - started) / 1000.0;
                    view! {
                        <p id="job-phase">{format!("{phase}: {done}/{total} · {elapsed:.1} s")}</p>
                        <progress max=total.max(1) value=done aria-label="generation progress"></progress>
                    }.into_any()
                }
                JobState::Done { url, seed, width, height, millis } => view! {
                    <figure class="result">
                        <img id="result-image" src=url.clone() alt="the generated image" width=width height=height />
                        <figcaption>
                            {format!("{width}×{height} · seed {seed} · {:.1} s ", millis / 1000.0)}
                            <a id="download" href=url download=format!("kontext-{seed}.png")>"Download PNG"</a>
                        </figcaption>
                    </figure>
                }.into_any(),
                JobState::Cancelled => view! { <p>"Cancelled."</p> }.into_any(),
                JobState::Failed(message) => view! { <p class="status bad" role="alert">{message}</p> }.into_any(),
            }}
        </div>
    }
}
