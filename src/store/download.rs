//! Resumable downloads into the store: each run of missing chunks is fetched with one `Range` request and
//! its body read as a stream into a one-chunk buffer, which is hashed and stored before the next chunk is
//! read, so a file never sits whole in memory and an interruption loses at most one chunk's bytes.
//!
//! Works in a window and in a worker (`fetch` from the global scope). Responses are fetched with
//! `cache: "no-store"` so the HTTP cache does not keep a second copy of the model.

use std::cell::Cell;
use std::rc::Rc;

use js_sys::{Object, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};

use super::idb::{Store, estimate};
use super::manifest::{Manifest, StoredFile};
use crate::store::js;
use crate::{Error, Result};

/// Shared stop switch: set it and the download stops at the next piece of the stream. Stored chunks stay, so
/// pausing is cancelling and resuming is downloading again.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Rc<Cell<bool>>);

impl CancelFlag {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the download to stop.
    pub fn cancel(&self) {
        self.0.set(true);
    }

    /// Whether a stop was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.get()
    }
}

/// How a download ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every chunk is stored.
    Complete,
    /// Stopped through the [`CancelFlag`]; what was stored stays.
    Cancelled,
}

/// Bytes stored so far, reported after every stored chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The file being fetched.
    pub path: String,
    /// Bytes of that file stored.
    pub file_done: u64,
    /// Size of that file.
    pub file_total: u64,
    /// Bytes of the model stored.
    pub done: u64,
    /// Size of the model.
    pub total: u64,
}

/// Consecutive failed attempts (no chunk stored in between) before a file's download gives up.
pub const MAX_ATTEMPTS_WITHOUT_PROGRESS: usize = 3;

/// Downloads every missing chunk of model `id`: first asks each server for its file's true size (catalog sizes
/// are approximate), then checks the quota and refuses with a `storage full:` error when the missing bytes will
/// not fit, then fetches file by file.
pub async fn download_model(
    store: &Store,
    id: &str,
    cancel: &CancelFlag,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Outcome> {
    let mut manifest = stored_manifest(store, id).await?;
    let mut changed = false;
    for file in manifest.files.clone() {
        if file.is_complete() {
            continue;
        }
        let url = file_url(id, &file)?;
        let size = probe_size(url).await?;
        if size != file.size {
            manifest.set_file_size(&file.path, size)?;
            changed = true;
        }
    }
    if changed {
        store.put_manifest(&manifest).await?;
    }
    estimate().await?.check_fits(manifest.missing_bytes())?;
    for path in manifest.files.iter().filter(|f| !f.is_complete()).map(|f| f.path.clone()).collect::<Vec<_>>() {
        if download_file(store, id, &path, cancel, on_progress).await? == Outcome::Cancelled {
            return Ok(Outcome::Cancelled);
        }
    }
    Ok(Outcome::Complete)
}

async fn stored_manifest(store: &Store, id: &str) -> Result<Manifest> {
    store.manifest(id).await?.ok_or_else(|| Error::Invalid(format!("the store has no model {id:?}")))
}

fn file_url<'a>(id: &str, file: &'a StoredFile) -> Result<&'a str> {
    file.url
        .as_deref()
        .ok_or_else(|| Error::Invalid(format!("{} of model {id:?} has no URL to download it from", file.path)))
}

/// Downloads the missing chunks of one file, resuming after interruptions (up to
/// [`MAX_ATTEMPTS_WITHOUT_PROGRESS`] failures in a row without a chunk stored).
pub async fn download_file(
    store: &Store,
    id: &str,
    path: &str,
    cancel: &CancelFlag,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Outcome> {
    let mut failures = 0;
    loop {
        let manifest = stored_manifest(store, id).await?;
        let file = manifest.file(path)?;
        let Some(run) = file.missing_runs().into_iter().next() else { return Ok(Outcome::Complete) };
        let stored_before = file.stored_bytes();
        match fetch_run(store, &manifest, file, run, cancel, on_progress).await {
            Ok(Outcome::Cancelled) => return Ok(Outcome::Cancelled),
            Ok(Outcome::Complete) => failures = 0,
            Err(e) => {
                let stored_now = stored_manifest(store, id).await?.file(path)?.stored_bytes();
                failures = if stored_now > stored_before { 1 } else { failures + 1 };
                if failures >= MAX_ATTEMPTS_WITHOUT_PROGRESS || super::manifest::is_storage_full(&e) {
                    return Err(e);
                }
            }
        }
    }
}

/// Fetches chunks `run` of `file` with one request and stores them one by one.
async fn fetch_run(
    store: &Store,
    manifest: &Manifest,
    file: &StoredFile,
    run: std::ops::Range<usize>,
    cancel: &CancelFlag,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Outcome> {
    let url = file_url(&manifest.id, file)?;
    let (start, _) = file.chunk_span(run.start)?;
    let (last_start, last_len) = file.chunk_span(run.end - 1)?;
    let end = last_start + last_len;
    let response = fetch(url, "GET", Some((start, end))).await?;
    let status = js::get_f64(&response, "status").unwrap_or(0.0) as u16;
    let mut position = match status {
        206 => {
            let range = header(&response, "content-range").unwrap_or_default();
            let (first, _, total) = parse_content_range(&range).ok_or_else(|| {
                Error::Invalid(format!("{url}: answered 206 without a readable Content-Range ({range:?})"))
            })?;
            if first != start {
                return Err(Error::Invalid(format!(
                    "{url}: asked for bytes from {start}, the server sent them from {first}"
                )));
            }
            if let Some(total) = total.filter(|&t| t != file.size) {
                let expected = file.size;
                return Err(Error::Invalid(format!(
                    "{url} is now {total} bytes but {expected} were expected; delete the model and download it again"
                )));
            }
            first
        }
        // The server ignored the range: read from the start and skip what is already stored.
        200 => 0,
        _ => return Err(Error::Invalid(format!("{url}: the server answered {status}"))),
    };
    let body = js::get(&response, "body").ok_or_else(|| Error::Invalid(format!("{url}: the response has no body")))?;
    let reader = call(&body, "getReader")?;
    let mut buffer: Vec<u8> = Vec::with_capacity(file.chunk_size.min(end - start) as usize);
    while position < end {
        if cancel.is_cancelled() {
            let _ = js::call_async(&reader, "cancel", &[]).await;
            return Ok(Outcome::Cancelled);
        }
        let read = js::call_async(&reader, "read", &[])
            .await
            .map_err(|e| Error::Invalid(format!("{url}: the download was interrupted at byte {position}: {e}")))?;
        if js::get(&read, "done").and_then(|v| v.as_bool()).unwrap_or(false) {
            break;
        }
        let piece: Uint8Array = js::get(&read, "value")
            .and_then(|v| v.dyn_into().ok())
            .ok_or_else(|| Error::Invalid(format!("{url}: the response stream gave something other than bytes")))?;
        let mut offset = 0u64;
        let piece_len = piece.length() as u64;
        while offset < piece_len && position < end {
            if position < start {
                let skip = (start - position).min(piece_len - offset);
                position += skip;
                offset += skip;
                continue;
            }
            let index = (position / file.chunk_size) as usize;
            let (_, chunk_len) = file.chunk_span(index)?;
            let take = (chunk_len - buffer.len() as u64).min(piece_len - offset);
            let filled = buffer.len();
            buffer.resize(filled + take as usize, 0);
            piece.subarray(offset as u32, (offset + take) as u32).copy_to(&mut buffer[filled..]);
            offset += take;
            position += take;
            if buffer.len() as u64 == chunk_len {
                let updated = store.put_chunk(&manifest.id, &file.path, index, &buffer).await?;
                buffer.clear();
                on_progress(&Progress {
                    path: file.path.clone(),
                    file_done: updated.file(&file.path)?.stored_bytes(),
                    file_total: file.size,
                    done: updated.stored_bytes(),
                    total: updated.total_bytes(),
                });
                if cancel.is_cancelled() {
                    let _ = js::call_async(&reader, "cancel", &[]).await;
                    return Ok(Outcome::Cancelled);
                }
            }
        }
    }
    if position < end {
        return Err(Error::Invalid(format!("{url}: the download was interrupted at byte {position} of {}", file.size)));
    }
    let _ = js::call_async(&reader, "cancel", &[]).await;
    Ok(Outcome::Complete)
}

/// The size of the file at `url`: `Content-Length` of a `HEAD`, else the total of a one-byte range.
pub async fn probe_size(url: &str) -> Result<u64> {
    let head = fetch(url, "HEAD", None).await?;
    if js::get(&head, "ok").and_then(|v| v.as_bool()).unwrap_or(false)
        && let Some(length) = header(&head, "content-length").and_then(|v| v.trim().parse().ok())
    {
        return Ok(length);
    }
    let response = fetch(url, "GET", Some((0, 1))).await?;
    let status = js::get_f64(&response, "status").unwrap_or(0.0);
    let size = header(&response, "content-range").and_then(|r| parse_content_range(&r)).and_then(|(_, _, total)| total);
    if let Some(body) = js::get(&response, "body") {
        let _ = js::call_async(&body, "cancel", &[]).await;
    }
    size.ok_or_else(|| Error::Invalid(format!("{url}: the server does not tell the file's size (status {status})")))
}

/// `fetch(url)` with method, an optional byte range `start..end` and no HTTP caching.
async fn fetch(url: &str, method: &str, range: Option<(u64, u64)>) -> Result<JsValue> {
    let init = Object::new();
    let set = |key: &str, value: &JsValue| {
        let _ = Reflect::set(&init, &key.into(), value);
    };
    set("method", &method.into());
    set("cache", &"no-store".into());
    if let Some((start, end)) = range {
        let headers = Object::new();
        let _ = Reflect::set(&headers, &"Range".into(), &format!("bytes={start}-{}", end - 1).into());
        set("headers", &headers);
    }
    js::call_async(&js_sys::global(), "fetch", &[url.into(), init.into()])
        .await
        .map_err(|e| Error::Invalid(format!("{url}: the request failed: {e}")))
}

/// `obj.method()` for a method that returns no promise.
fn call(obj: &JsValue, method: &str) -> Result<JsValue> {
    let function: js_sys::Function = js::get(obj, method)
        .and_then(|f| f.dyn_into().ok())
        .ok_or_else(|| Error::Invalid(format!("{method} is not available in this browser")))?;
    function.call0(obj).map_err(|e| Error::Invalid(format!("{method}: {}", js::describe(e))))
}

fn header(response: &JsValue, name: &str) -> Option<String> {
    let headers = js::get(response, "headers")?;
    let get: js_sys::Function = js::get(&headers, "get")?.dyn_into().ok()?;
    get.call1(&headers, &name.into()).ok()?.as_string()
}

/// `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`) → (first, last, total).
pub fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let total = if total.trim() == "*" { None } else { Some(total.trim().parse().ok()?) };
    Some((first.trim().parse().ok()?, last.trim().parse().ok()?, total))
}
