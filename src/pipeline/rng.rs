//! Our own seeded Gaussian noise: the same numbers for a seed on every platform (native and wasm),
//! independent of any library's RNG. SplitMix64 bits, Box–Muller with `libm`'s portable f64 functions.

/// A deterministic N(0, 1) generator.
#[derive(Debug, Clone)]
pub struct NoiseRng {
    state: u64,
    spare: Option<f64>,
}

impl NoiseRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed, spare: None }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn next_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// One standard normal sample.
    pub fn next_normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let radius = libm::sqrt(-2.0 * libm::log(self.next_unit()));
        let angle = 2.0 * std::f64::consts::PI * self.next_unit();
        self.spare = Some(radius * libm::sin(angle));
        radius * libm::cos(angle)
    }

    /// `n` samples as f32.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_normal() as f32).collect()
    }
}

/// A random seed for when the user gives none (printed so the result can be reproduced).
pub fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom_seed(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes) >> 11, // 53 bits: exact in a JS number
        Err(_) => 0,
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn getrandom_seed(bytes: &mut [u8; 8]) -> std::result::Result<(), ()> {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|_| ())?.as_nanos());
    *bytes = hasher.finish().to_le_bytes();
    Ok(())
}

#[cfg(target_arch = "wasm32")]
fn getrandom_seed(bytes: &mut [u8; 8]) -> std::result::Result<(), ()> {
    getrandom::fill(bytes).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_noise_and_the_numbers_are_pinned() {
        let a = NoiseRng::new(42).normals(1000);
        assert_eq!(a, NoiseRng::new(42).normals(1000));
        assert_ne!(a, NoiseRng::new(43).normals(1000));
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / 1000.0;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 1000.0;
        assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.1, "mean {mean} var {var}");
        // Pinned so that any platform or refactor that changes the stream fails here.
        let first = NoiseRng::new(0).normals(2);
        assert_eq!(first, PINNED_SEED0);
    }

    const PINNED_SEED0: [f32; 2] = [-0.452_757_75, 0.207_766_04];
}
