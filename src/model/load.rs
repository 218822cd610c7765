//! Building burn parameters from named [`Weights`], checking every shape against what the config expects.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};

use super::lora::LayerUpdate;
use crate::kernels::quant_matmul::{PackedLinear, PackedWeight, keeps_blocks, packs_on};
use crate::weights::{HostTensor, Weights};
use crate::{Error, Result};

/// Reads `name`, failing with a message naming the tensor when it is missing or its shape is not `shape`.
pub(crate) fn host(weights: &dyn Weights, name: &str, shape: &[usize]) -> Result<HostTensor> {
    let found = weights
        .shape(name)
        .ok_or_else(|| Error::Invalid(format!("missing tensor `{name}` (expected shape {shape:?})")))?;
    check_shape(name, shape, &found)?;
    let tensor = weights.read(name)?;
    check_shape(name, shape, &tensor.shape)?;
    Ok(tensor)
}

fn check_shape(name: &str, expected: &[usize], found: &[usize]) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::Invalid(format!("tensor `{name}` has shape {found:?}, expected {expected:?}")))
    }
}

/// A tensor of known rank, uploaded to `device`.
pub(crate) fn tensor<const D: usize>(
    weights: &dyn Weights,
    name: &str,
    shape: [usize; D],
    device: &Device,
) -> Result<Tensor<D>> {
    let host = host(weights, name, &shape)?;
    Ok(Tensor::from_data(TensorData::new(host.data, shape), device))
}

/// The base weight of a linear layer as loaded: dense f32 weights, or ggml blocks kept packed on the GPU.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum BaseWeight {
    /// burn's [`Linear`] (weight transposed to `[d_in, d_out]`).
    Dense(Linear),
    /// The file's ggml blocks, dequantized inside the matmul ([`PackedLinear`]).
    Packed(PackedLinear),
    /// Freed from the device to save memory; must be loaded again before use.
    Released(ReleasedWeight),
}

/// What remains of a released weight: its shape.
#[derive(Module, Debug)]
pub struct ReleasedWeight {
    /// Input features.
    #[module(skip)]
    pub d_in: usize,
    /// Output features.
    #[module(skip)]
    pub d_out: usize,
}

/// A low-rank adapter on one linear layer: adds `x · down · up` to its output.
#[derive(Module, Debug)]
pub struct LowRank {
    /// `Aᵀ`, `[d_in, rank]`.
    pub down: Param<Tensor<2>>,
    /// `Bᵀ` times the adapter's strength × alpha / rank, `[rank, d_out]`.
    pub up: Param<Tensor<2>>,
}

impl LowRank {
    /// Uploads `update` at `strength`.
    pub fn new(update: &LayerUpdate, strength: f32, device: &Device) -> Self {
        let [rank, d_in] = [update.down.shape[0], update.down.shape[1]];
        let d_out = update.up.shape[0];
        let down = Tensor::<2>::from_data(TensorData::new(update.down.data.clone(), [rank, d_in]), device);
        let up = Tensor::<2>::from_data(TensorData::new(update.up.data.clone(), [d_out, rank]), device);
        Self { down: Param::from_tensor(down.transpose()), up: Param::from_tensor(up.transpose() * strength) }
    }

    /// `[..., d_in] → [..., d_out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        x.matmul(self.down.val().unsqueeze()).matmul(self.up.val().unsqueeze())
    }
}

/// A linear layer `y = x · Wᵀ + b + Σ x · Aᵀ · Bᵀ · s`: the base weight as loaded, plus any LoRA adapters applied
/// at runtime (never merged into the base, so packed weights stay packed and adapters come and go freely).
#[derive(Module, Debug)]
pub struct Projection {
    /// The checkpoint's weight and bias.
    pub base: BaseWeight,
    /// Active low-rank adapters, empty without LoRA.
    pub adapters: Vec<LowRank>,
}

impl Projection {
    fn new(base: BaseWeight) -> Self {
        Self { base, adapters: Vec::new() }
    }

    /// `[..., d_in] → [..., d_out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let y = match &self.base {
            BaseWeight::Dense(linear) => linear.forward(x.clone()),
            BaseWeight::Packed(linear) => linear.forward(x.clone()),
            BaseWeight::Released(_) => panic!("a released layer was used: its owner must load it again first"),
        };
        self.adapters.iter().fold(y, |y, adapter| y + adapter.forward(x.clone()))
    }

    /// Input features.
    pub fn d_in(&self) -> usize {
        match &self.base {
            BaseWeight::Dense(linear) => linear.weight.dims()[0],
            BaseWeight::Packed(linear) => linear.weight.k,
            BaseWeight::Released(shape) => shape.d_in,
        }
    }

    /// Output features.
    pub fn d_out(&self) -> usize {
        match &self.base {
            BaseWeight::Dense(linear) => linear.weight.dims()[1],
            BaseWeight::Packed(linear) => linear.weight.n,
            BaseWeight::Released(shape) => shape.d_out,
        }
    }

    /// Whether the weight stays in ggml blocks on the device.
    pub fn is_packed(&self) -> bool {
        matches!(self.base, BaseWeight::Packed(_))
    }

    /// Bytes the base weight and bias occupy on their device (adapters excluded).
    pub fn device_bytes(&self) -> usize {
        match &self.base {
            BaseWeight::Dense(linear) => linear.num_params() * size_of::<f32>(),
            BaseWeight::Packed(linear) => linear.device_bytes(),
            BaseWeight::Released(_) => 0,
        }
    }

    /// Whether the base weight was freed ([`Projection::release`]).
    pub fn is_released(&self) -> bool {
        matches!(self.base, BaseWeight::Released(_))
    }

    /// Frees the base weight from the device (adapters stay); [`Projection::forward`] must not be called until
    /// [`Projection::reload`].
    pub fn release(&mut self) {
        self.base = BaseWeight::Released(ReleasedWeight { d_in: self.d_in(), d_out: self.d_out() });
    }

    /// Loads the base weight `{prefix}.weight` (and bias) again from `weights`, keeping the adapters.
    pub fn reload(&mut self, weights: &dyn Weights, prefix: &str, bias: bool, device: &Device) -> Result<()> {
        let loaded = linear(weights, prefix, self.d_in(), self.d_out(), bias, device)?;
        self.base = loaded.base;
        Ok(())
    }
}

/// A PyTorch `Linear` stored as `{prefix}.weight` `[d_out, d_in]` (and `{prefix}.bias` `[d_out]`): packed when
/// the weights hold it in ggml blocks that [`keeps_blocks`] keeps on `device`, else as burn's [`Linear`] with
/// its weight transposed to `[d_in, d_out]`.
pub(crate) fn linear(
    weights: &dyn Weights,
    prefix: &str,
    d_in: usize,
    d_out: usize,
    bias: bool,
    device: &Device,
) -> Result<Projection> {
    let name = format!("{prefix}.weight");
    if let Some(raw) = packs_on(device).then(|| weights.raw_block(&name)).flatten() {
        let (ty, shape, bytes) = raw?;
        check_shape(&name, &[d_out, d_in], &shape)?;
        if keeps_blocks(ty, &shape, device) {
            let weight = PackedWeight::new(ty, &shape, &bytes, device)
                .map_err(|e| Error::Invalid(format!("tensor `{name}`: {e}")))?;
            let bias = bias.then(|| tensor(weights, &format!("{prefix}.bias"), [d_out], device)).transpose()?;
            return Ok(Projection::new(BaseWeight::Packed(PackedLinear::new(weight, bias)?)));
        }
    }
    let weight = host(weights, &name, &[d_out, d_in])?;
    let mut transposed = vec![0.0f32; weight.data.len()];
    for (o, row) in weight.data.chunks_exact(d_in).enumerate() {
        for (i, &value) in row.iter().enumerate() {
            transposed[i * d_out + o] = value;
        }
    }
    let weight = Tensor::<2>::from_data(TensorData::new(transposed, [d_in, d_out]), device);
    let bias = if bias {
        Some(Param::from_tensor(tensor(weights, &format!("{prefix}.bias"), [d_out], device)?))
    } else {
        None
    };
    Ok(Projection::new(BaseWeight::Dense(Linear { weight: Param::from_tensor(weight), bias })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu;

    struct One(HostTensor);

    impl Weights for One {
        fn names(&self) -> Vec<String> {
            vec!["lin.weight".into()]
        }
        fn shape(&self, name: &str) -> Option<Vec<usize>> {
            (name == "lin.weight").then(|| self.0.shape.clone())
        }
        fn read(&self, _name: &str) -> Result<HostTensor> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn linear_matches_pytorch_convention() {
        // PyTorch weight [out 3, in 2]: y = x Wᵀ.
        let w = One(HostTensor::new(vec![3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap());
        let device = cpu();
        let lin = linear(&w, "lin", 2, 3, false, &device).unwrap();
        assert!(!lin.is_packed());
        assert_eq!((lin.d_in(), lin.device_bytes()), (2, 6 * 4));
        let y = lin.forward(Tensor::<2>::from_data(TensorData::new(vec![1.0f32, -1.0], [1, 2]), &device));
        y.into_data().assert_eq(&TensorData::new(vec![-1.0f32, -1.0, -1.0], [1, 3]), false);
    }

    #[test]
    fn wrong_shape_and_missing_tensor_are_named() {
        let w = One(HostTensor::new(vec![3, 2], vec![0.0; 6]).unwrap());
        let device = cpu();
        let err = linear(&w, "lin", 3, 3, false, &device).unwrap_err().to_string();
        assert_eq!(err, "tensor `lin.weight` has shape [3, 2], expected [3, 3]");
        let err = linear(&w, "lin", 2, 3, true, &device).unwrap_err().to_string();
        assert_eq!(err, "missing tensor `lin.bias` (expected shape [3])");
    }
}
