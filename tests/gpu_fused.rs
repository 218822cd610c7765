//! The fused DiT kernels (`kontext_web::kernels::fused`) on burn's wgpu backend (Mesa lavapipe on machines
//! without a GPU) against their plain-ops twins on the same device, each with a negative control, and the
//! launches they save, counted.
#![cfg(not(target_arch = "wasm32"))]

use burn::tensor::{DType, FloatDType, Tensor, TensorData, Tolerance};
use kontext_web::device::launches::count_launches;
use kontext_web::device::selfcheck;
use kontext_web::harness::testing::{gpu, max_abs_difference_of};
use kontext_web::kernels::count_activation_bytes;
use kontext_web::kernels::fused::{self, HeadInput, RopeTables, reference};

const EPS: f64 = 1e-6;

/// Held by every test here: launch counts see every launch of the process, so nothing else may run beside a
/// count.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn random<const D: usize>(shape: [usize; D], salt: u32, amplitude: f32) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let data = selfcheck::test_matrix(1, n, salt).into_iter().map(|x| x * amplitude).collect::<Vec<_>>();
    Tensor::from_data(TensorData::new(data, shape), &gpu())
}

/// `ours` equals `expected` within `tolerance`, and `control` (the kernel given a wrong input) does not.
fn check<const D: usize>(what: &str, ours: Tensor<D>, expected: Tensor<D>, control: Tensor<D>, tolerance: f32) {
    let (diff, control_diff) =
        (max_abs_difference_of(ours, expected.clone()), max_abs_difference_of(control, expected));
    eprintln!("{what}: max |diff| {diff:e}, control {control_diff:e}");
    assert!(diff <= tolerance, "{what}: {diff} > {tolerance}");
    assert!(control_diff > 100.0 * tolerance.max(1e-5), "{what}: the control is within {control_diff}");
}

#[test]
fn layer_norm_modulate_equals_its_twin() {
    let _gpu = one_at_a_time();
    // Odd widths and rows, two samples, an offset mean (LayerNorm must centre), rows past 256 threads; every
    // lane count (8 to 256 lanes a row, 32 to 1 rows a workgroup) with a last workgroup part empty.
    for (b, n, w) in [(1, 1, 7), (3, 50, 64), (1, 9, 100), (2, 37, 130), (1, 11, 500), (1, 300, 3072), (2, 5, 1000)] {
        let x = random([b, n, w], 1, 3.0) + 5.0;
        let (shift, scale) = (random([b, 1, w], 2, 0.5), random([b, 1, w], 3, 0.5));
        let expected = reference::layer_norm_modulate(x.clone(), shift.clone(), scale.clone(), EPS);
        let ours = fused::layer_norm_modulate(x.clone(), shift.clone(), scale.clone(), EPS);
        let control = fused::layer_norm_modulate(x, scale, shift, EPS);
        check(&format!("layer_norm_modulate {b}×{n}×{w}"), ours, expected, control, 2e-5);
    }
}

#[test]
fn gelu_tanh_equals_its_twin_also_far_out() {
    let _gpu = one_at_a_time();
    let x = random([2, 33, 515], 4, 12.0);
    let expected = reference::gelu_tanh(x.clone());
    let control = fused::gelu_tanh(x.clone() * 1.01);
    check("gelu_tanh", fused::gelu_tanh(x), expected, control, 2e-5);
    let far = Tensor::<3>::from_data(TensorData::new(vec![-1e30f32, -90.0, 90.0, 1e30], [1, 1, 4]), &gpu());
    let expected = TensorData::new(vec![0.0f32, 0.0, 90.0, 1e30], [1, 1, 4]);
    fused::gelu_tanh(far).into_data().assert_approx_eq::<f32>(&expected, Tolerance::relative(1e-6));
}

#[test]
fn gated_add_equals_its_twin() {
    let _gpu = one_at_a_time();
    for (b, n, w) in [(1, 3, 5), (2, 70, 640)] {
        let (x, gate, y) = (random([b, n, w], 5, 1.0), random([b, 1, w], 6, 1.0), random([b, n, w], 7, 1.0));
        let expected = reference::gated_add(x.clone(), gate.clone(), y.clone());
        let control = fused::gated_add(x.clone(), gate.clone() * -1.0, y.clone());
        check(&format!("gated_add {b}×{n}×{w}"), fused::gated_add(x, gate, y), expected, control, 1e-6);
    }
}

/// RoPE tables of `n` tokens for heads `d` wide, angles up to ±`n`.
fn rope_tables(n: usize, d: usize) -> (Tensor<4>, Tensor<4>) {
    let angles = random([1, 1, n, d / 2], 8, n as f32);
    (angles.clone().cos(), angles.sin())
}

#[test]
fn split_heads_equals_its_twin_for_joined_streams() {
    let _gpu = one_at_a_time();
    let cases = [
        (1, vec![3, 5], 2, 8),
        (2, vec![17, 40], 3, 128),
        (1, vec![300], 4, 64),
        (2, vec![6, 1, 9], 2, 16),
        (1, vec![5, 7], 1, 256),
    ];
    for (b, parts, heads, d) in cases {
        let total = parts.iter().sum();
        let (cos, sin) = rope_tables(total, d);
        let rope = RopeTables { cos: &cos, sin: &sin };
        let inputs = |salt: u32, normed: bool| -> Vec<HeadInput> {
            (parts.iter().enumerate())
                .map(|(i, &n)| HeadInput {
                    x: random([b, n, heads * d], salt + i as u32, 2.0),
                    norm_scale: normed.then(|| random([d], salt + 10 + i as u32, 1.0) + 1.5),
                })
                .collect()
        };
        let what = format!("split_heads {b}×{parts:?}×{heads}×{d}");
        for (normed, rotated) in [(true, true), (false, false), (true, false), (false, true)] {
            let parts = inputs(20, normed);
            let rope = rotated.then_some(rope);
            let expected = reference::split_heads(parts.clone(), heads, rope, EPS);
            let ours = fused::split_heads(parts.clone(), heads, rope, EPS).unwrap();
            // The f16 variant stores the same values, each rounded once to f16 (within half an ulp, 2⁻¹¹).
            let halves = fused::split_heads_f16(parts.clone(), heads, rope, EPS).unwrap();
            assert_eq!(halves.dtype(), DType::F16, "{what}");
            let (h, f) = (halves.cast(FloatDType::F32).into_data(), ours.clone().into_data());
            let (h, f) = (h.iter::<f32>().collect::<Vec<_>>(), f.iter::<f32>().collect::<Vec<_>>());
            let worst = h.iter().zip(&f).map(|(a, b)| (a - b).abs() / b.abs().max(1e-4)).fold(0f32, f32::max);
            assert!(worst <= 1.0 / 2048.0 + 1e-6, "{what}: f16 heads off by {worst:e} relative");
            // The control joins the streams in the other order, or negates a lone stream.
            let mut swapped: Vec<HeadInput> = parts.into_iter().rev().collect();
            if swapped.len() == 1 {
                swapped[0].x = swapped[0].x.clone() * -1.0;
            }
            let control = fused::split_heads(swapped, heads, rope, EPS).unwrap();
            check(&format!("{what} norm {normed} rope {rotated}"), ours, expected, control, 2e-5);
        }
    }
    // Beyond f16's range the f16 heads are clamped to ±65504, as the coop kernel clamps the f32 heads it stages,
    // never ±inf; the values within it pass as they are.
    let wide = vec![HeadInput { x: random([1, 4, 2 * 8], 3, 1.0) * 1e5, norm_scale: None }];
    let halves = fused::split_heads_f16(wide.clone(), 2, None, EPS).unwrap().cast(FloatDType::F32).into_data();
    let exact = fused::split_heads(wide, 2, None, EPS).unwrap().into_data();
    let pairs: Vec<(f32, f32)> = halves.iter::<f32>().zip(exact.iter::<f32>()).collect();
    let clamped = pairs.iter().filter(|(_, x)| x.abs() > 65504.0).count();
    assert!(clamped > 0 && clamped < pairs.len(), "{clamped} of {} values beyond f16", pairs.len());
    for (half, x) in pairs {
        let want = x.clamp(-65504.0, 65504.0);
        assert!((half - want).abs() <= want.abs() / 2048.0, "{x} became {half} in f16");
    }
}

#[test]
fn residual_layer_norm_modulate_equals_its_twin() {
    let _gpu = one_at_a_time();
    for (b, n, w) in [(1, 1, 7), (3, 50, 64), (2, 37, 130), (1, 300, 3072)] {
        let (x, y) = (random([b, n, w], 1, 3.0) + 5.0, random([b, n, w], 2, 1.0));
        let [gate, shift, scale] = [3, 4, 5].map(|salt| random([b, 1, w], salt, 0.5));
        let (sum, normed) = reference::residual_layer_norm_modulate(
            x.clone(),
            gate.clone(),
            y.clone(),
            shift.clone(),
            scale.clone(),
            EPS,
        );
        let (our_sum, our_normed) =
            fused::residual_layer_norm_modulate(x.clone(), gate.clone(), y.clone(), shift.clone(), scale.clone(), EPS);
        let (control_sum, control_normed) =
            fused::residual_layer_norm_modulate(x, gate.clone() * -1.0, y, scale, shift, EPS);
        let what = format!("residual_layer_norm_modulate {b}×{n}×{w}");
        check(&format!("{what} sum"), our_sum, sum, control_sum, 2e-5);
        check(&format!("{what} normed"), our_normed, normed, control_normed, 2e-5);
    }
}

#[test]
fn merged_heads_equal_their_twins() {
    let _gpu = one_at_a_time();
    for (b, heads, n, d, split) in [(1, 2, 7, 8, 3), (2, 3, 40, 128, 17), (1, 4, 9, 16, 8), (1, 1, 5, 4, 1)] {
        let attention = random([b, heads, n, d], 1, 1.0);
        let shuffled = attention.clone().flip([2]);
        let (first, rest) = reference::merge_heads_split(attention.clone(), split);
        let (our_first, our_rest) = fused::merge_heads_split(attention.clone(), split);
        let (control_first, control_rest) = fused::merge_heads_split(shuffled.clone(), split);
        let what = format!("merge_heads_split {b}×{heads}×{n}×{d} at {split}");
        check(&format!("{what} first"), our_first, first, control_first, 0.0);
        check(&format!("{what} rest"), our_rest, rest, control_rest, 0.0);
        for tokens in [0..n, 1..n.min(4)] {
            let mlp = random([b, tokens.len(), 2 * d + 3], 2, 3.0);
            let expected = reference::merged_heads_beside_gelu(attention.clone(), tokens.clone(), mlp.clone());
            let ours = fused::merged_heads_beside_gelu(attention.clone(), tokens.clone(), mlp.clone());
            let control = fused::merged_heads_beside_gelu(shuffled.clone(), tokens.clone(), mlp);
            check(&format!("merged_heads_beside_gelu {b}×{heads}×{n}×{d} {tokens:?}"), ours, expected, control, 2e-5);
        }
    }
}

#[test]
fn split_heads_refuses_parts_that_disagree() {
    let _gpu = one_at_a_time();
    let part = |n: usize, w: usize| HeadInput { x: random([1, n, w], 1, 1.0), norm_scale: None };
    let err = fused::split_heads(vec![part(3, 16), part(2, 12)], 2, None, EPS).unwrap_err().to_string();
    assert!(err.contains("split_heads parts disagree"), "{err}");
    let err = fused::split_heads(vec![part(3, 15)], 2, None, EPS).unwrap_err().to_string();
    assert_eq!(err, "width 15 does not split into 2 heads");
    let (cos, sin) = rope_tables(4, 8);
    let err = fused::split_heads(vec![part(3, 16)], 2, Some(RopeTables { cos: &cos, sin: &sin }), EPS).unwrap_err();
    assert!(err.to_string().contains("do not rotate 3 tokens"), "{err}");
}

#[test]
fn each_fused_kernel_is_one_launch_where_its_twin_is_many() {
    let _gpu = one_at_a_time();
    let (x, shift, scale) = (random([1, 16, 64], 1, 1.0), random([1, 1, 64], 2, 1.0), random([1, 1, 64], 3, 1.0));
    let launches = |run: &dyn Fn() -> Tensor<3>| count_launches(|| run().into_data()).1.total();
    let fused_norm = launches(&|| fused::layer_norm_modulate(x.clone(), shift.clone(), scale.clone(), EPS));
    let twin_norm = launches(&|| reference::layer_norm_modulate(x.clone(), shift.clone(), scale.clone(), EPS));
    let (fused_gelu, twin_gelu) =
        (launches(&|| fused::gelu_tanh(x.clone())), launches(&|| reference::gelu_tanh(x.clone())));
    eprintln!(
        "layer norm + modulation: {fused_norm} launch(es), twin {twin_norm}; gelu {fused_gelu}, twin {twin_gelu}"
    );
    assert_eq!((fused_norm, fused_gelu), (1, 1));
    assert!(twin_norm >= 5 && twin_gelu >= 5, "the twins launch {twin_norm} and {twin_gelu}");
}

#[test]
fn activation_bytes_count_each_binding_of_ours_once_and_no_weight() {
    let _gpu = one_at_a_time();
    let x = random([1, 16, 64], 1, 1.0);
    let (out, counted) = count_activation_bytes(|| fused::gelu_tanh(x.clone()));
    out.into_data();
    assert_eq!((counted.bytes, counted.launches), (2 * 16 * 64 * 4, 1), "gelu reads x and writes y");
    // A packed matmul: x [16, 64] and y [16, 32]; its Q8_0 blocks and bias are weights.
    let device = gpu();
    let weights = kontext_web::formats::quant::quantize_q8_0(&vec![0.5f32; 32 * 64]).unwrap();
    let w = kontext_web::kernels::quant_matmul::PackedWeight::new(
        kontext_web::formats::quant::GgmlType::Q8_0,
        &[32, 64],
        &weights,
        &device,
    )
    .unwrap();
    let x = random([16, 64], 2, 1.0);
    let (y, counted) = count_activation_bytes(|| {
        kontext_web::kernels::quant_matmul::matmul_at(
            x.clone(),
            &w,
            None,
            kontext_web::kernels::precision::Precision::F32,
        )
    });
    y.into_data();
    assert_eq!((counted.bytes, counted.launches), ((16 * 64 + 16 * 32) * 4, 1));
    // burn's own ops are not counted.
    let (sum, counted) = count_activation_bytes(|| x.clone() + 1.0);
    sum.into_data();
    assert_eq!(counted, Default::default());
}
