//! The model store in headless Chromium's IndexedDB: chunks stored and read back across chunk borders, damage
//! found by verification, deletion, a full quota, and downloads that resume after a cut connection. The
//! download tests fetch from `tests/e2e/drop-server.mjs` (started by `make test-wasm`) at
//! `KONTEXT_DROP_SERVER` (compile-time; default `http://127.0.0.1:8791`).
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;

use kontext_web::pipeline::loader;
use kontext_web::store::catalog::demo_manifest;
use kontext_web::store::download::{self, CancelFlag, Outcome, parse_content_range};
use kontext_web::store::files::StoredModel;
use kontext_web::store::idb::{self as store_idb, Store, StoreEvent, chunk_key, storage_error};
use kontext_web::store::is_storage_full;
use kontext_web::store::manifest::{ChunkState, FileState, Manifest, Source, StoredFile};
use kontext_web::web::locks;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const SERVER: &str = match option_env!("KONTEXT_DROP_SERVER") {
    Some(url) => url,
    None => "http://127.0.0.1:8791",
};

/// A fresh, empty store of its own for one test.
async fn fresh(name: &str) -> Store {
    Store::delete_database(name).await.unwrap();
    Store::open_named(name).await.unwrap()
}

/// Byte `i` of every file the drop server serves.
fn byte_at(i: u64) -> u8 {
    ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8
}

fn pattern(start: u64, len: u64) -> Vec<u8> {
    (start..start + len).map(byte_at).collect()
}

/// Stores `bytes` as `path` of `model`, chunk by chunk.
async fn store_file(store: &Store, model: &str, path: &str, bytes: &[u8], chunk_size: usize) {
    for (index, chunk) in bytes.chunks(chunk_size).enumerate() {
        store.put_chunk(model, path, index, chunk).await.unwrap();
    }
}

fn two_file_manifest(id: &str, chunk_size: u64) -> Manifest {
    let files = vec![
        StoredFile::new("weights.bin", None, None, 10_000, chunk_size).unwrap(),
        StoredFile::new("config.json", None, None, 17, chunk_size).unwrap(),
    ];
    Manifest::new(id, "two files", Source::Local, files).unwrap()
}

/// Opens the store's database directly, as another page of the site could, to damage a chunk behind its back.
async fn overwrite_chunk(db_name: &str, model: &str, path: &str, index: usize, bytes: &[u8]) {
    let db = idb::Factory::new().unwrap().open(db_name, None).unwrap().await.unwrap();
    let tx = db.transaction(&["chunks"], idb::TransactionMode::ReadWrite).unwrap();
    let value: JsValue = js_sys::Uint8Array::from(bytes).into();
    tx.object_store("chunks").unwrap().put(&value, Some(&chunk_key(model, path, index))).unwrap().await.unwrap();
    tx.await.unwrap();
    db.close();
}

async fn chunk_exists(db_name: &str, model: &str, path: &str, index: usize) -> bool {
    let db = idb::Factory::new().unwrap().open(db_name, None).unwrap().await.unwrap();
    let tx = db.transaction(&["chunks"], idb::TransactionMode::ReadOnly).unwrap();
    let found = tx.object_store("chunks").unwrap().get(chunk_key(model, path, index)).unwrap().await.unwrap().is_some();
    db.close();
    found
}

/// Collects the store's events of this thread.
fn record_events() -> std::rc::Rc<RefCell<Vec<StoreEvent>>> {
    let events = std::rc::Rc::new(RefCell::new(Vec::new()));
    let sink = events.clone();
    store_idb::on_event(move |event| sink.borrow_mut().push(event));
    events
}

#[wasm_bindgen_test]
async fn an_upgrade_from_another_tab_closes_this_connection_instead_of_waiting() {
    let name = "kontext-test-superseded";
    let events = record_events();
    let old = fresh(name).await;
    old.put_manifest(&two_file_manifest("m", 4096)).await.unwrap();
    // A newer app opens version 2: not blocked, because the old connection closes itself.
    let newer = Store::open_versioned(name, 2).await.unwrap();
    assert_eq!(events.borrow().as_slice(), [StoreEvent::Superseded { new_version: Some(2) }]);
    assert!(newer.manifest("m").await.unwrap().is_some(), "the upgrade keeps what was stored");
    let err = old.manifest("m").await.unwrap_err().to_string();
    assert!(
        err.contains("another tab is upgrading or deleting the model store") && err.contains("reload this page"),
        "{err}"
    );
    let err = Store::open_named(name).await.err().unwrap().to_string();
    assert!(err.contains("upgraded by a newer kontext-web in another tab; reload this page"), "{err}");
    drop(newer);
    Store::delete_database(name).await.unwrap();
}

#[wasm_bindgen_test]
async fn an_upgrade_blocked_by_an_older_connection_says_so_and_goes_on_when_it_closes() {
    let name = "kontext-test-blocked";
    Store::delete_database(name).await.unwrap();
    drop(Store::open_named(name).await.unwrap());
    let events = record_events();
    // An older page that does not let go of its connection.
    let holder = idb::Factory::new().unwrap().open(name, None).unwrap().await.unwrap();
    let (opened, ()) = futures_lite::future::zip(Store::open_versioned(name, 2), async {
        gloo::timers::future::TimeoutFuture::new(300).await;
        assert_eq!(events.borrow().as_slice(), [StoreEvent::Blocked], "the open waits and says so");
        holder.close();
    })
    .await;
    let store = opened.unwrap();
    assert_eq!(events.borrow().as_slice(), [StoreEvent::Blocked, StoreEvent::Unblocked]);
    assert!(store.manifest("nothing").await.unwrap().is_none());
    drop(store);
    Store::delete_database(name).await.unwrap();
}

#[wasm_bindgen_test]
async fn a_model_lock_is_held_by_one_holder_at_a_time() {
    let first = locks::acquire("kontext-test-lock", || panic!("the lock is free")).await.unwrap();
    let waited = std::cell::Cell::new(false);
    let released = std::cell::Cell::new(false);
    let (second, ()) = futures_lite::future::zip(
        async {
            let lock = locks::acquire("kontext-test-lock", || waited.set(true)).await.unwrap();
            assert!(released.get(), "granted only after the first holder let go");
            lock
        },
        async {
            gloo::timers::future::TimeoutFuture::new(200).await;
            assert!(waited.get(), "the second holder was told it waits");
            released.set(true);
            drop(first);
        },
    )
    .await;
    drop(second);
    // Released on drop (the browser lets go a moment later, so this may wait briefly but must be granted).
    drop(locks::acquire("kontext-test-lock", || {}).await.unwrap());
}

#[wasm_bindgen_test]
async fn chunks_are_stored_and_read_back_across_chunk_borders() {
    let store = fresh("store-read-back").await;
    let manifest = two_file_manifest("m", 1024);
    store.put_manifest(&manifest).await.unwrap();
    let weights = pattern(0, 10_000);
    store_file(&store, "m", "weights.bin", &weights, 1024).await;
    let stored = store.put_chunk("m", "config.json", 0, b"{\"hidden_size\":6}").await.unwrap();
    assert!(stored.is_complete());
    assert_eq!(stored.state(), FileState::Complete);

    let back = store.manifest("m").await.unwrap().unwrap();
    assert_eq!(back.file("weights.bin").unwrap().chunks.len(), 10);
    assert!(back.is_complete() && back.stored_bytes() == 10_017);
    assert_eq!(store.read_range("m", "weights.bin", 1000, 3000).await.unwrap(), weights[1000..4000]);
    assert_eq!(store.read_range("m", "weights.bin", 9_990, 10).await.unwrap(), weights[9_990..]);
    assert_eq!(store.read_chunk("m", "weights.bin", 9).await.unwrap(), weights[9216..]);
    assert!(store.read_range("m", "weights.bin", 9_990, 11).await.unwrap_err().to_string().contains("past its end"));

    let err = store.put_chunk("m", "weights.bin", 9, &[0u8; 100]).await.unwrap_err().to_string();
    assert!(err.contains("must be 784 bytes"), "{err}");
    assert!(store.put_chunk("nobody", "weights.bin", 0, &[0u8; 1024]).await.is_err());
    let listing = store.list().await.unwrap();
    assert_eq!((listing.models.len(), listing.broken.len()), (1, 0));
    store.close();
}

#[wasm_bindgen_test]
async fn a_corrupted_chunk_is_found_by_verify_and_marked_missing() {
    let name = "store-corrupt";
    let store = fresh(name).await;
    store.put_manifest(&two_file_manifest("m", 1024)).await.unwrap();
    let weights = pattern(0, 10_000);
    store_file(&store, "m", "weights.bin", &weights, 1024).await;
    let mut damaged = weights[3072..4096].to_vec();
    damaged[100] ^= 0xff;
    overwrite_chunk(name, "m", "weights.bin", 3, &damaged).await;

    let mut reported = Vec::new();
    let verification = store.verify_model("m", &mut |done, total| reported.push((done, total))).await.unwrap();
    assert_eq!(verification.checked, 10);
    assert_eq!(verification.bad, vec![("weights.bin".to_string(), 3)]);
    assert_eq!(reported.last(), Some(&(10, 10)));
    let manifest = store.manifest("m").await.unwrap().unwrap();
    let file = manifest.file("weights.bin").unwrap();
    assert_eq!(file.chunks[3].state, ChunkState::Missing);
    assert_eq!(file.missing_chunks(), vec![3]);
    assert!(!chunk_exists(name, "m", "weights.bin", 3).await);
    let err = store.read_range("m", "weights.bin", 3000, 200).await.unwrap_err().to_string();
    assert!(err.contains("chunk 3") && err.contains("not stored"), "{err}");

    // Fetched again, it must match the hash recorded when it was first stored.
    let err = store.put_chunk("m", "weights.bin", 3, &damaged).await.unwrap_err().to_string();
    assert!(err.contains("does not match its SHA-256"), "{err}");
    store.put_chunk("m", "weights.bin", 3, &weights[3072..4096]).await.unwrap();
    assert_eq!(store.verify_model("m", &mut |_, _| {}).await.unwrap().bad, vec![]);
    assert_eq!(store.read_range("m", "weights.bin", 3000, 200).await.unwrap(), weights[3000..3200]);
    store.close();
}

#[wasm_bindgen_test]
async fn deleting_a_model_removes_its_chunks_and_manifest() {
    let name = "store-delete";
    let store = fresh(name).await;
    let size = 8u64 << 20;
    let file = StoredFile::new("big.bin", None, None, size, 1 << 20).unwrap();
    store.put_manifest(&Manifest::new("big", "big", Source::Local, vec![file]).unwrap()).await.unwrap();
    store.put_manifest(&two_file_manifest("other", 1024)).await.unwrap();
    store.put_chunk("other", "config.json", 0, &[7u8; 17]).await.unwrap();
    for index in 0..8u64 {
        store.put_chunk("big", "big.bin", index as usize, &pattern(index << 20, 1 << 20)).await.unwrap();
    }
    let filled = store_idb::estimate().await.unwrap();
    store.delete_model("big").await.unwrap();
    assert!(store.manifest("big").await.unwrap().is_none());
    for index in 0..8 {
        assert!(!chunk_exists(name, "big", "big.bin", index).await, "chunk {index} survived");
    }
    assert!(chunk_exists(name, "other", "config.json", 0).await, "another model's chunk was deleted");
    assert_eq!(store.list().await.unwrap().models.len(), 1);
    let emptied = store_idb::estimate().await.unwrap();
    assert!(emptied.usage <= filled.usage, "usage grew from {} to {} after deleting", filled.usage, emptied.usage);
    store.close();
}

#[wasm_bindgen_test]
async fn a_full_quota_is_reported_and_leaves_the_store_consistent() {
    // A real DOMException of the name browsers use is mapped to a `storage full:` error.
    let quota = web_sys::DomException::new_with_message_and_name("quota", "QuotaExceededError").unwrap();
    assert!(is_storage_full(&storage_error("storing chunk 0", idb::Error::DomException(quota))));
    let other = web_sys::DomException::new_with_message_and_name("x", "DataError").unwrap();
    assert!(!is_storage_full(&storage_error("storing chunk 0", idb::Error::DomException(other))));

    // Browsers give a page no way to shrink its quota, so the failure is injected after the chunk and the
    // manifest writes were issued: the aborted transaction must take both back.
    let name = "store-quota";
    let store = fresh(name).await;
    store.put_manifest(&two_file_manifest("m", 1024)).await.unwrap();
    store.put_chunk("m", "weights.bin", 0, &pattern(0, 1024)).await.unwrap();
    store.fail_next_chunk_write("QuotaExceededError");
    let err = store.put_chunk("m", "weights.bin", 1, &pattern(1024, 1024)).await.unwrap_err();
    assert!(is_storage_full(&err), "{err}");
    let manifest = store.manifest("m").await.unwrap().unwrap();
    let file = manifest.file("weights.bin").unwrap();
    assert_eq!((file.chunks[0].state, file.chunks[1].state), (ChunkState::Stored, ChunkState::Missing));
    assert!(file.chunks[1].sha256.is_none());
    assert!(!chunk_exists(name, "m", "weights.bin", 1).await);
    store.put_chunk("m", "weights.bin", 1, &pattern(1024, 1024)).await.unwrap();
    assert_eq!(store.read_range("m", "weights.bin", 0, 2048).await.unwrap(), pattern(0, 2048));

    // The download's quota check refuses a file larger than what the browser grants, before fetching anything.
    let huge = 500_000_000_000u64;
    let url = format!("{SERVER}/file/{huge}?id=quota");
    let file = StoredFile::new("huge.gguf", None, Some(url), 1000, 1 << 25).unwrap();
    store.put_manifest(&Manifest::new("huge", "huge", Source::Urls { base: None }, vec![file]).unwrap()).await.unwrap();
    let err = download::download_model(&store, "huge", &CancelFlag::new(), &mut |_| {}).await.unwrap_err();
    assert!(is_storage_full(&err) && err.to_string().contains("500.0 GB"), "{err}");
    assert_eq!(server_log("quota").await.iter().filter(|r| r.0 == "GET").count(), 0);
    store.close();
}

#[wasm_bindgen_test]
async fn small_files_are_kept_as_blobs() {
    let store = fresh("store-blobs").await;
    assert_eq!(store.get_blob("lora.safetensors").await.unwrap(), None);
    store.put_blob("lora.safetensors", &[1, 2, 3]).await.unwrap();
    store.put_blob("lora.safetensors", &[4, 5]).await.unwrap();
    assert_eq!(store.get_blob("lora.safetensors").await.unwrap(), Some(vec![4, 5]));
    store.delete_blob("lora.safetensors").await.unwrap();
    assert_eq!(store.get_blob("lora.safetensors").await.unwrap(), None);
    store.close();
}

#[wasm_bindgen_test]
fn content_ranges_are_parsed() {
    assert_eq!(parse_content_range("bytes 0-0/1234"), Some((0, 0, Some(1234))));
    assert_eq!(parse_content_range("bytes 10-19/*"), Some((10, 19, None)));
    assert_eq!(parse_content_range("bytes */1234"), None);
    assert_eq!(parse_content_range("items 0-1/2"), None);
}

/// `(method, range)` of the requests the drop server saw for `id`.
async fn server_log(id: &str) -> Vec<(String, Option<String>)> {
    let response =
        kontext_web::store::js::call_async(&js_sys::global(), "fetch", &[format!("{SERVER}/log?id={id}").into()])
            .await
            .unwrap_or_else(|e| {
                panic!("the drop server at {SERVER} does not answer ({e}); start `node tests/e2e/drop-server.mjs`")
            });
    let json = kontext_web::store::js::call_async(&response, "json", &[]).await.unwrap();
    js_sys::Array::from(&json)
        .iter()
        .map(|entry| {
            (
                kontext_web::store::js::get_string(&entry, "method"),
                kontext_web::store::js::get(&entry, "range").and_then(|r| r.as_string()),
            )
        })
        .collect()
}

fn download_manifest(model: &str, url: String, size: u64, chunk_size: u64) -> Manifest {
    // The size is deliberately wrong, as catalog sizes are: the server's answer replaces it.
    let file = StoredFile::new("model.gguf", None, Some(url), size + 123, chunk_size).unwrap();
    Manifest::new(model, model, Source::Urls { base: None }, vec![file]).unwrap()
}

#[wasm_bindgen_test]
async fn a_download_cut_mid_file_resumes_from_the_first_missing_chunk() {
    let store = fresh("store-download-drop").await;
    let (size, chunk) = (100_000u64, 16_384u64);
    let url = format!("{SERVER}/file/{size}?id=drop&drop=40000");
    store.put_manifest(&download_manifest("d", url, size, chunk)).await.unwrap();
    let progress = RefCell::new(Vec::new());
    let outcome =
        download::download_model(&store, "d", &CancelFlag::new(), &mut |p| progress.borrow_mut().push(p.done))
            .await
            .unwrap();
    assert_eq!(outcome, Outcome::Complete);
    let manifest = store.manifest("d").await.unwrap().unwrap();
    assert!(manifest.is_complete() && manifest.total_bytes() == size);
    assert_eq!(store.read_range("d", "model.gguf", 0, size).await.unwrap(), pattern(0, size));
    let progress = progress.into_inner();
    assert_eq!(progress.len(), 7);
    assert!(progress.windows(2).all(|w| w[0] < w[1]) && progress.last() == Some(&size), "{progress:?}");
    // HEAD for the size, the cut GET from 0, then one GET from the first chunk the cut left missing.
    let gets: Vec<_> = server_log("drop").await.into_iter().filter(|r| r.0 == "GET").map(|r| r.1).collect();
    assert_eq!(gets, vec![Some(format!("bytes=0-{}", size - 1)), Some(format!("bytes={}-{}", 2 * chunk, size - 1))]);
    store.close();
}

#[wasm_bindgen_test]
async fn a_cancelled_download_resumes_after_reopening_without_refetching() {
    let name = "store-download-pause";
    let store = fresh(name).await;
    let (size, chunk) = (70_000u64, 10_000u64);
    let url = format!("{SERVER}/file/{size}?id=pause");
    store.put_manifest(&download_manifest("p", url, size, chunk)).await.unwrap();
    let cancel = CancelFlag::new();
    let outcome = download::download_model(&store, "p", &cancel, &mut |p| {
        if p.done >= 3 * chunk {
            cancel.cancel();
        }
    })
    .await
    .unwrap();
    assert_eq!(outcome, Outcome::Cancelled);
    let stored = store.manifest("p").await.unwrap().unwrap().stored_bytes();
    assert!(stored >= 3 * chunk && stored < size, "{stored}");
    store.close();

    // As after a reload: a new connection, the same database.
    let store = Store::open_named(name).await.unwrap();
    assert_eq!(
        download::download_model(&store, "p", &CancelFlag::new(), &mut |_| {}).await.unwrap(),
        Outcome::Complete
    );
    assert_eq!(store.read_range("p", "model.gguf", 0, size).await.unwrap(), pattern(0, size));
    let gets: Vec<_> = server_log("pause").await.into_iter().filter(|r| r.0 == "GET").map(|r| r.1).collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[1], Some(format!("bytes={stored}-{}", size - 1)));
    // Nothing left to fetch: no request at all.
    assert_eq!(
        download::download_file(&store, "p", "model.gguf", &CancelFlag::new(), &mut |_| {}).await.unwrap(),
        Outcome::Complete
    );
    assert_eq!(server_log("pause").await.iter().filter(|r| r.0 == "GET").count(), 2);
    store.close();
}

#[wasm_bindgen_test]
async fn a_server_that_ignores_range_still_completes_a_partial_file() {
    let name = "store-download-norange";
    let store = fresh(name).await;
    let (size, chunk) = (50_000u64, 8_192u64);
    let url = format!("{SERVER}/file/{size}?id=norange&norange");
    store.put_manifest(&download_manifest("n", url, size, chunk)).await.unwrap();
    download::download_model(&store, "n", &CancelFlag::new(), &mut |_| {}).await.unwrap();
    // Damage two chunks apart: verification drops them and the download fetches exactly those again.
    overwrite_chunk(name, "n", "model.gguf", 1, &[0u8; 8192]).await;
    overwrite_chunk(name, "n", "model.gguf", 4, &[0u8; 8192]).await;
    let bad = store.verify_model("n", &mut |_, _| {}).await.unwrap().bad;
    assert_eq!(bad, vec![("model.gguf".to_string(), 1), ("model.gguf".to_string(), 4)]);
    let mut stored = Vec::new();
    let outcome =
        download::download_model(&store, "n", &CancelFlag::new(), &mut |p| stored.push(p.file_done)).await.unwrap();
    assert_eq!(outcome, Outcome::Complete);
    assert_eq!(stored.len(), 2, "only the two damaged chunks are stored again: {stored:?}");
    assert_eq!(store.read_range("n", "model.gguf", 0, size).await.unwrap(), pattern(0, size));
    store.close();
}

#[wasm_bindgen_test]
async fn the_demo_pack_is_stored_and_loads_only_in_a_worker() {
    const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny/FLUX.1-Kontext-dev-tiny/");
    macro_rules! pack {
        ($($path:literal),*) => { [$(($path, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny/FLUX.1-Kontext-dev-tiny/", $path)).as_slice())),*] };
    }
    let files = pack!(
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder_2/config.json",
        "text_encoder_2/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer_2/tokenizer.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors"
    );
    assert_eq!(files.map(|f| f.0), loader::DIFFUSERS_FILES, "{ROOT}");
    let store = fresh("store-demo").await;
    let chunk = 256 << 10;
    let manifest = demo_manifest("http://unused/", &files.map(|f| f.1.len() as u64), chunk).unwrap();
    store.put_manifest(&manifest).await.unwrap();
    let incomplete = StoredModel::open(&store, "demo").await.err().expect("an empty model must not load");
    assert!(incomplete.to_string().contains("not complete"), "{incomplete}");
    for (path, bytes) in files {
        store_file(&store, "demo", path, bytes, chunk as usize).await;
    }
    for (path, bytes) in files {
        assert_eq!(store.read_range("demo", path, 0, bytes.len() as u64).await.unwrap(), bytes, "{path}");
    }
    // The page has no FileReaderSync: loading from the store is the worker's (tests/stream.rs loads it there).
    let refused = StoredModel::open(&store, "demo").await.err().expect("the page cannot read chunks synchronously");
    assert!(refused.to_string().contains("only in a Web Worker"), "{refused}");
    store.close();
}
