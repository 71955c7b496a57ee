//! Elementwise and row-wise ops on CUDA tensors: unary functions and their fused
//! derivatives, softmax, layer normalisation. Each reads contiguous data (copying a
//! view on the device first) and writes a new contiguous tensor.

use super::cuda_err;
use super::ops::{alloc, out_mut, same_device};
use crate::ops::UnaryOp;
use crate::{DType, Result, Tensor};
use monarch_cuda::ops::{dropout as kd, layer_norm as kl, softmax as ks, unary as ku};

/// The kernel's code for a unary function.
fn kernel_op(op: UnaryOp) -> ku::UnaryOp {
    match op {
        UnaryOp::Neg => ku::UnaryOp::Neg,
        UnaryOp::Exp => ku::UnaryOp::Exp,
        UnaryOp::Log => ku::UnaryOp::Log,
        UnaryOp::Sqrt => ku::UnaryOp::Sqrt,
        UnaryOp::Rsqrt => ku::UnaryOp::Rsqrt,
        UnaryOp::Tanh => ku::UnaryOp::Tanh,
        UnaryOp::Sigmoid => ku::UnaryOp::Sigmoid,
        UnaryOp::Relu => ku::UnaryOp::Relu,
        UnaryOp::GeluTanh => ku::UnaryOp::GeluTanh,
        UnaryOp::GeluErf => ku::UnaryOp::GeluErf,
        UnaryOp::Silu => ku::UnaryOp::Silu,
        UnaryOp::Abs => ku::UnaryOp::Abs,
        UnaryOp::Sqr => ku::UnaryOp::Sqr,
        UnaryOp::Recip => ku::UnaryOp::Recip,
        UnaryOp::Powf(e) => ku::UnaryOp::Powf(e as f32),
        UnaryOp::Affine { mul, add } => ku::UnaryOp::Affine { mul: mul as f32, add: add as f32 },
        UnaryOp::Clamp { min, max } => ku::UnaryOp::Clamp { min: min as f32, max: max as f32 },
    }
}

impl Tensor {
    /// [`Tensor::unary`] on the device.
    pub(crate) fn cuda_unary(&self, op: UnaryOp) -> Result<Tensor> {
        let name = op.name();
        let x = self.contiguous()?;
        let mut y = alloc(&x, x.dtype(), x.shape().clone(), name)?;
        let xv = x.cuda_elems(name)?;
        ku::unary(kernel_op(op), xv, out_mut(&mut y, name)?).map_err(cuda_err(name))?;
        Ok(y)
    }

    /// [`Tensor::unary_backward`] on the device.
    pub(crate) fn cuda_unary_backward(op: UnaryOp, saved: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let name = op.name();
        same_device(name, dy, &[saved])?;
        let (s, g) = (saved.contiguous()?, dy.contiguous()?);
        let mut dx = alloc(&g, g.dtype(), g.shape().clone(), name)?;
        let (sv, gv) = (s.cuda_elems(name)?, g.cuda_elems(name)?);
        ku::unary_backward(kernel_op(op), sv, gv, out_mut(&mut dx, name)?).map_err(cuda_err(name))?;
        Ok(dx)
    }

    /// [`Tensor::dropout`] of a contiguous device tensor: the CPU's mask for the same seed.
    pub(crate) fn cuda_dropout(&self, p: f64, seed: u64) -> Result<Tensor> {
        let op = "dropout";
        let mut y = alloc(self, self.dtype(), self.shape().clone(), op)?;
        kd::dropout(self.cuda_elems(op)?, p, seed, 0, out_mut(&mut y, op)?).map_err(cuda_err(op))?;
        Ok(y)
    }

    /// Softmax (or log-softmax) over the last dimension of contiguous rows.
    pub(crate) fn cuda_softmax_rows(&self, log: bool) -> Result<Tensor> {
        let op = "softmax";
        let cols = *self.dims().last().unwrap_or(&1);
        let rows = self.elem_count() / cols.max(1);
        let mut y = alloc(self, self.dtype(), self.shape().clone(), op)?;
        ks::softmax(self.cuda_view(op)?, rows, cols, log, out_mut(&mut y, op)?).map_err(cuda_err(op))?;
        Ok(y)
    }

    /// The softmax input gradient over the last dimension of contiguous rows.
    pub(crate) fn cuda_softmax_backward_rows(y: &Tensor, dy: &Tensor, log: bool) -> Result<Tensor> {
        let op = "softmax_backward";
        same_device(op, y, &[dy])?;
        let cols = *y.dims().last().unwrap_or(&1);
        let rows = y.elem_count() / cols.max(1);
        let mut dx = alloc(y, y.dtype(), y.shape().clone(), op)?;
        ks::softmax_backward(y.cuda_view(op)?, dy.cuda_view(op)?, rows, cols, log, out_mut(&mut dx, op)?)
            .map_err(cuda_err(op))?;
        Ok(dx)
    }

    /// Layer normalisation over the last dimension: `(y, mean, rstd)`, the statistics f32.
    pub(crate) fn cuda_layer_norm(
        &self,
        w: Option<&Tensor>,
        b: Option<&Tensor>,
        eps: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let op = "layer_norm";
        let params: Vec<&Tensor> = w.into_iter().chain(b).collect();
        same_device(op, self, &params)?;
        let x = self.contiguous()?;
        let (w, b) = (w.map(Tensor::contiguous).transpose()?, b.map(Tensor::contiguous).transpose()?);
        let cols = *x.dims().last().unwrap_or(&1);
        let rows = x.elem_count() / cols.max(1);
        let stats = crate::Shape::from(&x.dims()[..x.rank() - 1]);
        let mut y = alloc(&x, x.dtype(), x.shape().clone(), op)?;
        let mut mean = alloc(&x, DType::F32, stats.clone(), op)?;
        let mut rstd = alloc(&x, DType::F32, stats, op)?;
        let (wv, bv) =
            (w.as_ref().map(|t| t.cuda_view(op)).transpose()?, b.as_ref().map(|t| t.cuda_view(op)).transpose()?);
        kl::layer_norm(
            x.cuda_view(op)?,
            wv,
            bv,
            rows,
            cols,
            eps as f32,
            out_mut(&mut y, op)?,
            out_mut(&mut mean, op)?,
            out_mut(&mut rstd, op)?,
        )
        .map_err(cuda_err(op))?;
        Ok((y, mean, rstd))
    }

    /// Gradients `(dx, dw, db)` of [`Tensor::cuda_layer_norm`].
    pub(crate) fn cuda_layer_norm_backward(
        x: &Tensor,
        w: Option<&Tensor>,
        mean: &Tensor,
        rstd: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let op = "layer_norm_backward";
        let mut others = vec![mean, rstd, dy];
        others.extend(w);
        same_device(op, x, &others)?;
        let (xc, g, m, r) = (x.contiguous()?, dy.contiguous()?, mean.contiguous()?, rstd.contiguous()?);
        let w = w.map(Tensor::contiguous).transpose()?;
        let cols = *xc.dims().last().unwrap_or(&1);
        let rows = xc.elem_count() / cols.max(1);
        let mut dx = alloc(&xc, xc.dtype(), xc.shape().clone(), op)?;
        let mut dw = alloc(&xc, xc.dtype(), cols, op)?;
        let mut db = alloc(&xc, xc.dtype(), cols, op)?;
        let wv = w.as_ref().map(|t| t.cuda_view(op)).transpose()?;
        kl::layer_norm_backward(
            xc.cuda_view(op)?,
            wv,
            m.cuda_view(op)?,
            r.cuda_view(op)?,
            g.cuda_view(op)?,
            rows,
            cols,
            out_mut(&mut dx, op)?,
            out_mut(&mut dw, op)?,
            out_mut(&mut db, op)?,
        )
        .map_err(cuda_err(op))?;
        Ok((dx, dw, db))
    }
}
