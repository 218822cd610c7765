//! Kernel checks that run the same in a native test, in a browser page and in a Web Worker: the packed matmul of
//! every ggml type in the quantization vectors (`tests/fixtures/tiny/bfl_gguf/quant_vectors.gguf`) against the
//! golden dequantized values gguf-py wrote beside them, computing in f32 or (where the adapter has `shader-f16`)
//! in f16; the flash attention in each of its layouts against the plain-ops reference.

use burn::tensor::{Device, Tensor, TensorData};

use crate::device::{self, selfcheck};
use crate::formats::weights::Weights;
use crate::formats::{GgmlType, GgufFile, SafetensorsFile};
use crate::harness::testing::max_abs_difference;
use crate::kernels::attention::{flash_attention_in, reference};
use crate::kernels::flash::FlashLayout;
use crate::kernels::precision::Precision;
use crate::kernels::quant_matmul::{Epilogue, PackedWeight, PlainKernel, matmul_in};
use crate::{Error, Result};

/// One tensor's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantVectorCheck {
    /// The tensor's type.
    pub ty: GgmlType,
    /// Whether the weight stayed in ggml blocks on the device (a packed kernel ran).
    pub packed: bool,
    /// The largest |kernel − golden| over every row count tried, relative to the golden's largest |value|.
    pub worst_relative: f32,
}

/// For each tensor `qv.T` of the quantization vectors `gguf`: `x · Wᵀ` through a [`PackedWeight`] on `device`
/// computing at `precision` for M = 1 and 5 rows of `x` (the matrix-vector kernel) and 70 (the square kernel,
/// which CPU adapters leave for the wide one: the browser's end-to-end edits run that one for each type), against
/// `x · deqᵀ` on the CPU with `deq` the golden `qv.T.deq` of `expected` (gguf-py's dequantization). F16 needs
/// [`Precision::f16_available`].
pub async fn quant_vectors(
    gguf: Vec<u8>,
    expected: Vec<u8>,
    device: &Device,
    precision: Precision,
) -> Result<Vec<QuantVectorCheck>> {
    let file = GgufFile::open(gguf)?;
    let expected = SafetensorsFile::open(expected)?;
    let cpu = device::cpu();
    let mut checks = Vec::new();
    for name in file.names() {
        let ty = file.tensor(&name).map(|t| t.ggml_type).ok_or_else(|| Error::Invalid(format!("no {name}")))?;
        let golden = expected.read(&format!("{name}.deq"))?;
        let &[n, k] = golden.shape.as_slice() else {
            return Err(Error::Invalid(format!("{name}.deq is not 2-D: {:?}", golden.shape)));
        };
        let weight = PackedWeight::from_gguf(&file, &name, device)?;
        let deq = Tensor::<2>::from_data(TensorData::new(golden.data, [n, k]), &cpu);
        let mut worst_relative = 0f32;
        for (m, kernel) in [(1, PlainKernel::Matvec), (5, PlainKernel::Matvec), (70, PlainKernel::Square)] {
            let x =
                |d: &Device| Tensor::<2>::from_data(TensorData::new(selfcheck::test_matrix(m, k, m as u32), [m, k]), d);
            let got = device::read_f32(matmul_in(x(device), &weight, None, kernel, precision, Epilogue::Plain)).await?;
            let want = device::read_f32(x(&cpu).matmul(deq.clone().transpose())).await?;
            if got.len() != want.len() {
                return Err(Error::Invalid(format!(
                    "{name}: {} outputs for M = {m}, expected {}",
                    got.len(),
                    want.len()
                )));
            }
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())).max(1.0);
            let worst = max_abs_difference(&got, &want);
            worst_relative = worst_relative.max(worst / scale);
        }
        checks.push(QuantVectorCheck { ty, packed: weight.is_packed(), worst_relative });
    }
    Ok(checks)
}

/// Asserts that `checks` cover every type of the quantization vectors, that each weight stayed packed exactly
/// where `device` has a kernel for its type, and that each matmul is within the tolerance of `precision`
/// (relative to the golden's largest value: 1e-4 computing in f32, 2e-3 in f16) of the golden.
pub fn assert_quant_vectors(checks: &[QuantVectorCheck], device: &Device, precision: Precision) {
    let tolerance = match precision {
        Precision::F32 => 1e-4,
        Precision::F16 => 2e-3,
    };
    use GgmlType::*;
    let mut types: Vec<GgmlType> = checks.iter().map(|c| c.ty).collect();
    types.sort();
    assert_eq!(types, [F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, BF16]);
    let packs = crate::kernels::packs_on(device);
    for check in checks {
        let kernel = packs && crate::kernels::quant_matmul::has_kernel(check.ty);
        assert_eq!(check.packed, kernel, "{check:?}");
        assert!(check.worst_relative <= tolerance, "{precision}: {check:?}");
    }
    assert!(!packs || checks.iter().all(|c| c.packed), "every type has a kernel: {checks:?}");
}

/// [`quant_vectors`] and [`assert_quant_vectors`] computing in f32, then in f16 where `device` has
/// `shader-f16` (the f16 kernels compiled by the adapter's shader compiler, their pipelines created and run).
/// Returns what ran, for the test's output: where the adapter has no `shader-f16` it says that the f16 check was
/// skipped and why.
pub async fn assert_quant_vectors_at_each_precision(gguf: Vec<u8>, expected: Vec<u8>, device: &Device) -> String {
    let mut report = Vec::new();
    for precision in [Precision::F32, Precision::F16] {
        if precision == Precision::F16 && !Precision::f16_available(device) {
            report.push(
                "f16 kernels SKIPPED: this adapter has no `shader-f16` (the f16 kernels are checked natively, on \
                 lavapipe, by tests/gpu_quant.rs and tests/packed.rs)"
                    .to_string(),
            );
            continue;
        }
        let checks = quant_vectors(gguf.clone(), expected.clone(), device, precision)
            .await
            .unwrap_or_else(|e| panic!("{precision}: {e}"));
        assert_quant_vectors(&checks, device, precision);
        let worst = checks.iter().map(|c| c.worst_relative).fold(0f32, f32::max);
        report.push(format!(
            "{precision} kernels ran: {} quantization vectors, worst relative error {worst:.1e}",
            checks.len()
        ));
    }
    report.join("; ")
}

/// The `flash` attention kernel on `gpu` in the CPU adapters' layouts (with and without subgroup broadcasts), the
/// plain GPU one and the subgroup one, with head widths that are and are not a multiple of 4, against the
/// plain-ops reference on the CPU (within 1e-4); keys in another order must be far from it. The layouts that need
/// subgroups run where the device has them and are reported as skipped where it has none. Returns the report's
/// lines and how many layouts were skipped.
pub async fn assert_flash_layouts(gpu: &Device) -> (String, usize) {
    let layouts = [(4, 1, 32, 4, true), (4, 1, 32, 4, false), (1, 1, 64, 4, false), (2, 4, 64, 4, false)].map(
        |(rows_per_thread, threads_per_row, threads, keys_per_step, broadcast)| FlashLayout {
            rows_per_thread,
            threads_per_row,
            threads,
            keys_per_step,
            broadcast,
        },
    );
    let tensor = |shape: [usize; 4], salt: u32, device: &Device| {
        let values = selfcheck::test_matrix(1, shape.iter().product(), salt).into_iter().map(|x| 2.0 * x).collect();
        Tensor::<4>::from_data(TensorData::new(values, shape), device)
    };
    let (mut report, mut skipped) = (Vec::new(), 0);
    for (lq, lk, d) in [(37, 45, 16), (9, 70, 7)] {
        let (q, k, v) = ([1, 2, lq, d], [1, 2, lk, d], [1, 2, lk, d]);
        let cpu = device::cpu();
        let expected = reference(tensor(q, 1, &cpu), tensor(k, 2, &cpu), tensor(v, 3, &cpu));
        let expected = device::read_f32(expected).await.unwrap();
        for layout in layouts {
            let run = |keys| flash_attention_in(layout, tensor(q, 1, gpu), keys, tensor(v, 3, gpu));
            let ours = match run(tensor(k, 2, gpu)) {
                Err(e) if (layout.threads_per_row > 1 || layout.broadcast) && device::subgroup_min_size().is_none() => {
                    report.push(format!("{layout:?} SKIPPED: {e}"));
                    skipped += 1;
                    continue;
                }
                ours => device::read_f32(ours.unwrap()).await.unwrap(),
            };
            let worst = max_abs_difference(&ours, &expected);
            assert!(worst <= 1e-4, "{layout:?} lq {lq} lk {lk} d {d}: max |kernel − reference| = {worst:e}");
            let shuffled = device::read_f32(run(tensor(k, 2, gpu).flip([2])).unwrap()).await.unwrap();
            let moved = max_abs_difference(&shuffled, &expected);
            assert!(moved > 1e-3, "{layout:?}: keys in another order gave the same output");
            report.push(format!("{layout:?} d {d}: max |diff| {worst:e}"));
        }
    }
    (report.join("\n"), skipped)
}
