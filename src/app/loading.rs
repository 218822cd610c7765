//! Loads from URLs (`kontext:load`, the demo model): the files go into the model store first (chunked, resumable,
//! verified; a source already stored is used as it is, also offline), then the worker streams the stored model to
//! the GPU, as for the catalog. No weight file is ever held whole in WebAssembly memory.
//!
//! A load can be cancelled at any point: its download stops at the next piece of the stream (stored chunks stay,
//! so loading the same URLs again resumes), and a load already in the worker ends with the worker, which is
//! replaced by a fresh one (the GPU memory it held goes with it).

use std::cell::RefCell;

use leptos::prelude::*;

use super::{AppState, ModelState, restart_worker, send};
use crate::store::download::{self, CancelFlag, Outcome, Progress};
use crate::store::idb::Store;
use crate::store::manifest::is_changed_on_server;
use crate::store::sources::UrlSource;
use crate::web::locks;
use crate::web::protocol::ToWorker;

thread_local! {
    /// The stop switch of the download that is running, if one is.
    static DOWNLOADING: RefCell<Option<CancelFlag>> = const { RefCell::new(None) };
}

/// How the page's part of a load ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Every file is stored and the worker was asked to load model `id`: its answer comes as `Loaded` or an error
    /// with request `load_model`.
    Sent(String),
    /// Cancelled while downloading.
    Cancelled,
}

/// Stores `source` (only what is missing, in chunks of `chunk_size` bytes when new) with download progress in
/// bytes, then asks the worker to load it within `gpu_memory`. A load started while another downloads cancels the
/// earlier one.
pub async fn load_urls(
    state: AppState,
    source: UrlSource,
    gpu_memory: Option<u64>,
    chunk_size: u64,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Stored, String> {
    let cancel = CancelFlag::new();
    if let Some(earlier) = DOWNLOADING.with(|d| d.borrow_mut().replace(cancel.clone())) {
        earlier.cancel();
    }
    state.model.set(ModelState::Loading { phase: "downloading".into(), done: 0, total: 0 });
    let stored = async {
        let id = source.stable_id();
        let _lock = locks::model(&id, || {}).await?;
        let store = Store::open().await?;
        let stored = download::store_url_source(&store, &source, chunk_size, &cancel, &mut |p| {
            if !cancel.is_cancelled() {
                state.model.set(ModelState::Loading { phase: "downloading".into(), done: p.done, total: p.total });
                on_progress(p);
            }
        })
        .await;
        store.close();
        stored
    }
    .await;
    DOWNLOADING.with(|d| {
        let mut running = d.borrow_mut();
        if running.as_ref().is_some_and(|flag| flag.same(&cancel)) {
            *running = None;
        }
    });
    match stored {
        Ok(_) if cancel.is_cancelled() => Ok(Stored::Cancelled),
        Ok((_, Outcome::Cancelled)) => Ok(Stored::Cancelled),
        Ok((id, Outcome::Complete)) => {
            state.model.set(ModelState::Loading { phase: "loading".into(), done: 0, total: 1 });
            send(&ToWorker::LoadStored { id: id.clone(), gpu_memory }).map_err(|e| fail(state, e))?;
            Ok(Stored::Sent(id))
        }
        Err(e) if cancel.is_cancelled() => {
            web_sys::console::info_1(&format!("a cancelled download ended with: {e}").into());
            Ok(Stored::Cancelled)
        }
        Err(e) if is_changed_on_server(&e) => Err(fail(state, e.to_string())),
        Err(e) => Err(fail(state, format!("{e}. What was stored is kept: loading the same source again resumes."))),
    }
}

fn fail(state: AppState, message: String) -> String {
    state.model.set(ModelState::Failed(message.clone()));
    message
}

/// Cancels the load that is running: its download, else (when the worker is loading) the worker itself, which a
/// fresh one replaces. Answers whether there was a load to cancel.
pub fn cancel_load(state: AppState) -> bool {
    if cancel_download(state) {
        return true;
    }
    if !matches!(state.model.get_untracked(), ModelState::Loading { .. }) {
        return false;
    }
    cancel_worker_load(state);
    true
}

/// Stops the download of the load that is running, if one is (stored chunks stay). Answers whether one was.
pub fn cancel_download(state: AppState) -> bool {
    let Some(flag) = DOWNLOADING.with(|d| d.borrow_mut().take()) else { return false };
    flag.cancel();
    state.model.set(ModelState::Empty);
    true
}

/// Ends the load the worker runs by replacing the worker (a download running in the page goes on).
pub fn cancel_worker_load(state: AppState) {
    restart_worker(state);
    state.model.set(ModelState::Empty);
}
