//! The instruction and the Draft/Quality presets.

use leptos::prelude::*;

use crate::app::edit::{EditForm, PRESETS};

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

/// A button per preset (pressed when the steps and size match it), and "custom settings" when none does.
#[component]
pub fn Presets(
    /// The editor's inputs, whose steps and size the presets set.
    form: EditForm,
) -> impl IntoView {
    let active_preset = move || form.active_preset();
    view! {
        <div class="row" role="group" aria-labelledby="preset-label" id="presets" data-preset=active_preset>
            <span id="preset-label" class="muted">"Preset"</span>
            {PRESETS.iter().map(|preset| {
                let preset = *preset;
                view! {
                    <button type="button" id=format!("preset-{}", preset.name.to_lowercase())
                        aria-pressed=move || (active_preset() == preset.name).to_string()
                        title=format!("{} steps, {}² pixels", preset.steps, preset.side)
                        on:click=move |_| form.apply_preset(preset)>
                        {format!("{} · {} steps · {}²", preset.name, preset.steps, preset.side)}
                    </button>
                }
            }).collect_view()}
            <span class="muted" aria-live="polite">{move || (active_preset() == "custom").then_some("custom settings")}</span>
        </div>
    }
}
