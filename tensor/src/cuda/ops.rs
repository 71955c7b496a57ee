//! The tensor ops that run on CUDA tensors, each a thin layer over one `monarch_cuda`
//! op: operands are checked to share one device, non-dense layouts that a kernel cannot
//! read are made contiguous on the device first, and results are new contiguous tensors.

use super::cuda_err;
use crate::ops::{BinaryOp, CmpOp, ReduceOp};
use crate::{DType, Device, Error, Layout, Result, Shape, Storage, Tensor};
use monarch_cuda::gemm::{self, Epilogue, GemmArgs, Precision};
use monarch_cuda::ops::{binary as kb, copy as kc, reduce as kr};

/// `Ok` when every tensor is on `a`'s device.
pub(crate) fn same_device(op: &'static str, a: &Tensor, others: &[&Tensor]) -> Result<()> {
    match others.iter().find(|t| t.device() != a.device()) {
        None => Ok(()),
        Some(t) => Err(Error::DeviceMismatch { op, lhs: a.device(), rhs: t.device() }),
    }
}

/// A fresh, uninitialised device tensor on `like`'s device.
pub(super) fn alloc(like: &Tensor, dtype: DType, shape: impl Into<Shape>, op: &'static str) -> Result<Tensor> {
    let shape = shape.into();
    let dev = like.cuda(op)?.buf.device().clone();
    let buf = dev.alloc(super::buffer_dtype(dtype, op)?, shape.elem_count()).map_err(cuda_err(op))?;
    Ok(Tensor::from_cuda(buf, dtype, shape))
}

/// Write access to the whole buffer of a tensor just made by [`alloc`].
pub(super) fn out_mut<'a>(t: &'a mut Tensor, op: &'static str) -> Result<monarch_cuda::ViewMut<'a>> {
    match t.storage_mut() {
        Some(Storage::Cuda(s)) => Ok(s.written().view_mut()),
        _ => Err(Error::invalid(op, "output buffer is shared")),
    }
}

/// `t`'s buffer read through layout `l` (a broadcast or strided view of it: its offset
/// and element strides) as a broadcasting kernel's operand.
fn operand<'a>(t: &'a Tensor, l: &'a Layout, op: &'static str) -> Result<kb::Operand<'a>> {
    let s = t.cuda(op)?;
    let view = s.buf.slice(l.offset(), s.buf.len() - l.offset()).map_err(cuda_err(op))?;
    Ok(kb::Operand { view, strides: l.strides() })
}

impl Tensor {
    /// Write access to this tensor's whole buffer for an in-place update, after making
    /// it a private contiguous copy if the buffer is shared or larger than the tensor.
    pub(super) fn cuda_in_place(&mut self, op: &'static str) -> Result<monarch_cuda::ViewMut<'_>> {
        let whole = self.layout().contiguous_range() == Some(0..self.cuda(op)?.len());
        if !whole || self.storage_mut().is_none() {
            *self = self.cuda_copy(self.dtype())?;
        }
        out_mut(self, op)
    }

    /// `contiguous` on the device: one strided-copy kernel, converting to `dtype`
    /// (f32 ↔ bf16 and u8 masks → f32 or bf16 have a kernel).
    pub(crate) fn cuda_copy(&self, dtype: DType) -> Result<Tensor> {
        let op = if dtype == self.dtype() { "contiguous" } else { "to_dtype" };
        let mut out = alloc(self, dtype, self.shape().clone(), op)?;
        let src = self.cuda_view(op)?;
        kc::copy_strided(src, self.dims(), self.layout().strides(), out_mut(&mut out, op)?).map_err(cuda_err(op))?;
        Ok(out)
    }

    /// A zero-filled tensor on CUDA device `ordinal`.
    pub(crate) fn cuda_zeros(shape: Shape, dtype: DType, ordinal: usize) -> Result<Tensor> {
        let op = "zeros";
        let dev = super::cuda_device(ordinal)?;
        let buf = dev.zeros(super::buffer_dtype(dtype, op)?, shape.elem_count()).map_err(cuda_err(op))?;
        Ok(Tensor::from_cuda(buf, dtype, shape))
    }

    /// A tensor of `value` on CUDA device `ordinal`, filled by a kernel.
    pub(crate) fn cuda_full(value: f64, shape: Shape, dtype: DType, ordinal: usize) -> Result<Tensor> {
        let op = "full";
        let dev = super::cuda_device(ordinal)?;
        let mut out = Tensor::from_cuda(
            dev.alloc(super::buffer_dtype(dtype, op)?, shape.elem_count()).map_err(cuda_err(op))?,
            dtype,
            shape,
        );
        kc::fill(out_mut(&mut out, op)?, value).map_err(cuda_err(op))?;
        Ok(out)
    }

    /// [`Tensor::tril_mask_on`] on device `ordinal`, generated there.
    pub(crate) fn cuda_tril_mask(rows: usize, cols: usize, diagonal: i64, ordinal: usize) -> Result<Tensor> {
        let op = "tril_mask";
        let dev = super::cuda_device(ordinal)?;
        let buf = dev.alloc(monarch_cuda::DType::U8, rows * cols).map_err(cuda_err(op))?;
        let mut out = Tensor::from_cuda(buf, DType::U8, [rows, cols]);
        kc::tril_mask(out_mut(&mut out, op)?, rows, cols, diagonal).map_err(cuda_err(op))?;
        Ok(out)
    }

    /// [`Tensor::cat`] of device tensors along `d`: one strided copy per part, from the
    /// part as it lies into its slab of the contiguous output.
    pub(crate) fn cuda_cat(parts: &[&Tensor], d: usize, shape: &Shape) -> Result<Tensor> {
        let op = "cat";
        let first = parts[0];
        same_device(op, first, parts)?;
        let mut out = alloc(first, first.dtype(), shape.clone(), op)?;
        let strides = out.layout().strides().to_vec();
        let mut at = 0;
        for p in parts.iter().filter(|p| p.elem_count() > 0) {
            let offset = at * strides[d];
            let dst = match out.storage_mut() {
                Some(Storage::Cuda(s)) => {
                    let buf = s.written();
                    buf.slice_mut(offset, buf.len() - offset).map_err(cuda_err(op))?
                }
                _ => return Err(Error::invalid(op, "output buffer is shared")),
            };
            kc::assign_strided(p.cuda_view(op)?, p.layout().strides(), dst, &strides, p.dims())
                .map_err(cuda_err(op))?;
            at += p.dims()[d];
        }
        Ok(out)
    }

    /// [`Tensor::slice_assign`] on the device, into a contiguous buffer of this tensor's
    /// own (checked by the caller): one strided copy from `src` as it lies.
    pub(crate) fn cuda_slice_assign(&mut self, d: usize, start: usize, src: &Tensor) -> Result<()> {
        let op = "slice_assign";
        let strides = self.layout().strides().to_vec();
        let at = start * strides[d];
        let view = src.cuda_view(op)?;
        let Some(Storage::Cuda(s)) = self.storage_mut() else {
            return Err(Error::invalid(op, "output buffer is shared"));
        };
        let buf = s.written();
        let dst = buf.slice_mut(at, buf.len() - at).map_err(cuda_err(op))?;
        kc::assign_strided(view, src.layout().strides(), dst, &strides, src.dims()).map_err(cuda_err(op))
    }

    /// `lhs op rhs` with broadcasting, both on one device (f32 or bf16).
    pub(crate) fn cuda_binary(
        &self,
        rhs: &Tensor,
        op: BinaryOp,
        shape: &Shape,
        la: &Layout,
        lb: &Layout,
    ) -> Result<Tensor> {
        let name = op.name();
        same_device(name, self, &[rhs])?;
        let kop = match op {
            BinaryOp::Add => kb::BinaryOp::Add,
            BinaryOp::Sub => kb::BinaryOp::Sub,
            BinaryOp::Mul => kb::BinaryOp::Mul,
            BinaryOp::Div => kb::BinaryOp::Div,
            BinaryOp::Max => kb::BinaryOp::Max,
            BinaryOp::Min => kb::BinaryOp::Min,
        };
        let mut out = alloc(self, self.dtype(), shape.clone(), name)?;
        let (a, b) = (operand(self, la, name)?, operand(rhs, lb, name)?);
        kb::binary(kop, a, b, shape.dims(), out_mut(&mut out, name)?).map_err(cuda_err(name))?;
        Ok(out)
    }

    /// `lhs op rhs` as 0/1 bytes with broadcasting, both on one device (f32, bf16 or i64).
    pub(crate) fn cuda_cmp(&self, rhs: &Tensor, op: CmpOp, shape: &Shape, la: &Layout, lb: &Layout) -> Result<Tensor> {
        let name = "cmp";
        same_device(name, self, &[rhs])?;
        let kop = match op {
            CmpOp::Eq => kb::CmpOp::Eq,
            CmpOp::Ne => kb::CmpOp::Ne,
            CmpOp::Lt => kb::CmpOp::Lt,
            CmpOp::Le => kb::CmpOp::Le,
            CmpOp::Gt => kb::CmpOp::Gt,
            CmpOp::Ge => kb::CmpOp::Ge,
        };
        let mut out = alloc(self, DType::U8, shape.clone(), name)?;
        let (a, b) = (operand(self, la, name)?, operand(rhs, lb, name)?);
        kb::cmp(kop, a, b, shape.dims(), out_mut(&mut out, name)?).map_err(cuda_err(name))?;
        Ok(out)
    }

    /// `self (u8) ? on_true : on_false` with the three broadcast to `shape` through
    /// `layouts` (mask, on_true, on_false), all on one device (values f32, bf16, i64 or u8).
    pub(crate) fn cuda_where(
        &self,
        on_true: &Tensor,
        on_false: &Tensor,
        shape: &Shape,
        layouts: [&Layout; 3],
    ) -> Result<Tensor> {
        let name = "where_cond";
        same_device(name, self, &[on_true, on_false])?;
        let mut out = alloc(self, on_true.dtype(), shape.clone(), name)?;
        let [lm, lt, lf] = layouts;
        let (m, t, f) = (operand(self, lm, name)?, operand(on_true, lt, name)?, operand(on_false, lf, name)?);
        kb::where_cond(m, t, f, shape.dims(), out_mut(&mut out, name)?).map_err(cuda_err(name))?;
        Ok(out)
    }

    /// The batched matrix product through cuBLASLt (f32 in full f32 arithmetic, bf16
    /// with f32 accumulation); `batch` is the broadcast batch shape. A `bias` (n) is added
    /// to every row by the GEMM's epilogue.
    pub(crate) fn cuda_matmul(
        &self,
        rhs: &Tensor,
        batch: &Shape,
        (m, n, kk): (usize, usize, usize),
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let op = "matmul";
        same_device(op, self, &[rhs])?;
        if let Some(b) = bias {
            same_device(op, self, &[b])?;
        }
        let precision = gemm_precision(self.dtype(), op)?;
        let mut dims = batch.dims().to_vec();
        dims.extend([m, n]);
        if kk == 0 {
            // An empty sum: zeros, as on the CPU (cuBLASLt takes no empty inner dimension).
            let Device::Cuda(i) = self.device() else { unreachable!("called for device tensors only") };
            let zeros = Tensor::cuda_zeros(dims.into(), self.dtype(), i)?;
            return match bias {
                Some(b) => zeros.add(b),
                None => Ok(zeros),
            };
        }
        if let (Some(b), true) = (bias, batch.elem_count() > 1) {
            // The epilogue is used for single products only (its bias batch stride is left
            // at the library's default); a batch adds the bias afterwards.
            return self.cuda_matmul(rhs, batch, (m, n, kk), None)?.add(b);
        }
        let (a, b) = (GemmOperand::of(self, batch)?, GemmOperand::of(rhs, batch)?);
        let mut out = alloc(self, self.dtype(), dims, op)?;
        let g = GemmArgs {
            trans_a: a.trans,
            trans_b: b.trans,
            batch: batch.elem_count(),
            stride_a: a.stride,
            stride_b: b.stride,
            stride_c: m * n,
            epilogue: if bias.is_some() { Epilogue::Bias } else { Epilogue::None },
            ..GemmArgs::new(m, n, kk, precision)
        }
        .packed();
        let (av, bv) = (a.t.cuda_view(op)?, b.t.cuda_view(op)?);
        let bias = bias.map(|b| b.contiguous()).transpose()?;
        let bias_view = bias.as_ref().map(|b| b.cuda_elems(op)).transpose()?;
        gemm::matmul(&g, av, bv, bias_view, out_mut(&mut out, op)?).map_err(cuda_err(op))?;
        Ok(out)
    }

    /// [`add_matmul`](Tensor::add_matmul) on the device (arguments checked by the
    /// caller): one GEMM with beta 1 into `self`, bf16 products into f32 where asked.
    pub(crate) fn cuda_add_matmul(&mut self, a: &Tensor, b: &Tensor, (m, n, kk): (usize, usize, usize)) -> Result<()> {
        let op = "add_matmul";
        let precision = match (self.dtype(), a.dtype()) {
            (DType::F32, DType::BF16) => Precision::Bf16F32,
            (_, dtype) => gemm_precision(dtype, op)?,
        };
        if kk == 0 || m * n == 0 {
            return Ok(());
        }
        let none = Shape::from(());
        let (oa, ob) = (GemmOperand::of(a, &none)?, GemmOperand::of(b, &none)?);
        let g = GemmArgs { trans_a: oa.trans, trans_b: ob.trans, beta: 1.0, ..GemmArgs::new(m, n, kk, precision) };
        let (av, bv) = (oa.t.cuda_view(op)?, ob.t.cuda_view(op)?);
        match gemm::matmul(&g.packed(), av, bv, None, self.cuda_in_place(op)?) {
            // cuBLASLt without an algorithm for these operands: the product, then the sum.
            Err(monarch_cuda::CudaError::Blas { op: "heuristic", msg }) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED
                    .call_once(|| eprintln!("warning: cuBLASLt has no algorithm for add_matmul ({msg}); composing it"));
                *self = self.add(&a.matmul(b)?.to_dtype(self.dtype())?)?;
                Ok(())
            }
            r => r.map_err(cuda_err(op)),
        }
    }

    /// A reduction of contiguous `self` laid out as `kept × count` (`columns == false`)
    /// or `count × kept`, into a tensor of `shape`.
    pub(crate) fn cuda_reduce(
        &self,
        columns: bool,
        kept: usize,
        count: usize,
        op: ReduceOp,
        shape: Shape,
    ) -> Result<Tensor> {
        let name = "reduce";
        // One long f32 row (a full reduction, e.g. a gradient's norm): the row kernel
        // would read it with a single block. Fold it first into FOLD column partials with
        // the column kernel, which spreads the rows over the device; the tail past the
        // last whole fold joins the partials for the final row reduction.
        // A bf16 row is widened first, so that the partials stay f32.
        const FOLD: usize = 1024;
        let long_row = matches!(op, ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min) && !columns && kept == 1;
        let long_row = long_row && count >= 64 * FOLD;
        if long_row && self.dtype() == DType::BF16 {
            return self.to_dtype(DType::F32)?.cuda_reduce(columns, kept, count, op, shape);
        }
        if long_row && self.dtype() == DType::F32 {
            let flat = self.reshape([count])?;
            let full = count / FOLD * FOLD;
            let head = flat.narrow(0, 0, full)?.reshape([full / FOLD, FOLD])?;
            let partial = head.cuda_reduce(true, FOLD, full / FOLD, op, Shape::from([FOLD]))?;
            let rest = match count - full {
                0 => partial,
                tail => Tensor::cat(&[&partial, &flat.narrow(0, full, tail)?], 0)?,
            };
            return rest.cuda_reduce(false, 1, rest.elem_count(), op, shape);
        }
        let kop = match op {
            ReduceOp::Sum => kr::ReduceOp::Sum,
            ReduceOp::Max => kr::ReduceOp::Max,
            ReduceOp::Min => kr::ReduceOp::Min,
            ReduceOp::ArgMax => kr::ReduceOp::ArgMax,
            ReduceOp::ArgMin => kr::ReduceOp::ArgMin,
        };
        let dtype = if matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) { DType::I64 } else { self.dtype() };
        let mut out = alloc(self, dtype, shape, name)?;
        let x = self.cuda_view(name)?;
        let o = out_mut(&mut out, name)?;
        let r = if columns { kr::reduce_cols(kop, x, count, kept, o) } else { kr::reduce_rows(kop, x, kept, count, o) };
        r.map_err(cuda_err(name))?;
        Ok(out)
    }
}

/// The GEMM precision of operands and result all of `dtype`: TF32 tensor cores for f32
/// where allowed.
fn gemm_precision(dtype: DType, op: &'static str) -> Result<Precision> {
    match dtype {
        DType::F32 if super::tf32_allowed() => Ok(Precision::Tf32),
        DType::F32 => Ok(Precision::F32),
        DType::BF16 => Ok(Precision::Bf16),
        dtype => Err(Error::UnsupportedDType { op, dtype }),
    }
}

/// One operand of a batched GEMM: dense matrices, row-major or transposed, one batch stride.
struct GemmOperand {
    t: Tensor,
    trans: bool,
    stride: usize,
}

impl GemmOperand {
    /// `t` broadcast over `batch` as cuBLAS reads it; copied on the device when its
    /// matrices are not dense or its batch dimensions do not collapse to one stride.
    fn of(t: &Tensor, batch: &Shape) -> Result<GemmOperand> {
        let r = t.rank();
        let (rows, cols) = (t.dims()[r - 2], t.dims()[r - 1]);
        let mut dims = batch.dims().to_vec();
        dims.extend([rows, cols]);
        let full: Shape = dims.into();
        let l = t.layout().broadcast_as(&full)?;
        let b = full.rank() - 2;
        let (rs, cs) = (l.strides()[b], l.strides()[b + 1]);
        let trans = if cs == 1 && (rs == cols || rows == 1) {
            Some(false)
        } else if rs == 1 && (cs == rows || cols == 1) {
            Some(true)
        } else {
            None
        };
        match (trans, one_stride(&full.dims()[..b], &l.strides()[..b])) {
            (Some(trans), Some(stride)) => Ok(GemmOperand { t: t.with_layout(l), trans, stride }),
            _ => {
                let c = t.with_layout(l).contiguous()?;
                Ok(GemmOperand { t: c, trans: false, stride: rows * cols })
            }
        }
    }
}

/// The one stride that walks all batch dimensions in row-major order, if there is one
/// (0 when the matrix is broadcast over the whole batch).
fn one_stride(dims: &[usize], strides: &[usize]) -> Option<usize> {
    let live: Vec<(usize, usize)> = dims.iter().zip(strides).filter(|(d, _)| **d > 1).map(|(&d, &s)| (d, s)).collect();
    let Some(&(_, inner)) = live.last() else { return Some(0) };
    if inner == 0 {
        return live.iter().all(|&(_, s)| s == 0).then_some(0);
    }
    let mut expect = inner;
    for &(d, s) in live.iter().rev() {
        if s != expect {
            return None;
        }
        expect *= d;
    }
    Some(inner)
}

#[cfg(test)]
mod tests {
    use super::one_stride;

    #[test]
    fn batch_strides_collapse_only_when_row_major_or_broadcast() {
        assert_eq!(one_stride(&[], &[]), Some(0));
        assert_eq!(one_stride(&[2, 3], &[36, 12]), Some(12));
        assert_eq!(one_stride(&[2, 1, 3], &[36, 99, 12]), Some(12));
        assert_eq!(one_stride(&[2, 3], &[0, 0]), Some(0));
        assert_eq!(one_stride(&[2, 3], &[12, 36]), None);
        assert_eq!(one_stride(&[2, 3], &[12, 0]), None);
    }
}
