//! Device memory measured through the allocator's pools (wgpu on lavapipe without a GPU). Its own test binary:
//! the pools are shared by everything on the device, so a test running beside it would count in its figures.
#![cfg(not(target_arch = "wasm32"))]

use kontext_web::device;
use kontext_web::kernels::attention::bench_attention;

#[test]
fn bench_times_attention_and_measures_the_flash_kernels_memory_against_the_reference() {
    let (gpu, _) = device::wgpu().expect("a wgpu adapter (lavapipe without a GPU)");
    let timings = bench_attention(&gpu, &[64, 512], 16, 2, 1 << 30);
    eprintln!("{timings:?}");
    assert_eq!(timings.iter().map(|t| t.l).collect::<Vec<_>>(), [64, 512]);
    for t in &timings {
        assert!(t.flash_s > 0.0 && t.reference_s.is_some_and(|r| r > 0.0), "{t:?}");
        assert!(t.rows_s.is_some_and(|r| r > 0.0) && t.tiles_s.is_some_and(|r| r > 0.0), "{t:?}");
    }
    // At L = 512 the reference's scores alone are 2·512²·4 = 2 MiB; the flash kernel holds O(L·d).
    let long = timings[1];
    let (flash, reference) =
        (long.rows_peak_bytes.expect("wgpu reports its pools"), long.reference_peak_bytes.unwrap());
    assert!(reference >= 2 * 512 * 512 * 4, "{long:?}");
    assert!(flash < reference / 4, "{long:?}");
}
