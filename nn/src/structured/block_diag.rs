//! [`BlockDiagLinear`]: one block-diagonal factor, no permutation.

use super::{LinearKind, LinearLayer, dense_weight, f64_of, init_bias};
use crate::{Linear, Module, NamedParams};
use monarch_autograd::{Param, Var};
use monarch_tensor::{DType, Init, Result, Tensor};
use rand::Rng;

/// `y[kk·ob + o] = Σ_i weight[kk, o, i]·x[kk·ib + i] + bias`, with `ib = ⌈in/nb⌉`,
/// `ob = ⌈out/nb⌉`, inputs zero-padded to `nb·ib` and outputs truncated to `out`.
#[derive(Clone, Debug)]
pub struct BlockDiagLinear {
    /// Diagonal blocks (nblocks, ob, ib).
    pub weight: Param,
    /// Bias (out).
    pub bias: Option<Param>,
    in_features: usize,
    out_features: usize,
}

impl BlockDiagLinear {
    /// Blocks uniform on `±1/√ib` (each output sees `ib` inputs), bias like `torch.nn.Linear`.
    pub fn new(inp: usize, out: usize, nblocks: usize, bias: bool, rng: &mut impl Rng) -> Result<Self> {
        let shape = Self::block_shape(inp, out, nblocks)?;
        let b = 1.0 / (shape[2] as f64).sqrt();
        let weight = Param::new(Init::Uniform { lo: -b, hi: b }.tensor(shape, DType::F32, rng)?);
        Ok(BlockDiagLinear { weight, bias: init_bias(inp, out, bias, rng)?, in_features: inp, out_features: out })
    }

    /// The weight shape (nblocks, ⌈out/nb⌉, ⌈in/nb⌉).
    pub fn block_shape(inp: usize, out: usize, nblocks: usize) -> Result<[usize; 3]> {
        if nblocks == 0 || inp == 0 || out == 0 {
            monarch_tensor::bail!("BlockDiagLinear", "need nblocks, in and out >= 1, got {nblocks}, {inp}, {out}");
        }
        Ok([nblocks, out.div_ceil(nblocks), inp.div_ceil(nblocks)])
    }

    /// The Frobenius-nearest block-diagonal layer: the dense weight's diagonal blocks.
    pub fn project(dense: &Linear, nblocks: usize) -> Result<Self> {
        let (inp, out) = (dense.in_features(), dense.out_features());
        let [nb, ob, ib] = Self::block_shape(inp, out, nblocks)?;
        let w = dense.weight.value();
        let wv = w.to_vec_f64()?;
        let mut blocks = vec![0.0; nb * ob * ib];
        for (e, v) in blocks.iter_mut().enumerate() {
            let (kk, o, i) = (e / (ob * ib), (e / ib) % ob, e % ib);
            let (row, col) = (kk * ob + o, kk * ib + i);
            if row < out && col < inp {
                *v = wv[row * inp + col];
            }
        }
        let weight = Param::new(Tensor::from_vec(blocks, [nb, ob, ib])?.to_dtype(w.dtype())?);
        let bias = dense.bias.as_ref().map(|b| Param::new(b.value()));
        Ok(BlockDiagLinear { weight, bias, in_features: inp, out_features: out })
    }

    /// `x (rows, in) → (rows, out)` without bias, for any float dtype.
    fn apply(x: &Var, w: &Var, out: usize) -> Result<Var> {
        let &[nb, ob, ib] = w.dims() else { unreachable!("weight shape fixed at construction") };
        let inp = *x.dims().last().unwrap_or(&0);
        let lead = x.dims()[..x.dims().len() - 1].to_vec();
        let rows = lead.iter().product::<usize>();
        let mut x = x.reshape([rows, inp])?;
        if inp < nb * ib {
            let pad = Var::constant(Tensor::zeros_on([rows, nb * ib - inp], x.dtype(), x.value().device())?);
            x = Var::cat(&[&x, &pad], 1)?;
        }
        // (nb, rows, ib) · (nb, ib, ob): one GEMM per block over strided views.
        let y = x.reshape([rows, nb, ib])?.transpose(0, 1)?.matmul(&w.transpose(1, 2)?)?;
        let y = y.transpose(0, 1)?.reshape([rows, nb * ob])?.narrow(1, 0, out)?;
        let mut dims = lead;
        dims.push(out);
        y.reshape(dims)
    }
}

impl Module for BlockDiagLinear {
    fn named_params(&self) -> NamedParams {
        let mut p = vec![("weight".to_string(), self.weight.clone())];
        p.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        p
    }
}

impl LinearLayer for BlockDiagLinear {
    fn forward(&self, x: &Var) -> Result<Var> {
        if x.dims().last() != Some(&self.in_features) {
            monarch_tensor::bail!(
                "BlockDiagLinear",
                "input of shape {} does not end in {}",
                x.shape(),
                self.in_features
            );
        }
        let y = Self::apply(x, &self.weight.var(), self.out_features)?;
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
        self.weight.value().elem_count()
    }
    fn to_dense(&self) -> Result<Linear> {
        let w = Var::constant(f64_of(&self.weight)?);
        let out = self.out_features;
        let dense = dense_weight(self.in_features, self.weight.value().dtype(), |eye| {
            Ok(Self::apply(&Var::constant(eye.clone()), &w, out)?.value().clone())
        })?;
        Linear::from_weights(dense, self.bias.as_ref().map(|b| b.value()))
    }
    fn kind(&self) -> LinearKind {
        LinearKind::BlockDiag { nblocks: self.weight.value().dims()[0] }
    }
}
