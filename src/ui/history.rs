//! The history panel: stored results, newest first, with re-run, download and delete (the entries are kept by
//! [`crate::app::history`]).

use leptos::prelude::*;
use leptos::task::spawn_local;

use super::object_url;
use crate::Result;
use crate::app::history::{self, HistoryEntry, MAX_ENTRIES, Rerun, delete, entries, png, references};

/// An entry as shown: its data and object URLs of its images.
#[derive(Debug, Clone, PartialEq)]
struct Shown {
    entry: HistoryEntry,
    result_url: String,
    reference_urls: Vec<(String, String)>,
    mask_url: Option<String>,
}

async fn shown() -> Result<Vec<Shown>> {
    let mut out = Vec::new();
    for entry in entries().await? {
        let Ok(png) = png(entry.id).await else { continue };
        let references = references(&entry).await.unwrap_or_default();
        let reference_urls = references
            .iter()
            .filter_map(|(name, bytes)| Some((name.clone(), object_url(bytes, "image/*").ok()?)))
            .collect();
        let mask_url =
            history::mask(&entry).await.ok().flatten().and_then(|bytes| object_url(&bytes, "image/png").ok());
        out.push(Shown { result_url: object_url(&png, "image/png")?, reference_urls, mask_url, entry });
    }
    Ok(out)
}

/// The stored results, newest first, with re-run, download and delete.
///
/// - `revision`: bumped by the editor after it stores a result, to refresh the list.
/// - `on_rerun`: called with an entry and its reference files when the user asks to run it again.
#[component]
pub fn History(revision: RwSignal<u32>, on_rerun: Callback<Rerun>) -> impl IntoView {
    let list = RwSignal::new(Vec::<Shown>::new());
    let error = RwSignal::new(None::<String>);
    Effect::new(move |_| {
        revision.track();
        spawn_local(async move {
            match shown().await {
                Ok(items) => {
                    for old in list.get_untracked() {
                        let _ = web_sys::Url::revoke_object_url(&old.result_url);
                        old.mask_url.iter().for_each(|url| drop(web_sys::Url::revoke_object_url(url)));
                        old.reference_urls.iter().for_each(|(_, url)| drop(web_sys::Url::revoke_object_url(url)));
                    }
                    list.set(items);
                }
                Err(e) => error.set(Some(format!("the history could not be read: {e}"))),
            }
        });
    });
    let remove = move |id: u64| {
        spawn_local(async move {
            match delete(id).await {
                Ok(()) => revision.update(|r| *r += 1),
                Err(e) => error.set(Some(format!("could not delete: {e}"))),
            }
        });
    };
    let rerun = move |entry: HistoryEntry| {
        spawn_local(async move {
            match history::rerun(entry).await {
                Ok(rerun) => on_rerun.run(rerun),
                Err(e) => error.set(Some(e.to_string())),
            }
        });
    };
    view! {
        <section class="card" id="history" aria-labelledby="history-title">
            <h2 id="history-title">"History"</h2>
            <p class="muted">{format!("Your last {MAX_ENTRIES} results, kept in this browser only.")}</p>
            {move || error.get().map(|message| view! { <p class="status bad" role="alert">{message}</p> })}
            {move || list.with(Vec::is_empty).then(|| view! { <p class="muted" id="history-empty">"No results yet."</p> })}
            <ol class="history" aria-label="results">
                <For each=move || list.get() key=|item| item.entry.id let:item>
                    {
                        let entry = item.entry.clone();
                        let id = entry.id;
                        let rerun_entry = entry.clone();
                        let loras = entry.loras.iter().map(|(n, w)| format!("{n} × {w}")).collect::<Vec<_>>().join(", ");
                        view! {
                            <li data-id=id.to_string()>
                                <img class="history-result" src=item.result_url.clone()
                                    alt=format!("result of “{}”", entry.prompt) />
                                <div class="history-recipe">
                                    <p class="history-prompt">{entry.prompt.clone()}</p>
                                    <p class="muted">
                                        {format!(
                                            "{}×{} · {} steps · guidance {} · seed {} · {:.1} s",
                                            entry.width, entry.height, entry.steps, entry.guidance, entry.seed, entry.seconds
                                        )}
                                    </p>
                                    {(!loras.is_empty()).then(|| view! { <p class="muted">{format!("LoRA: {loras}")}</p> })}
                                    {entry.mask.as_ref().map(|mask| view! {
                                        <p class="muted history-mask-recipe">{format!(
                                            "masked · strength {}{}{}",
                                            mask.strength,
                                            mask.crop_padding.map(|p| format!(" · crop padding {p} px")).unwrap_or_default(),
                                            mask.reference.map(|i| format!(" · conditioned on reference {}", i + 1)).unwrap_or_default()
                                        )}</p>
                                    })}
                                    <p class="muted">{entry.model.clone()}</p>
                                    <ul class="history-references" aria-label="references">
                                        {item.reference_urls.iter().map(|(name, url)| view! {
                                            <li><img src=url.clone() alt=name.clone() /></li>
                                        }).collect_view()}
                                        {item.mask_url.clone().map(|url| view! {
                                            <li class="history-mask"><img src=url alt="the mask" /></li>
                                        })}
                                    </ul>
                                </div>
                                <div class="row" role="group" aria-label="actions">
                                    <button type="button" class="history-rerun" on:click=move |_| rerun(rerun_entry.clone())
                                        aria-label=format!("re-run “{}” with seed {}", entry.prompt, entry.seed)>"Re-run"</button>
                                    <a href=item.result_url.clone() download=format!("kontext-{}.png", entry.seed)>"Download"</a>
                                    <button type="button" class="history-delete" on:click=move |_| remove(id)
                                        aria-label=format!("delete “{}”", entry.prompt)>"Delete"</button>
                                </div>
                            </li>
                        }
                    }
                </For>
            </ol>
        </section>
    }
}
