//! The reference picker: a file input, a drop zone, pasting anywhere on the page, and the thumbnails in order
//! with move and remove buttons.

use leptos::prelude::*;
use wasm_bindgen::JsCast;

use crate::app::edit::{self, EditForm};

/// The references: file input, drop zone and page-wide paste, the last error, and the thumbnails.
#[component]
pub fn ReferencePicker(
    /// The editor's inputs; files picked, dropped or pasted are added to its references.
    form: EditForm,
) -> impl IntoView {
    let add_files = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = ev.target().unwrap().unchecked_into();
        let files = input.files().map(|list| edit::file_list(&list)).unwrap_or_default();
        input.set_value("");
        form.add(files);
    };
    let dragging = RwSignal::new(false);
    // Images pasted anywhere on the page (a screenshot, an image copied in another app) become references.
    let paste = window_event_listener(leptos::ev::paste, move |ev: web_sys::ClipboardEvent| {
        let files =
            ev.clipboard_data().and_then(|data| data.files()).map(|list| edit::file_list(&list)).unwrap_or_default();
        let images = edit::images(files);
        if !images.is_empty() {
            ev.prevent_default();
            form.add(images);
        }
    });
    on_cleanup(move || paste.remove());
    let reference_error = form.reference_error;

    view! {
        <div class="field drop-zone" id="reference-drop" class:dragging=move || dragging.get()
            on:dragover=move |ev: web_sys::DragEvent| { ev.prevent_default(); dragging.set(true); }
            on:dragleave=move |_| dragging.set(false)
            on:drop=move |ev: web_sys::DragEvent| { dragging.set(false); drop_files(form, &ev); }>
            <label for="reference-input">"Reference images (up to 4; none for text-to-image)"</label>
            <input id="reference-input" type="file" accept="image/png,image/jpeg,image/webp" multiple on:change=add_files />
            <p class="muted hint">"…or drop images here, or paste one. The first reference sets the output's shape."</p>
            {move || reference_error.get().map(|message| view! { <p class="status bad" role="alert">{message}</p> })}
            <Thumbnails form />
        </div>
    }
}

/// Adds the files of a drop to the references.
pub(super) fn drop_files(form: EditForm, ev: &web_sys::DragEvent) {
    ev.prevent_default();
    if let Some(files) = ev.data_transfer().and_then(|t| t.files()) {
        form.add(edit::file_list(&files));
    }
}

/// The references' thumbnails in order, each with buttons to move it earlier or later and to remove it.
#[component]
fn Thumbnails(
    /// The editor's inputs, whose references are shown and reordered.
    form: EditForm,
) -> impl IntoView {
    let references = form.references;
    view! {
        <ol class="thumbs" aria-label="reference images">
            <For each=move || references.get().into_iter().enumerate() key=|(i, r)| (*i, r.thumbnail.clone()) let:item>
                <li>
                    <img src=item.1.thumbnail.clone() alt=item.1.name.clone() />
                    <div class="thumb-actions">
                        <button type="button" class="small" aria-label=format!("move {} earlier", item.1.name)
                            disabled=item.0 == 0 on:click=move |_| form.move_reference(item.0, item.0.saturating_sub(1))>"◀"</button>
                        <button type="button" class="small" aria-label=format!("move {} later", item.1.name)
                            disabled=move || { item.0 + 1 >= references.with(Vec::len) }
                            on:click=move |_| form.move_reference(item.0, item.0 + 1)>"▶"</button>
                        <button type="button" class="small" aria-label=format!("remove {}", item.1.name)
                            on:click=move |_| form.remove_reference(item.0)>"✕"</button>
                    </div>
                </li>
            </For>
        </ol>
    }
}
