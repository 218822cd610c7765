//! The Euler flow-matching sampler, generic over the model, driven one step at a time so the caller
//! (CLI or browser worker) can report progress, show previews, yield to the event loop and cancel.

use burn::tensor::Tensor;

use crate::Result;

/// A model that predicts the flow velocity of the noise tokens at noise level `sigma`. Async, so that a model
/// may read a value back mid-step (a step cache's decision) in a browser too; mutable, so that it may keep
/// state from step to step.
#[allow(async_fn_in_trait)] // driven by our own loops, never spawned onto a multi-threaded executor
pub trait Denoiser {
    /// `latents`: packed noise tokens `[b, n, c]`; returns the velocity, same shape.
    async fn velocity(&mut self, latents: Tensor<3>, sigma: f32) -> Result<Tensor<3>>;
}

/// Denoising state: the latents and where they are in the schedule.
#[derive(Debug, Clone)]
pub struct Sampler {
    sigmas: Vec<f32>,
    step: usize,
    latents: Tensor<3>,
}

impl Sampler {
    /// Starts from `initial_noise` (packed, `[b, n, c]`) on the schedule `sigmas` (`steps + 1` values).
    pub fn new(initial_noise: Tensor<3>, sigmas: Vec<f32>) -> Self {
        Self { sigmas, step: 0, latents: initial_noise }
    }

    /// The σ at which each step evaluates the model (the schedule without its final 0).
    pub fn step_sigmas(&self) -> &[f32] {
        &self.sigmas[..self.steps()]
    }

    /// Total number of steps.
    pub fn steps(&self) -> usize {
        self.sigmas.len() - 1
    }

    /// Steps already taken.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// Whether every step has been taken.
    pub fn is_done(&self) -> bool {
        self.step >= self.steps()
    }

    /// One Euler step `x ← x + (σ_next − σ)·v`. Does nothing when done.
    pub async fn step(&mut self, model: &mut impl Denoiser) -> Result<()> {
        if self.is_done() {
            return Ok(());
        }
        let (sigma, sigma_next) = (self.sigmas[self.step], self.sigmas[self.step + 1]);
        let velocity = model.velocity(self.latents.clone(), sigma).await?;
        self.latents = self.latents.clone() + velocity * (sigma_next - sigma);
        self.step += 1;
        Ok(())
    }

    /// The σ of the current latents (0 when done).
    pub fn sigma(&self) -> f32 {
        self.sigmas[self.step]
    }

    /// Replaces the latents by `f(latents)`, between steps (a masked edit's blend).
    pub fn replace_latents(&mut self, f: impl FnOnce(Tensor<3>) -> Tensor<3>) {
        self.latents = f(self.latents.clone());
    }

    /// The current latents.
    pub fn latents(&self) -> &Tensor<3> {
        &self.latents
    }

    /// The final (or current) latents.
    pub fn into_latents(self) -> Tensor<3> {
        self.latents
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{TensorData, Tolerance};

    /// The velocity of the straight path from `x` to zero, `v = x / σ`.
    struct Straight;
    impl Denoiser for Straight {
        async fn velocity(&mut self, latents: Tensor<3>, sigma: f32) -> Result<Tensor<3>> {
            Ok(latents / sigma)
        }
    }

    #[test]
    fn euler_steps_follow_the_schedule() {
        let device = crate::device::cpu();
        let x = Tensor::<3>::from_data(TensorData::new(vec![2.0f32, -4.0], [1, 2, 1]), &device);
        let mut sampler = Sampler::new(x, vec![1.0, 0.5, 0.0]);
        futures_lite::future::block_on(sampler.step(&mut Straight)).unwrap();
        // x + (0.5 − 1)·x/1 = x/2
        sampler
            .latents()
            .to_data()
            .assert_approx_eq::<f32>(&TensorData::new(vec![1.0f32, -2.0], [1, 2, 1]), Tolerance::absolute(1e-6));
        assert!(!sampler.is_done());
        futures_lite::future::block_on(sampler.step(&mut Straight)).unwrap();
        assert!(sampler.is_done());
        sampler
            .into_latents()
            .to_data()
            .assert_approx_eq::<f32>(&TensorData::new(vec![0.0f32, 0.0], [1, 2, 1]), Tolerance::absolute(1e-6));
    }
}
