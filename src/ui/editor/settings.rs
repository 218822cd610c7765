//! The settings grid: output shape (with the output size in pixels), custom width and height, size, steps,
//! the speed (step cache), guidance and seed.

use leptos::prelude::*;

use crate::app::AppState;
use crate::app::edit::{ASPECTS, CUSTOM, EditForm, SPEEDS, SpeedLevel, snap};

/// The settings grid: the shape fields, then steps, speed, guidance and seed.
#[component]
pub fn SettingsGrid(
    /// The editor's inputs, which the fields show and set.
    form: EditForm,
) -> impl IntoView {
    let EditForm { steps, speed, guidance, seed, .. } = form;
    let state = expect_context::<AppState>();
    // MagCache needs the loaded model's ratios: until a calibrating edit measured them, its level is off.
    let unavailable = move |level: SpeedLevel| level == SpeedLevel::MagCache && state.mag_ratios.with(Option::is_none);
    view! {
        <div class="grid">
            <ShapeFields form />
            <div class="field">
                <label for="steps">"Steps"</label>
                <input id="steps" type="number" min="1" max="100" prop:value=move || steps.get().to_string()
                    on:change=move |ev| steps.set(event_target_value(&ev).parse::<usize>().map(|v| v.clamp(1, 100)).unwrap_or(4)) />
            </div>
            <div class="field">
                <label for="speed">"Speed (reuses the DiT's work on steps that change little)"</label>
                <select id="speed" prop:value=move || speed.get().to_string()
                    on:change=move |ev| speed.set(event_target_value(&ev).parse().unwrap_or(0))>
                    {SPEEDS.iter().enumerate().map(|(i, level)| view! {
                        <option value=i.to_string() disabled=move || unavailable(level.level)>{level.label()}</option>
                    }).collect_view()}
                </select>
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
    }
}

/// The output shape with the output size in pixels, width and height for a custom shape, and the size (off
/// for a custom shape).
#[component]
fn ShapeFields(
    /// The editor's inputs, whose shape and size the fields show and set.
    form: EditForm,
) -> impl IntoView {
    let EditForm { aspect, area_side, custom_size, .. } = form;
    view! {
        <div class="field">
            <label for="aspect">"Output shape"</label>
            <select id="aspect" aria-describedby="output-size" prop:value=move || aspect.get().to_string()
                on:change=move |ev| aspect.set(event_target_value(&ev).parse().unwrap_or(0))>
                {ASPECTS.iter().enumerate().map(|(i, (name, _))| view! { <option value=i.to_string()>{*name}</option> }).collect_view()}
                <option value=CUSTOM.to_string()>"custom width × height"</option>
            </select>
            <output id="output-size" for="aspect area custom-width custom-height" aria-live="polite">{move || form.output_description()}</output>
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
    }
}
