//! Device memory measured through the allocator's pools (wgpu on lavapipe without a GPU). Its own test binary,
//! its tests one at a time: the pools are shared by everything on the device, so a test running beside another
//! would count in its figures.
#![cfg(not(target_arch = "wasm32"))]

use std::sync::Mutex;

use kontext_web::device::{self, faults};
use kontext_web::formats::GgmlType;
use kontext_web::formats::weights::HostTensor;
use kontext_web::harness::bench::{RandomFlux, medium_flux};
use kontext_web::harness::testing::{self, fixture_path};
use kontext_web::kernels::attention::bench_attention;
use kontext_web::model::flux::{Flux, Layers};
use kontext_web::model::layers::{AdapterId, LayerUpdate, LoraAdapter, UpdateBlock};
use kontext_web::pipeline::cache::CacheConfig;
use kontext_web::pipeline::edit::{Edit, EditRequest};
use kontext_web::pipeline::loader::{Folder, KontextModel, Overrides};
use kontext_web::pipeline::plan::Residency;
use kontext_web::pipeline::size::Resize;
use kontext_web::{Error, Result};

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

/// An adapter of `rank` over every linear layer of `flux`, one block per layer, its values spread by `salt`.
fn every_layer_adapter(flux: &Flux, rank: usize, salt: usize) -> LoraAdapter {
    let ramp = |len: usize, step: usize| (0..len).map(|i| ((i * step + salt) % 29) as f32 / 280.0 - 0.05).collect();
    let layers = flux.named_projections().into_iter().map(|(name, projection)| {
        let (d_in, d_out) = (projection.d_in(), projection.d_out());
        let block = UpdateBlock {
            rows: 0..d_out,
            down: HostTensor::new(vec![rank, d_in], ramp(rank * d_in, 7)).unwrap(),
            up: HostTensor::new(vec![d_out, rank], ramp(d_out * rank, 11)).unwrap(),
        };
        (name, LayerUpdate { d_in, d_out, blocks: vec![block] })
    });
    let layers = layers.collect();
    LoraAdapter {
        id: AdapterId::fresh(),
        label: format!("every layer #{salt}"),
        layers,
        ignored_text_encoder_tensors: 0,
    }
}

/// [`Flux::set_adapters`] keeps the factors of the adapters already active (asked for again, they upload
/// nothing: an injected out-of-memory failure stays unseen, while another strength meets it), and frees them
/// before it uploads others, so that the allocator holds one set of factors, not both. Control: a second adapter
/// beside the first grows the allocator by about its bytes.
#[test]
fn lora_adapters_stay_when_asked_for_again_and_one_set_is_held_when_replaced() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (gpu, _) = device::wgpu().expect("a wgpu adapter (lavapipe without a GPU)");
    let config = medium_flux(512, 8, 2, 2, 512);
    let weights = RandomFlux::new(&config, Some(GgmlType::Q8_0)).unwrap();
    let mut flux = Flux::load(&config, &weights, &gpu).unwrap();
    let [first, second, third] = [1, 2, 3].map(|salt| every_layer_adapter(&flux, 64, salt));
    let reserved = || device::reserved_bytes(&gpu).expect("wgpu reports its pools");

    assert!(flux.set_adapters(&[(&first, 1.0)], &gpu).unwrap());
    let bytes = flux.adapter_bytes() as u64;
    assert_eq!(bytes, first.device_bytes() as u64);
    assert!(bytes > 8 << 20, "{bytes} bytes of factors");
    faults::inject_out_of_memory_after(Some(0));
    assert!(!flux.set_adapters(&[(&first, 1.0)], &gpu).unwrap());
    assert_eq!(faults::check(&gpu), None, "asked for again, the factors were uploaded again");
    assert!(flux.set_adapters(&[(&first, 0.5)], &gpu).unwrap());
    let fault = faults::check(&gpu).expect("another strength uploads");
    assert_eq!(fault.kind, faults::FaultKind::OutOfMemory);
    faults::inject_out_of_memory_after(None);

    device::release_free_pages(&gpu);
    let one = reserved();
    assert!(flux.set_adapters(&[(&second, 1.0)], &gpu).unwrap());
    let replaced = reserved();
    assert!(replaced < one + bytes / 4, "{replaced} reserved after replacing {bytes} bytes of factors on {one}");
    assert!(flux.set_adapters(&[(&second, 1.0), (&third, 1.0)], &gpu).unwrap());
    let two = reserved();
    assert!(two >= one + bytes * 9 / 10, "{two} reserved with two adapters of {bytes} bytes, one took {one}");
    assert_eq!(flux.adapter_bytes() as u64, 2 * bytes);
}

#[test]
fn bench_times_attention_and_measures_the_flash_kernels_memory_against_the_reference() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (gpu, _) = device::wgpu().expect("a wgpu adapter (lavapipe without a GPU)");
    let timings = bench_attention(&gpu, &[64, 512], 16, 2);
    eprintln!("{timings:?}");
    assert_eq!(timings.iter().map(|t| t.l).collect::<Vec<_>>(), [64, 512]);
    for t in &timings {
        let kernels = [Some(t.model), t.flash, t.rows, Some(t.reference)];
        assert!(kernels.iter().all(|k| k.is_some_and(|k| k.seconds > 0.0)), "{t:?}");
    }
    // At L = 512 the reference's scores alone are 2·512²·4 = 2 MiB; the flash kernels hold O(L·d).
    let long = timings[1];
    let reference = long.reference.peak_bytes.expect("wgpu reports its pools");
    assert!(reference >= 2 * 512 * 512 * 4, "{long:?}");
    for flash in [long.flash, long.rows] {
        assert!(flash.unwrap().peak_bytes.unwrap() < reference / 4, "{long:?}");
    }
}

/// A text-to-image edit of the tiny model, 2 steps, returning its final packed latents; the first error ends it.
fn tiny_edit(
    model: &mut KontextModel,
    prompt: &str,
    gpu: &burn::tensor::Device,
    before_steps: impl FnOnce(),
) -> Result<Vec<f32>> {
    let request = EditRequest {
        prompt: prompt.into(),
        references: vec![],
        size: Some((32, 32)),
        max_area: 32 * 32,
        resize: Resize::None,
        steps: 2,
        guidance: 2.5,
        seed: 11,
        cache: CacheConfig::None,
        mask: None,
    };
    let mut edit = Edit::prepare(model, &request, None, gpu)?;
    before_steps();
    while !edit.is_denoised() {
        pollster::block_on(edit.step())?;
    }
    let result = pollster::block_on(edit.finish())?;
    pollster::block_on(device::read_f32(result.latents))
}

/// An allocation the GPU refuses in the middle of a load or an edit ends it with an answer, not a panic: what the
/// model had uploaded is released, its pages returned, and the next request on the same device succeeds, with
/// the result it gives without the failure (the control).
#[test]
fn out_of_memory_in_a_load_or_an_edit_is_an_answer_and_the_next_request_succeeds() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (gpu, _) = device::wgpu().expect("a wgpu adapter (lavapipe without a GPU)");
    let folder = Folder(fixture_path("FLUX.1-Kontext-dev-tiny"));
    device::release_free_pages(&gpu);
    let empty = device::reserved_bytes(&gpu).expect("wgpu reports its pools");

    faults::inject_out_of_memory_after(Some(256 << 10));
    let error = KontextModel::load(&folder, Overrides::default(), &gpu).err().expect("the failure ends the load");
    assert!(matches!(error, Error::OutOfMemory { planned_peak: None, budget: None, .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.starts_with("the GPU ran out of memory during the upload of the model's weights, holding "));
    assert!(message.contains("no GPU memory budget was set: try a GPU memory budget of "));
    device::release_free_pages(&gpu);
    let after = device::reserved_bytes(&gpu).unwrap();
    assert!(after <= empty + (1 << 20), "{after} bytes stay reserved after the failed load (empty: {empty})");

    // The same device loads and edits; the result is the control for what follows.
    let mut model = KontextModel::load(&folder, Overrides::default(), &gpu).unwrap();
    let control = tiny_edit(&mut model, "a red square", &gpu, || {}).unwrap();

    // Streamed blocks are uploaded at every step: a failure there ends the edit at that step. (A new prompt makes
    // the text encoding release the resident DiT.)
    model.residency = Residency::STREAMED;
    let error =
        tiny_edit(&mut model, "a blue circle", &gpu, || faults::inject_out_of_memory_after(Some(0))).err().unwrap();
    assert!(error.to_string().starts_with("the GPU ran out of memory during denoising step 1, holding "), "{error}");
    assert!(model.flux.is_released(Layers::All) && !model.t5.is_resident() && !model.vae.is_resident());

    // The next edit uploads what it needs again and gives the control's latents.
    let again = tiny_edit(&mut model, "a red square", &gpu, || {}).unwrap();
    let differs = testing::max_abs_difference(&again, &control);
    assert!(differs <= 1e-5, "the edit after the failure differs by {differs}");
    assert!(faults::check(&gpu).is_none(), "no fault left over");
}
