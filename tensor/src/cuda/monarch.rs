//! The Monarch layer on CUDA tensors (`monarch_cuda::ops::monarch`), and its fused
//! activation: folded into the output's permutation pass forward and into
//! the output gradient's backward.

use super::cuda_err;
use super::ops::{alloc, out_mut, same_device};
use crate::ops::monarch::bias_grad;
use crate::ops::{MonarchActOut, MonarchShape, UnaryOp};
use crate::{DType, Result, Tensor};
use monarch_cuda::ops::monarch as km;

impl Tensor {
    /// The Monarch layer on the device, `bias` (out) added in the kernel's epilogue:
    /// `(y, out1)` with `out1` the first factor's output, (rows, k·q), in the kernel's
    /// layout (`MonarchDims::group_major`), which [`Tensor::cuda_monarch_backward`] reads.
    pub(crate) fn cuda_monarch(
        &self,
        w1: &Tensor,
        w2: &Tensor,
        bias: Option<&Tensor>,
        sh: MonarchShape,
        out: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (y, out1, _) = self.cuda_monarch_forward([w1, w2], bias, sh, out, None, "monarch_linear")?;
        Ok((y, out1))
    }

    /// The fused [`Tensor::monarch_linear_act`] on the device, or `None` where the
    /// layout has no output permutation pass to fuse into.
    pub(crate) fn cuda_monarch_act(
        &self,
        w1: &Tensor,
        w2: &Tensor,
        bias: Option<&Tensor>,
        sh: MonarchShape,
        out: usize,
        act: UnaryOp,
    ) -> Result<Option<MonarchActOut>> {
        let Some(act) = kernel_act(act) else { return Ok(None) };
        let inp = *self.dims().last().unwrap_or(&0);
        let d = dims(sh, self.elem_count() / inp.max(1), inp, out);
        if !d.grouped_stores() || !matches!(self.dtype(), DType::F32 | DType::BF16) {
            return Ok(None);
        }
        let (y, mid, pre) = self.cuda_monarch_forward([w1, w2], bias, sh, out, Some(act), "monarch_linear_act")?;
        Ok(pre.map(|pre| MonarchActOut { y, mid, pre }))
    }

    /// `(y, out1, pre)`: the plain forward, or with `act` the fused one (`pre`, the
    /// group-major pre-activation, then given).
    fn cuda_monarch_forward(
        &self,
        [w1, w2]: [&Tensor; 2],
        bias: Option<&Tensor>,
        sh: MonarchShape,
        out: usize,
        act: Option<km::Act>,
        op: &'static str,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        same_device(op, self, &[w1, w2])?;
        if let Some(b) = bias {
            same_device(op, self, &[b])?;
        }
        let (x, w1, w2) = (self.contiguous()?, w1.contiguous()?, w2.contiguous()?);
        let bias = bias.map(|b| b.contiguous()).transpose()?;
        let inp = *self.dims().last().unwrap_or(&0);
        let d = dims(sh, self.elem_count() / inp.max(1), inp, out);
        let mut out_dims = self.dims().to_vec();
        *out_dims.last_mut().expect("rank checked by the caller") = out;
        let mut y = alloc(&x, x.dtype(), out_dims, op)?;
        let mut out1 = alloc(&x, x.dtype(), [d.batch, d.mid()], op)?;
        let (xv, av, bv) = (x.cuda_view(op)?, w1.cuda_view(op)?, w2.cuda_view(op)?);
        let biv = bias.as_ref().map(|b| b.cuda_view(op)).transpose()?;
        let (o1, yv) = (out_mut(&mut out1, op)?, out_mut(&mut y, op)?);
        let pre = match act {
            None => {
                km::monarch_forward(d, xv, av, bv, biv, o1, yv).map_err(cuda_err(op))?;
                None
            }
            Some(act) => {
                let mut pre = alloc(&x, x.dtype(), [d.batch, d.l * d.s], op)?;
                let pv = out_mut(&mut pre, op)?;
                km::monarch_forward_act(d, act, xv, av, bv, biv, o1, pv, yv).map_err(cuda_err(op))?;
                Some(pre)
            }
        };
        Ok((y, out1, pre))
    }

    /// Gradients `[dx, dw1, dw2]` of [`Tensor::cuda_monarch`] (all three are computed
    /// by the fused kernels; `want` drops the unwanted ones).
    pub(crate) fn cuda_monarch_backward(
        x: &Tensor,
        w1: &Tensor,
        w2: &Tensor,
        out1: &Tensor,
        dy: &Tensor,
        sh: MonarchShape,
        want: [bool; 3],
    ) -> Result<[Option<Tensor>; 3]> {
        let ([dx, dw1, dw2], _) = Tensor::cuda_monarch_grads([x, w1, w2, out1, dy], sh, None, "monarch_backward")?;
        let keep = |t: Tensor, w: bool| w.then_some(t);
        Ok([keep(dx, want[0]), keep(dw1, want[1]), keep(dw2, want[2])])
    }

    /// Gradients `[dx, dw1, dw2, dbias]` of [`Tensor::cuda_monarch_act`] from `[x, w1,
    /// w2, mid, pre, dy]`: the bias gradient is the column sums of the pre-activation's
    /// gradient, taken back from group-major to natural order.
    pub(crate) fn cuda_monarch_act_backward(
        [x, w1, w2, mid, pre, dy]: [&Tensor; 6],
        bias: Option<&Tensor>,
        sh: MonarchShape,
        act: UnaryOp,
        want: [bool; 4],
    ) -> Result<[Option<Tensor>; 4]> {
        let op = "monarch_act_backward";
        let Some(act) = kernel_act(act) else {
            crate::bail!(op, "{} is not an activation the Monarch kernels fuse", act.name());
        };
        let fused = Some((act, pre, bias));
        let ([dx, dw1, dw2], dpre) = Tensor::cuda_monarch_grads([x, w1, w2, mid, dy], sh, fused, op)?;
        let (out, l, s) = (*dy.dims().last().unwrap_or(&0), sh.l, sh.s);
        let dbias = match (want[3] && bias.is_some(), dpre) {
            (true, Some(d)) => Some(bias_grad(&d, l, s, out)?),
            _ => None,
        };
        let keep = |t: Tensor, w: bool| w.then_some(t);
        Ok([keep(dx, want[0]), keep(dw1, want[1]), keep(dw2, want[2]), dbias])
    }

    /// `([dx, dw1, dw2], dpre)` from `[x, w1, w2, out1, dy]`: the plain backward, or
    /// through the fused activation `(act, pre, bias)` (`dpre`, the pre-activation's
    /// group-major gradient, then given).
    fn cuda_monarch_grads(
        [x, w1, w2, out1, dy]: [&Tensor; 5],
        sh: MonarchShape,
        fused: Option<(km::Act, &Tensor, Option<&Tensor>)>,
        op: &'static str,
    ) -> Result<([Tensor; 3], Option<Tensor>)> {
        same_device(op, x, &[w1, w2, out1, dy])?;
        if let Some((_, pre, bias)) = fused {
            same_device(op, x, &[pre])?;
            if let Some(b) = bias {
                same_device(op, x, &[b])?;
            }
        }
        let [xc, w1c, w2c, o1, g] = [x, w1, w2, out1, dy].map(|t| t.contiguous());
        let (xc, w1c, w2c, o1, g) = (xc?, w1c?, w2c?, o1?, g?);
        let inp = *x.dims().last().unwrap_or(&0);
        let out = *dy.dims().last().unwrap_or(&0);
        let d = dims(sh, x.elem_count() / inp.max(1), inp, out);
        let mut dx = alloc(&xc, x.dtype(), x.shape().clone(), op)?;
        let mut dw1 = alloc(&xc, x.dtype(), w1.shape().clone(), op)?;
        let mut dw2 = alloc(&xc, x.dtype(), w2.shape().clone(), op)?;
        let views = (xc.cuda_view(op)?, w1c.cuda_view(op)?, w2c.cuda_view(op)?, o1.cuda_view(op)?, g.cuda_view(op)?);
        let grads = [out_mut(&mut dx, op)?, out_mut(&mut dw1, op)?, out_mut(&mut dw2, op)?];
        let dpre = match fused {
            None => {
                let [gx, g1, g2] = grads;
                km::monarch_backward(d, views.0, views.1, views.2, views.3, views.4, gx, g1, g2, false)
                    .map_err(cuda_err(op))?;
                None
            }
            Some((act, pre, bias)) => {
                let (pc, bias) = (pre.contiguous()?, bias.map(|b| b.contiguous()).transpose()?);
                let mut dpre = alloc(&xc, x.dtype(), [d.batch, d.l * d.s], op)?;
                let fused = km::ActGrad {
                    act,
                    pre: pc.cuda_view(op)?,
                    bias: bias.as_ref().map(|b| b.cuda_view(op)).transpose()?,
                    dpre: out_mut(&mut dpre, op)?,
                };
                km::monarch_backward_act(d, views.0, views.1, views.2, views.3, views.4, fused, grads, false)
                    .map_err(cuda_err(op))?;
                Some(dpre)
            }
        };
        Ok(([dx, dw1, dw2], dpre))
    }
}

/// The kernels' name for an activation they fuse.
fn kernel_act(act: UnaryOp) -> Option<km::Act> {
    match act {
        UnaryOp::GeluTanh => Some(km::Act::GeluTanh),
        UnaryOp::GeluErf => Some(km::Act::GeluErf),
        UnaryOp::Relu => Some(km::Act::Relu),
        _ => None,
    }
}

/// The kernel's sizes of a Monarch call.
fn dims(sh: MonarchShape, batch: usize, n_in: usize, m_out: usize) -> km::MonarchDims {
    let MonarchShape { k, q, p, l, s, r } = sh;
    km::MonarchDims { batch, n_in, m_out, k, q, p, l, s, r }
}
