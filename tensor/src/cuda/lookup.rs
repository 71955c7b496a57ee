//! Embedding lookups and the cross-entropy loss on CUDA tensors. The callers
//! bounds-check indices and targets first: from their upload bounds when those settle
//! it, else by reading them. Host indices are uploaded here.

use super::cuda_err;
use super::ops::{alloc, out_mut, same_device};
use crate::ops::CrossEntropy;
use crate::{DType, Result, Tensor};
use monarch_cuda::ops::{cross_entropy as kx, embedding as ke};

impl Tensor {
    /// `t` on this tensor's device, contiguous (an upload when `t` is on the host).
    fn beside(&self, t: &Tensor) -> Result<Tensor> {
        t.to_device(self.device())?.contiguous()
    }

    /// [`Tensor::index_select`] on the device: `(outer, size, inner)` split at the dim.
    pub(crate) fn cuda_index_select(
        &self,
        ids: &Tensor,
        (outer, size, inner): (usize, usize, usize),
    ) -> Result<Tensor> {
        let op = "index_select";
        let (x, ids) = (self.contiguous()?, self.beside(ids)?);
        let n = ids.elem_count();
        let mut out = alloc(&x, x.dtype(), [outer * n * inner], op)?;
        let d = ke::IndexDims { outer, size, inner };
        ke::index_select(x.cuda_view(op)?, ids.cuda_elems(op)?, d, out_mut(&mut out, op)?, None)
            .map_err(cuda_err(op))?;
        Ok(out)
    }

    /// [`Tensor::index_add`] on the device, accumulating in f32 (the kernel's atomics).
    pub(crate) fn cuda_index_add(
        &self,
        ids: &Tensor,
        src: &Tensor,
        (outer, size, inner): (usize, usize, usize),
    ) -> Result<Tensor> {
        let op = "index_add";
        same_device(op, self, &[src])?;
        let (ids, src) = (self.beside(ids)?, src.contiguous()?);
        let d = ke::IndexDims { outer, size, inner };
        let (iv, sv) = (ids.cuda_elems(op)?, src.cuda_view(op)?);
        self.accumulated(op, |acc| ke::index_add(acc, iv, sv, d, None))
    }

    /// A fresh f32 copy of this tensor (the input itself is never changed) that `add`
    /// accumulates into with the kernels' atomics, returned in this tensor's dtype.
    fn accumulated(
        &self,
        op: &'static str,
        add: impl FnOnce(monarch_cuda::ViewMut<'_>) -> monarch_cuda::Result<()>,
    ) -> Result<Tensor> {
        let mut acc = self.cuda_copy(DType::F32)?;
        add(out_mut(&mut acc, op)?).map_err(cuda_err(op))?;
        acc.reshape(self.shape().clone())?.to_dtype(self.dtype())
    }

    /// [`Tensor::gather`] on the device: `(outer, size, inner)` split at the dim, the
    /// result shaped like `index`.
    pub(crate) fn cuda_gather(&self, index: &Tensor, (outer, size, inner): (usize, usize, usize)) -> Result<Tensor> {
        let op = "gather";
        let (x, idx) = (self.contiguous()?, self.beside(index)?);
        let n = idx.elem_count() / (outer * inner).max(1);
        let mut out = alloc(&x, x.dtype(), index.shape().clone(), op)?;
        let d = ke::IndexDims { outer, size, inner };
        ke::gather(x.cuda_view(op)?, idx.cuda_elems(op)?, d, n, out_mut(&mut out, op)?, None).map_err(cuda_err(op))?;
        Ok(out)
    }

    /// [`Tensor::scatter_add`] on the device, accumulating in f32 (the kernel's atomics).
    pub(crate) fn cuda_scatter_add(
        &self,
        index: &Tensor,
        src: &Tensor,
        (outer, size, inner): (usize, usize, usize),
    ) -> Result<Tensor> {
        let op = "scatter_add";
        same_device(op, self, &[src])?;
        let (idx, src) = (self.beside(index)?, src.contiguous()?);
        let n = idx.elem_count() / (outer * inner).max(1);
        let d = ke::IndexDims { outer, size, inner };
        let (iv, sv) = (idx.cuda_elems(op)?, src.cuda_elems(op)?);
        self.accumulated(op, |acc| ke::scatter_add(acc, iv, sv, d, n, None))
    }

    /// Mean cross-entropy of (N, C) device logits against (N) targets already checked:
    /// the loss and the per-row log-sum-exp, computed in f32 and returned in `dt`.
    pub(crate) fn cuda_cross_entropy(&self, targets: &Tensor, o: CrossEntropy, dt: DType) -> Result<(Tensor, Tensor)> {
        let op = "cross_entropy";
        let (x, t) = (self.contiguous()?, self.beside(targets)?);
        let (n, c) = (x.dims()[0], x.dims()[1]);
        let mut lse = alloc(&x, DType::F32, n, op)?;
        let mut out = alloc(&x, DType::F32, 2, op)?;
        kx::cross_entropy(
            x.cuda_view(op)?,
            t.cuda_elems(op)?,
            n,
            c,
            options(o),
            out_mut(&mut lse, op)?,
            out_mut(&mut out, op)?,
        )
        .map_err(cuda_err(op))?;
        // Computed in f32, returned in `dt`.
        Ok((out.narrow(0, 0, 1)?.reshape(())?.to_dtype(dt)?, lse.to_dtype(dt)?))
    }

    /// The logits' gradient of [`Tensor::cuda_cross_entropy`], scaled by the scalar
    /// `dloss` (uploaded when on the host), over the count of rows not ignored, taken on
    /// the device.
    pub(crate) fn cuda_cross_entropy_backward(
        &self,
        targets: &Tensor,
        lse: &Tensor,
        dloss: &Tensor,
        o: CrossEntropy,
    ) -> Result<Tensor> {
        let op = "cross_entropy_backward";
        same_device(op, self, &[lse])?;
        let (x, t, lse) = (self.contiguous()?, self.beside(targets)?, lse.to_dtype(DType::F32)?.contiguous()?);
        let (n, c) = (x.dims()[0], x.dims()[1]);
        let dloss = self.beside(&dloss.to_dtype(DType::F32)?)?;
        let count = match o.ignore_index {
            Some(ignore) => t.cmp_scalar(ignore as f64, crate::CmpOp::Ne)?.to_dtype(DType::F32)?.sum_all()?,
            None => Tensor::full_on(n as f64, (), DType::F32, self.device())?,
        };
        let mut dx = alloc(&x, x.dtype(), x.shape().clone(), op)?;
        kx::cross_entropy_backward(
            x.cuda_view(op)?,
            t.cuda_elems(op)?,
            lse.cuda_view(op)?,
            count.cuda_elems(op)?,
            dloss.cuda_elems(op)?,
            n,
            c,
            options(o),
            out_mut(&mut dx, op)?,
        )
        .map_err(cuda_err(op))?;
        Ok(dx)
    }
}

/// The kernel's options.
fn options(o: CrossEntropy) -> kx::CrossEntropy {
    kx::CrossEntropy { ignore_index: o.ignore_index, label_smoothing: o.label_smoothing as f32 }
}
