//! A small computation whose answer is known, run on a device before trusting it with a model.
//!
//! Software and buggy drivers exist (SwiftShader, old Mesa, f16 accumulation bugs on some Apple GPUs): a
//! matmul checked against a plain f64 loop on the CPU tells the user early whether this GPU computes right. The
//! kernel is the caller's ([`matmul_check`]): the app and the CLI check the packed f32 matmul of the model's
//! layers (`kernels::quant_matmul::self_check_multiply`).

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::Result;

/// The outcome of [`matmul_check`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfCheck {
    /// Side of the square matrices multiplied.
    pub size: usize,
    /// Largest absolute difference between the device result and the f64 CPU result.
    pub max_abs_error: f32,
    /// Whether the error is within what f32 accumulation allows.
    pub passed: bool,
}

/// The error allowed for a `size`-long f32 dot product of values in [-1, 1].
pub fn matmul_tolerance(size: usize) -> f32 {
    1e-6 * size as f32 + 1e-5
}

/// A deterministic matrix with entries in [-1, 1] (no RNG, identical on every platform).
pub fn test_matrix(rows: usize, cols: usize, salt: u32) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| {
            let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt.wrapping_mul(40_503)) >> 8;
            (h % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// `a [m,k] · b [k,n]` in f64 on the CPU, the oracle for device results.
pub fn matmul_oracle(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum();
            out[i * n + j] = dot as f32;
        }
    }
    out
}

/// ‖got − want‖ / ‖want‖ (relative RMS) over paired values; infinite for outputs of different lengths or with a
/// non-finite value, so that a wrong or broken kernel is never within a tolerance.
pub fn relative_rms(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() || got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let difference: f64 = got.iter().zip(want).map(|(g, w)| (*g as f64 - *w as f64).powi(2)).sum();
    let reference: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
    (difference / reference.max(f64::MIN_POSITIVE)).sqrt()
}

/// Multiplies two `size`×`size` matrices on `device` with `multiply(a, b)` (`a` on the device, `b` `[k, n]` as
/// host values; the caller picks the kernel, so that the check runs what its models run) and compares with
/// [`matmul_oracle`].
pub async fn matmul_check(
    device: &Device,
    size: usize,
    multiply: impl FnOnce(Tensor<2>, &[f32]) -> Result<Tensor<2>>,
) -> Result<SelfCheck> {
    let a = test_matrix(size, size, 1);
    let b = test_matrix(size, size, 2);
    let expected = matmul_oracle(&a, &b, size, size, size);
    let ta = Tensor::<2>::from_data(TensorData::new(a, [size, size]), device);
    let got = crate::device::read_f32(multiply(ta, &b)?).await?;
    let max_abs_error = got.iter().zip(&expected).map(|(g, e)| (g - e).abs()).fold(0f32, f32::max);
    let passed = got.len() == expected.len() && max_abs_error <= matmul_tolerance(size);
    Ok(SelfCheck { size, max_abs_error, passed })
}

#[cfg(test)]
mod tests {
    use super::relative_rms;

    #[test]
    fn relative_rms_is_the_norm_of_the_difference_over_the_norm_of_the_reference() {
        // ‖(0.3, −0.4)‖ / ‖(3, 4)‖ = 0.5 / 5.
        assert!((relative_rms(&[3.3, 3.6], &[3.0, 4.0]) - 0.1).abs() < 1e-6);
        assert_eq!(relative_rms(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert_eq!(relative_rms(&[f32::NAN, 4.0], &[3.0, 4.0]), f64::INFINITY);
        assert_eq!(relative_rms(&[3.0], &[3.0, 4.0]), f64::INFINITY);
    }
}
