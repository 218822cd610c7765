//! The conditioning inputs of the Flux DiT: sinusoidal timestep features and the small MLPs that embed them
//! (BFL `flux/modules/layers.py`: `timestep_embedding`, `MLPEmbedder`).

use burn::prelude::*;
use burn::tensor::activation::silu;

use crate::Result;

use crate::model::layers::Projection;
use crate::model::scope::Scope;

/// Width of the sinusoidal timestep / guidance features (`in_dim=256` in BFL, `num_channels=256` in diffusers).
pub const TIMESTEP_FEATURES: usize = 256;

/// Factor applied to the timestep (σ in [0, 1]) and the guidance before the sinusoids (BFL `time_factor`).
pub const TIME_FACTOR: f64 = 1000.0;

/// Longest period of the sinusoids (BFL `max_period`).
const MAX_PERIOD: f64 = 10_000.0;

/// Sinusoidal features of `t` ([b]) scaled by `time_factor`, as `[cos, sin]` halves ([b, dim]); an odd `dim`
/// gets a trailing zero column.
///
/// Frequencies are `exp(-ln(10000)·i/half)` computed in f32 like BFL and diffusers
/// (`get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=0)`).
pub fn timestep_embedding(t: Tensor<1>, dim: usize, time_factor: f64) -> Tensor<2> {
    let device = t.device();
    let [b] = t.dims();
    let half = dim / 2;
    let log_period = -(MAX_PERIOD.ln() as f32);
    let freqs: Vec<f32> = (0..half).map(|i| (log_period * i as f32 / half as f32).exp()).collect();
    let freqs = Tensor::<2>::from_data(TensorData::new(freqs, [1, half]), &device);
    let args = (t * time_factor).unsqueeze_dim::<2>(1) * freqs; // [b, half]
    let (cos, sin) = cos_sin(args);
    let mut parts = vec![cos, sin];
    if dim % 2 == 1 {
        parts.push(Tensor::zeros([b, 1], &device));
    }
    Tensor::cat(parts, 1)
}

/// Cosine and sine of `x` after reducing it to [-π, π] with a two-part 2π (Cody–Waite), so that shader
/// `cos`/`sin` (whose accuracy WGSL only bounds on [-π, π]) stay accurate for the large angles of timestep
/// features (up to 1000 rad) and RoPE.
pub fn cos_sin<const D: usize>(x: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
    // 2π = HI + LO with HI = 201/32 exact in 8 mantissa bits, so k·HI is exact for |k| < 2^15.
    const HI: f64 = 6.28125;
    const LO: f64 = std::f64::consts::TAU - HI;
    let k = (x.clone() * (1.0 / std::f64::consts::TAU)).round();
    let r = (x - k.clone() * HI) - k * LO;
    (r.clone().cos(), r.sin())
}

/// Two linear layers with SiLU between them (BFL `MLPEmbedder`, diffusers `TimestepEmbedding` /
/// `PixArtAlphaTextProjection`).
#[derive(Module, Debug)]
pub struct MlpEmbedder {
    /// `in_layer`: features → hidden.
    pub in_layer: Projection,
    /// `out_layer`: hidden → hidden.
    pub out_layer: Projection,
}

impl MlpEmbedder {
    /// Loads `{prefix}.in_layer` `[hidden, in_dim]` and `{prefix}.out_layer` `[hidden, hidden]`.
    pub fn load(vb: Scope, in_dim: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            in_layer: vb.pp("in_layer").linear(in_dim, hidden, true)?,
            out_layer: vb.pp("out_layer").linear(hidden, hidden, true)?,
        })
    }

    /// `[b, in_dim]` → `[b, hidden]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.out_layer.forward(silu(self.in_layer.forward(x)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu;
    use burn::tensor::Tolerance;

    #[test]
    fn timestep_embedding_is_cos_then_sin() {
        let device = cpu();
        let t = Tensor::<1>::from_data(TensorData::new(vec![0.0f32, 0.5], [2]), &device);
        let emb = timestep_embedding(t, 5, 1000.0);
        // half = 2: freqs [1, 1e-2]; t·1000 = [0, 500].
        let expected = vec![
            1.0,
            1.0,
            0.0,
            0.0,
            0.0, //
            500f32.cos(),
            5f32.cos(),
            500f32.sin(),
            5f32.sin(),
            0.0,
        ];
        emb.into_data().assert_approx_eq::<f32>(&TensorData::new(expected, [2, 5]), Tolerance::absolute(1e-4));
    }

    #[test]
    fn cos_sin_of_large_angles() {
        let xs = vec![0.0f32, 3.0, -4.0, 1000.0, 833.456, -1234.5];
        let x = Tensor::<1>::from_data(TensorData::new(xs.clone(), [6]), &cpu());
        let (cos, sin) = cos_sin(x);
        let exact =
            |f: fn(f64) -> f64| TensorData::new(xs.iter().map(|&v| f(v as f64) as f32).collect::<Vec<_>>(), [6]);
        cos.into_data().assert_approx_eq::<f32>(&exact(f64::cos), Tolerance::absolute(1e-6));
        sin.into_data().assert_approx_eq::<f32>(&exact(f64::sin), Tolerance::absolute(1e-6));
    }
}
