//! The flow-matching Euler schedule with Flux's resolution-dependent shift (diffusers
//! `FlowMatchEulerDiscreteScheduler` with `use_dynamic_shifting`, as `FluxKontextPipeline` calls it).

/// Shift parameters of the real FLUX.1 scheduler config (`scheduler/scheduler_config.json`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShiftConfig {
    /// Token count at which μ = `base_shift`.
    pub base_image_seq_len: usize,
    /// Token count at which μ = `max_shift`.
    pub max_image_seq_len: usize,
    /// μ at `base_image_seq_len`.
    pub base_shift: f64,
    /// μ at `max_image_seq_len`.
    pub max_shift: f64,
}

impl ShiftConfig {
    /// FLUX.1 [dev] / Kontext: 256 → 0.5, 4096 → 1.15.
    pub fn flux() -> Self {
        Self { base_image_seq_len: 256, max_image_seq_len: 4096, base_shift: 0.5, max_shift: 1.15 }
    }

    /// μ for a given number of **noise** tokens (reference tokens do not count), linear in the count.
    pub fn mu(&self, noise_tokens: usize) -> f64 {
        let slope = (self.max_shift - self.base_shift) / (self.max_image_seq_len - self.base_image_seq_len) as f64;
        let intercept = self.base_shift - slope * self.base_image_seq_len as f64;
        noise_tokens as f64 * slope + intercept
    }
}

/// `steps + 1` sigmas from 1 down to 0: linspace(1, 1/N, N), shifted by `σ' = e^μ / (e^μ + 1/σ − 1)`, then 0.
/// Computed in f64 (as numpy does) and rounded to f32.
pub fn sigmas(steps: usize, noise_tokens: usize, shift: ShiftConfig) -> Vec<f32> {
    assert!(steps > 0, "at least one step");
    let mu = shift.mu(noise_tokens);
    let e_mu = libm::exp(mu);
    let mut sigmas: Vec<f32> = (0..steps)
        .map(|i| {
            let sigma = if steps == 1 { 1.0 } else { 1.0 + (1.0 / steps as f64 - 1.0) * i as f64 / (steps - 1) as f64 };
            (e_mu / (e_mu + (1.0 / sigma - 1.0))) as f32
        })
        .collect();
    sigmas.push(0.0);
    sigmas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_golden_schedule() {
        // golden_run: 4 steps, 20 noise tokens → mu 0.46005, sigmas [1, .82616, .61303, .34557, 0].
        assert!((ShiftConfig::flux().mu(20) - 0.460_052_083_333_333_3).abs() < 1e-12);
        let s = sigmas(4, 20, ShiftConfig::flux());
        let expected = [1.0, 0.826_16, 0.613_03, 0.345_57, 0.0];
        for (got, want) in s.iter().zip(expected) {
            assert!((got - want).abs() < 1e-5, "{s:?}");
        }
        // Negative control: the shift of another token count (the reference's 24 added) moves them beyond 1e-4.
        let other = sigmas(4, 44, ShiftConfig::flux());
        assert!(other.iter().zip(expected).any(|(got, want)| (got - want).abs() > 1e-4), "{other:?}");
    }

    #[test]
    fn schedule_is_decreasing_and_ends_at_zero() {
        for steps in [1, 2, 8, 28, 50] {
            let s = sigmas(steps, 4096, ShiftConfig::flux());
            assert_eq!(s.len(), steps + 1);
            assert_eq!(s[0], 1.0);
            assert_eq!(*s.last().unwrap(), 0.0);
            assert!(s.windows(2).all(|w| w[0] > w[1]), "{s:?}");
        }
    }
}
