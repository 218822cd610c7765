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
use super::manifest::{Manifest, StoredFile, changed_on_server, is_changed_on_server};
use super::sources::{PlannedFile, RemoteFile, UrlSource, shard_files, sharded_index, url_manifest};
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

    /// Whether `other` is this flag (a clone of it), not merely one in the same state.
    pub fn same(&self, other: &CancelFlag) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
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
/// are approximate) and version (a file that changed since its first chunks is refused), then checks the quota
/// and refuses with a `storage full:` error when the missing bytes will not fit, then fetches file by file.
pub async fn download_model(
    store: &Store,
    id: &str,
    cancel: &CancelFlag,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Outcome> {
    let mut manifest = stored_manifest(store, id).await?;
    let before = manifest.clone();
    for file in before.files.iter().filter(|f| !f.is_complete()) {
        let url = file_url(id, file)?;
        let remote = probe(url).await?.ok_or_else(|| not_found(url))?;
        manifest.set_remote(&file.path, remote.size, remote.validator)?;
    }
    if manifest != before {
        store.put_manifest(&manifest).await?;
    }
    estimate().await?.check_fits(manifest.missing_bytes())?;
    download_missing(store, &manifest, cancel, on_progress).await
}

/// Downloads every missing chunk of `manifest`, whose sizes and versions were just asked of the servers and whose
/// missing bytes were checked against the quota, file by file.
async fn download_missing(
    store: &Store,
    manifest: &Manifest,
    cancel: &CancelFlag,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Outcome> {
    let id = &manifest.id;
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
                let hopeless = super::manifest::is_storage_full(&e) || is_changed_on_server(&e);
                if failures >= MAX_ATTEMPTS_WITHOUT_PROGRESS || hopeless {
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
    if let (Some(was), Some(now)) = (&file.validator, validator(&response))
        && *was != now
    {
        return Err(changed_on_server(url, &format!("it was {was:?}, it is now {now:?}")));
    }
    let length = header(&response, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
    let mut position = match status {
        // A CDN may keep Content-Range from the page (not exposed through CORS): then the length must be the
        // range's, and the stream must end exactly at its end.
        206 => match header(&response, "content-range") {
            Some(range) => {
                let (first, _, total) = parse_content_range(&range).ok_or_else(|| {
                    Error::Invalid(format!("{url}: answered 206 with an unreadable Content-Range ({range:?})"))
                })?;
                if first != start {
                    return Err(Error::Invalid(format!(
                        "{url}: asked for bytes from {start}, the server sent them from {first}"
                    )));
                }
                if let Some(total) = total.filter(|&t| t != file.size) {
                    let was = file.size;
                    return Err(changed_on_server(url, &format!("it was {was} bytes, it is now {total}")));
                }
                first
            }
            None if length.is_some_and(|l| l != end - start) => {
                return Err(Error::Invalid(format!(
                    "{url}: asked for {} bytes from {start}, the server answered with {} bytes",
                    end - start,
                    length.unwrap_or_default()
                )));
            }
            None => start,
        },
        // The server ignored the range: read from the start and skip what is already stored. (Its Content-Length
        // may be that of a compressed body, so a change shows only in the validator.)
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
        let Some(piece) = read_piece(&reader, url, position).await? else { break };
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

/// What the server says of the file at `url` (`None`: it has no such file, 404 or 410). The size comes from the
/// first of: a `HEAD`'s `Content-Length`, a one-byte range's `Content-Range` total, a plain `GET`'s
/// `Content-Length` (its body is not read), so that hosts that refuse `HEAD` or keep `Content-Range` from the
/// page through CORS still work.
pub async fn probe(url: &str) -> Result<Option<RemoteFile>> {
    let head = fetch(url, "HEAD", None).await?;
    let status = js::get_f64(&head, "status").unwrap_or(0.0) as u16;
    if status == 404 || status == 410 {
        return Ok(None);
    }
    let length = |response: &JsValue| header(response, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
    if is_ok(&head)
        && let Some(size) = length(&head)
    {
        return Ok(Some(RemoteFile { size, validator: validator(&head) }));
    }
    let ranged = fetch(url, "GET", Some((0, 1))).await?;
    let total = header(&ranged, "content-range").and_then(|r| parse_content_range(&r)).and_then(|(_, _, t)| t);
    let ranged_validator = validator(&ranged);
    discard_body(&ranged).await;
    if let Some(size) = total {
        return Ok(Some(RemoteFile { size, validator: ranged_validator }));
    }
    let whole = fetch(url, "GET", None).await?;
    let status = js::get_f64(&whole, "status").unwrap_or(0.0) as u16;
    let found = (is_ok(&whole) && status == 200).then(|| length(&whole)).flatten();
    let whole_validator = validator(&whole);
    discard_body(&whole).await;
    match (status, found) {
        (404 | 410, _) => Ok(None),
        (_, Some(size)) => Ok(Some(RemoteFile { size, validator: whole_validator })),
        _ => Err(Error::Invalid(format!("{url}: the server does not tell the file's size (status {status})"))),
    }
}

fn not_found(url: &str) -> Error {
    Error::Invalid(format!("{url}: the server has no such file (404)"))
}

/// What the servers say of `planned` files. A folder's weights file the server does not have is looked up as a
/// sharded checkpoint: its `*.safetensors.index.json` is read, and the index and the shards it names replace it.
pub async fn probe_files(planned: Vec<PlannedFile>) -> Result<Vec<(PlannedFile, RemoteFile)>> {
    let mut probed = Vec::with_capacity(planned.len());
    for file in planned {
        if let Some(remote) = probe(&file.origin).await? {
            probed.push((file, remote));
            continue;
        }
        let index = sharded_index(&file).ok_or_else(|| not_found(&file.origin))?;
        let Some(index_remote) = probe(&index.origin).await? else {
            return Err(Error::Invalid(format!(
                "{}: the server has neither this file nor its sharded index {}",
                file.origin, index.origin
            )));
        };
        let shards = shard_files(&index, &fetch_text(&index.origin).await?)?;
        probed.push((index, index_remote));
        for shard in shards {
            let remote = probe(&shard.origin).await?.ok_or_else(|| not_found(&shard.origin))?;
            probed.push((shard, remote));
        }
    }
    Ok(probed)
}

/// Puts the files of `source` in the store and downloads what is missing, returning the model's id
/// ([`UrlSource::stable_id`]) and how the download ended. A model of the same URLs already complete is used as
/// stored, without asking any server (so it loads offline); one partly stored is resumed; one whose file changed on
/// the server since is refused and discarded.
pub async fn store_url_source(
    store: &Store,
    source: &UrlSource,
    chunk_size: u64,
    cancel: &CancelFlag,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<(String, Outcome)> {
    let id = source.stable_id();
    let downloaded = match store.manifest(&id).await? {
        Some(manifest) if manifest.is_complete() => Ok(Outcome::Complete),
        Some(_) => download_model(store, &id, cancel, on_progress).await,
        None => {
            let probed = probe_files(source.plan()?).await?;
            let manifest = url_manifest(&id, &source.label(), source.base.clone(), &probed, chunk_size)?;
            estimate().await?.check_fits(manifest.missing_bytes())?;
            store.put_manifest(&manifest).await?;
            download_missing(store, &manifest, cancel, on_progress).await
        }
    };
    match downloaded {
        // Nobody can delete the stale copy from an embed: it goes now, and the next load starts afresh.
        Err(e) if is_changed_on_server(&e) => {
            store.delete_model(&id).await?;
            Err(Error::Invalid(format!("{e} (the stored copy was discarded: loading again downloads the new version)")))
        }
        downloaded => Ok((id, downloaded?)),
    }
}

fn is_ok(response: &JsValue) -> bool {
    js::get(response, "ok").and_then(|v| v.as_bool()).unwrap_or(false)
}

/// The response's `ETag` (readable cross-origin only when the server exposes it), else its `Last-Modified` (always
/// readable).
fn validator(response: &JsValue) -> Option<String> {
    header(response, "etag").or_else(|| header(response, "last-modified")).filter(|v| !v.trim().is_empty())
}

async fn discard_body(response: &JsValue) {
    if let Some(body) = js::get(response, "body").filter(|b| !b.is_null() && !b.is_undefined()) {
        let _ = js::call_async(&body, "cancel", &[]).await;
    }
}

/// The whole body of `url`, which must be `size` bytes, with the bytes read so far reported as they arrive;
/// `None` when `cancel` was set. One request, not resumed: for single files of the catalog such as a LoRA.
pub async fn fetch_all(
    url: &str,
    size: u64,
    cancel: &CancelFlag,
    on_progress: &mut dyn FnMut(u64),
) -> Result<Option<Vec<u8>>> {
    let response = fetch(url, "GET", None).await?;
    if !is_ok(&response) {
        let status = js::get_f64(&response, "status").unwrap_or(0.0);
        return Err(Error::Invalid(format!("{url}: the server answered {status}")));
    }
    let body = js::get(&response, "body").ok_or_else(|| Error::Invalid(format!("{url}: the response has no body")))?;
    let reader = call(&body, "getReader")?;
    let mut bytes = Vec::with_capacity(size as usize);
    loop {
        if cancel.is_cancelled() {
            let _ = js::call_async(&reader, "cancel", &[]).await;
            return Ok(None);
        }
        let Some(piece) = read_piece(&reader, url, bytes.len() as u64).await? else { return Ok(Some(bytes)) };
        if bytes.len() as u64 + u64::from(piece.length()) > size {
            let _ = js::call_async(&reader, "cancel", &[]).await;
            return Err(Error::Invalid(format!("{url}: the server sends more than the {size} bytes expected")));
        }
        let filled = bytes.len();
        bytes.resize(filled + piece.length() as usize, 0);
        piece.copy_to(&mut bytes[filled..]);
        on_progress(bytes.len() as u64);
    }
}

/// The next piece of a response body from its `reader`, `None` at its end; `position` (bytes read so far) names
/// where an interruption happened.
async fn read_piece(reader: &JsValue, url: &str, position: u64) -> Result<Option<Uint8Array>> {
    let read = js::call_async(reader, "read", &[])
        .await
        .map_err(|e| Error::Invalid(format!("{url}: the download was interrupted at byte {position}: {e}")))?;
    if js::get(&read, "done").and_then(|v| v.as_bool()).unwrap_or(false) {
        return Ok(None);
    }
    let piece = js::get(&read, "value").and_then(|v| v.dyn_into().ok());
    piece.map(Some).ok_or_else(|| Error::Invalid(format!("{url}: the response stream gave something other than bytes")))
}

/// The text of a small file (an index), fetched without caching.
async fn fetch_text(url: &str) -> Result<String> {
    let response = fetch(url, "GET", None).await?;
    if !is_ok(&response) {
        let status = js::get_f64(&response, "status").unwrap_or(0.0);
        return Err(Error::Invalid(format!("{url}: the server answered {status}")));
    }
    let text = js::call_async(&response, "text", &[]).await.map_err(|e| Error::Invalid(format!("{url}: {e}")))?;
    text.as_string().ok_or_else(|| Error::Invalid(format!("{url}: the answer is not text")))
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
