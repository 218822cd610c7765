//! The result canvas in the page: the element the worker draws previews and results on (see
//! [`crate::web::canvas`]), placed in whichever view shows it. It is made once per worker and moved between
//! views, never re-created: its drawing surface belongs to the worker.

use leptos::prelude::*;

use crate::app::AppState;

/// A slot the result canvas moves into while this view is shown.
#[component]
pub fn ResultCanvas(
    /// What the canvas shows, for assistive technology ("preview after step 3", "the generated image, …").
    label: Signal<String>,
    /// What it shows, as `data-showing`: `preview` or `result`.
    showing: &'static str,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    let slot = NodeRef::<leptos::html::Div>::new();
    Effect::new(move |_| {
        let (Some(slot), Some(canvas)) = (slot.get(), state.canvas.get()) else { return };
        canvas.set_id("result-canvas");
        let _ = canvas.set_attribute("role", "img");
        let _ = canvas.set_attribute("aria-label", &label.get());
        let _ = canvas.set_attribute("data-showing", showing);
        if canvas.parent_node().as_ref() != Some(slot.as_ref()) {
            slot.replace_children_with_node_1(&canvas);
        }
    });
    view! { <div class="canvas-slot" node_ref=slot></div> }
}
