//! [`PixelflyLinear`]: flat block butterfly block-sparse plus low-rank (Pixelated
//! Butterfly, Dao et al. 2021), `lerp(sparse(x), U(Vx), g) + b`.

use super::{BlockSparseLinear, Gate, LinearKind, LinearLayer, LowRankLinear, Rank, init_bias, input_in};
use crate::{Linear, Module, NamedParams};
use monarch_autograd::{Param, Var};
use monarch_tensor::{FlatButterfly, Result};
use rand::Rng;

/// `y = sparse(x) + g·(U(Vx) − sparse(x)) + b` with `g = 0.5` or a learned per-token
/// gate `sigmoid(gate(x))`. Parameters: `sparse.weight`, `lowrank.weight1`,
/// `lowrank.weight2`, `gate.weight`, `gate.bias` (learned gate only), `bias`.
#[derive(Clone, Debug)]
pub struct PixelflyLinear {
    /// The block-sparse term (no bias).
    pub sparse: BlockSparseLinear,
    /// The low-rank term (no bias).
    pub lowrank: LowRankLinear,
    /// The learned gate `Linear(in, 1)`, if any.
    pub gate: Option<Linear>,
    /// Bias (out).
    pub bias: Option<Param>,
}

impl PixelflyLinear {
    /// A fresh layer with the flat block butterfly mask `cfg` and a low-rank term of `rank`.
    pub fn new(
        inp: usize,
        out: usize,
        cfg: FlatButterfly,
        rank: Rank,
        gate: Gate,
        bias: bool,
        rng: &mut impl Rng,
    ) -> Result<Self> {
        let sparse = BlockSparseLinear::new(inp, out, cfg, false, rng)?;
        let lowrank = LowRankLinear::new(inp, out, rank, false, rng)?;
        let gate = match gate {
            Gate::Half => None,
            Gate::Learned => Some(Linear::new(inp, 1, true, rng)?),
        };
        Ok(PixelflyLinear { sparse, lowrank, gate, bias: init_bias(inp, out, bias, rng)? })
    }
}

impl Module for PixelflyLinear {
    fn named_params(&self) -> NamedParams {
        let mut p = Self::prefixed("sparse", &self.sparse);
        p.extend(Self::prefixed("lowrank", &self.lowrank));
        if let Some(g) = &self.gate {
            p.extend(Self::prefixed("gate", g));
        }
        p.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        p
    }
}

impl LinearLayer for PixelflyLinear {
    fn forward(&self, x: &Var) -> Result<Var> {
        // Read by two or three products: their gradients are summed in the weights' dtype.
        let x = &input_in(x, self.sparse.weight.value().dtype())?;
        let bias = self.bias.as_ref().map(|b| b.var());
        let Some(gate) = &self.gate else {
            // g = 0.5 folded into the (small) weights: sparse(x; S/2, b) + (U/2)·(V·x),
            // sparing two passes over the activations.
            let s =
                x.block_sparse_linear(&self.sparse.weight.var().mul_scalar(0.5)?, self.sparse.plan(), bias.as_ref())?;
            let u = self.lowrank.weight2.var().mul_scalar(0.5)?;
            return s.add(&x.linear(&self.lowrank.weight1.var(), None)?.linear(&u, None)?);
        };
        let (s, l) = (self.sparse.forward_no_bias(x)?, self.lowrank.forward_no_bias(x)?);
        let g = gate.forward(x)?.sigmoid()?;
        let y = s.add(&l.sub(&s)?.mul(&g)?)?;
        match &bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }
    fn in_features(&self) -> usize {
        self.sparse.in_features()
    }
    fn out_features(&self) -> usize {
        self.sparse.out_features()
    }
    fn macs_per_row(&self) -> usize {
        self.sparse.macs_per_row() + self.lowrank.macs_per_row() + self.gate.as_ref().map_or(0, |g| g.in_features())
    }
    /// Exact for the fixed gate (`W = (S + U·V)/2`); a learned gate makes the layer
    /// nonlinear, so it has no dense equivalent and this is an error.
    fn to_dense(&self) -> Result<Linear> {
        if self.gate.is_some() {
            monarch_tensor::bail!("to_dense", "a pixelfly layer with a learned gate is not linear");
        }
        let s = self.sparse.layout().densify(&self.sparse.weight.value())?;
        let w = s.add(&self.lowrank.dense_weight()?)?.mul_scalar(0.5)?;
        Linear::from_weights(w, self.bias.as_ref().map(|b| b.value()))
    }
    fn kind(&self) -> LinearKind {
        let FlatButterfly { butterfly_size, n_factors, block, .. } = self.sparse.config();
        let rank = match self.lowrank.kind() {
            LinearKind::LowRank { rank } => rank,
            _ => unreachable!("the low-rank term reports its own kind"),
        };
        let gate = if self.gate.is_some() { Gate::Learned } else { Gate::Half };
        LinearKind::Pixelfly { butterfly_size, n_factors, block, rank, gate }
    }
}
