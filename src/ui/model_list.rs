//! The stored models (size, state, load, resume, verify, delete), the storage they use, the running transfer
//! (bytes, rate, ETA, pause, cancel) and the memory check before a load.

use leptos::prelude::*;

use crate::app::AppState;
use crate::app::models::{Action, Fit, Notice, StoreController, Transfer};
use crate::store::manifest::{FileState, Manifest, human_bytes};
use crate::store::meter::format_duration;

/// Used and available storage, and whether it is persistent.
#[component]
pub fn StorageSummary() -> impl IntoView {
    let ui = expect_context::<StoreController>();
    let text = move || match ui.estimate.get() {
        Some(e) => format!(
            "Storage: {} used of {} this site may use ({} available).",
            human_bytes(e.usage as u64),
            human_bytes(e.quota as u64),
            human_bytes(e.available())
        ),
        None => "Storage: this browser does not report its quota.".to_string(),
    };
    let persisted = move || match ui.persisted.get() {
        Some(true) => "Persistent storage granted: the browser will not evict stored models.",
        Some(false) => "Persistent storage not granted: the browser may evict stored models when the disk runs low.",
        None => "Persistent storage: not asked yet (asked with the first download).",
    };
    view! {
        <p id="storage-summary" data-usage=move || ui.estimate.get().map(|e| e.usage.to_string())>{text}</p>
        <p id="storage-persist" class="muted" data-persisted=move || format!("{:?}", ui.persisted.get())>{persisted}</p>
        <Show when=move || ui.blocked.get()>
            <p id="store-blocked" role="alert">
                "Another kontext-web tab is using an older version of the model store. Close or reload that tab; this page \
                 goes on as soon as it does."
            </p>
        </Show>
    }
}

/// The running download, copy or verification.
#[component]
pub fn TransferView() -> impl IntoView {
    let ui = expect_context::<StoreController>();
    move || {
        ui.transfer.get().map(|t: Transfer| {
            let verifying = t.action == Action::Verifying;
            let action = match t.action {
                Action::Downloading => "Downloading",
                Action::Copying => "Copying",
                Action::Verifying => "Verifying",
                Action::Waiting => "Waiting for another tab",
            };
            let amount = if verifying {
                format!("{} of {} chunks", t.done, t.total)
            } else {
                format!("{} of {}", human_bytes(t.done), human_bytes(t.total))
            };
            let speed = match (t.rate, t.eta) {
                _ if t.stopping => " · stopping…".to_string(),
                (Some(rate), Some(eta)) => format!(" · {}/s · {} left", human_bytes(rate as u64), format_duration(eta)),
                _ => " · measuring speed…".to_string(),
            };
            view! {
                <div id="transfer" role="status" data-action=action data-done=t.done.to_string() data-total=t.total.to_string()>
                    <p id="transfer-text">{if t.action == Action::Waiting {
                        format!("{} · another tab is storing or verifying this model; this one goes on when it is done", t.label)
                    } else {
                        format!("{action} {}: {amount}{speed}", t.label)
                    }}</p>
                    <progress max=t.total.max(1) value=t.done aria-label=format!("{action} progress")></progress>
                    {(!t.file.is_empty()).then(|| view! { <p class="muted">{t.file.clone()}</p> })}
                    {(!verifying).then(|| view! {
                        <div class="row">
                            <button type="button" id="transfer-pause" on:click=move |_| ui.pause() disabled=t.stopping>"Pause"</button>
                            <button type="button" id="transfer-cancel" on:click=move |_| ui.cancel() disabled=t.stopping
                                title="Stop and delete what was stored of this model">"Cancel"</button>
                        </div>
                    })}
                </div>
            }
        })
    }
}

fn state_name(m: &Manifest) -> &'static str {
    match m.state() {
        FileState::Complete => "complete",
        FileState::Partial => "partial",
        FileState::Missing => "empty",
    }
}

/// Every stored model, with its actions.
#[component]
pub fn StoredModels() -> impl IntoView {
    let ui = expect_context::<StoreController>();
    view! {
        <h3 id="stored-title">"Stored in this browser"</h3>
        <StorageSummary />
        {move || (ui.models.with(Vec::is_empty) && ui.broken.with(Vec::is_empty)).then(|| view! {
            <p id="stored-empty" class="muted">"No model is stored yet."</p>
        })}
        <ul id="stored-models" aria-labelledby="stored-title">
            <For each=move || ui.models.get() key=|m| (m.id.clone(), m.stored_bytes(), m.total_bytes()) let:model>
                <ModelRow model=model />
            </For>
            <For each=move || ui.broken.get() key=|b| b.clone() let:broken>
                <li class="stored-model" data-id=broken.0.clone() data-state="broken">
                    <strong>{broken.0.clone()}</strong>
                    <span class="status bad">{format!(" broken: {}", broken.1)}</span>
                    <button type="button" class="model-delete" aria-label=format!("Delete {}", broken.0)
                        on:click={ let id = broken.0.clone(); move |_| ui.delete(id.clone()) }>"Delete"</button>
                </li>
            </For>
        </ul>
        <GpuMemorySetting />
        <FitView />
    }
}

/// The GPU memory every load and edit is planned to fit: the user's setting, pre-filled with a guess from the
/// adapter's limits, and what that guess is.
#[component]
fn GpuMemorySetting() -> impl IntoView {
    let ui = expect_context::<StoreController>();
    let value = move || ui.budget().map(|bytes| format!("{:.2}", bytes as f64 / 1e9)).unwrap_or_default();
    let note = move || {
        match (ui.gpu_memory.get(), ui.limits.get()) {
        (Some(_), _) => "Your setting: each load and edit is planned to fit it, parts of the model loaded only for the steps that use them.".to_string(),
        (None, Some(Ok(limits))) => format!(
            "A first guess: WebGPU does not tell a page how much memory the GPU has, so this is twice the largest buffer the adapter allows ({}). Set your GPU's memory, less what other programs use.",
            human_bytes(limits.max_buffer_size)
        ),
        _ => "Set your GPU's memory, less what other programs use.".to_string(),
    }
    };
    let change = move |ev: leptos::ev::Event| {
        let text = event_target_value(&ev);
        match text.trim().parse::<f64>() {
            Ok(gb) if gb.is_finite() && gb > 0.0 => ui.set_gpu_memory(Some((gb * 1e9) as u64)),
            _ if text.trim().is_empty() => ui.set_gpu_memory(None),
            _ => ui.notice.set(Some(Notice::Error(format!("GPU memory: `{text}` is not a number of GB")))),
        }
    };
    view! {
        <p class="gpu-memory">
            <label for="gpu-memory">"GPU memory (GB) "</label>
            <input id="gpu-memory" type="number" min="0.01" step="0.01" prop:value=value on:change=change
                aria-describedby="gpu-memory-note" />
        </p>
        <p id="gpu-memory-note" class="muted">{note}</p>
    }
}

/// One stored model.
#[component]
fn ModelRow(
    /// Its manifest.
    model: Manifest,
) -> impl IntoView {
    let ui = expect_context::<StoreController>();
    let state = expect_context::<AppState>();
    let id = model.id.clone();
    let complete = model.is_complete();
    let label = model.label.clone();
    let status = match model.state() {
        FileState::Complete => format!("complete · {}", human_bytes(model.total_bytes())),
        _ => format!(
            "partial · {} of {} stored ({:.0}%)",
            human_bytes(model.stored_bytes()),
            human_bytes(model.total_bytes()),
            100.0 * model.stored_bytes() as f64 / model.total_bytes().max(1) as f64
        ),
    };
    let running = {
        let id = id.clone();
        move || ui.transfer.with(|t| t.as_ref().is_some_and(|t| t.id == id))
    };
    let any_running = move || ui.transfer.with(Option::is_some);
    let note = {
        let id = id.clone();
        move || ui.row_notes.with(|n| n.get(&id).cloned())
    };
    let (load_id, resume_id, verify_id, delete_id) = (id.clone(), id.clone(), id.clone(), id.clone());
    let load_hint = (!complete).then_some("Only a complete model can be loaded: resume its download first.");
    view! {
        <li class="stored-model" data-id=id.clone() data-state=state_name(&model)
            data-stored=model.stored_bytes().to_string() data-total=model.total_bytes().to_string()>
            <strong class="model-label">{label.clone()}</strong>
            <span class="model-status">{format!(" {status}")}</span>
            <div class="row" role="group" aria-label=format!("actions for {label}")>
                <button type="button" class="model-load" aria-label=format!("Load {label}") title=load_hint
                    disabled=move || !complete || any_running() || matches!(state.model.get(), crate::app::ModelState::Loading { .. })
                    on:click=move |_| ui.load(state, load_id.clone())>"Load"</button>
                {(!complete).then(|| {
                    let running = running.clone();
                    view! {
                        <button type="button" class="model-resume" aria-label=format!("Resume {label}")
                            disabled=move || any_running() && !running()
                            on:click=move |_| ui.resume(resume_id.clone())>"Resume"</button>
                    }
                })}
                <button type="button" class="model-verify" aria-label=format!("Verify {label}") disabled=any_running
                    on:click=move |_| ui.verify(verify_id.clone())>"Verify"</button>
                <button type="button" class="model-delete" aria-label=format!("Delete {label}")
                    on:click=move |_| ui.delete(delete_id.clone())>"Delete"</button>
            </div>
            {move || note().map(|n| match n {
                Notice::Info(text) => view! { <p class="model-note status ok" role="status">{text}</p> }.into_any(),
                Notice::Error(text) => view! { <p class="model-note status bad" role="alert">{text}</p> }.into_any(),
            })}
        </li>
    }
}

/// The memory check of the model chosen for loading.
#[component]
fn FitView() -> impl IntoView {
    let ui = expect_context::<StoreController>();
    move || {
        ui.fit.get().map(|fit| match fit {
            Fit::Checking(_) => view! { <div id="model-fit" data-verdict="checking"><p>"Estimating memory…"</p></div> }.into_any(),
            Fit::Failed(why) => view! {
                <div id="model-fit" data-verdict="failed" role="alert"><p class="status bad">{format!("No estimate: {why}")}</p></div>
            }
            .into_any(),
            Fit::Done { lines, warnings, refusal, .. } => {
                let verdict = if refusal.is_some() { "refused" } else { "fits" };
                view! {
                    <div id="model-fit" data-verdict=verdict aria-live="polite">
                        <h4>"Memory estimate"</h4>
                        <ul>{lines.into_iter().map(|l| view! { <li>{l}</li> }).collect_view()}</ul>
                        {warnings.into_iter().map(|w| view! { <p class="status warn">{w}</p> }).collect_view()}
                        {match refusal {
                            Some(why) => view! { <p id="fit-refusal" class="status bad" role="alert">{format!("Not loaded: {why}.")}</p> }.into_any(),
                            None => view! { <p class="status ok">"It fits this adapter's limits."</p> }.into_any(),
                        }}
                    </div>
                }
                .into_any()
            }
        })
    }
}
