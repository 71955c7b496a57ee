//! [`ButterflyLinear`]: the classic product of log₂ n butterfly factors with 2×2 blocks.

use super::{LinearKind, LinearLayer, dense_weight, f64_of, init_bias, input_in};
use crate::{Linear, Module, NamedParams};
use monarch_autograd::{Param, Var};
use monarch_tensor::{BUTTERFLY_MAX_N, DType, Device, Init, Result, Tensor};
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

/// The butterfly product from primitive ops (reshape, broadcast multiply, sum), for
/// butterflies larger than the GPU kernels take ([`BUTTERFLY_MAX_N`]): factor `f` views each row as (n/2h blocks, 2, h)
/// and sums the 2×2 twiddles against it, `y[blk, s', i] = Σ_s t[blk·h+i, s', s] · x[blk, s, i]`.
pub fn composed(x: &Var, twiddle: &Var, out: usize) -> Result<Var> {
    let &[stacks, log_n, half, 2, 2] = twiddle.dims() else {
        monarch_tensor::bail!("butterfly", "twiddles must be (stacks, log2 n, n/2, 2, 2), got {}", twiddle.shape());
    };
    let (n, inp) = (2 * half, *x.dims().last().unwrap_or(&0));
    if inp == 0 || inp > n || out > stacks * n {
        monarch_tensor::bail!("butterfly", "input of {inp} features and {out} outputs for butterflies of size {n}");
    }
    let lead = x.dims()[..x.dims().len() - 1].to_vec();
    let rows = x.value().elem_count() / inp;
    let mut x0 = x.reshape([rows, inp])?;
    if inp < n {
        let pad = Var::constant(Tensor::zeros_on([rows, n - inp], x.dtype(), x.value().device())?);
        x0 = Var::cat(&[&x0, &pad], 1)?;
    }
    let mut outs = Vec::with_capacity(stacks);
    for st in 0..stacks {
        let mut y = x0.clone();
        for f in 0..log_n {
            let (h, blocks) = (1 << f, n >> (f + 1));
            // (n/2, 2, 2) → [blk, i, s', s] → [1, blk, s', s, i]
            let t = twiddle.narrow(0, st, 1)?.narrow(1, f, 1)?.reshape([blocks, h, 2, 2])?;
            let t = t.permute(&[0, 2, 3, 1])?.unsqueeze(0)?;
            y = y.reshape([rows, blocks, 1, 2, h])?.mul(&t)?.sum(3)?.reshape([rows, n])?;
        }
        outs.push(y);
    }
    let all = Var::cat(&outs.iter().collect::<Vec<_>>(), 1)?.narrow(1, 0, out)?;
    let mut dims = lead;
    dims.push(out);
    all.reshape(dims)
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
        // Butterflies are not autocast (their 2×2 products gain nothing from tensor cores).
        let x = &input_in(x, self.twiddle.value().dtype())?;
        // The fused kernels; on a GPU past their size, the factors as broadcast products.
        let n = 2 * self.twiddle.value().dims()[2];
        let y = if x.value().device() == Device::Cpu || n <= BUTTERFLY_MAX_N {
            x.butterfly_mul(&self.twiddle.var(), self.out_features)?
        } else {
            composed(x, &self.twiddle.var(), self.out_features)?
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use monarch_autograd::Gradients;
    use rand::SeedableRng;

    #[test]
    fn the_composed_product_equals_the_fused_kernel_with_its_gradients() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        for (inp, out) in [(16, 16), (10, 37), (32, 8)] {
            let layer = ButterflyLinear::new(inp, out, false, &mut rng).unwrap();
            let (x, dy) =
                (Tensor::randn([2, 3, inp], 0.0, 1.0, 1).unwrap(), Tensor::randn([2, 3, out], 0.0, 1.0, 2).unwrap());
            let run = |fused: bool| {
                let (xv, tw) = (Var::leaf(x.clone()), layer.twiddle.var());
                let y = if fused { xv.butterfly_mul(&tw, out).unwrap() } else { composed(&xv, &tw, out).unwrap() };
                let mut g = Gradients::new();
                y.backward_with(dy.clone(), &mut g).unwrap();
                [y.value().clone(), g.get(&xv).unwrap().clone(), g.get(&layer.twiddle).unwrap().clone()]
            };
            for (a, b) in run(false).iter().zip(run(true)) {
                assert_eq!(a.dims(), b.dims());
                for (p, q) in a.to_vec::<f32>().unwrap().iter().zip(b.to_vec::<f32>().unwrap()) {
                    assert!((p - q).abs() < 1e-4 * (1.0 + q.abs()), "{inp}->{out}: {p} vs {q}");
                }
            }
        }
    }
}
