//! The mask editor over the first reference: brush and eraser with a size, undo, clear, invert, and the mask
//! shown over the image or hidden; painted with a mouse, a pen or a finger (pointer events); keyboard shortcuts;
//! the masked edit's strength and crop. The state is [`crate::app::masking::MaskForm`].

use leptos::prelude::*;
use wasm_bindgen::{Clamped, JsCast};

use crate::app::edit::{EditForm, Reference};
use crate::app::masking::{CROP_PADDINGS, MaskForm};
use crate::web::mask_painting::Region;

/// Colours (diagonal stripes: pink and cyan, so that one stands out on any image) and opacity of the painted
/// area over the image.
const OVERLAY: ([[u8; 3]; 2], u8) = ([[255, 48, 96], [0, 200, 255]], 150);
/// Brush radius limits, in pixels of the image.
const BRUSH_RANGE: (f32, f32) = (2.0, 256.0);

/// The shortcuts, as listed under the editor.
const SHORTCUTS: &str =
    "B brush · E eraser · [ ] smaller / larger · Ctrl+Z undo · I invert · M show or hide · Delete clear";

/// The switch that makes the next edit masked (the stage then shows the mask over the first reference).
#[component]
pub fn MaskToggle(
    /// The editor's inputs: the mask belongs to the first of its references.
    form: EditForm,
) -> impl IntoView {
    let mask = form.mask;
    let references = form.references;
    // The painting follows the first reference (a new one for another image); `size` is that image's.
    let size = RwSignal::new(None);
    Effect::new(move |_| size.set(references.with(|r| mask.follow(r.first().and_then(Reference::mask_owner)))));
    // A conditioning reference that was removed is the image itself again.
    Effect::new(move |_| {
        let count = references.with(Vec::len);
        if mask.reference.get_untracked().is_some_and(|i| i >= count) {
            mask.reference.set(None);
        }
    });
    view! {
        <div class="field" id="mask-editor">
            <label class="inline">
                <input type="checkbox" id="mask-toggle" prop:checked=move || mask.enabled.get()
                    disabled=move || size.get().is_none()
                    on:change=move |ev| form.set_masking(event_target_checked(&ev)) />
                " Masked edit: paint where the image may change"
            </label>
            {move || size.get().is_none().then(|| view! {
                <p class="muted hint">"Add the image to edit as the first reference to paint a mask."</p>
            })}
        </div>
    }
}

/// Whether the key went to a text field (shortcuts stay out of typing).
fn typing(ev: &web_sys::KeyboardEvent) -> bool {
    ev.target().and_then(|t| t.dyn_into::<web_sys::Element>().ok()).is_some_and(|e| {
        matches!(e.tag_name().as_str(), "TEXTAREA" | "SELECT")
            || (e.tag_name() == "INPUT" && {
                let kind = e.get_attribute("type").unwrap_or_default();
                !matches!(kind.as_str(), "checkbox" | "range" | "radio" | "button")
            })
    })
}

/// Applies the shortcut of `ev`, if it is one; whether it was.
fn shortcut(mask: MaskForm, ev: &web_sys::KeyboardEvent) -> bool {
    let resize = |factor: f32| mask.brush.update(|b| *b = (*b * factor).clamp(BRUSH_RANGE.0, BRUSH_RANGE.1).round());
    match (ev.key().as_str(), ev.ctrl_key() || ev.meta_key()) {
        ("z" | "Z", true) => mask.undo(),
        ("b" | "B", false) => mask.erasing.set(false),
        ("e" | "E", false) => mask.erasing.set(true),
        ("[", false) => resize(1.0 / 1.25),
        ("]", false) => resize(1.25),
        ("i" | "I", false) => mask.invert(),
        ("m" | "M", false) => mask.show.update(|s| *s = !*s),
        ("Delete" | "Backspace", false) => mask.clear(),
        _ => return false,
    }
    true
}

/// The image with the mask drawn over it on a canvas of the image's size, painted with pointer events.
#[component]
pub(super) fn MaskStage(
    /// The mask's state.
    mask: MaskForm,
    /// The image's width in pixels.
    width: u32,
    /// The image's height in pixels.
    height: u32,
    /// The image's object URL and name.
    image: Option<(String, String)>,
) -> impl IntoView {
    let canvas = NodeRef::<leptos::html::Canvas>::new();
    // The whole overlay once the canvas exists, then only the pixels each change touched (a 12-megapixel photo
    // would otherwise be copied in full on every pointer move).
    Effect::new(move |drawn: Option<bool>| {
        let Some(canvas) = canvas.get() else { return false };
        if let Some((region, rgba)) = mask.overlay_changes(drawn != Some(true), OVERLAY.0, OVERLAY.1) {
            draw(&canvas, &rgba, region);
        }
        true
    });
    let painting = RwSignal::new(false);
    let to_image = move |ev: &web_sys::PointerEvent| -> Option<(f32, f32)> {
        let canvas = canvas.get_untracked()?;
        let rect = canvas.get_bounding_client_rect();
        let x = (f64::from(ev.client_x()) - rect.left()) * f64::from(width) / rect.width();
        let y = (f64::from(ev.client_y()) - rect.top()) * f64::from(height) / rect.height();
        Some((x as f32, y as f32))
    };
    let down = move |ev: web_sys::PointerEvent| {
        if ev.button() != 0 {
            return;
        }
        ev.prevent_default();
        if let Some(canvas) = canvas.get_untracked() {
            let _ = canvas.set_pointer_capture(ev.pointer_id());
        }
        if let Some(point) = to_image(&ev) {
            painting.set(true);
            mask.begin_stroke(point);
        }
    };
    let moved = move |ev: web_sys::PointerEvent| {
        if painting.get_untracked()
            && let Some(point) = to_image(&ev)
        {
            mask.extend_stroke(point);
        }
    };
    let up = move |_| painting.set(false);
    let (url, name) = image.unwrap_or_default();
    view! {
        // Through the CSSOM (`style:`), which the app's Content-Security-Policy allows; style attributes it blocks.
        <div class="mask-stage" style:width=format!("min(100%, calc(60vh * {width} / {height}))")>
            <img src=url alt=format!("the image to edit, {name}") draggable="false" />
            <canvas node_ref=canvas id="mask-canvas" width=width height=height
                class:mask-hidden=move || !mask.show.get()
                aria-label="the mask: paint where the image may change"
                on:pointerdown=down on:pointermove=moved on:pointerup=up on:pointercancel=up></canvas>
        </div>
    }
}

/// Puts `rgba` (the pixels of `region`) on `canvas` at `region`.
fn draw(canvas: &web_sys::HtmlCanvasElement, rgba: &[u8], region: Region) {
    let context =
        canvas.get_context("2d").ok().flatten().and_then(|c| c.dyn_into::<web_sys::CanvasRenderingContext2d>().ok());
    let (width, height) = region.size();
    if let (Some(context), Ok(data)) =
        (context, web_sys::ImageData::new_with_u8_clamped_array_and_sh(Clamped(rgba), width, height))
    {
        let _ = context.put_image_data(&data, f64::from(region.x0), f64::from(region.y0));
    }
}

/// Downloads the painted mask as `kontext-mask.png`.
fn save(mask: MaskForm) {
    let Some(Ok(png)) = mask.png() else { return };
    let Ok(url) = crate::ui::object_url(&png, "image/png") else { return };
    let anchor: web_sys::HtmlAnchorElement =
        document().create_element("a").expect("a document makes anchors").unchecked_into();
    anchor.set_href(&url);
    anchor.set_download("kontext-mask.png");
    anchor.click();
    set_timeout(move || drop(web_sys::Url::revoke_object_url(&url)), std::time::Duration::from_secs(10));
}

/// Brush, eraser, size, undo, clear, invert, save, show, strength and crop, and the shortcuts (active while
/// the tools are shown).
#[component]
pub(super) fn MaskTools(
    /// The mask's state.
    mask: MaskForm,
    /// The editor's references: any after the first may condition the masked edit instead of the image.
    references: RwSignal<Vec<Reference>>,
) -> impl IntoView {
    let shortcuts = window_event_listener(leptos::ev::keydown, move |ev: web_sys::KeyboardEvent| {
        if !typing(&ev) && shortcut(mask, &ev) {
            ev.prevent_default();
        }
    });
    on_cleanup(move || shortcuts.remove());
    view! {
        <div class="row mask-tools" role="toolbar" aria-label="mask tools">
            <button type="button" id="mask-brush" aria-pressed=move || (!mask.erasing.get()).to_string()
                on:click=move |_| mask.erasing.set(false) title="B">"Brush"</button>
            <button type="button" id="mask-eraser" aria-pressed=move || mask.erasing.get().to_string()
                on:click=move |_| mask.erasing.set(true) title="E">"Eraser"</button>
            <label class="inline">"Size "
                <input type="range" id="mask-size" min=BRUSH_RANGE.0 max=BRUSH_RANGE.1 step="1"
                    prop:value=move || mask.brush.get().to_string()
                    on:input=move |ev| if let Ok(v) = event_target_value(&ev).parse() { mask.brush.set(v) } />
                <span class="muted">{move || format!(" {:.0} px", mask.brush.get() * 2.0)}</span>
            </label>
            <button type="button" id="mask-undo" on:click=move |_| mask.undo() disabled=move || !mask.can_undo()
                title="Ctrl+Z">"Undo"</button>
            <button type="button" id="mask-clear" on:click=move |_| mask.clear() title="Delete">"Clear"</button>
            <button type="button" id="mask-invert" on:click=move |_| mask.invert() title="I">"Invert"</button>
            <button type="button" id="mask-save" on:click=move |_| save(mask)
                title="The mask as a PNG, for kontext edit --mask or a later edit">"Save mask"</button>
            <label class="inline">
                <input type="checkbox" id="mask-show" prop:checked=move || mask.show.get()
                    on:change=move |ev| mask.show.set(event_target_checked(&ev)) />
                " Show mask"
            </label>
        </div>
        <div class="row mask-options">
            <label class="inline">"Strength "
                <input type="range" id="mask-strength" min="0.05" max="1" step="0.05"
                    prop:value=move || mask.strength.get().to_string()
                    on:input=move |ev| if let Ok(v) = event_target_value(&ev).parse() { mask.strength.set(v) } />
                <span class="muted">{move || format!(" {:.2}", mask.strength.get())}</span>
            </label>
            <label class="inline">"Edit "
                <select id="mask-crop" on:change=move |ev| {
                    let index: usize = event_target_value(&ev).parse().unwrap_or(0);
                    mask.crop.set(CROP_PADDINGS.get(index).copied().flatten());
                }>
                    {CROP_PADDINGS.iter().enumerate().map(|(i, padding)| view! {
                        <option value=i.to_string() selected=move || mask.crop.get() == *padding>
                            {match padding {
                                None => "the whole image".to_string(),
                                Some(p) => format!("a crop around the mask, {p} px margin"),
                            }}
                        </option>
                    }).collect_view()}
                </select>
            </label>
            <label class="inline" title="diffusers' image_reference: what the edit is conditioned on">"Conditioned on "
                <select id="mask-reference" on:change=move |ev| {
                    mask.reference.set(event_target_value(&ev).parse().ok().filter(|&i: &usize| i > 0));
                }>
                    <option value="0" selected=move || mask.reference.get().is_none()>"the image itself"</option>
                    {move || references.with(|r| r.iter().enumerate().skip(1).map(|(i, reference)| view! {
                        <option value=i.to_string() selected=move || mask.reference.get() == Some(i)>
                            {format!("reference {} · {}", i + 1, reference.name)}
                        </option>
                    }).collect_view())}
                </select>
            </label>
        </div>
        <p class="muted hint" id="mask-shortcuts">{format!("Shortcuts: {SHORTCUTS}. The result keeps the image's size.")}</p>
    }
}
