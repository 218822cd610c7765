//! The editor: references, prompt, Fast/Quality presets, shape with the output size in pixels, steps,
//! guidance, seed; generate and cancel with measured progress; the result with its recipe, a download
//! (the PNG carries the recipe), "use as reference" for chains of edits, and a side-by-side comparison.

use leptos::prelude::*;
use leptos::task::spawn_local;
use serde_bytes::ByteBuf;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use super::history::{History, HistoryEntry, Rerun};
use super::{AppState, JobState, LoraEntry, ModelState, send};
use crate::pipeline::size::{DEFAULT_MAX_AREA, output_size};
use crate::protocol::{EditJob, ToWorker};

/// Most references one edit takes.
pub const MAX_REFERENCES: usize = 4;

/// A reference the user added: encoded bytes, a thumbnail URL and its pixel size (from the header).
#[derive(Debug, Clone, PartialEq)]
struct Reference {
    name: String,
    bytes: Vec<u8>,
    thumbnail: String,
    size: Option<(usize, usize)>,
}

/// A named pair of steps and area (side of the same-area square).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// Shown on the button and used in element ids (lower case).
    pub name: &'static str,
    /// Denoising steps.
    pub steps: usize,
    /// Side of the same-area square, pixels.
    pub side: usize,
}

/// Fast: few steps at a quarter of the area; Quality: the reference pipeline's 28 steps at 1024².
pub const PRESETS: [Preset; 2] =
    [Preset { name: "Fast", steps: 8, side: 512 }, Preset { name: "Quality", steps: 28, side: 1024 }];

/// Width and height from an image header, without decoding the pixels.
fn header_size(bytes: &[u8]) -> Option<(usize, usize)> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().ok()?;
    let (w, h) = reader.into_dimensions().ok()?;
    Some((w as usize, h as usize))
}

/// What the worker is asked for: explicit `(width, height)` or none (the first reference's aspect), and the area.
/// `aspect` indexes [`ASPECTS`], or is [`CUSTOM`] for `custom` (snapped to ×16).
fn requested_size(
    aspect: usize,
    side: usize,
    custom: (usize, usize),
    has_reference: bool,
) -> (Option<(usize, usize)>, usize) {
    if aspect == CUSTOM {
        let (w, h) = (snap(custom.0), snap(custom.1));
        return (Some((w, h)), w * h);
    }
    let area = side * side;
    let explicit = match ASPECTS.get(aspect).and_then(|a| a.1) {
        Some(ratio) => Some(preset_size(ratio, area)),
        None if !has_reference => Some((side, side)),
        None => None,
    };
    (explicit, area.min(DEFAULT_MAX_AREA * 4))
}

/// The shape choice after [`ASPECTS`]: a width and height of the user's.
const CUSTOM: usize = ASPECTS.len();

/// Pixels snapped to the ×16 grid the model works on, within 64–2048.
fn snap(pixels: usize) -> usize {
    pixels.clamp(64, 2048) / 16 * 16
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

/// Image types the references accept.
const IMAGE_TYPES: [&str; 3] = ["image/png", "image/jpeg", "image/webp"];

async fn read_file(file: web_sys::File) -> Result<Reference, String> {
    if !IMAGE_TYPES.contains(&file.type_().as_str()) {
        return Err(format!("{} is not a PNG, JPEG or WebP image", file.name()));
    }
    let buffer = JsFuture::from(file.array_buffer()).await.map_err(crate::web::js::describe)?;
    let bytes = js_sys::Uint8Array::new(&buffer).to_vec();
    let thumbnail = web_sys::Url::create_object_url_with_blob(&file).map_err(crate::web::js::describe)?;
    let size = header_size(&bytes);
    Ok(Reference { name: file.name(), bytes, thumbnail, size })
}

/// A reference from stored bytes (a history entry's).
fn reference_from_bytes(name: String, bytes: Vec<u8>) -> Result<Reference, String> {
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes.as_slice()));
    let blob = web_sys::Blob::new_with_u8_array_sequence(&parts).map_err(crate::web::js::describe)?;
    let thumbnail = web_sys::Url::create_object_url_with_blob(&blob).map_err(crate::web::js::describe)?;
    let size = header_size(&bytes);
    Ok(Reference { name, bytes, thumbnail, size })
}

/// The job in flight, kept to store it in the history when it finishes.
#[derive(Debug, Clone)]
struct Pending {
    entry: HistoryEntry,
    references: Vec<(String, Vec<u8>)>,
}

fn file_list(list: &web_sys::FileList) -> Vec<web_sys::File> {
    (0..list.length()).filter_map(|i| list.get(i)).collect()
}

/// The edit form and its result.
#[component]
pub fn Editor() -> impl IntoView {
    let state = expect_context::<AppState>();
    let references = RwSignal::new(Vec::<Reference>::new());
    let prompt = RwSignal::new(String::new());
    let aspect = RwSignal::new(0usize);
    let area_side = RwSignal::new(PRESETS[0].side);
    let custom_size = RwSignal::new((1024usize, 768usize));
    let steps = RwSignal::new(PRESETS[0].steps);
    let first_of_job = RwSignal::new(None::<Reference>);
    let guidance = RwSignal::new(2.5f32);
    let seed = RwSignal::new(String::new());
    let next_id = StoredValue::new(1u32);

    let reference_error = RwSignal::new(None::<String>);
    let add = move |files: Vec<web_sys::File>| {
        reference_error.set(None);
        spawn_local(async move {
            for file in files {
                if references.with_untracked(Vec::len) >= MAX_REFERENCES {
                    reference_error.set(Some(format!("at most {MAX_REFERENCES} references: remove one first")));
                    break;
                }
                match read_file(file).await {
                    Ok(reference) => references.update(|r| r.push(reference)),
                    Err(e) => reference_error.set(Some(e)),
                }
            }
        });
    };
    let add_files = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = ev.target().unwrap().unchecked_into();
        let files = input.files().map(|list| file_list(&list)).unwrap_or_default();
        input.set_value("");
        add(files);
    };
    let dragging = RwSignal::new(false);
    let drop_files = move |ev: web_sys::DragEvent| {
        ev.prevent_default();
        dragging.set(false);
        if let Some(files) = ev.data_transfer().and_then(|t| t.files()) {
            add(file_list(&files));
        }
    };
    // Images pasted anywhere on the page (a screenshot, an image copied in another app) become references.
    let paste = window_event_listener(leptos::ev::paste, move |ev: web_sys::ClipboardEvent| {
        let files = ev.clipboard_data().and_then(|data| data.files()).map(|list| file_list(&list)).unwrap_or_default();
        let images: Vec<web_sys::File> =
            files.into_iter().filter(|f| IMAGE_TYPES.contains(&f.type_().as_str())).collect();
        if !images.is_empty() {
            ev.prevent_default();
            add(images);
        }
    });
    on_cleanup(move || paste.remove());
    let move_reference = move |from: usize, to: usize| {
        references.update(|r| {
            if from < r.len() && to < r.len() {
                r.swap(from, to);
            }
        })
    };

    let running = move || matches!(state.job.get(), JobState::Running { .. });
    let can_generate =
        move || matches!(state.model.get(), ModelState::Loaded(_)) && !running() && !prompt.get().trim().is_empty();

    let pending = StoredValue::new(None::<Pending>);
    let history_revision = RwSignal::new(0u32);
    let history_error = RwSignal::new(None::<String>);
    Effect::new(move |_| match state.job.get() {
        JobState::Done { png, seed, width, height, millis, .. } => {
            let Some(Pending { mut entry, references }) = pending.try_update_value(Option::take).flatten() else {
                return;
            };
            entry.id = js_sys::Date::now() as u64;
            (entry.seed, entry.width, entry.height, entry.seconds) = (seed, width, height, millis / 1000.0);
            entry.model = match state.model.get_untracked() {
                ModelState::Loaded(description) => description,
                _ => String::new(),
            };
            spawn_local(async move {
                match super::history::add(entry, &png, &references).await {
                    Ok(()) => history_revision.update(|r| *r += 1),
                    Err(e) => history_error.set(Some(format!("the result could not be kept in the history: {e}"))),
                }
            });
        }
        JobState::Cancelled | JobState::Failed(_) => pending.set_value(None),
        _ => {}
    });

    let generate = move || {
        let id = next_id.get_value();
        next_id.set_value(id + 1);
        let seed_value =
            seed.get_untracked().trim().parse::<u64>().unwrap_or_else(|_| crate::pipeline::rng::random_seed());
        seed.set(seed_value.to_string());
        let (size, max_area) = requested_size(
            aspect.get_untracked(),
            area_side.get_untracked(),
            custom_size.get_untracked(),
            !references.with_untracked(Vec::is_empty),
        );
        first_of_job.set(references.with_untracked(|r| r.first().cloned()));
        let job = EditJob {
            id,
            prompt: prompt.get_untracked(),
            images: references.get_untracked().into_iter().map(|r| ByteBuf::from(r.bytes)).collect(),
            width: size.map(|s| s.0),
            height: size.map(|s| s.1),
            max_area,
            keep_reference_size: false,
            steps: steps.get_untracked().max(1),
            guidance: guidance.get_untracked(),
            seed: seed_value,
            loras: state.loras.with_untracked(|all| LoraEntry::active(all)),
        };
        pending.set_value(Some(Pending {
            entry: HistoryEntry {
                id: 0,
                prompt: job.prompt.clone(),
                width: 0,
                height: 0,
                aspect: aspect.get_untracked(),
                side: area_side.get_untracked(),
                steps: job.steps,
                guidance: job.guidance,
                seed: seed_value,
                loras: job.loras.iter().map(|l| (l.name.clone(), l.strength)).collect(),
                model: String::new(),
                references: Vec::new(),
                seconds: 0.0,
            },
            references: references.with_untracked(|r| r.iter().map(|r| (r.name.clone(), r.bytes.clone())).collect()),
        }));
        let now = js_sys::Date::now();
        state.job.set(JobState::Running {
            id,
            phase: "starting".into(),
            done: 0,
            total: 1,
            started: now,
            phase_started: now,
        });
        if let Err(e) = send(&ToWorker::Edit(job)) {
            state.job.set(JobState::Failed(e));
        }
    };
    let rerun = Callback::new(move |(entry, files): Rerun| {
        let mut restored = Vec::new();
        for (name, bytes) in files {
            match reference_from_bytes(name, bytes) {
                Ok(reference) => restored.push(reference),
                Err(e) => return history_error.set(Some(e)),
            }
        }
        let missing: Vec<String> = entry
            .loras
            .iter()
            .filter(|(name, _)| !state.loras.with_untracked(|all| all.iter().any(|l| &l.name == name)))
            .map(|(name, _)| name.clone())
            .collect();
        if !missing.is_empty() {
            return history_error.set(Some(format!("add the LoRA {} again to re-run this", missing.join(", "))));
        }
        state.loras.update(|all| {
            for lora in all.iter_mut() {
                let used = entry.loras.iter().find(|(name, _)| *name == lora.name);
                lora.enabled = used.is_some();
                if let Some((_, strength)) = used {
                    lora.strength = *strength;
                }
            }
        });
        history_error.set(None);
        references.set(restored);
        prompt.set(entry.prompt.clone());
        aspect.set(entry.aspect.min(CUSTOM));
        if entry.aspect == CUSTOM {
            custom_size.set((entry.width, entry.height));
        }
        area_side.set(entry.side);
        steps.set(entry.steps);
        guidance.set(entry.guidance);
        seed.set(entry.seed.to_string());
        if can_generate() {
            generate();
        }
    });
    let cancel = move |_| {
        if let JobState::Running { id, .. } = state.job.get_untracked()
            && let Err(e) = send(&ToWorker::Cancel { id })
        {
            state.job.set(JobState::Failed(e));
        }
    };

    let output_pixels = move || {
        let first = references.with(|r| r.first().map(|r| r.size));
        let (size, max_area) = requested_size(aspect.get(), area_side.get(), custom_size.get(), first.is_some());
        match (size, first) {
            (None, Some(None)) => "output: the first reference's aspect".to_string(),
            (size, first) => match output_size(size, first.flatten(), max_area) {
                Ok((w, h)) => format!("output: {w}×{h} px"),
                Err(e) => e.to_string(),
            },
        }
    };
    let active_preset = move || {
        let (s, side) = (steps.get(), area_side.get());
        PRESETS.iter().find(|p| p.steps == s && p.side == side).map_or("custom", |p| p.name)
    };

    view! {
        <section class="card" id="editor" aria-labelledby="editor-title">
            <h2 id="editor-title">"Edit"</h2>
            <div class="field drop-zone" id="reference-drop" class:dragging=move || dragging.get()
                on:dragover=move |ev: web_sys::DragEvent| { ev.prevent_default(); dragging.set(true); }
                on:dragleave=move |_| dragging.set(false)
                on:drop=drop_files>
                <label for="reference-input">"Reference images (up to 4; none for text-to-image)"</label>
                <input id="reference-input" type="file" accept="image/png,image/jpeg,image/webp" multiple on:change=add_files />
                <p class="muted hint">"…or drop images here, or paste one. The first reference sets the output's shape."</p>
                {move || reference_error.get().map(|message| view! { <p class="status bad" role="alert">{message}</p> })}
                <ol class="thumbs" aria-label="reference images">
                    <For each=move || references.get().into_iter().enumerate() key=|(i, r)| (*i, r.thumbnail.clone()) let:item>
                        <li>
                            <img src=item.1.thumbnail.clone() alt=item.1.name.clone() />
                            <div class="thumb-actions">
                                <button type="button" class="small" aria-label=format!("move {} earlier", item.1.name)
                                    disabled=item.0 == 0 on:click=move |_| move_reference(item.0, item.0.saturating_sub(1))>"◀"</button>
                                <button type="button" class="small" aria-label=format!("move {} later", item.1.name)
                                    disabled=move || { item.0 + 1 >= references.with(Vec::len) }
                                    on:click=move |_| move_reference(item.0, item.0 + 1)>"▶"</button>
                                <button type="button" class="small" aria-label=format!("remove {}", item.1.name)
                                    on:click=move |_| references.update(|r| { if item.0 < r.len() { r.remove(item.0); } })>"✕"</button>
                            </div>
                        </li>
                    </For>
                </ol>
            </div>
            <div class="field">
                <label for="prompt">"Instruction"</label>
                <textarea id="prompt" rows="2" placeholder="Describe the change, not the subject: “make the sky stormy”"
                    prop:value=move || prompt.get() on:input=move |ev| prompt.set(event_target_value(&ev))></textarea>
            </div>
            <div class="row" role="group" aria-labelledby="preset-label" id="presets" data-preset=active_preset>
                <span id="preset-label" class="muted">"Preset"</span>
                {PRESETS.iter().map(|preset| {
                    let preset = *preset;
                    view! {
                        <button type="button" id=format!("preset-{}", preset.name.to_lowercase())
                            aria-pressed=move || (active_preset() == preset.name).to_string()
                            title=format!("{} steps, {}² pixels", preset.steps, preset.side)
                            on:click=move |_| { steps.set(preset.steps); area_side.set(preset.side); }>
                            {format!("{} · {} steps · {}²", preset.name, preset.steps, preset.side)}
                        </button>
                    }
                }).collect_view()}
                <span class="muted" aria-live="polite">{move || (active_preset() == "custom").then_some("custom settings")}</span>
            </div>
            <div class="grid">
                <div class="field">
                    <label for="aspect">"Output shape"</label>
                    <select id="aspect" aria-describedby="output-size" prop:value=move || aspect.get().to_string()
                        on:change=move |ev| aspect.set(event_target_value(&ev).parse().unwrap_or(0))>
                        {ASPECTS.iter().enumerate().map(|(i, (name, _))| view! { <option value=i.to_string()>{*name}</option> }).collect_view()}
                        <option value=CUSTOM.to_string()>"custom width × height"</option>
                    </select>
                    <output id="output-size" for="aspect area custom-width custom-height" aria-live="polite">{output_pixels}</output>
                </div>
                {move || (aspect.get() == CUSTOM).then(|| view! {
                    <div class="field">
                        <label for="custom-width">"Width (px, ×16)"</label>
                        <input id="custom-width" type="number" min="64" max="2048" step="16" prop:value=move || custom_size.get().0.to_string()
                            on:change=move |ev| custom_size.update(|s| s.0 = event_target_value(&ev).parse::<usize>().map(snap).unwrap_or(s.0)) />
                    </div>
                    <div class="field">
                        <label for="custom-height">"Height (px, ×16)"</label>
                        <input id="custom-height" type="number" min="64" max="2048" step="16" prop:value=move || custom_size.get().1.to_string()
                            on:change=move |ev| custom_size.update(|s| s.1 = event_target_value(&ev).parse::<usize>().map(snap).unwrap_or(s.1)) />
                    </div>
                })}
                <div class="field">
                    <label for="area">"Size (side of the same-area square, px)"</label>
                    <input id="area" type="number" min="64" max="2048" step="16" prop:value=move || area_side.get().to_string()
                        disabled=move || aspect.get() == CUSTOM
                        on:change=move |ev| area_side.set(event_target_value(&ev).parse::<usize>().map(snap).unwrap_or(512)) />
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
                <button type="button" id="generate" class="primary" on:click=move |_| generate() disabled=move || !can_generate()>"Generate"</button>
                <button type="button" id="cancel" on:click=cancel disabled=move || !running()>"Cancel"</button>
                <span class="muted">{move || (!matches!(state.model.get(), ModelState::Loaded(_))).then_some("Load a model first.")}</span>
            </div>
            <JobView references first_of_job />
            {move || history_error.get().map(|message| view! { <p class="status bad" role="alert">{message}</p> })}
        </section>
        <History revision=history_revision on_rerun=rerun />
    }
}

/// Progress while running; the image, its recipe, a download, "use as reference" and a comparison when done.
#[component]
fn JobView(references: RwSignal<Vec<Reference>>, first_of_job: RwSignal<Option<Reference>>) -> impl IntoView {
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
                JobState::Running { id, phase, done, total, started, phase_started } => {
                    let now = js_sys::Date::now();
                    let elapsed = (now - started) / 1000.0;
                    // The steps' measured pace predicts the rest of the denoising.
                    let eta = (phase == "denoising" && done > 0)
                        .then(|| (now - phase_started) / 1000.0 / done as f64 * (total - done) as f64)
                        .map(|left| format!(" · about {left:.0} s left"))
                        .unwrap_or_default();
                    let preview = state.preview.get().filter(|(job, ..)| *job == id);
                    view! {
                        <p id="job-phase">{format!("{phase}: {done}/{total} · {elapsed:.1} s{eta}")}</p>
                        <progress max=total.max(1) value=done aria-label="generation progress"></progress>
                        {preview.map(|(_, step, url)| view! {
                            <img id="preview" class="preview" src=url alt=format!("preview after step {step}") />
                        })}
                    }.into_any()
                }
                JobState::Done { url, png, seed, width, height, millis } => {
                    let result_url = url.clone();
                    let use_as_reference = move |_| {
                        let reference = Reference {
                            name: format!("result {seed}.png"),
                            bytes: png.to_vec(),
                            thumbnail: result_url.clone(),
                            size: Some((width, height)),
                        };
                        references.update(|r| if r.len() < MAX_REFERENCES { r.push(reference) });
                    };
                    let first = first_of_job.get();
                    let has_first = first.is_some();
                    let result_image = {
                        let url = url.clone();
                        move || view! {
                            <img id="result-image" src=url.clone() alt=format!("the generated image, {width}×{height} pixels")
                                width=width height=height />
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
                    }.into_any()
                }
                JobState::Cancelled => view! { <p>"Cancelled."</p> }.into_any(),
                JobState::Failed(message) => view! { <p class="status bad" role="alert">{message}</p> }.into_any(),
            }}
        </div>
    }
}
