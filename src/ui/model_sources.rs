//! Where a model comes from: the catalog of the real model's files, custom URLs, local files (picked, a
//! folder, or dropped on the panel) and the built-in demo pack. Each form builds a manifest and hands it to
//! [`StoreController::add`].

use std::cell::RefCell;

use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::app::models::{Notice, StoreController, add_demo};
use crate::pipeline::plan::DeviceLimits;
use crate::store::catalog::{self, CATALOG};
use crate::store::footprint::{FileFacts, Footprint};
use crate::store::js;
use crate::store::manifest::{DEFAULT_CHUNK_SIZE, Role, human_bytes};
use crate::store::sources::{self, ROLES, UrlSource, role_label};
use crate::store::{download, idb};

thread_local! {
    /// The files of the current local pick, in pick order.
    static PICKED: RefCell<Vec<web_sys::File>> = const { RefCell::new(Vec::new()) };
}

/// One picked local file.
#[derive(Debug, Clone, PartialEq)]
pub struct Picked {
    /// Index in [`PICKED`].
    pub index: usize,
    /// File name, or its path inside a picked folder.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// The part it provides (single files), `None` until chosen, or for a folder's files.
    pub role: Option<Role>,
}

/// The current local pick, shared by the form and the panel's drop zone.
#[derive(Debug, Clone, Copy)]
pub struct LocalPick {
    /// Picked files.
    pub files: RwSignal<Vec<Picked>>,
    /// The folder's name when a folder was picked (files then carry their diffusers paths).
    pub folder: RwSignal<Option<String>>,
}

impl LocalPick {
    /// Nothing picked.
    pub fn new() -> Self {
        Self { files: RwSignal::new(Vec::new()), folder: RwSignal::new(None) }
    }

    /// Replaces the pick with `files`, given with their relative paths (a folder when any path has a `/`).
    pub fn set(self, files: Vec<(String, web_sys::File)>) -> Result<(), String> {
        let is_folder = files.iter().any(|(path, _)| path.contains('/'));
        let (picked, folder) = if is_folder {
            let paths: Vec<String> = files.iter().map(|(p, _)| p.clone()).collect();
            let kept = sources::folder_files(&paths).map_err(|e| e.to_string())?;
            let folder = paths.first().and_then(|p| p.split('/').next()).unwrap_or("folder").to_string();
            let picked = kept
                .into_iter()
                .enumerate()
                .map(|(i, (from, path))| {
                    (
                        Picked { index: i, name: path, size: files[from].1.size() as u64, role: None },
                        files[from].1.clone(),
                    )
                })
                .collect::<Vec<_>>();
            (picked, Some(folder))
        } else {
            let picked = files
                .into_iter()
                .enumerate()
                .map(|(i, (name, file))| {
                    (Picked { index: i, role: sources::guess_role(&name), name, size: file.size() as u64 }, file)
                })
                .collect();
            (picked, None)
        };
        PICKED.with(|p| *p.borrow_mut() = picked.iter().map(|(_, f)| f.clone()).collect());
        self.files.set(picked.into_iter().map(|(p, _)| p).collect());
        self.folder.set(folder);
        Ok(())
    }
}

/// The catalog: one DiT quantization and one T5, plus CLIP, the VAE and the CLIP tokenizer.
#[component]
pub fn CatalogSource() -> impl IntoView {
    let ui = expect_context::<StoreController>();
    let first = |role| catalog::choices(role).next().map(|f| f.id.to_string()).unwrap_or_default();
    let dit = RwSignal::new(first(Role::Transformer));
    let t5 = RwSignal::new(first(Role::T5));
    let manifest = move || {
        let (dit, t5) = (dit.get(), t5.get());
        catalog::manifest(&format!("catalog-{dit}-{t5}"), &dit, &t5)
    };
    let total = move || manifest().map(|m| human_bytes(m.total_bytes())).unwrap_or_default();
    let licences = move || {
        let Ok(m) = manifest() else { return Vec::new() };
        let rows: Vec<&catalog::CatalogFile> =
            m.files.iter().filter_map(|f| CATALOG.iter().find(|c| c.path == f.path)).collect();
        let mut licences: Vec<(&str, Vec<&str>)> = Vec::new();
        for row in rows {
            match licences.iter_mut().find(|(l, _)| *l == row.licence) {
                Some((_, labels)) => labels.push(row.label),
                None => licences.push((row.licence, vec![row.label])),
            }
        }
        licences.into_iter().map(|(licence, labels)| format!("{}: {licence}", labels.join(", "))).collect()
    };
    let fit = move || {
        let m = manifest().ok()?;
        let limits = DeviceLimits { budget: ui.budget(), ..ui.limits.get()?.ok()? };
        let facts: Vec<FileFacts> = m
            .files
            .iter()
            .map(|f| FileFacts { path: f.path.clone(), role: f.role, size: f.size, tensors: None })
            .collect();
        let verdict = Footprint::new(&facts, None, None).ok()?.assess(limits);
        Some(match (verdict.refusal, verdict.plan) {
            (Some(why), _) => {
                format!("This choice cannot be loaded on this device yet: {why}. You can still store it for later.")
            }
            (None, Some(plan)) => format!(
                "Within {} of GPU memory, a 1024×1024 edit peaks at an estimated {} ({}).",
                human_bytes(limits.budget.unwrap_or(plan.peak_bytes)),
                human_bytes(plan.peak_bytes),
                plan.residency.describe()
            ),
            (None, None) => return None,
        })
    };
    let options = |role| {
        catalog::choices(role)
            .map(|f| view! { <option value=f.id>{format!("{} · {}", f.label, human_bytes(f.size))}</option> })
            .collect_view()
    };
    let store = move |_| match manifest() {
        Ok(m) => ui.add(m, None),
        Err(e) => ui.notice.set(Some(Notice::Error(e.to_string()))),
    };
    view! {
        <div class="grid">
            <div class="field">
                <label for="catalog-dit">"DiT quantization"</label>
                <select id="catalog-dit" on:change=move |ev| dit.set(event_target_value(&ev))>{options(Role::Transformer)}</select>
            </div>
            <div class="field">
                <label for="catalog-t5">"T5 text encoder"</label>
                <select id="catalog-t5" on:change=move |ev| t5.set(event_target_value(&ev))>{options(Role::T5)}</select>
            </div>
        </div>
        <p id="catalog-total">"Download in all (with CLIP-L, the autoencoder and the CLIP tokenizer): about " {total} "."</p>
        <div id="catalog-licence" class="muted">
            <p>"The weights are not part of this app: they are fetched from Hugging Face under their own licences. FLUX.1 [dev] is for non-commercial use; public use needs content filters."</p>
            <ul>{move || licences().into_iter().map(|l| view! { <li>{l}</li> }).collect_view()}</ul>
        </div>
        <p id="catalog-fit" class="muted" aria-live="polite">{fit}</p>
        <button type="button" id="catalog-store" class="primary" on:click=store>"Download to this browser"</button>
    }
}

/// Chunk sizes offered for custom URLs (smaller chunks lose less on a cut; 32 MB suits real models).
const CHUNK_CHOICES: [(u64, &str); 5] = [
    (DEFAULT_CHUNK_SIZE, "32 MiB (default)"),
    (64 << 20, "64 MiB"),
    (4 << 20, "4 MiB"),
    (1 << 20, "1 MiB"),
    (256 << 10, "256 KiB"),
];

/// A diffusers-layout folder URL and/or one URL per part.
#[component]
pub fn UrlSourceForm() -> impl IntoView {
    let ui = expect_context::<StoreController>();
    let fields: [(RwSignal<String>, &str, &str); 7] = [
        (
            RwSignal::new(String::new()),
            "url-base",
            "Model folder URL (diffusers layout: model_index.json, transformer/, vae/ …)",
        ),
        (RwSignal::new(String::new()), "url-transformer", "DiT file (GGUF or safetensors)"),
        (RwSignal::new(String::new()), "url-t5", "T5 encoder file"),
        (RwSignal::new(String::new()), "url-clip", "CLIP-L file"),
        (RwSignal::new(String::new()), "url-vae", "Autoencoder file"),
        (RwSignal::new(String::new()), "url-vocab", "CLIP tokenizer vocab.json"),
        (RwSignal::new(String::new()), "url-merges", "CLIP tokenizer merges.txt"),
    ];
    let chunk = RwSignal::new(DEFAULT_CHUNK_SIZE);
    let field = move |i: usize| {
        let (value, id, label) = fields[i];
        view! {
            <div class="field">
                <label for=id>{label}</label>
                <input id=id type="url" placeholder="https://" prop:value=move || value.get() on:input=move |ev| value.set(event_target_value(&ev)) />
            </div>
        }
    };
    let store = move |_| {
        let value = |i: usize| Some(fields[i].0.get_untracked());
        let source = UrlSource {
            base: value(0),
            transformer: value(1),
            t5: value(2),
            clip: value(3),
            vae: value(4),
            vocab: value(5),
            merges: value(6),
        }
        .normalized();
        let planned = match source.plan() {
            Ok(p) => p,
            Err(e) => return ui.notice.set(Some(Notice::Error(e.to_string()))),
        };
        ui.notice.set(Some(Notice::Info(format!("Asking the server for the sizes of {} files…", planned.len()))));
        let chunk_size = chunk.get_untracked();
        spawn_local(async move {
            let sized = match download::probe_files(planned).await {
                Ok(sized) => sized,
                Err(e) => return ui.notice.set(Some(Notice::Error(e.to_string()))),
            };
            // The quota first: a source too large is refused by its size, whatever its chunking.
            let total = sized.iter().map(|(_, remote)| remote.size).sum::<u64>();
            if let Err(e) = idb::estimate().await.and_then(|estimate| estimate.check_fits(total)) {
                return ui.notice.set(Some(Notice::Error(e.to_string())));
            }
            let id = source.stable_id();
            match sources::url_manifest(&id, &source.label(), source.base.clone(), &sized, chunk_size) {
                Ok(manifest) => ui.add(manifest, None),
                Err(e) => ui.notice.set(Some(Notice::Error(e.to_string()))),
            }
        });
    };
    view! {
        {field(0)}
        <details>
            <summary>"One URL per part (replaces that part of the folder, or all parts without a folder)"</summary>
            <div class="grid">{(1..7).map(field).collect_view()}</div>
        </details>
        <div class="field">
            <label for="url-chunk">"Chunk size"</label>
            <select id="url-chunk" on:change=move |ev| chunk.set(event_target_value(&ev).parse().unwrap_or(DEFAULT_CHUNK_SIZE))>
                {CHUNK_CHOICES.iter().map(|(bytes, label)| view! { <option value=bytes.to_string()>{*label}</option> }).collect_view()}
            </select>
        </div>
        <p class="muted">"The server must allow this page to fetch the files (CORS) and answer Range requests to resume."</p>
        <button type="button" id="url-store" class="primary" on:click=store>"Download to this browser"</button>
    }
}

fn files_of(input: &web_sys::HtmlInputElement) -> Vec<web_sys::File> {
    input.files().map(|list| (0..list.length()).filter_map(|i| list.get(i)).collect()).unwrap_or_default()
}

/// Local files: single files (each assigned a part) or a diffusers folder; also what was dropped on the panel.
#[component]
pub fn LocalSource() -> impl IntoView {
    let ui = expect_context::<StoreController>();
    let pick = expect_context::<LocalPick>();
    let set = move |files: Vec<(String, web_sys::File)>| {
        if let Err(e) = pick.set(files) {
            ui.notice.set(Some(Notice::Error(e)));
        }
    };
    let on_files = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = event_target(&ev);
        set(files_of(&input).into_iter().map(|f| (f.name(), f)).collect());
        input.set_value("");
    };
    let on_folder = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = event_target(&ev);
        set(files_of(&input).into_iter().map(|f| (js::get_string(&f, "webkitRelativePath"), f)).collect());
        input.set_value("");
    };
    let store = move |_| {
        let picked = pick.files.get_untracked();
        if picked.is_empty() {
            return ui.notice.set(Some(Notice::Error("pick model files or a model folder first".into())));
        }
        let folder = pick.folder.get_untracked();
        let mut files = Vec::new();
        for p in &picked {
            let entry = match (&folder, p.role) {
                (Some(_), _) => Ok((p.name.clone(), None, p.size)),
                (None, Some(role)) => sources::part_path(role, &p.name).map(|path| (path, Some(role), p.size)),
                (None, None) => return ui.notice.set(Some(Notice::Error(format!("choose which part {} is", p.name)))),
            };
            match entry {
                Ok(entry) => files.push(entry),
                Err(e) => return ui.notice.set(Some(Notice::Error(e.to_string()))),
            }
        }
        let label = folder.clone().unwrap_or_else(|| {
            picked
                .iter()
                .find(|p| p.role == Some(Role::Transformer))
                .map_or_else(|| "local model".into(), |p| p.name.clone())
        });
        let id = sources::model_id(&label, js_sys::Date::now() as u64);
        match sources::local_manifest(&id, &label, &files, DEFAULT_CHUNK_SIZE) {
            Ok(manifest) => {
                let blobs = PICKED.with(|all| {
                    let all = all.borrow();
                    picked
                        .iter()
                        .zip(&files)
                        .map(|(p, (path, _, _))| (path.clone(), all[p.index].clone().into()))
                        .collect()
                });
                ui.add(manifest, Some(blobs));
            }
            Err(e) => ui.notice.set(Some(Notice::Error(e.to_string()))),
        }
    };
    view! {
        <div class="grid">
            <div class="field">
                <label for="local-files">"Model files (GGUF, safetensors, tokenizer files)"</label>
                <input id="local-files" type="file" multiple accept=".gguf,.safetensors,.json,.txt" on:change=on_files />
            </div>
            <div class="field">
                <label for="local-folder">"A model folder in the diffusers layout"</label>
                <input id="local-folder" type="file" prop:webkitdirectory=true on:change=on_folder />
            </div>
        </div>
        <p class="muted">"Or drop files or a folder anywhere on this panel. They are copied into this browser's storage, so they work offline afterwards."</p>
        {move || pick.folder.get().map(|name| view! { <p id="local-folder-name">{format!("Folder {name}: {} files", pick.files.with(Vec::len))}</p> })}
        <ul id="local-picked" aria-label="picked files">
            <For each=move || pick.files.get() key=|p| (p.index, p.name.clone(), p.role) let:file>
                <PickedRow file=file />
            </For>
        </ul>
        <button type="button" id="local-store" class="primary" on:click=store disabled=move || pick.files.with(Vec::is_empty)>
            "Copy into this browser"
        </button>
    }
}

/// One picked file, with its part when it is a single file.
#[component]
fn PickedRow(
    /// The file.
    file: Picked,
) -> impl IntoView {
    let pick = expect_context::<LocalPick>();
    let index = file.index;
    let choose = move |ev: leptos::ev::Event| {
        let value = event_target_value(&ev);
        let role = ROLES.iter().copied().find(|r| format!("{r:?}") == value);
        pick.files.update(|files| {
            if let Some(f) = files.iter_mut().find(|f| f.index == index) {
                f.role = role;
            }
        });
    };
    let single = pick.folder.get_untracked().is_none();
    let select_id = format!("local-role-{index}");
    view! {
        <li>
            <span>{format!("{} · {}", file.name, human_bytes(file.size))}</span>
            {single.then(|| view! {
                <label for=select_id.clone()>{format!(" — part of {}: ", file.name)}</label>
                <select id=select_id.clone() on:change=choose>
                    <option value="" selected=file.role.is_none()>"choose its part…"</option>
                    {ROLES.iter().map(|r| view! {
                        <option value=format!("{r:?}") selected=file.role == Some(*r)>{role_label(*r)}</option>
                    }).collect_view()}
                </select>
            })}
        </li>
    }
}

/// The demo pack served with the app.
#[component]
pub fn DemoSource() -> impl IntoView {
    let ui = expect_context::<StoreController>();
    view! {
        <p class="muted">"The demo pack is a 5 MB FLUX.1 Kontext with tiny random weights, served with this app. Storing it "
            "exercises the whole store (chunks, hashes, loading from IndexedDB); its pictures are abstract noise."</p>
        <button type="button" id="demo-store" class="primary" on:click=move |_| add_demo(ui)>"Store the demo pack in this browser"</button>
    }
}

/// Calls `method(success, failure)` on `target` and awaits the callback.
async fn callback_promise(target: &JsValue, method: &str) -> Result<JsValue, String> {
    let function: js_sys::Function =
        js::get(target, method).and_then(|f| f.dyn_into().ok()).ok_or_else(|| format!("{method} is not available"))?;
    let target = target.clone();
    let promise = js_sys::Promise::new(&mut |resolve, reject| {
        let _ = function.call2(&target, &resolve, &reject);
    });
    JsFuture::from(promise).await.map_err(js::describe)
}

/// The file-system entries of a drop, taken while the event is being handled (they are gone afterwards).
pub fn dropped_entries(data_transfer: &JsValue) -> Vec<JsValue> {
    let Some(items) = js::get(data_transfer, "items") else { return Vec::new() };
    let count = js::get_f64(&items, "length").unwrap_or(0.0) as u32;
    (0..count)
        .filter_map(|i| js_sys::Reflect::get_u32(&items, i).ok())
        .filter(|item| js::get_string(item, "kind") == "file")
        .filter_map(|item| {
            let get: js_sys::Function = js::get(&item, "webkitGetAsEntry")?.dyn_into().ok()?;
            get.call0(&item).ok().filter(|e| !e.is_null() && !e.is_undefined())
        })
        .collect()
}

/// Every file under the dropped entries, with its path relative to the drop.
pub async fn dropped_files(entries: Vec<JsValue>) -> Result<Vec<(String, web_sys::File)>, String> {
    let mut stack = entries;
    let mut files = Vec::new();
    while let Some(entry) = stack.pop() {
        if js::get(&entry, "isDirectory").and_then(|v| v.as_bool()).unwrap_or(false) {
            let reader_fn: js_sys::Function = js::get(&entry, "createReader")
                .and_then(|f| f.dyn_into().ok())
                .ok_or("folders cannot be read in this browser")?;
            let reader = reader_fn.call0(&entry).map_err(js::describe)?;
            loop {
                let batch: js_sys::Array = callback_promise(&reader, "readEntries").await?.unchecked_into();
                if batch.length() == 0 {
                    break;
                }
                stack.extend(batch.iter());
            }
        } else {
            let file: web_sys::File = callback_promise(&entry, "file").await?.unchecked_into();
            let path = js::get_string(&entry, "fullPath").trim_start_matches('/').to_string();
            files.push((if path.is_empty() { file.name() } else { path }, file));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}
