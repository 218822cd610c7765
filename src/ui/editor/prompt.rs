//! The instruction; the Draft/Quality presets, and the Turbo presets with the offer to fetch their LoRA.

use leptos::prelude::*;

use crate::app::AppState;
use crate::app::edit::{EditForm, PRESETS};
use crate::app::turbo::{self, TurboForm};
use crate::store::catalog::TURBO_LORAS;
use crate::store::manifest::human_bytes;

/// The instruction's text area.
#[component]
pub fn PromptField(
    /// The instruction, as typed.
    prompt: RwSignal<String>,
) -> impl IntoView {
    view! {
        <div class="field">
            <label for="prompt">"Instruction"</label>
            <textarea id="prompt" rows="2" placeholder="Describe the change, not the subject: “make the sky stormy”"
                prop:value=move || prompt.get() on:input=move |ev| prompt.set(event_target_value(&ev))></textarea>
        </div>
    }
}

/// A button per preset (pressed when the settings match it), and "custom settings" when none does; under them,
/// a Turbo preset's offer to fetch its LoRA.
#[component]
pub fn Presets(
    /// The editor's inputs, whose steps, size and guidance the presets set.
    form: EditForm,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    let turbo = TurboForm::new();
    let active_preset = move || turbo::active(state, form).map_or_else(|| form.active_preset(), |lora| lora.label);
    view! {
        <div class="row" role="group" aria-labelledby="preset-label" id="presets" data-preset=active_preset>
            <span id="preset-label" class="muted">"Preset"</span>
            {PRESETS.iter().map(|preset| {
                let preset = *preset;
                view! {
                    <button type="button" id=format!("preset-{}", preset.name.to_lowercase())
                        aria-pressed=move || (active_preset() == preset.name).to_string()
                        title=format!("{} steps, {}² pixels, no turbo LoRA", preset.steps, preset.side)
                        on:click=move |_| { form.apply_preset(preset); turbo::disable_all(state, turbo.error); }>
                        {format!("{} · {} steps · {}²", preset.name, preset.steps, preset.side)}
                    </button>
                }
            }).collect_view()}
            {TURBO_LORAS.iter().map(|lora| view! {
                <button type="button" id=format!("preset-{}", lora.id)
                    aria-pressed=move || (active_preset() == lora.label).to_string()
                    title=format!("{}: {} steps, LoRA strength {}, guidance {}, 1024² pixels", lora.name, lora.steps, lora.strength, lora.guidance)
                    on:click=move |_| turbo.choose(state, form, lora)>
                    {lora.label}
                </button>
            }).collect_view()}
            <span class="muted" aria-live="polite">{move || (active_preset() == "custom").then_some("custom settings")}</span>
        </div>
        <TurboOffer form turbo />
        {move || turbo.error.get().map(|message| view! { <p class="status bad" role="alert" id="turbo-error">{message}</p> })}
    }
}

/// The offer to fetch a Turbo preset's LoRA: what it is (size, licence, card), Fetch with measured progress and
/// Cancel.
#[component]
fn TurboOffer(
    /// The editor's inputs.
    form: EditForm,
    /// The Turbo presets' state.
    turbo: TurboForm,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    move || {
        turbo.offer.get().map(|lora| {
            view! {
                <div class="field turbo-offer" id="turbo-offer" role="region" aria-label="turbo LoRA to fetch">
                    <p>
                        {format!("{} needs {} ({}), not in this browser yet. Licence: {}. ", lora.label, lora.name,
                            human_bytes(lora.size), lora.licence)}
                        <a href=lora.card target="_blank" rel="noopener">"Model card"</a>
                    </p>
                    {move || match turbo.fetched.get() {
                        Some(done) => view! {
                            <div class="row">
                                <progress max=lora.size value=done aria-label="turbo LoRA download progress"></progress>
                                <span id="turbo-progress" class="muted">
                                    {format!("{} of {}", human_bytes(done), human_bytes(lora.size))}
                                </span>
                                <button type="button" id="turbo-cancel" on:click=move |_| turbo.cancel()>"Cancel"</button>
                            </div>
                        }.into_any(),
                        None => view! {
                            <div class="row">
                                <button type="button" id="turbo-fetch" class="primary" on:click=move |_| turbo.fetch(state, form)>
                                    "Fetch and keep it in this browser"
                                </button>
                                <button type="button" id="turbo-dismiss" on:click=move |_| turbo.dismiss()>"Not now"</button>
                            </div>
                        }.into_any(),
                    }}
                    <p class="muted hint">
                        "Or add the file in the LoRA panel: a file of exactly this size, or of this name, is taken for it."
                    </p>
                </div>
            }
        })
    }
}
