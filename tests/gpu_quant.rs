//! Matmuls over ggml blocks packed on the GPU (`kernels::quant_matmul`, wgpu; lavapipe without a GPU) equal
//! their reference twin: the same blocks dequantized on the host and multiplied on the CPU, computing in f32 and,
//! where the adapter has `shader-f16` (lavapipe has), in f16.
#![cfg(not(target_arch = "wasm32"))]

use burn::tensor::{DType, Device, Tensor, TensorData, Tolerance};
use half::f16;
use kontext_web::device::{self, selfcheck};
use kontext_web::formats::weights::Weights;
use kontext_web::formats::{GgmlType, GgufFile, dequantize};
use kontext_web::harness::kernel_checks;
use kontext_web::harness::testing::{self, fixture_path, gpu};
use kontext_web::kernels::precision::Precision;
use kontext_web::kernels::quant_matmul::PlainKernel::{Matvec, Square, Wide};
use kontext_web::kernels::quant_matmul::{
    Epilogue, PackedLinear, PackedWeight, has_kernel, matmul_at, matmul_in, reference,
};

fn gguf(rel: &str) -> GgufFile {
    testing::gguf(&format!("bfl_gguf/{rel}"))
}

/// A ggml weight as `GgufFile::raw` returns it.
struct Raw {
    ty: GgmlType,
    n: usize,
    k: usize,
    bytes: Vec<u8>,
}

impl Raw {
    fn of(file: &GgufFile, name: &str) -> Self {
        let (ty, shape, bytes) = file.raw(name).unwrap();
        Raw { ty, n: shape[0], k: shape[1], bytes }
    }

    fn row_bytes(&self) -> usize {
        self.k / self.ty.block_size() * self.ty.type_size()
    }

    /// Whole rows `rows` of the matrix.
    fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        let r = self.row_bytes();
        Raw { ty: self.ty, n: rows.len(), k: self.k, bytes: self.bytes[rows.start * r..rows.end * r].to_vec() }
    }

    /// The first `k` columns (whole blocks) of every row.
    fn first_columns(&self, k: usize) -> Self {
        let take = k / self.ty.block_size() * self.ty.type_size();
        let bytes = self.bytes.chunks(self.row_bytes()).flat_map(|row| row[..take].to_vec()).collect();
        Raw { ty: self.ty, n: self.n, k, bytes }
    }

    /// The rows of `self` followed by those of `other`.
    fn stack(mut self, other: &Raw) -> Self {
        assert_eq!((self.ty, self.k), (other.ty, other.k));
        self.bytes.extend(&other.bytes);
        self.n += other.n;
        self
    }

    fn packed(&self, device: &Device) -> PackedWeight {
        PackedWeight::new(self.ty, &[self.n, self.k], &self.bytes, device).unwrap()
    }
}

fn input(m: usize, k: usize, salt: u32, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(selfcheck::test_matrix(m, k, salt), [m, k]), device)
}

/// `values` `[rows, cols]` rounded to f16, as the f16 kernels hold them, on the CPU.
fn rounded_to_f16(values: Vec<f32>, rows: usize, cols: usize) -> Tensor<2> {
    let values = values.into_iter().map(|v| f16::from_f32(v).to_f32()).collect();
    Tensor::from_data(TensorData::new(values, [rows, cols]), &device::cpu())
}

/// Kernel on wgpu vs reference twin on the CPU for each M and kernel (the matrix-vector kernel up to 8 rows, the
/// square and the wide one with partial tiles, each named, so every kernel runs whichever this adapter would
/// choose), computing in f32 and in f16 (the adapter must have `shader-f16`, as lavapipe does). The control: the
/// twin on the negated input is further from each kernel's output than any tolerance here.
fn assert_kernel_matches(raw: &Raw, bias: Option<&[f32]>, what: &str) {
    assert_kernel_matches_at(raw, bias, what, Precision::F32);
    assert!(
        Precision::f16_available(&gpu()),
        "this adapter has no shader-f16: the f16 kernels cannot be checked on it"
    );
    assert_kernel_matches_at(raw, bias, what, Precision::F16);
}

fn assert_kernel_matches_at(raw: &Raw, bias: Option<&[f32]>, what: &str, precision: Precision) {
    let (gpu, cpu) = (gpu(), device::cpu());
    let packed = raw.packed(&gpu);
    assert!(packed.is_packed(), "{what}: {} stays packed on wgpu", raw.ty);
    let dense = raw.packed(&cpu);
    assert!(!dense.is_packed());
    let bias_on = |d: &Device| bias.map(|b| Tensor::<1>::from_data(TensorData::new(b.to_vec(), [b.len()]), d));
    let (gpu_bias, cpu_bias) = (bias_on(&gpu), bias_on(&cpu));
    let mut worst = 0f32;
    let mut worst_rel = 0f32;
    let mut weakest_control = f32::INFINITY;
    for (m, kernel) in [(1, Matvec), (3, Matvec), (6, Matvec), (37, Square), (70, Square), (70, Wide), (300, Wide)] {
        let x = input(m, raw.k, m as u32, &gpu);
        let got = matmul_in(x, &packed, gpu_bias.as_ref(), kernel, precision, Epilogue::Plain).into_data();
        assert_eq!(got.shape().as_slice(), [m, raw.n], "{what}");
        let g = got.try_to_vec::<f32>().unwrap();
        let x = input(m, raw.k, m as u32, &cpu);
        let want = matmul_at(x.clone(), &dense, cpu_bias.as_ref(), Precision::F32).into_data();
        let w = want.try_to_vec::<f32>().unwrap();
        let scale = w.iter().fold(0f32, |a, v| a.max(v.abs()));
        let other = matmul_at(x.clone().neg(), &dense, cpu_bias.as_ref(), Precision::F32);
        let control = testing::max_abs_difference(&g, &other.into_data().try_to_vec::<f32>().unwrap()) / scale;
        assert!(control > 2e-2, "{what}: M = {m}, the twin on the negated input is within {control:.2e} of max |y|");
        weakest_control = weakest_control.min(control);
        match precision {
            Precision::F32 => {
                worst = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
                got.assert_approx_eq::<f32>(&want, Tolerance::rel_abs(1e-4, 1e-4));
            }
            Precision::F16 => {
                // Against the twin on x and W rounded to f16: only the f16 rounding of each product and the
                // order of the f32 sums differ (half an ulp of f16 is 4.9e-4 relative).
                let x16 = rounded_to_f16(x.clone().into_data().try_to_vec::<f32>().unwrap(), m, raw.k);
                let w16 = rounded_to_f16(dequantize(raw.ty, &raw.bytes, raw.n * raw.k).unwrap(), raw.n, raw.k);
                let twin = reference(x16, w16, cpu_bias.clone()).into_data();
                let t = twin.try_to_vec::<f32>().unwrap();
                worst = g.iter().zip(&t).map(|(a, b)| (a - b).abs() / b.abs().max(1e-3 * scale)).fold(worst, f32::max);
                got.assert_approx_eq::<f32>(&twin, Tolerance::rel_abs(1e-3, 1e-3 * scale));
                // Against the f32 twin: the rounding of x and W too, relative to the largest output (measured ≤ 1.5e-3
                // over every type and shape here).
                let rel = testing::max_abs_difference(&g, &w) / scale;
                worst_rel = worst_rel.max(rel);
                assert!(rel <= 2e-3, "{what}: M = {m}, max |f16 − f32 twin| / max |y| = {rel:.2e}");
            }
        }
    }
    eprintln!(
        "{what}: {} [{}, {}] control: the negated input ≥ {weakest_control:.2e} of max |y|",
        raw.ty, raw.n, raw.k
    );
    match precision {
        Precision::F32 => {
            eprintln!("{what}: {} [{}, {}] f32 worst |kernel − reference| {worst:.2e}", raw.ty, raw.n, raw.k)
        }
        Precision::F16 => eprintln!(
            "{what}: {} [{}, {}] f16 worst relative error {worst:.2e} to the twin on f16 x and W, max |Δ| / max |y| \
             {worst_rel:.2e} to the f32 twin",
            raw.ty, raw.n, raw.k
        ),
    }
}

#[test]
fn quant_vector_blocks_multiply_like_the_reference_twin() {
    let file = gguf("quant_vectors.gguf");
    let mut covered = Vec::new();
    for info in file.tensors() {
        if !has_kernel(info.ggml_type) {
            continue;
        }
        let raw = Raw::of(&file, &info.name);
        assert_eq!((raw.n, raw.k), (4, 512), "{}", info.name);
        assert_kernel_matches(&raw, None, &info.name);
        // N odd with K = one block (32 values for f16), and one row with a bias and K = 96 or both Q4_K blocks.
        let block = raw.ty.block_size().max(32);
        assert_kernel_matches(&raw.rows(1..4).first_columns(block), None, &info.name);
        assert_kernel_matches(&raw.rows(1..2).first_columns((3 * block).min(raw.k)), Some(&[0.5]), &info.name);
        covered.push(raw.ty);
    }
    covered.sort();
    use GgmlType::*;
    assert_eq!(covered, [F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, BF16]);
}

/// The same check as the browser tests (`tests/web.rs`, `tests/web_worker.rs`) on the native wgpu device, with f32
/// and f16 compute (lavapipe has `shader-f16`).
#[test]
fn every_quant_vector_type_multiplies_like_its_golden() {
    let gpu = gpu();
    assert!(Precision::f16_available(&gpu), "this adapter has no shader-f16: the f16 kernels cannot be checked on it");
    let read = |name: &str| std::fs::read(fixture_path(&format!("bfl_gguf/{name}"))).unwrap();
    let report = pollster::block_on(kernel_checks::assert_quant_vectors_at_each_precision(
        read("quant_vectors.gguf"),
        read("quant_vectors_expected.safetensors"),
        &gpu,
    ));
    eprintln!("{report}");
    assert!(!report.contains("SKIPPED"), "{report}");
}

#[test]
fn transformer_blocks_multiply_like_the_reference_twin() {
    for kind in ["Q8_0", "Q4_0"] {
        let file = gguf(&format!("transformer_bfl-{kind}.gguf"));
        let raw = Raw::of(&file, "double_blocks.0.img_mlp.0.weight");
        assert_eq!((raw.ty.name(), raw.n, raw.k), (kind, 256, 64));
        let bias = file.read("double_blocks.0.img_mlp.0.bias").unwrap().data;
        // N beyond one 64-wide tile and odd; K = two blocks.
        assert_kernel_matches(&raw.rows(0..67), Some(&bias[..67]), kind);
        assert_kernel_matches(&raw, Some(&bias), kind);
    }
    let file = gguf("transformer_bfl-Q4_K_S.gguf");
    let names = ["double_blocks.0.img_mlp.2", "double_blocks.0.txt_mlp.2", "double_blocks.1.img_mlp.2"];
    let raws: Vec<Raw> = names.iter().map(|n| Raw::of(&file, &format!("{n}.weight"))).collect();
    assert_eq!((raws[0].ty, raws[0].n, raws[0].k), (GgmlType::Q4_K, 64, 256));
    let stacked = raws[1..].iter().fold(raws[0].rows(0..64), |acc, r| acc.stack(r));
    assert_kernel_matches(&stacked.rows(5..136), None, "Q4_K");
    let qkv = Raw::of(&file, "double_blocks.0.img_attn.qkv.weight");
    assert_eq!(qkv.ty, GgmlType::F16);
    assert_kernel_matches(&qkv.rows(0..131), None, "F16");
}

/// `n` rows of `k` values of `ty` with pseudo-random quants and sane f16 scales at `scale_offsets` of each block.
fn synthetic(ty: GgmlType, n: usize, k: usize, scale_offsets: &[usize]) -> Raw {
    let mut bytes = testing::pseudo_random_bytes(n * k / ty.block_size() * ty.type_size(), 0x9e37_79b9);
    for (b, block) in bytes.chunks_mut(ty.type_size()).enumerate() {
        for (i, &at) in scale_offsets.iter().enumerate() {
            let scale = 0.0005 * (1 + (b + i) % 5) as f32;
            block[at..at + 2].copy_from_slice(&f16::from_f32(scale).to_le_bytes());
        }
    }
    Raw { ty, n, k, bytes }
}

#[test]
fn q5_k_and_q6_k_blocks_multiply_like_the_reference_twin() {
    for (ty, scales) in
        [(GgmlType::Q5_K, &[0usize, 2][..]), (GgmlType::Q6_K, &[208][..]), (GgmlType::Q4_K, &[0, 2][..])]
    {
        let raw = synthetic(ty, 133, 512, scales);
        assert_kernel_matches(&raw, None, ty.name());
        assert_kernel_matches(&raw.rows(0..1).first_columns(256), Some(&[-1.5]), ty.name());
    }
}

#[test]
fn packed_linear_on_wgpu_keeps_the_file_bytes_and_matches_the_cpu() {
    let file = gguf("transformer_bfl-Q4_0.gguf");
    let (gpu, cpu) = (gpu(), device::cpu());
    let layer = |device: &Device| {
        let weight = PackedWeight::from_gguf(&file, "double_blocks.0.img_mlp.0.weight", device).unwrap();
        let bias = file.read("double_blocks.0.img_mlp.0.bias").unwrap();
        let bias = Tensor::<1>::from_data(TensorData::new(bias.data, [bias.shape[0]]), device);
        PackedLinear::new(weight, Some(bias)).unwrap()
    };
    let (on_gpu, on_cpu) = (layer(&gpu), layer(&cpu));
    let file_bytes = file.tensor("double_blocks.0.img_mlp.0.weight").unwrap().len as usize;
    assert!(on_gpu.weight.is_packed());
    assert!(on_gpu.weight.device_bytes() as f64 <= 1.05 * file_bytes as f64, "{}", on_gpu.weight.device_bytes());
    assert!(on_gpu.weight.device_bytes() >= file_bytes);
    assert_eq!(on_cpu.weight.device_bytes(), 256 * 64 * 4);
    assert_eq!(on_gpu.device_bytes(), on_gpu.weight.device_bytes() + 256 * 4);

    // [b, n, k] with a strided (transposed) view as input.
    let x = |device: &Device| {
        let flat = selfcheck::test_matrix(2 * 64, 5, 11);
        Tensor::<3>::from_data(TensorData::new(flat, [2, 64, 5]), device).swap_dims(1, 2)
    };
    // The layer runs at the device's precision: f16 compute where the adapter has shader-f16.
    let got = on_gpu.forward(x(&gpu));
    assert_eq!(got.dims(), [2, 5, 256]);
    let tolerance = match Precision::of(&gpu) {
        Precision::F32 => Tolerance::rel_abs(1e-4, 1e-4),
        Precision::F16 => Tolerance::rel_abs(4e-3, 4e-3),
    };
    got.into_data().assert_approx_eq::<f32>(&on_cpu.forward(x(&cpu)).into_data(), tolerance);

    // Every block type of the Q4_0 and Q8_0 files stays within 5 % of its file bytes (u32 padding only).
    for kind in ["Q4_0", "Q8_0"] {
        let file = gguf(&format!("transformer_bfl-{kind}.gguf"));
        for info in file.tensors().iter().filter(|t| t.shape.len() == 2 && t.ggml_type.name() == kind) {
            let weight = PackedWeight::from_gguf(&file, &info.name, &gpu).unwrap();
            assert!(weight.is_packed());
            assert!(weight.device_bytes() as f64 <= 1.05 * info.len as f64, "{}", info.name);
        }
    }
}

#[test]
fn f16_compute_takes_and_gives_f32_tensors() {
    let gpu = gpu();
    // Lavapipe, and nearly every GPU, has shader-f16; an adapter without it cannot check these kernels.
    assert!(Precision::f16_available(&gpu), "this adapter has no shader-f16: the f16 kernels cannot be checked on it");
    assert_eq!(Precision::of(&gpu), Precision::F32, "f16 is opt-in even with shader-f16");
    let raw = Raw::of(&gguf("transformer_bfl-Q8_0.gguf"), "double_blocks.0.img_mlp.0.weight").rows(0..3);
    let packed = raw.packed(&gpu);
    // The matrix-vector, square and wide kernels convert as they load: f32 in, f32 out, no cast pass around them
    // (tests/bench.rs checks that the f16 DiT step launches no more kernels than the f32 one).
    for (m, kernel) in [(1, Matvec), (37, Square), (300, Wide)] {
        let x = input(m, raw.k, 3, &gpu);
        let f32_y = matmul_in(x.clone(), &packed, None, kernel, Precision::F32, Epilogue::Plain);
        let f16_y = matmul_in(x, &packed, None, kernel, Precision::F16, Epilogue::Plain);
        assert_eq!((f16_y.dims(), f16_y.dtype()), ([m, 3], DType::F32));
        // It computed in f16: close to the f32 kernel, and not equal to it.
        let (a, b) = (f16_y.into_data().try_to_vec::<f32>().unwrap(), f32_y.into_data().try_to_vec::<f32>().unwrap());
        let scale = b.iter().fold(0f32, |s, v| s.max(v.abs()));
        let worst = testing::max_abs_difference(&a, &b);
        assert!(worst > 0.0 && worst <= 2e-3 * scale, "M = {m}: max |f16 − f32| {worst:.2e}, max |y| {scale:.2e}");
    }
}

#[test]
fn epilogues_apply_gelu_and_the_gated_residual_add_like_their_twins() {
    let (gpu, cpu) = (gpu(), device::cpu());
    let raw = Raw::of(&gguf("transformer_bfl-Q8_0.gguf"), "double_blocks.0.img_mlp.0.weight");
    let (packed, dense) = (raw.packed(&gpu), raw.packed(&cpu));
    assert!(packed.is_packed() && !dense.is_packed());
    let bias = selfcheck::test_matrix(1, raw.n, 5);
    // The matrix-vector, square and wide kernels; 2 samples, so that later rows take the second gate row.
    for (m, kernel) in [(2, Matvec), (38, Square), (300, Wide)] {
        let matrix = |rows: usize, cols: usize, salt: u32, d: &Device| {
            Tensor::<2>::from_data(TensorData::new(selfcheck::test_matrix(rows, cols, salt), [rows, cols]), d)
        };
        // y = x · Wᵀ + b, then `epilogue` (0 plain, 1 GELU, 2 gated add), with the packed weight on wgpu or the
        // dequantized one on the CPU (the twin: Epilogue::reference in plain ops).
        let run = |epilogue: u8, d: &Device| {
            let weight = if *d == cpu { &dense } else { &packed };
            let (residual, gate) = (matrix(m, raw.n, 7, d), matrix(2, raw.n, 8, d));
            let epilogue = match epilogue {
                0 => Epilogue::Plain,
                1 => Epilogue::Gelu,
                _ => Epilogue::GatedAdd { residual: &residual, gate: &gate },
            };
            let bias = Tensor::<1>::from_data(TensorData::new(bias.clone(), [raw.n]), d);
            matmul_in(matrix(m, raw.k, m as u32, d), weight, Some(&bias), kernel, Precision::F32, epilogue).into_data()
        };
        let plain = run(0, &cpu).try_to_vec::<f32>().unwrap();
        for (epilogue, name) in [(1, "GELU"), (2, "gated add")] {
            let got = run(epilogue, &gpu);
            got.assert_approx_eq::<f32>(&run(epilogue, &cpu), Tolerance::rel_abs(1e-4, 1e-4));
            // Control: the plain output is not what the epilogue gives.
            let differs = got.try_to_vec::<f32>().unwrap().iter().zip(&plain).any(|(a, b)| (a - b).abs() > 1e-2);
            assert!(differs, "M = {m}: the {name} epilogue changed nothing");
        }
    }
}
