//! Token and position embeddings.

use crate::{Module, NamedParams};
use monarch_autograd::{Param, Var};
use monarch_tensor::{DType, Init, Result, Tensor};
use rand::Rng;

/// A lookup table of `num` vectors of size `dim` (parameter `weight`, shape (num, dim)).
#[derive(Clone, Debug)]
pub struct Embedding {
    /// The table, shape (num, dim).
    pub weight: Param,
}

impl Embedding {
    /// A table drawn from N(0, std²) (GPT-2 uses std 0.02).
    pub fn new(num: usize, dim: usize, std: f64, rng: &mut impl Rng) -> Result<Self> {
        Ok(Embedding { weight: Param::new(Init::Normal { mean: 0.0, std }.tensor([num, dim], DType::F32, rng)?) })
    }

    /// Rows of the table for `ids` (`I64`, any shape) → shape (ids.., dim).
    pub fn forward(&self, ids: &Tensor) -> Result<Var> {
        let dim = self.weight.value().dims()[1];
        let mut shape = ids.dims().to_vec();
        shape.push(dim);
        self.weight.var().index_select(&ids.flatten_all()?, 0)?.reshape(shape)
    }
}

impl Module for Embedding {
    fn named_params(&self) -> NamedParams {
        vec![("weight".into(), self.weight.clone())]
    }
}
