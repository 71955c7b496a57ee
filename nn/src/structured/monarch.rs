//! [`MonarchLinear`]: the Monarch layer of the reference PyTorch code, with the same
//! factor shapes, initialisation and parameter names.

use super::{LinearKind, LinearLayer, dense_weight, f64_of, init_bias, project};
use crate::{Linear, Module, NamedParams};
use monarch_autograd::{Param, Var};
use monarch_tensor::{DType, Init, MonarchShape, Result, Tensor};
use rand::Rng;

/// `y = Monarch(blkdiag1, blkdiag2)·pad(x)`, truncated to `out`, plus bias. Inputs are
/// zero-padded to `k·p` and the permutations are folded into the GEMM strides.
#[derive(Clone, Debug)]
pub struct MonarchLinear {
    /// First factor (k, q, p).
    pub blkdiag1: Param,
    /// Second factor (l, s, r).
    pub blkdiag2: Param,
    /// Bias (out).
    pub bias: Option<Param>,
    in_features: usize,
    out_features: usize,
}

impl MonarchLinear {
    /// Refuses an input whose last dimension is not `in_features`.
    fn check_input(&self, x: &Var) -> Result<()> {
        if x.dims().last() != Some(&self.in_features) {
            monarch_tensor::bail!("MonarchLinear", "input of shape {} does not end in {}", x.shape(), self.in_features);
        }
        Ok(())
    }

    /// The reference factor shapes for `inp → out` with `nblocks` blocks: with
    /// `ib = ⌈in/nb⌉` and `ob = ⌈out/nb⌉`, (nb, ib, ib) and (nb, ob, ib) if `ib < ob`,
    /// else (nb, ob, ib) and (nb, ob, ob).
    pub fn factor_shapes(inp: usize, out: usize, nblocks: usize) -> Result<([usize; 3], [usize; 3])> {
        if nblocks == 0 || inp == 0 || out == 0 {
            monarch_tensor::bail!("MonarchLinear", "need nblocks, in and out >= 1, got {nblocks}, {inp}, {out}");
        }
        let (ib, ob) = (inp.div_ceil(nblocks), out.div_ceil(nblocks));
        Ok(if ib < ob { ([nblocks, ib, ib], [nblocks, ob, ib]) } else { ([nblocks, ob, ib], [nblocks, ob, ob]) })
    }

    /// A layer initialised like the reference: each factor uniform on `±1/√(last dim)`,
    /// the bias like `torch.nn.Linear`.
    pub fn new(inp: usize, out: usize, nblocks: usize, bias: bool, rng: &mut impl Rng) -> Result<Self> {
        let (s1, s2) = Self::factor_shapes(inp, out, nblocks)?;
        let bound = |shape: [usize; 3]| 1.0 / (shape[2] as f64).sqrt();
        let (b1, b2) = (bound(s1), bound(s2));
        let w1 = Init::Uniform { lo: -b1, hi: b1 }.tensor(s1, DType::F32, rng)?;
        let w2 = Init::Uniform { lo: -b2, hi: b2 }.tensor(s2, DType::F32, rng)?;
        let bias = init_bias(inp, out, bias, rng)?;
        Ok(MonarchLinear {
            blkdiag1: Param::new(w1),
            blkdiag2: Param::new(w2),
            bias,
            in_features: inp,
            out_features: out,
        })
    }

    /// A layer from existing factors (any chaining shapes with `in ≤ k·p`, `out ≤ l·s`).
    pub fn from_factors(w1: Tensor, w2: Tensor, bias: Option<Tensor>, inp: usize, out: usize) -> Result<Self> {
        let sh = MonarchShape::of(w1.shape(), w2.shape())?;
        if inp == 0 || inp > sh.n() || out == 0 || out > sh.m() {
            monarch_tensor::bail!(
                "MonarchLinear",
                "factors {} and {} cannot map {inp} to {out} features",
                w1.shape(),
                w2.shape()
            );
        }
        if let Some(b) = &bias
            && b.dims() != [out]
        {
            monarch_tensor::bail!("MonarchLinear", "bias of shape {} does not match {out} outputs", b.shape());
        }
        Ok(MonarchLinear {
            blkdiag1: Param::new(w1),
            blkdiag2: Param::new(w2),
            bias: bias.map(Param::new),
            in_features: inp,
            out_features: out,
        })
    }

    /// The Frobenius-nearest Monarch layer with the reference shapes for `nblocks` (see
    /// [`project::monarch_factors`]); the bias is kept.
    pub fn project(dense: &Linear, nblocks: usize) -> Result<Self> {
        let (inp, out) = (dense.in_features(), dense.out_features());
        let (s1, s2) = Self::factor_shapes(inp, out, nblocks)?;
        Self::project_to(dense, MonarchShape::of(&s1.into(), &s2.into())?)
    }

    /// The paper's square projection: for an n×n weight, factors (a, b, b) and (b, a, a)
    /// with `a·b = n` the factor pair closest to √n (`a ≤ b`); every block is rank 1.
    pub fn project_square(dense: &Linear) -> Result<Self> {
        let n = dense.in_features();
        if dense.out_features() != n {
            monarch_tensor::bail!("project_square", "needs a square weight, got {}x{n}", dense.out_features());
        }
        let a = (1..=n.isqrt()).rev().find(|a| n % a == 0).unwrap_or(1);
        let b = n / a;
        Self::project_to(dense, MonarchShape { k: a, q: b, p: b, l: b, s: a, r: a })
    }

    fn project_to(dense: &Linear, sh: MonarchShape) -> Result<Self> {
        let w = dense.weight.value();
        let (w1, w2) = project::monarch_factors(&w, sh)?;
        let dt = w.dtype();
        let bias = dense.bias.as_ref().map(|b| b.value());
        Self::from_factors(w1.to_dtype(dt)?, w2.to_dtype(dt)?, bias, dense.in_features(), dense.out_features())
    }

    /// The factors' dimensions.
    pub fn shape(&self) -> MonarchShape {
        MonarchShape::of(self.blkdiag1.value().shape(), self.blkdiag2.value().shape()).expect("checked at construction")
    }

    /// The dense weight (out, in) of the Monarch product, computed in f64.
    pub fn dense_weight(&self) -> Result<Tensor> {
        let (w1, w2) = (f64_of(&self.blkdiag1)?, f64_of(&self.blkdiag2)?);
        let out = self.out_features;
        dense_weight(self.in_features, self.blkdiag1.value().dtype(), |eye| {
            Ok(eye.monarch_linear(&w1, &w2, None, out)?.y)
        })
    }
}

impl Module for MonarchLinear {
    fn named_params(&self) -> NamedParams {
        let mut p =
            vec![("blkdiag1".to_string(), self.blkdiag1.clone()), ("blkdiag2".to_string(), self.blkdiag2.clone())];
        p.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        p
    }
}

impl LinearLayer for MonarchLinear {
    fn forward(&self, x: &Var) -> Result<Var> {
        self.check_input(x)?;
        let bias = self.bias.as_ref().map(|b| b.var());
        x.monarch_linear(&self.blkdiag1.var(), &self.blkdiag2.var(), bias.as_ref(), self.out_features)
    }
    fn forward_low(&self, x: &Var) -> Result<Var> {
        monarch_autograd::low_output(|| self.forward(x))
    }
    fn forward_act(&self, x: &Var, act: crate::Activation) -> Result<Var> {
        self.check_input(x)?;
        let bias = self.bias.as_ref().map(|b| b.var());
        // One product, its result kept low under autocast (see the trait).
        monarch_autograd::low_output(|| {
            x.monarch_linear_act(&self.blkdiag1.var(), &self.blkdiag2.var(), bias.as_ref(), self.out_features, act.op())
        })
    }
    fn in_features(&self) -> usize {
        self.in_features
    }
    fn out_features(&self) -> usize {
        self.out_features
    }
    fn macs_per_row(&self) -> usize {
        let MonarchShape { k, q, p, l, s, r } = self.shape();
        let first: usize = (0..k).map(|kk| q * self.in_features.saturating_sub(kk * p).min(p)).sum();
        let second: usize = (0..l).map(|ll| r * self.out_features.saturating_sub(ll).div_ceil(l).min(s)).sum();
        first + second
    }
    fn to_dense(&self) -> Result<Linear> {
        Linear::from_weights(self.dense_weight()?, self.bias.as_ref().map(|b| b.value()))
    }
    fn kind(&self) -> LinearKind {
        LinearKind::Monarch { nblocks: self.shape().k }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn reference_shapes_names_and_densification() {
        assert_eq!(MonarchLinear::factor_shapes(1024, 4096, 4).unwrap(), ([4, 256, 256], [4, 1024, 256]));
        assert_eq!(MonarchLinear::factor_shapes(4096, 1024, 4).unwrap(), ([4, 256, 1024], [4, 256, 256]));
        assert_eq!(MonarchLinear::factor_shapes(10, 7, 3).unwrap(), ([3, 3, 4], [3, 3, 3]));
        assert!(MonarchLinear::factor_shapes(3, 7, 0).is_err());
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let m = MonarchLinear::new(10, 7, 3, true, &mut rng).unwrap();
        let names: Vec<String> = m.named_params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["blkdiag1", "blkdiag2", "bias"]);
        assert!(m.blkdiag1.value().to_vec::<f32>().unwrap().iter().all(|v| v.abs() <= 0.5));
        let x = Var::constant(Tensor::randn([2, 4, 10], 0.0, 1.0, 1).unwrap());
        let (y, d) = (m.forward(&x).unwrap(), m.to_dense().unwrap().forward(&x).unwrap());
        for (a, b) in y.value().to_vec::<f32>().unwrap().iter().zip(d.value().to_vec::<f32>().unwrap()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // 3 blocks of 3 outputs from 4 inputs each (the last block sees 2), then 3 blocks of 3×3 (7 outputs kept).
        assert_eq!(m.macs_per_row(), 3 * 4 + 3 * 4 + 3 * 2 + 3 * (3 + 2 + 2));
        assert_eq!(m.kind(), LinearKind::Monarch { nblocks: 3 });
    }
}
