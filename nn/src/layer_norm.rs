//! Layer normalisation as a module.

use crate::{Module, NamedParams};
use monarch_autograd::{Param, Var};
use monarch_tensor::{DType, Result, Tensor};

/// LayerNorm over the last dimension with a gain `weight` (ones) and `bias` (zeros).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// Gain, shape (dim).
    pub weight: Param,
    /// Shift, shape (dim).
    pub bias: Param,
    /// Added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// Identity-initialised normalisation of `dim` features.
    pub fn new(dim: usize, eps: f64) -> Self {
        LayerNorm {
            weight: Param::new(Tensor::ones(dim, DType::F32)),
            bias: Param::new(Tensor::zeros(dim, DType::F32)),
            eps,
        }
    }

    /// Normalises `x` of shape (.., dim).
    pub fn forward(&self, x: &Var) -> Result<Var> {
        x.layer_norm(Some(&self.weight.var()), Some(&self.bias.var()), self.eps)
    }
}

impl Module for LayerNorm {
    fn named_params(&self) -> NamedParams {
        vec![("weight".into(), self.weight.clone()), ("bias".into(), self.bias.clone())]
    }
}
