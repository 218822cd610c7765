//! A view of [`Weights`] under a name prefix, so that every module is built with its checkpoint keys:
//! `vb.pp("double_blocks").pp(3).pp("img_attn").pp("qkv")` reads `double_blocks.3.img_attn.qkv.weight`.

use std::fmt::Display;

use burn::tensor::{Device, Tensor};

use crate::Result;
use crate::formats::weights::Weights;
use crate::model::layers::{self, Projection};

/// Named weights under a prefix, with the device they are loaded onto.
#[derive(Clone)]
pub struct Scope<'a> {
    weights: &'a dyn Weights,
    prefix: String,
    device: &'a Device,
    /// Linear layers whose prefix this accepts are left on the host ([`Scope::deferring`]).
    deferred: Option<&'a dyn Fn(&str) -> bool>,
}

impl<'a> Scope<'a> {
    /// The root scope: names as stored.
    pub fn new(weights: &'a dyn Weights, device: &'a Device) -> Self {
        Self { weights, prefix: String::new(), device, deferred: None }
    }

    /// The root scope, leaving every linear layer whose checkpoint key `defer` accepts on the host (shapes
    /// checked, nothing uploaded) until it is loaded with [`Projection::reload`].
    pub fn deferring(weights: &'a dyn Weights, device: &'a Device, defer: &'a dyn Fn(&str) -> bool) -> Self {
        Self { weights, prefix: String::new(), device, deferred: Some(defer) }
    }

    /// The scope of the child `name` (`prefix.name`).
    pub fn pp(&self, name: impl Display) -> Self {
        Self { prefix: self.key(&name.to_string()), ..self.clone() }
    }

    /// The full key of `name` in this scope.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    /// This scope's own prefix (the module's checkpoint key).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The device tensors are loaded onto.
    pub fn device(&self) -> &'a Device {
        self.device
    }

    /// Whether the weights hold `name` in this scope.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.shape(&self.key(name)).is_some()
    }

    /// The tensor `name` of `shape`, on the device.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        layers::tensor(self.weights, &self.key(name), shape, self.device)
    }

    /// This scope as a PyTorch `Linear` `[d_out, d_in]` (`weight`, and `bias` when `bias`).
    pub fn linear(&self, d_in: usize, d_out: usize, bias: bool) -> Result<Projection> {
        self.fused_linear(d_in, &[d_out], bias)
    }

    /// This scope as a `Linear` whose outputs concatenate `segments` (fused q, k, v, …).
    pub fn fused_linear(&self, d_in: usize, segments: &[usize], bias: bool) -> Result<Projection> {
        match self.deferred {
            Some(defer) if defer(&self.prefix) => {
                layers::deferred_linear(self.weights, &self.prefix, d_in, segments, bias)
            }
            _ => layers::fused_linear(self.weights, &self.prefix, d_in, segments, bias, self.device),
        }
    }
}
