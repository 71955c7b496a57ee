//! [`BlockSparseLinear`]: a fixed flat block butterfly mask; only the set blocks are
//! stored, computed and given gradients.

use super::{LinearKind, LinearLayer, init_bias};
use crate::{Linear, Module, NamedParams};
use monarch_autograd::{Param, Var};
use monarch_tensor::{BlockMask, BlockSparsePlan, DType, FlatButterfly, Init, Result};
use rand::Rng;
use std::sync::Arc;

/// `y = x·Wᵀ + b` where `W` keeps only the blocks of a flat block butterfly mask.
/// `weight` holds the stored values in row-panel order (see [`BlockSparsePlan`]).
#[derive(Clone, Debug)]
pub struct BlockSparseLinear {
    /// Stored values (nnz · block²), row panels.
    pub weight: Param,
    /// Bias (out).
    pub bias: Option<Param>,
    plan: Arc<BlockSparsePlan>,
    cfg: FlatButterfly,
}

impl BlockSparseLinear {
    /// A layer with the flat block butterfly mask `cfg` of an `out × inp` weight; values
    /// uniform on `±1/√fan_in` where `fan_in` is the mean number of inputs a row sees.
    pub fn new(inp: usize, out: usize, cfg: FlatButterfly, bias: bool, rng: &mut impl Rng) -> Result<Self> {
        let plan = Self::make_plan(inp, out, cfg)?;
        let fan_in = (plan.mask().density() * inp as f64).max(1.0);
        let b = 1.0 / fan_in.sqrt();
        let weight = Param::new(Init::Uniform { lo: -b, hi: b }.tensor(plan.values_len(), DType::F32, rng)?);
        Ok(BlockSparseLinear { weight, bias: init_bias(inp, out, bias, rng)?, plan: Arc::new(plan), cfg })
    }

    fn make_plan(inp: usize, out: usize, cfg: FlatButterfly) -> Result<BlockSparsePlan> {
        if ![16, 32, 64].contains(&cfg.block) {
            monarch_tensor::bail!("BlockSparseLinear", "block size must be 16, 32 or 64, got {}", cfg.block);
        }
        Ok(BlockSparsePlan::new(BlockMask::flat_butterfly(out, inp, cfg)?))
    }

    /// The Frobenius-nearest layer with this mask: the dense weight's entries in the set blocks.
    pub fn project(dense: &Linear, cfg: FlatButterfly) -> Result<Self> {
        let plan = Self::make_plan(dense.in_features(), dense.out_features(), cfg)?;
        let weight = Param::new(plan.sparsify(&dense.weight.value())?);
        let bias = dense.bias.as_ref().map(|b| Param::new(b.value()));
        Ok(BlockSparseLinear { weight, bias, plan: Arc::new(plan), cfg })
    }

    /// The kernel plan (mask, storage, grouping).
    pub fn layout(&self) -> &BlockSparsePlan {
        &self.plan
    }

    /// The mask configuration.
    pub fn config(&self) -> FlatButterfly {
        self.cfg
    }

    pub(crate) fn plan(&self) -> &Arc<BlockSparsePlan> {
        &self.plan
    }

    pub(crate) fn forward_no_bias(&self, x: &Var) -> Result<Var> {
        x.block_sparse_linear(&self.weight.var(), &self.plan, None)
    }
}

impl Module for BlockSparseLinear {
    fn named_params(&self) -> NamedParams {
        let mut p = vec![("weight".to_string(), self.weight.clone())];
        p.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        p
    }
}

impl LinearLayer for BlockSparseLinear {
    fn forward(&self, x: &Var) -> Result<Var> {
        let bias = self.bias.as_ref().map(|b| b.var());
        x.block_sparse_linear(&self.weight.var(), &self.plan, bias.as_ref())
    }
    fn forward_low(&self, x: &Var) -> Result<Var> {
        monarch_autograd::low_output(|| self.forward(x))
    }
    fn in_features(&self) -> usize {
        self.plan.in_features()
    }
    fn out_features(&self) -> usize {
        self.plan.out_features()
    }
    fn macs_per_row(&self) -> usize {
        self.plan.values_len()
    }
    fn to_dense(&self) -> Result<Linear> {
        Linear::from_weights(self.plan.densify(&self.weight.value())?, self.bias.as_ref().map(|b| b.value()))
    }
    fn kind(&self) -> LinearKind {
        let FlatButterfly { butterfly_size, n_factors, block, .. } = self.cfg;
        LinearKind::BlockSparse { butterfly_size, n_factors, block }
    }
}
