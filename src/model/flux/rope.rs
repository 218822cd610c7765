//! Rotary position embedding over several position axes (BFL `EmbedND`, `rope`, `apply_rope`).
//!
//! Each token has one position per axis (Flux: `(index, row, col)`). Axis `i` owns `axes_dim[i] / 2` rotation
//! pairs with frequencies `theta^(-2j/axes_dim[i])`; the pairs of all axes, in axis order, fill the head width.
//! A pair is two adjacent channels `(2j, 2j+1)` of a head, rotated by the angle `position · frequency`.

use burn::prelude::*;

use crate::kernels::fused::RopeTables;
use crate::model::flux::embeddings::cos_sin;
use crate::{Error, Result};

/// The cosines and sines of every token's rotation angles, ready to rotate queries and keys.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `[1, 1, n, head_dim / 2]`.
    pub cos: Tensor<4>,
    /// `[1, 1, n, head_dim / 2]`.
    pub sin: Tensor<4>,
}

impl Rope {
    /// Angles for the positions `ids` (`[n, axes]`, f32) with `axes_dim[i]` channels on axis `i`.
    pub fn new(ids: Tensor<2>, axes_dim: &[usize], theta: f64) -> Result<Self> {
        let [n, axes] = ids.dims();
        if axes != axes_dim.len() {
            return Err(Error::Invalid(format!(
                "position ids have {axes} axes per token, the model has {} RoPE axes {axes_dim:?}",
                axes_dim.len()
            )));
        }
        if let Some(odd) = axes_dim.iter().find(|&&d| d % 2 == 1) {
            return Err(Error::Invalid(format!("RoPE axis width {odd} in {axes_dim:?} is odd")));
        }
        let device = ids.device();
        let angles: Vec<Tensor<2>> = axes_dim
            .iter()
            .enumerate()
            .map(|(axis, &dim)| {
                let omega: Vec<f32> = (0..dim / 2).map(|j| theta.powf(-((2 * j) as f64) / dim as f64) as f32).collect();
                let omega = Tensor::<2>::from_data(TensorData::new(omega, [1, dim / 2]), &device);
                ids.clone().narrow(1, axis, 1) * omega // [n, dim / 2]
            })
            .collect();
        let angles = Tensor::cat(angles, 1); // [n, head_dim / 2]
        let pairs = angles.dims()[1];
        let angles = angles.reshape([1, 1, n, pairs]);
        let (cos, sin) = cos_sin(angles);
        Ok(Self { cos, sin })
    }

    /// The tables as the fused kernels take them.
    pub fn tables(&self) -> RopeTables<'_> {
        RopeTables { cos: &self.cos, sin: &self.sin }
    }

    /// Rotates the adjacent channel pairs of `x` (`[b, heads, n, head_dim]`) by the angles of its `n` tokens.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        crate::kernels::fused::reference::rotate_pairs(x, self.tables())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu;
    use burn::tensor::Tolerance;

    #[test]
    fn rotates_pairs_by_position_times_frequency() {
        let device = cpu();
        // One token at positions (2, 3): axis 0 has 1 pair (freq 1), axis 1 has 2 pairs (freqs 1, 1/100).
        let ids = Tensor::<2>::from_data(TensorData::new(vec![2.0f32, 3.0], [1, 2]), &device);
        let rope = Rope::new(ids, &[2, 4], 10_000.0).unwrap();
        let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0], [1, 1, 1, 6]), &device);
        let (a, b, c) = (2.0f32, 3.0f32, 0.03f32);
        let expected = vec![a.cos(), a.sin(), -b.sin(), b.cos(), c.cos() - c.sin(), c.sin() + c.cos()];
        rope.apply(x)
            .into_data()
            .assert_approx_eq::<f32>(&TensorData::new(expected, [1, 1, 1, 6]), Tolerance::absolute(1e-6));
    }

    #[test]
    fn axis_count_must_match() {
        let ids = Tensor::<2>::zeros([4, 3], &cpu());
        let err = Rope::new(ids, &[2, 4], 10_000.0).unwrap_err().to_string();
        assert_eq!(err, "position ids have 3 axes per token, the model has 2 RoPE axes [2, 4]");
    }
}
