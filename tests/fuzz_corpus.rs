//! The fuzz targets' smoke run on stable Rust: every input of the committed corpora (`tests/fuzz/corpus/<target>/`,
//! minimized by `cargo fuzz cmin` after the long runs) goes through the target's function in `src/harness/fuzz.rs`, and
//! so do deterministic mutations of each (bit flips, truncations, spliced boundary integers, repeated ranges).
//! Each must neither panic nor allocate beyond [`allocation_budget`] of its length (counted by this binary's
//! allocator). A failing input is written to `tests/fuzz/artifacts/` for `cargo fuzz run <target> <file>`.

#![cfg(not(target_arch = "wasm32"))]
use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use kontext_web::harness::fuzz::TARGETS;

/// Allocation allowed per input: what a reader may legitimately make of `len` bytes (f32 tensors dequantized
/// from 4-bit blocks are 7× their bytes, an image's pixels up to 16×) plus a fixed allowance for tables.
fn allocation_budget(len: usize) -> usize {
    32 * len + (64 << 20)
}

/// The system allocator, counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Mutations tried per corpus input.
const MUTATIONS: usize = 48;

/// SplitMix64: deterministic, so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// One mutation of `input`, of the kinds that break parsers: flipped bits, a cut, an interesting integer written
/// over bytes (lengths and counts), a range repeated, bytes removed.
fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    if out.is_empty() {
        return vec![rng.next() as u8; rng.below(16)];
    }
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(out.len());
        match rng.below(5) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => out.truncate(at),
            2 => {
                let value: u64 =
                    [0, 1, u64::MAX, 1 << 31, 1 << 32, 1 << 40, 1 << 63, 0x7fff_ffff, 255, 256][rng.below(10)];
                let width = [1, 2, 4, 8][rng.below(4)];
                for (i, byte) in value.to_le_bytes()[..width].iter().enumerate() {
                    if let Some(slot) = out.get_mut(at + i) {
                        *slot = *byte;
                    }
                }
            }
            3 => {
                let len = rng.below(64.min(out.len() - at)) + 1;
                let piece = out[at..at + len].to_vec();
                let times = 1 + rng.below(8);
                let splice_at = rng.below(out.len());
                for _ in 0..times {
                    out.splice(splice_at..splice_at, piece.iter().copied());
                }
            }
            _ => {
                let end = (at + 1 + rng.below(32)).min(out.len());
                out.drain(at..end);
            }
        }
        if out.is_empty() {
            break;
        }
    }
    out
}

fn corpus(target: &str) -> Vec<PathBuf> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("no corpus for fuzz target {target} at {}: {e}", folder.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

fn save_failure(target: &str, input: &[u8]) -> PathBuf {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/artifacts").join(target);
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join(format!("smoke-{}", kontext_web::store::manifest::sha256_hex(input)));
    std::fs::write(&path, input).unwrap();
    path
}

#[test]
fn every_fuzz_target_survives_its_corpus_and_mutations_of_it() {
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    let mut runs = 0;
    for (target, run) in TARGETS {
        let inputs = corpus(target);
        assert!(!inputs.is_empty(), "the corpus of {target} is empty");
        let mut rng = Rng(0x006b_6f6e_7465_7874 ^ target.len() as u64);
        for path in inputs {
            let seed = std::fs::read(&path).unwrap();
            let mut cases = vec![seed.clone()];
            cases.extend((0..MUTATIONS).map(|_| mutate(&seed, &mut rng)));
            for input in cases {
                runs += 1;
                let before = LIVE.load(Ordering::Relaxed);
                PEAK.store(before, Ordering::Relaxed);
                let outcome = catch_unwind(AssertUnwindSafe(|| run(&input)));
                let allocated = PEAK.load(Ordering::Relaxed).saturating_sub(before);
                if allocated > allocation_budget(input.len()) {
                    let saved = save_failure(target, &input);
                    failures.push(format!(
                        "{target} (from {}): allocated {allocated} bytes for a {}-byte input; input saved as {}",
                        path.display(),
                        input.len(),
                        saved.display()
                    ));
                }
                if let Err(panic) = outcome {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    let saved = save_failure(target, &input);
                    failures.push(format!(
                        "{target} (from {}): {message}; input saved as {}",
                        path.display(),
                        saved.display()
                    ));
                }
            }
        }
    }
    std::panic::set_hook(quiet);
    assert!(failures.is_empty(), "{} of {runs} inputs failed:\n{}", failures.len(), failures.join("\n"));
    eprintln!("{runs} inputs through {} fuzz targets", TARGETS.len());
}
