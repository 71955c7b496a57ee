//! [`LowRankLinear`]: `y = U·(V·x) + b` of a given rank.

use super::project::low_rank_factors;
use super::{LinearKind, LinearLayer, Rank, init_bias};
use crate::{Linear, Module, NamedParams};
use monarch_autograd::{Param, Var};
use monarch_tensor::{DType, Init, Result, Tensor};
use rand::Rng;

/// A rank-`r` layer: `weight1` V (r, in) then `weight2` U (out, r), plus bias.
#[derive(Clone, Debug)]
pub struct LowRankLinear {
    /// V, shape (rank, in).
    pub weight1: Param,
    /// U, shape (out, rank).
    pub weight2: Param,
    /// Bias (out).
    pub bias: Option<Param>,
    rank: Rank,
}

impl LowRankLinear {
    /// Both factors initialised like `torch.nn.Linear` of their shapes.
    pub fn new(inp: usize, out: usize, rank: Rank, bias: bool, rng: &mut impl Rng) -> Result<Self> {
        let r = rank.resolve(inp, out)?;
        let uniform = |fan_in: usize| {
            let b = 1.0 / (fan_in as f64).sqrt();
            Init::Uniform { lo: -b, hi: b }
        };
        let weight1 = Param::new(uniform(inp).tensor([r, inp], DType::F32, rng)?);
        let weight2 = Param::new(uniform(r).tensor([out, r], DType::F32, rng)?);
        Ok(LowRankLinear { weight1, weight2, bias: init_bias(inp, out, bias, rng)?, rank })
    }

    /// The Frobenius-nearest layer of this rank (truncated SVD, `√σ` on each factor).
    pub fn project(dense: &Linear, rank: Rank) -> Result<Self> {
        let (inp, out) = (dense.in_features(), dense.out_features());
        let r = rank.resolve(inp, out)?;
        let w = dense.weight.value();
        let (u, v) = low_rank_factors(&w.to_vec_f64()?, out, inp, r)?;
        let dt = w.dtype();
        Ok(LowRankLinear {
            weight1: Param::new(Tensor::from_vec(v, [r, inp])?.to_dtype(dt)?),
            weight2: Param::new(Tensor::from_vec(u, [out, r])?.to_dtype(dt)?),
            bias: dense.bias.as_ref().map(|b| Param::new(b.value())),
            rank,
        })
    }

    /// The resolved rank.
    pub fn rank(&self) -> usize {
        self.weight1.value().dims()[0]
    }

    /// `U·(V·x)` without bias.
    pub(crate) fn forward_no_bias(&self, x: &Var) -> Result<Var> {
        x.linear(&self.weight1.var(), None)?.linear(&self.weight2.var(), None)
    }

    /// The dense weight `U·V` (out, in).
    pub(crate) fn dense_weight(&self) -> Result<Tensor> {
        self.weight2.value().matmul(&self.weight1.value())
    }
}

impl Module for LowRankLinear {
    fn named_params(&self) -> NamedParams {
        let mut p = vec![("weight1".to_string(), self.weight1.clone()), ("weight2".to_string(), self.weight2.clone())];
        p.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        p
    }
}

impl LinearLayer for LowRankLinear {
    fn forward(&self, x: &Var) -> Result<Var> {
        let bias = self.bias.as_ref().map(|b| b.var());
        x.linear(&self.weight1.var(), None)?.linear(&self.weight2.var(), bias.as_ref())
    }
    fn in_features(&self) -> usize {
        self.weight1.value().dims()[1]
    }
    fn out_features(&self) -> usize {
        self.weight2.value().dims()[0]
    }
    fn macs_per_row(&self) -> usize {
        self.rank() * (self.in_features() + self.out_features())
    }
    fn to_dense(&self) -> Result<Linear> {
        Linear::from_weights(self.dense_weight()?, self.bias.as_ref().map(|b| b.value()))
    }
    fn kind(&self) -> LinearKind {
        LinearKind::LowRank { rank: self.rank }
    }
}
