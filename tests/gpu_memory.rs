//! Device memory measured through the allocator's pools (wgpu on lavapipe without a GPU). Its own test binary,
//! its tests one at a time: the pools are shared by everything on the device, so a test running beside another
//! would count in its figures.
#![cfg(not(target_arch = "wasm32"))]

use std::sync::Mutex;

use kontext_web::device;
use kontext_web::formats::GgmlType;
use kontext_web::harness::bench::{RandomFlux, medium_flux};
use kontext_web::kernels::attention::bench_attention;
use kontext_web::model::flux::{Flux, Layers};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A released DiT gives its pages back to the driver when [`device::release_free_pages`] runs, not before:
/// without it the allocator keeps them reserved (the negative control).
#[test]
fn released_weights_leave_the_device_allocator() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (gpu, _) = device::wgpu().expect("a wgpu adapter (lavapipe without a GPU)");
    let config = medium_flux(512, 8, 2, 2, 512);
    let weights = RandomFlux::new(&config, Some(GgmlType::Q8_0)).unwrap();
    device::release_free_pages(&gpu);
    let empty = device::reserved_bytes(&gpu).expect("wgpu reports its pools");
    let mut flux = Flux::load(&config, &weights, &gpu).unwrap();
    let bytes = flux.device_bytes() as u64;
    let loaded = device::reserved_bytes(&gpu).unwrap();
    assert!(loaded >= empty + bytes, "{loaded} reserved after loading {bytes} bytes onto {empty}");

    assert!(flux.release(Layers::All));
    let dropped = device::reserved_bytes(&gpu).unwrap();
    assert!(dropped >= loaded - bytes / 10, "without returning pages they stay reserved: {dropped} of {loaded}");
    device::release_free_pages(&gpu);
    let returned = device::reserved_bytes(&gpu).unwrap();
    assert!(returned + bytes * 9 / 10 <= loaded, "{returned} still reserved of {loaded} after freeing {bytes}");

    flux.reload(Layers::All, &weights, &gpu).unwrap();
    assert_eq!(flux.device_bytes() as u64, bytes);
}

#[test]
fn bench_times_attention_and_measures_the_flash_kernels_memory_against_the_reference() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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
