//! The flash-attention kernel on burn's wgpu backend (Mesa lavapipe on machines without a GPU) against its
//! materialised reference twin, and the tiny Flux DiT on wgpu against the golden run.
#![cfg(not(target_arch = "wasm32"))]

use burn::tensor::{DType, FloatDType, Tensor, TensorData, Tolerance};
use kontext_web::device::launches::count_launches;
use kontext_web::device::{self, selfcheck};
use kontext_web::formats::SafetensorsFile;
use kontext_web::formats::weights::Weights;
use kontext_web::harness::testing::{assert_data_far_apart, gpu, max_abs_difference_of_data};
use kontext_web::kernels::attention::{
    AttentionKernel, attention, biased_attention, biased_reference, blocked_reference, flash_attention,
    flash_attention_in, gpu_attention, reads_f16_heads, reference,
};
use kontext_web::kernels::flash::{Adapter, FlashLayout, FlashShape};
use kontext_web::kernels::precision::Precision;
use kontext_web::model::FluxConfig;
use kontext_web::model::flux::Flux;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny");

/// Deterministic values in [-amplitude, amplitude].
fn values(shape: [usize; 4], salt: u32, amplitude: f32) -> TensorData {
    let n: usize = shape.iter().product();
    TensorData::new(selfcheck::test_matrix(1, n, salt).into_iter().map(|x| x * amplitude).collect(), shape)
}

/// Kernel on the GPU against the reference on the same GPU, for `q` `[b, h, lq, d]` and `k`, `v` `[b, h, lk, d]`;
/// with more than one key, the reference on the keys in reverse order is the negative control.
fn check(b: usize, h: usize, lq: usize, lk: usize, d: usize) {
    let gpu = gpu();
    // Amplitude 2 makes scores up to ~4·√d: a softmax far from uniform, where the running max matters.
    let q = Tensor::<4>::from_data(values([b, h, lq, d], 1, 2.0), &gpu);
    let k = Tensor::<4>::from_data(values([b, h, lk, d], 2, 2.0), &gpu);
    let v = Tensor::<4>::from_data(values([b, h, lk, d], 3, 1.0), &gpu);
    let expected = reference(q.clone(), k.clone(), v.clone()).into_data();
    let reversed = (lk > 1).then(|| reference(q.clone(), k.clone().flip([2]), v.clone()).into_data());
    for kernel in [AttentionKernel::Auto, AttentionKernel::Scores, AttentionKernel::Rows, AttentionKernel::Flash] {
        let ours = gpu_attention(kernel, q.clone(), k.clone(), v.clone()).expect("the kernel applies").into_data();
        assert_eq!(ours.shape(), expected.shape());
        eprintln!(
            "{kernel:?} (b {b}, h {h}, lq {lq}, lk {lk}, d {d}): max |diff| {:e}",
            max_abs_difference_of_data(&ours, &expected)
        );
        ours.assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-4));
        if let Some(reversed) = &reversed {
            assert_data_far_apart(&ours, reversed, 1e-4, &format!("{kernel:?}, the keys reversed"));
        }
    }
}

#[test]
fn flash_kernel_equals_the_reference_on_small_shapes() {
    for (b, h, l, d) in [(1, 1, 1, 16), (1, 2, 37, 16), (2, 3, 130, 32), (1, 1, 300, 128)] {
        check(b, h, l, l, d);
    }
}

#[test]
fn flash_kernel_handles_unequal_lengths_odd_widths_and_the_widest_head() {
    check(1, 2, 70, 9, 32);
    check(1, 1, 5, 200, 48);
    check(1, 1, 65, 23, 256);
    check(2, 1, 33, 50, 7);
    // Width not a multiple of 4, with the keys over three dispatches of the `rows` kernel on llvmpipe.
    check(1, 1, 3, 700, 250);
}

#[test]
fn every_flash_layout_equals_the_reference_and_a_wrong_key_order_does_not() {
    let gpu = gpu();
    let layouts = [
        (4, 1, 32, 4, true),
        (4, 1, 32, 4, false),
        (1, 1, 64, 1, false),
        (2, 4, 64, 4, false),
        (3, 2, 16, 2, false),
        (1, 8, 32, 8, false),
        (3, 1, 8, 2, true),
    ]
    .map(|(rows_per_thread, threads_per_row, threads, keys_per_step, broadcast)| FlashLayout {
        rows_per_thread,
        threads_per_row,
        threads,
        keys_per_step,
        broadcast,
    });
    // Subgroups of 8 on lavapipe; the layouts that share rows need them.
    let subgroups = device::subgroup_min_size().unwrap_or(0);
    for (b, h, lq, lk, d) in [(1, 2, 37, 41, 16), (1, 1, 70, 130, 128), (2, 1, 33, 9, 7), (1, 1, 5, 300, 64)] {
        let q = Tensor::<4>::from_data(values([b, h, lq, d], 1, 2.0), &gpu);
        let k = Tensor::<4>::from_data(values([b, h, lk, d], 2, 2.0), &gpu);
        let v = Tensor::<4>::from_data(values([b, h, lk, d], 3, 1.0), &gpu);
        let expected = reference(q.clone(), k.clone(), v.clone()).into_data();
        for layout in layouts {
            let ours = flash_attention_in(layout, q.clone(), k.clone(), v.clone());
            if layout.threads_per_row > subgroups || (layout.broadcast && subgroups == 0) {
                assert!(ours.unwrap_err().to_string().contains("subgroups"), "{layout:?}");
                continue;
            }
            let ours = ours.unwrap().into_data();
            eprintln!(
                "{layout:?} (b {b}, h {h}, lq {lq}, lk {lk}, d {d}): max |diff| {:e}",
                max_abs_difference_of_data(&ours, &expected)
            );
            ours.assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-4));
            // Negative control: keys in another order (values kept) must change the result.
            let wrong = flash_attention_in(layout, q.clone(), k.clone().flip([2]), v.clone()).unwrap().into_data();
            assert!(max_abs_difference_of_data(&wrong, &expected) > 1e-3, "{layout:?}");
        }
    }
}

#[test]
fn the_vae_s_512_wide_head_runs_on_the_flash_kernel_split_over_invocations() {
    let gpu = gpu();
    let (lq, lk, d) = (40, 70, 512);
    let q = Tensor::<4>::from_data(values([1, 1, lq, d], 4, 1.0), &gpu);
    let k = Tensor::<4>::from_data(values([1, 1, lk, d], 5, 1.0), &gpu);
    let v = Tensor::<4>::from_data(values([1, 1, lk, d], 6, 1.0), &gpu);
    let expected = reference(q.clone(), k.clone(), v.clone()).into_data();
    // The adapter's own layout (on lavapipe 4 invocations per row, 128 columns each), and 8 per row.
    let split =
        FlashLayout { rows_per_thread: 2, threads_per_row: 8, threads: 128, keys_per_step: 4, broadcast: false };
    let runs = [
        ("own layout", flash_attention(q.clone(), k.clone(), v.clone())),
        ("8 per row", flash_attention_in(split, q.clone(), k.clone(), v.clone())),
    ];
    for (what, ours) in runs {
        let ours = ours.unwrap_or_else(|e| panic!("{what}: {e}")).into_data();
        eprintln!("d 512, {what}: max |diff| {:e}", max_abs_difference_of_data(&ours, &expected));
        ours.assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-4));
    }
    // The model's attention takes it too (no scores), and a wrong key order changes it.
    attention(q.clone(), k.clone(), v.clone())
        .into_data()
        .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-4));
    let wrong = flash_attention(q, k.flip([2]), v).unwrap().into_data();
    assert!(max_abs_difference_of_data(&wrong, &expected) > 1e-3);
}

#[test]
fn f16_inputs_run_on_the_flash_kernel_with_f32_statistics_and_the_other_paths_widen_them() {
    let gpu = gpu();
    assert!(Precision::f16_available(&gpu), "this adapter has no shader-f16: the f16 flash kernel cannot be checked");
    // A model computing in f16 writes its heads in f16 where the flash kernel takes them: always on CPU adapters,
    // never past its widest head or on the CPU backend.
    assert!(reads_f16_heads(&gpu, 100, 100, 128) && !reads_f16_heads(&gpu, 100, 100, 600));
    assert!(!reads_f16_heads(&device::cpu(), 100, 100, 128));
    let (b, h, lq, lk) = (1, 2, 45, 90);
    for d in [128, 512, 7] {
        let f32_inputs = [(lq, 1, 2.0), (lk, 2, 2.0), (lk, 3, 1.0)]
            .map(|(l, salt, a)| Tensor::<4>::from_data(values([b, h, l, d], salt, a), &gpu));
        let [q, k, v] = f32_inputs.map(|t| t.cast(FloatDType::F16));
        // The reference on the same (f16-rounded) values in f32: only the order of the f32 sums differs.
        let widened = [&q, &k, &v].map(|t| t.clone().cast(FloatDType::F32));
        let expected = reference(widened[0].clone(), widened[1].clone(), widened[2].clone()).into_data();
        let ours = flash_attention(q.clone(), k.clone(), v.clone()).unwrap();
        assert_eq!(ours.dtype(), DType::F32);
        let ours = ours.into_data();
        eprintln!("f16 inputs, d {d}: max |diff| {:e}", max_abs_difference_of_data(&ours, &expected));
        ours.assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-4));
        let wrong = flash_attention(q.clone(), k.clone().flip([2]), v.clone()).unwrap().into_data();
        assert!(max_abs_difference_of_data(&wrong, &expected) > 1e-3, "d {d}");
        // The blocked scores widen f16 inputs to f32.
        let scores = gpu_attention(AttentionKernel::Scores, q, k, v).unwrap().into_data();
        scores.assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
    }
}

#[test]
fn flash_kernel_carries_its_running_softmax_over_several_llvmpipe_dispatches() {
    let (lq, lk, d) = (3, 230_000, 16);
    let gpu = gpu();
    // lavapipe's layout: the keys span three dispatches there (on a real GPU one dispatch takes them all).
    let adapter = Adapter { software: true, subgroup_min: device::subgroup_min_size(), shared_bytes: 32 << 10 };
    let shape = FlashShape::new(d, 256, FlashLayout::for_adapter(adapter, d).unwrap(), adapter, false).unwrap();
    assert!(lk > 2 * shape.llvmpipe_keys_per_dispatch(), "{shape:?}");
    let (q, k, v) = (values([1, 1, lq, d], 7, 2.0), values([1, 1, lk, d], 8, 2.0), values([1, 1, lk, d], 9, 1.0));
    // The last key is query 0 scaled up, with a value of 10s, and the first key query 1 scaled up, with −10s:
    // they dominate rows 0 and 1, so an output that missed the last dispatch, or lost what the first one
    // carried, is far off.
    let host = |x: &TensorData| x.iter::<f32>().collect::<Vec<_>>();
    let (query, mut keys, mut vals) = (host(&q), host(&k), host(&v));
    keys[(lk - 1) * d..].iter_mut().zip(&query[..d]).for_each(|(key, x)| *key = 4.0 * x);
    vals[(lk - 1) * d..].fill(10.0);
    keys[..d].iter_mut().zip(&query[d..2 * d]).for_each(|(key, x)| *key = 4.0 * x);
    vals[..d].fill(-10.0);
    let (k, v) = (TensorData::new(keys, [1, 1, lk, d]), TensorData::new(vals, [1, 1, lk, d]));
    let ours = flash_attention(
        Tensor::from_data(q.clone(), &gpu),
        Tensor::from_data(k.clone(), &gpu),
        Tensor::from_data(v.clone(), &gpu),
    )
    .unwrap()
    .into_data();
    let cpu = device::cpu();
    let (q, k, v) = (Tensor::<4>::from_data(q, &cpu), Tensor::<4>::from_data(k, &cpu), Tensor::<4>::from_data(v, &cpu));
    let expected = reference(q.clone(), k.clone(), v.clone()).into_data();
    eprintln!("{lk} keys: max |diff| {:e}", max_abs_difference_of_data(&ours, &expected));
    // Rows near ±10, each an f32 running sum over 230,000 keys (one key at a time in the kernel, burn's own
    // order in the reference): 5e-3 is 5e-4 of them, and the controls below are off by more than 1.
    ours.assert_approx_eq::<f32>(&expected, Tolerance::absolute(5e-3));
    // Negative controls: without the last key, or without the first, the same comparison fails.
    let without_last = reference(q.clone(), k.clone().narrow(2, 0, lk - 1), v.clone().narrow(2, 0, lk - 1)).into_data();
    assert!(max_abs_difference_of_data(&ours, &without_last) > 1.0);
    let without_first = reference(q, k.narrow(2, 1, lk - 1), v.narrow(2, 1, lk - 1)).into_data();
    assert!(max_abs_difference_of_data(&ours, &without_first) > 1.0);
}

/// `[1, l, l]`: 0 on and below the diagonal, `f32::MIN` above it (CLIP's causal mask).
fn causal_bias(l: usize) -> TensorData {
    let bias = (0..l * l).map(|i| if i % l > i / l { f32::MIN } else { 0.0 }).collect();
    TensorData::new(bias, [1, l, l])
}

#[test]
fn biased_flash_equals_the_biased_reference_with_a_bias_per_head_or_a_causal_one() {
    let gpu = gpu();
    // T5's shape (unscaled, a bias per head), CLIP's (scaled, causal), an odd width and fewer queries than keys.
    for (b, h, lq, lk, d, per_head, scale) in [
        (1, 4, 130, 130, 64, true, 1.0),
        (2, 3, 77, 77, 8, false, 8f32.powf(-0.5)),
        (1, 2, 40, 70, 9, true, 0.5),
        (1, 2, 33, 33, 16, false, 0.25),
    ] {
        let t = |shape, salt, amplitude| Tensor::<4>::from_data(values(shape, salt, amplitude), &gpu);
        let (q, k, v) = (t([b, h, lq, d], 1, 2.0), t([b, h, lk, d], 2, 2.0), t([b, h, lk, d], 3, 1.0));
        let bias = match per_head {
            true => t([1, h, lq, lk], 4, 3.0).reshape([h, lq, lk]),
            false => Tensor::<3>::from_data(causal_bias(lq), &gpu),
        };
        let (ours, launches) =
            count_launches(|| biased_attention(q.clone(), k.clone(), v.clone(), bias.clone(), scale).into_data());
        let names = launches.ranked();
        assert!(
            names.iter().any(|(name, _)| name.starts_with("flash_attention_d") && name.ends_with("_bias")),
            "{names:?}"
        );
        let expected = biased_reference(q.clone(), k.clone(), v.clone(), bias.clone(), scale).into_data();
        eprintln!(
            "biased (b {b}, h {h}, lq {lq}, lk {lk}, d {d}): max |diff| {:e}",
            max_abs_difference_of_data(&ours, &expected)
        );
        ours.assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-4));
        // Negative controls: without the bias, and with each head's bias moved to the next, the same comparison
        // fails.
        let unbiased = biased_reference(q.clone(), k.clone(), v.clone(), bias.clone().zeros_like(), scale).into_data();
        assert!(max_abs_difference_of_data(&ours, &unbiased) > 1e-2, "the bias changes nothing here");
        if per_head {
            let moved = Tensor::cat(vec![bias.clone().narrow(0, 1, h - 1), bias.narrow(0, 0, 1)], 0);
            let moved = biased_reference(q, k, v, moved, scale).into_data();
            assert!(max_abs_difference_of_data(&ours, &moved) > 1e-2, "the heads' biases are interchangeable here");
        }
    }
}

#[test]
fn biased_flash_carries_the_bias_over_several_llvmpipe_dispatches() {
    let (lq, lk, d) = (3, 230_000, 16);
    let gpu = gpu();
    let (q, k, v) = (values([1, 1, lq, d], 7, 2.0), values([1, 1, lk, d], 8, 2.0), values([1, 1, lk, d], 9, 1.0));
    // Values of 10s at the last key and −10s at the first; the bias makes the last key dominate row 0 (+40) and
    // the first dominate row 1 (+40), and masks the last key from row 2: the keys of the first and last
    // dispatches decide the rows.
    let mut vals = v.iter::<f32>().collect::<Vec<_>>();
    vals[(lk - 1) * d..].fill(10.0);
    vals[..d].fill(-10.0);
    let v = TensorData::new(vals, [1, 1, lk, d]);
    let mut bias = vec![0f32; lq * lk];
    bias[lk - 1] = 40.0;
    bias[lk] = 40.0;
    bias[3 * lk - 1] = f32::MIN;
    let bias = TensorData::new(bias, [1, lq, lk]);
    let on = |device| {
        let [q, k, v] = [&q, &k, &v].map(|x| Tensor::<4>::from_data(x.clone(), device));
        (q, k, v, Tensor::<3>::from_data(bias.clone(), device))
    };
    let (q_gpu, k_gpu, v_gpu, bias_gpu) = on(&gpu);
    let ours = biased_attention(q_gpu, k_gpu, v_gpu, bias_gpu, 0.25).into_data();
    let (q, k, v, bias) = on(&device::cpu());
    let expected = biased_reference(q.clone(), k.clone(), v.clone(), bias.clone(), 0.25).into_data();
    eprintln!("biased, {lk} keys: max |diff| {:e}", max_abs_difference_of_data(&ours, &expected));
    ours.assert_approx_eq::<f32>(&expected, Tolerance::absolute(5e-3));
    let unbiased = biased_reference(q, k, v, bias.zeros_like(), 0.25).into_data();
    assert!(max_abs_difference_of_data(&ours, &unbiased) > 1.0);
}

#[test]
fn flash_kernel_at_4096_tokens_equals_the_cpu_reference_in_query_chunks() {
    let (l, d, chunk) = (4096, 16, 512);
    let q = values([1, 1, l, d], 4, 2.0);
    let k = values([1, 1, l, d], 5, 2.0);
    let v = values([1, 1, l, d], 6, 1.0);
    let gpu = gpu();
    let on_gpu = |kernel| {
        let [q, k, v] = [&q, &k, &v].map(|x| Tensor::from_data(x.clone(), &gpu));
        gpu_attention(kernel, q, k, v).unwrap().into_data()
    };
    let ours = [AttentionKernel::Scores, AttentionKernel::Rows, AttentionKernel::Flash].map(on_gpu);

    let cpu = device::cpu();
    let (q, k, v) = (Tensor::<4>::from_data(q, &cpu), Tensor::<4>::from_data(k, &cpu), Tensor::<4>::from_data(v, &cpu));
    let chunks = (0..l).step_by(chunk).map(|start| reference(q.clone().narrow(2, start, chunk), k.clone(), v.clone()));
    let expected = Tensor::cat(chunks.collect(), 2).into_data();
    // Negative control: the first chunk's reference with the keys reversed.
    let reversed = reference(q.narrow(2, 0, chunk), k.flip([2]), v).into_data();
    for ours in ours {
        eprintln!("L {l}: max |diff| {:e}", max_abs_difference_of_data(&ours, &expected));
        ours.assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-4));
        let first = Tensor::<4>::from_data(ours, &cpu).narrow(2, 0, chunk).into_data();
        assert_data_far_apart(&first, &reversed, 1e-4, &format!("L {l}, the keys reversed"));
    }
}

#[test]
fn blocked_reference_equals_the_reference_for_every_block_shape() {
    let gpu = gpu();
    let t = |shape: [usize; 4], salt| Tensor::<4>::from_data(values(shape, salt, 2.0), &gpu);
    let (q, k, v) = (t([2, 3, 37, 16], 1), t([2, 3, 29, 16], 2), t([2, 3, 29, 16], 3));
    let expected = reference(q.clone(), k.clone(), v.clone()).into_data();
    // Scores of 29 keys are 116 bytes a row: blocks of one row, of 10 rows, of two whole heads, of everything.
    for bytes in [1, 116, 1160, 2 * 37 * 116, 1 << 20] {
        let ours = blocked_reference(q.clone(), k.clone(), v.clone(), bytes).into_data();
        eprintln!("blocks of {bytes} bytes: max |diff| {:e}", max_abs_difference_of_data(&ours, &expected));
        ours.assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
    }
    // Negative control: the same comparison fails for keys in another order.
    let shuffled = blocked_reference(q, k.clone().flip([2]), v, 1160).into_data();
    assert!(max_abs_difference_of_data(&shuffled, &expected) > 1e-3);
}

#[test]
fn attention_falls_back_to_the_reference_for_heads_wider_than_the_kernel() {
    let gpu = gpu();
    let t = |salt| Tensor::<4>::from_data(values([1, 1, 9, 520], salt, 1.0), &gpu);
    assert!(flash_attention(t(1), t(2), t(3)).is_err());
    let ours = attention(t(1), t(2), t(3)).into_data();
    ours.assert_approx_eq::<f32>(&reference(t(1), t(2), t(3)).into_data(), Tolerance::absolute(0.0));
    let reversed = reference(t(1), t(2).flip([2]), t(3)).into_data();
    assert_data_far_apart(&ours, &reversed, 1e-4, "520 wide, the keys reversed");
}

#[test]
fn flux_dit_on_wgpu_matches_the_golden_run() -> Result<(), Box<dyn std::error::Error>> {
    let gpu = gpu();
    let weights = SafetensorsFile::open(std::fs::read(format!("{TINY}/bfl_gguf/transformer_bfl.safetensors"))?)?;
    let model = Flux::load(&FluxConfig::tiny(), &weights, &gpu)?;
    let run = SafetensorsFile::open(std::fs::read(format!("{TINY}/golden/golden_run.safetensors"))?)?;
    let input = |key: &str| -> Result<TensorData, Box<dyn std::error::Error>> {
        let host = run.read(&format!("transformer_in_0_{key}"))?;
        Ok(TensorData::new(host.data, host.shape))
    };
    let out = model.forward(
        Tensor::from_data(input("hidden_states")?, &gpu),
        Tensor::from_data(input("img_ids")?, &gpu),
        Tensor::from_data(input("encoder_hidden_states")?, &gpu),
        Tensor::from_data(input("txt_ids")?, &gpu),
        Tensor::from_data(input("timestep")?, &gpu),
        Tensor::from_data(input("pooled_projections")?, &gpu),
        Some(Tensor::from_data(input("guidance")?, &gpu)),
    )?;
    let golden = run.read("transformer_out_0")?;
    let golden = TensorData::new(golden.data, golden.shape);
    let out = out.into_data();
    eprintln!("transformer_out_0 on wgpu: max |diff| {:e}", max_abs_difference_of_data(&out, &golden));
    out.assert_approx_eq::<f32>(&golden, Tolerance::absolute(1e-4));
    // Negative control: the golden output of the next call (other latents and timestep).
    let next = run.read("transformer_out_1")?;
    assert_data_far_apart(&out, &TensorData::new(next.data, next.shape), 1e-4, "the DiT against the next call");
    Ok(())
}
