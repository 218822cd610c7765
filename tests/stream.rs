//! Stored models stream from IndexedDB to WebGPU inside a dedicated Web Worker (where `FileReaderSync` reads
//! chunk `Blob`s synchronously): a synthetic DiT over 1 GB loads within the heap bound of issue 5 (twice the
//! largest tensor + 64 MiB), and the tiny pack loaded from the store gives the golden DiT output.
#![cfg(target_arch = "wasm32")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::{Tensor, TensorData, Tolerance};
use kontext_web::device;
use kontext_web::formats::SafetensorsFile;
use kontext_web::formats::weights::Weights;
use kontext_web::harness::bench::{bfl_shapes, medium_flux};
use kontext_web::harness::testing;
use kontext_web::pipeline::loader::{self, KontextModel};
use kontext_web::store::catalog::demo_manifest;
use kontext_web::store::files::StoredModel;
use kontext_web::store::idb::Store;
use kontext_web::store::manifest::{DEFAULT_CHUNK_SIZE, Manifest, Role, Source, StoredFile};
use wasm_bindgen::JsCast;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_dedicated_worker);

/// The system allocator, counting live bytes and their peak since the last [`reset_peak`].
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn reset_peak() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// The size of WebAssembly memory: it only grows, so its growth over a span is the span's peak growth.
fn wasm_memory_bytes() -> u64 {
    wasm_bindgen::memory()
        .unchecked_into::<js_sys::WebAssembly::Memory>()
        .buffer()
        .unchecked_into::<js_sys::ArrayBuffer>()
        .byte_length() as u64
}

async fn fresh(name: &str) -> Store {
    Store::delete_database(name).await.unwrap();
    Store::open_named(name).await.unwrap()
}

const MIB: f64 = (1u64 << 20) as f64;

/// An F32 safetensors file of BFL-named DiT tensors, produced range by range (never whole).
struct SyntheticDit {
    header: Vec<u8>,
    size: u64,
    largest: u64,
}

impl SyntheticDit {
    fn new(shapes: &std::collections::BTreeMap<String, Vec<usize>>) -> Self {
        let mut entries = serde_json::Map::new();
        let (mut offset, mut largest) = (0u64, 0u64);
        for (name, shape) in shapes {
            let bytes = shape.iter().product::<usize>() as u64 * 4;
            entries.insert(
                name.clone(),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
            );
            offset += bytes;
            largest = largest.max(bytes);
        }
        let mut header = serde_json::to_vec(&entries).unwrap();
        // Pad with spaces so that the data, and so every chunk's values, start 4-aligned.
        while !(8 + header.len()).is_multiple_of(4) {
            header.push(b' ');
        }
        let mut prefix = (header.len() as u64).to_le_bytes().to_vec();
        prefix.extend_from_slice(&header);
        Self { size: prefix.len() as u64 + offset, header: prefix, largest }
    }

    /// Value `i` of the data section: small and deterministic.
    fn value(i: u64) -> f32 {
        let h = (i as u32).wrapping_mul(2_654_435_761) ^ (i >> 32) as u32;
        ((h >> 11) % 2001) as f32 * 1e-5 - 0.01
    }

    /// Bytes `start..start + len` of the file (`start` 4-aligned past the header).
    fn bytes(&self, start: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len as usize);
        let header_end = self.header.len() as u64;
        let mut at = start;
        if at < header_end {
            let end = header_end.min(start + len);
            out.extend_from_slice(&self.header[at as usize..end as usize]);
            at = end;
        }
        while at < start + len {
            out.extend_from_slice(&Self::value((at - header_end) / 4).to_le_bytes());
            at += 4;
        }
        out
    }
}

#[wasm_bindgen_test]
async fn a_dit_over_a_gigabyte_streams_to_webgpu_within_twice_its_largest_tensor_plus_64_mib() {
    let memory_before = wasm_memory_bytes();
    let config = medium_flux(2048, 16, 1, 2, 256);
    let dit = SyntheticDit::new(&bfl_shapes(&config));
    assert!(dit.size >= 1_000_000_000, "the pack must hold at least 1 GB, it holds {}", dit.size);
    let bound = 2 * dit.largest + (64 << 20);
    assert!(bound < dit.size, "a load that held the whole file could not pass this test");

    let name = "stream-heap";
    let store = fresh(name).await;
    let path = "flux-synthetic-f32.safetensors";
    let file = StoredFile::new(path, Some(Role::Transformer), None, dit.size, DEFAULT_CHUNK_SIZE).unwrap();
    store.put_manifest(&Manifest::new("synthetic", "synthetic DiT", Source::Local, vec![file]).unwrap()).await.unwrap();
    let mut start = 0;
    for index in 0.. {
        if start >= dit.size {
            break;
        }
        let len = DEFAULT_CHUNK_SIZE.min(dit.size - start);
        store.put_chunk("synthetic", path, index, &dit.bytes(start, len)).await.unwrap();
        start += len;
    }
    let memory_written = wasm_memory_bytes();

    let (gpu, _) = device::wgpu_async().await.unwrap();
    let live_before = reset_peak();
    let stored = StoredModel::open(&store, "synthetic").await.unwrap();
    let (flux, loaded) = loader::load_transformer(&stored, stored.overrides().transformer, &gpu).unwrap();
    let heap_peak = (PEAK.load(Ordering::Relaxed) - live_before) as u64;
    let memory_after = wasm_memory_bytes();
    assert_eq!(loaded, config, "the architecture inferred from the stored file");
    drop(flux);
    store.close();
    Store::delete_database(name).await.unwrap();

    let growth = memory_after - memory_before;
    web_sys::console::log_1(
        &format!(
            "synthetic DiT {:.0} MiB (largest tensor {:.0} MiB): wasm memory {:.0} → {:.0} MiB after storing → {:.0} MiB after loading \
             (growth {:.0} MiB); live heap peak during the load {:.0} MiB; bound {:.0} MiB",
            dit.size as f64 / MIB,
            dit.largest as f64 / MIB,
            memory_before as f64 / MIB,
            memory_written as f64 / MIB,
            memory_after as f64 / MIB,
            growth as f64 / MIB,
            heap_peak as f64 / MIB,
            bound as f64 / MIB
        )
        .into(),
    );
    assert!(growth <= bound, "wasm memory grew by {growth} bytes, more than {bound}");
    assert!(heap_peak <= bound, "the heap peaked {heap_peak} bytes above its start, more than {bound}");
}

macro_rules! tiny {
    ($path:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny/", $path)).as_slice()
    };
}

#[wasm_bindgen_test]
async fn the_tiny_pack_loaded_from_the_store_gives_the_golden_dit_output_on_webgpu() {
    let files = [
        tiny!("FLUX.1-Kontext-dev-tiny/transformer/config.json"),
        tiny!("FLUX.1-Kontext-dev-tiny/transformer/diffusion_pytorch_model.safetensors"),
        tiny!("FLUX.1-Kontext-dev-tiny/text_encoder/config.json"),
        tiny!("FLUX.1-Kontext-dev-tiny/text_encoder/model.safetensors"),
        tiny!("FLUX.1-Kontext-dev-tiny/text_encoder_2/config.json"),
        tiny!("FLUX.1-Kontext-dev-tiny/text_encoder_2/model.safetensors"),
        tiny!("FLUX.1-Kontext-dev-tiny/tokenizer/vocab.json"),
        tiny!("FLUX.1-Kontext-dev-tiny/tokenizer/merges.txt"),
        tiny!("FLUX.1-Kontext-dev-tiny/tokenizer_2/tokenizer.json"),
        tiny!("FLUX.1-Kontext-dev-tiny/vae/config.json"),
        tiny!("FLUX.1-Kontext-dev-tiny/vae/diffusion_pytorch_model.safetensors"),
    ];
    let name = "stream-tiny";
    let store = fresh(name).await;
    // Small chunks, so tensors span chunk borders.
    let chunk = 64 << 10;
    store.put_manifest(&demo_manifest("http://unused/", &files.map(|f| f.len() as u64), chunk).unwrap()).await.unwrap();
    let incomplete = StoredModel::open(&store, "demo").await.err().expect("an empty model must not load");
    assert!(incomplete.to_string().contains("not complete"), "{incomplete}");
    for (path, bytes) in loader::DIFFUSERS_FILES.iter().zip(files) {
        for (index, part) in bytes.chunks(chunk as usize).enumerate() {
            store.put_chunk("demo", path, index, part).await.unwrap();
        }
    }
    let (gpu, _) = device::wgpu_async().await.unwrap();
    let stored = StoredModel::open(&store, "demo").await.unwrap();
    let model = KontextModel::load(&stored, stored.overrides(), &gpu).unwrap();
    store.close();
    Store::delete_database(name).await.unwrap();

    let run = SafetensorsFile::open(tiny!("golden/golden_run.safetensors").to_vec()).unwrap();
    let input = |key: &str| {
        let host = run.read(&format!("transformer_in_0_{key}")).unwrap();
        TensorData::new(host.data, host.shape)
    };
    let out = model
        .flux
        .forward(
            Tensor::from_data(input("hidden_states"), &gpu),
            Tensor::from_data(input("img_ids"), &gpu),
            Tensor::from_data(input("encoder_hidden_states"), &gpu),
            Tensor::from_data(input("txt_ids"), &gpu),
            Tensor::from_data(input("timestep"), &gpu),
            Tensor::from_data(input("pooled_projections"), &gpu),
            Some(Tensor::from_data(input("guidance"), &gpu)),
        )
        .unwrap();
    let out = out.into_data_async().await.unwrap();
    let golden = run.read("transformer_out_0").unwrap();
    let golden = TensorData::new(golden.data, golden.shape);
    let diff = testing::max_abs_difference_of_data(&out, &golden);
    web_sys::console::log_1(
        &format!("tiny pack from IndexedDB on WebGPU: transformer_out_0 max |diff| {diff:e}").into(),
    );
    out.assert_approx_eq::<f32>(&golden, Tolerance::absolute(1e-4));
}
