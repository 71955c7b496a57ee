//! [`ButterflyLinear`]: the classic product of log₂ n butterfly factors with 2×2 blocks.

use super::{LinearKind, LinearLayer, dense_weight, f64_of, init_bias};
use crate::{Linear, Module, NamedParams};
use monarch_autograd::{Param, Var};
use monarch_tensor::{DType, Init, Result};
use rand::Rng;

/// Inputs zero-padded to `n = 2^⌈log₂ in⌉`; `⌈out/n⌉` stacked butterflies of size n,
/// outputs truncated to `out`; `twiddle` has shape (stacks, log₂ n, n/2, 2, 2).
#[derive(Clone, Debug)]
pub struct ButterflyLinear {
    /// Twiddle factors (stacks, log₂ n, n/2, 2, 2).
    pub twiddle: Param,
    /// Bias (out).
    pub bias: Option<Param>,
    in_features: usize,
    out_features: usize,
}

impl ButterflyLinear {
    /// Twiddles normal with variance 1/2, so that each factor preserves the expected
    /// squared norm; bias like `torch.nn.Linear`.
    pub fn new(inp: usize, out: usize, bias: bool, rng: &mut impl Rng) -> Result<Self> {
        if inp == 0 || out == 0 {
            monarch_tensor::bail!("ButterflyLinear", "need in and out >= 1, got {inp} and {out}");
        }
        let n = inp.next_power_of_two().max(2);
        let shape = [out.div_ceil(n), n.trailing_zeros() as usize, n / 2, 2, 2];
        let twiddle = Param::new(Init::Normal { mean: 0.0, std: 0.5f64.sqrt() }.tensor(shape, DType::F32, rng)?);
        Ok(ButterflyLinear { twiddle, bias: init_bias(inp, out, bias, rng)?, in_features: inp, out_features: out })
    }
}

impl Module for ButterflyLinear {
    fn named_params(&self) -> NamedParams {
        let mut p = vec![("twiddle".to_string(), self.twiddle.clone())];
        p.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        p
    }
}

impl LinearLayer for ButterflyLinear {
    fn forward(&self, x: &Var) -> Result<Var> {
        if x.dims().last() != Some(&self.in_features) {
            monarch_tensor::bail!(
                "ButterflyLinear",
                "input of shape {} does not end in {}",
                x.shape(),
                self.in_features
            );
        }
        let y = x.butterfly_mul(&self.twiddle.var(), self.out_features)?;
        match &self.bias {
            Some(b) => y.add(&b.var()),
            None => Ok(y),
        }
    }
    fn in_features(&self) -> usize {
        self.in_features
    }
    fn out_features(&self) -> usize {
        self.out_features
    }
    fn macs_per_row(&self) -> usize {
        // Each factor of each stack: n/2 blocks of 2×2.
        self.twiddle.value().elem_count()
    }
    fn to_dense(&self) -> Result<Linear> {
        let t = f64_of(&self.twiddle)?;
        let out = self.out_features;
        let w = dense_weight(self.in_features, self.twiddle.value().dtype(), |eye| eye.butterfly_mul(&t, out))?;
        Linear::from_weights(w, self.bias.as_ref().map(|b| b.value()))
    }
    fn kind(&self) -> LinearKind {
        LinearKind::Butterfly
    }
}
