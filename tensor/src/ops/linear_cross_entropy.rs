//! The output layer and its cross-entropy in one op, over row chunks, so that the
//! (N, V) logits of a language model's head (and their gradient) never exist whole:
//! each chunk's logits are made, turned into its share of the loss and, when asked,
//! straight into its share of the gradients, then dropped.

use super::CrossEntropy;
use crate::{CmpOp, DType, Error, Result, Tensor};

/// What [`Tensor::linear_cross_entropy`] returns: the loss and the gradients it was
/// asked for, for a loss gradient of 1 (scale them by the real one).
#[derive(Debug)]
pub struct LinearCrossEntropy {
    /// The mean cross-entropy over the rows not ignored (0 when all are), f32 (f64 for
    /// f64 inputs).
    pub loss: Tensor,
    /// d loss / d x, (N, D) in x's dtype.
    pub dx: Option<Tensor>,
    /// d loss / d w, (V, D) in w's dtype, summed over the chunks in f32 (f64 for f64)
    /// from each chunk's unrounded product.
    pub dw: Option<Tensor>,
}

/// The default rows per chunk: 1024 on the host, 4096 on a GPU, fewer (down to 256)
/// where a chunk's logits would pass 2^28 elements (1 GiB in f32); a multiple of 64.
///
/// Each chunk adds its share of the weight gradient, a (V, D) pass, to the sum, while
/// its products cost `6·rows·V·D` FLOPs: the pass's share of the time falls as
/// `1/rows`, whatever V and D. Measured on the CPU (`monarch bench head`, 1024 × 256 ·
/// 256 × 50257): chunks of 512 rows cost 7% more than one of 1024, of 128 rows 30%.
pub fn linear_cross_entropy_chunk_rows(classes: usize, device: crate::Device) -> usize {
    let rows: usize = if device == crate::Device::Cpu { 1024 } else { 4096 };
    let cap = ((1usize << 28) / classes.max(1)).max(256);
    rows.min(cap) / 64 * 64
}

impl Tensor {
    /// Mean cross-entropy of the logits `x · wᵀ` (x (N, D), w (V, D), PyTorch's layout of
    /// an output layer without bias) against (N) `I64` targets, as
    /// `x.matmul(&w.t())` then [`cross_entropy`](Self::cross_entropy) would give it, but
    /// `chunk_rows` rows at a time (see [`linear_cross_entropy_chunk_rows`]): peak
    /// memory holds one chunk's logits, not all N. The gradients with respect to `x`
    /// and `w` that `grads` asks for are computed on the way (two more products per
    /// chunk), since the chunk's logits are at hand then. The chunk's loss is computed in
    /// f32 (f64 for f64 inputs) from bf16 logits, as the separate ops under autocast do,
    /// but on a GPU reading the bf16 logits without a widened copy.
    pub fn linear_cross_entropy(
        x: &Tensor,
        w: &Tensor,
        targets: &Tensor,
        o: CrossEntropy,
        chunk_rows: usize,
        grads: [bool; 2],
    ) -> Result<LinearCrossEntropy> {
        let op = "linear_cross_entropy";
        let (n, d) = x.shape().matrix_dims(op)?;
        let (classes, dw_in) = w.shape().matrix_dims(op)?;
        if x.rank() != 2 || w.rank() != 2 || d != dw_in {
            return Err(Error::ShapeMismatch { op, lhs: x.shape().clone(), rhs: w.shape().clone() });
        }
        if targets.dims() != [n] {
            return Err(Error::ShapeMismatch { op, lhs: x.shape().clone(), rhs: targets.shape().clone() });
        }
        if chunk_rows == 0 {
            crate::bail!(op, "chunk_rows must be at least 1");
        }
        super::same_dtype(x, w, op)?;
        let checked = super::index::checked_indices(targets, classes, o.ignore_index, op)?;
        let device = x.device();
        // Targets read for the check go to the device as those values, whose upload bounds
        // then settle each chunk's check without reading them again.
        let targets = match checked {
            Some(values) if device != crate::Device::Cpu => Tensor::from_vec(values, n)?.to_device(device)?,
            _ => targets.to_device(device)?,
        };
        // The loss's dtype. The host's loss ops widen bf16 and f16 logits to it anyway, so
        // there a chunk's logits are widened once, for the forward and the backward; the
        // device's kernels read bf16 logits as they are.
        let ce = if x.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
        let widen = device == crate::Device::Cpu;
        // Rows that count, as a scalar where the targets are.
        let counted = |t: &Tensor| -> Result<Tensor> {
            match o.ignore_index {
                Some(ignore) => t.cmp_scalar(ignore as f64, CmpOp::Ne)?.to_dtype(ce)?.sum_all(),
                None => Tensor::full_on(t.elem_count() as f64, (), ce, device),
            }
        };
        let total = counted(&targets)?.maximum(&Tensor::full_on(1.0, (), ce, device)?)?;
        let wt = w.t()?;
        let mut loss = Tensor::full_on(0.0, (), ce, device)?;
        // The weight gradient's sum is in the loss's dtype: each chunk's product adds to it
        // unrounded (bf16 products straight into f32 on a GPU). Made after the first
        // chunk's logits are dropped, so as not to add to their peak.
        let (mut dx, mut dw): (Vec<Tensor>, Option<Tensor>) = (Vec::new(), None);
        for r0 in (0..n).step_by(chunk_rows) {
            let rows = chunk_rows.min(n - r0);
            let (xc, tc) = (x.narrow(0, r0, rows)?, targets.narrow(0, r0, rows)?);
            let logits = xc.matmul(&wt)?;
            // A bf16 product is dropped once its f32 copy exists, not at the chunk's end.
            let logits = if widen && logits.dtype() != ce {
                let wide = logits.to_dtype(ce)?;
                drop(logits);
                wide
            } else {
                logits
            };
            let (mean, lse) = logits.cross_entropy_wide(&tc, o)?;
            // This chunk's share of the mean over all counted rows.
            let share = counted(&tc)?.div(&total)?;
            loss = loss.add(&mean.mul(&share)?)?;
            if grads == [false, false] {
                continue;
            }
            // Rounded once from the f32 gradient to x's dtype (by the kernel on a device);
            // on the host the logits become their gradient in place.
            let dl = Tensor::cross_entropy_backward_owned(logits, &tc, &lse, &share, o)?;
            let dl = dl.to_dtype(x.dtype())?;
            if grads[0] {
                dx.push(dl.matmul(w)?);
            }
            if grads[1] {
                let sum = match dw.as_mut() {
                    Some(sum) => sum,
                    None => dw.insert(Tensor::zeros_on([classes, d], ce, device)?),
                };
                let (g, xs) = if dl.dtype() == ce || dl.dtype() == DType::BF16 {
                    (dl, xc)
                } else {
                    (dl.to_dtype(ce)?, xc.to_dtype(ce)?)
                };
                sum.add_matmul(&g.t()?, &xs)?;
            }
        }
        let dx = match (grads[0], dx.is_empty()) {
            (false, _) => None,
            (true, true) => Some(Tensor::zeros_on([n, d], x.dtype(), device)?),
            (true, false) => Some(Tensor::cat(&dx.iter().collect::<Vec<_>>(), 0)?),
        };
        let dw = match (grads[1], dw) {
            (false, _) => None,
            (true, Some(dw)) => Some(dw.to_dtype(w.dtype())?),
            (true, None) => Some(Tensor::zeros_on([classes, d], w.dtype(), device)?),
        };
        Ok(LinearCrossEntropy { loss, dx, dw })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
        Tensor::randn(shape, 0.0, 1.0, seed).unwrap().to_dtype(dtype).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    #[test]
    fn chunks_give_the_loss_and_gradients_of_the_whole_logits() {
        let (x, w) = (rnd(&[9, 6], 1, DType::F64), rnd(&[11, 6], 2, DType::F64));
        let targets = Tensor::from_vec(vec![3i64, -100, 10, 0, -100, -100, 5, 5, 1], 9).unwrap();
        let o = CrossEntropy { ignore_index: Some(-100), label_smoothing: 0.1 };
        // The separate ops on all the logits at once.
        let logits = x.matmul(&w.t().unwrap()).unwrap();
        let (loss, lse) = logits.cross_entropy(&targets, o).unwrap();
        let dl = Tensor::cross_entropy_backward(&logits, &targets, &lse, &Tensor::scalar(1.0f64), o).unwrap();
        let (dx, dw) = (dl.matmul(&w).unwrap(), dl.t().unwrap().matmul(&x).unwrap());
        for chunk in [1, 2, 4, 9, 64] {
            let r = Tensor::linear_cross_entropy(&x, &w, &targets, o, chunk, [true, true]).unwrap();
            assert!(max_diff(&r.loss, &loss) < 1e-12, "chunk {chunk}");
            assert!(max_diff(r.dx.as_ref().unwrap(), &dx) < 1e-12, "chunk {chunk}");
            assert!(max_diff(r.dw.as_ref().unwrap(), &dw) < 1e-12, "chunk {chunk}");
        }
        let only_w = Tensor::linear_cross_entropy(&x, &w, &targets, o, 4, [false, true]).unwrap();
        assert!(only_w.dx.is_none() && only_w.dw.is_some());
        let none = Tensor::linear_cross_entropy(&x, &w, &targets, o, 4, [false, false]).unwrap();
        assert!(none.dx.is_none() && none.dw.is_none());
        assert!(max_diff(&none.loss, &loss) < 1e-12);
    }

    #[test]
    fn all_ignored_and_empty_inputs_give_zero() {
        let (x, w) = (rnd(&[3, 4], 3, DType::F32), rnd(&[5, 4], 4, DType::F32));
        let o = CrossEntropy { ignore_index: Some(-1), label_smoothing: 0.0 };
        let r = Tensor::linear_cross_entropy(&x, &w, &Tensor::full(-1.0, 3, DType::I64), o, 2, [true, true]).unwrap();
        assert_eq!(r.loss.to_scalar_f64().unwrap(), 0.0);
        assert!(
            r.dx.unwrap().to_vec_f64().unwrap().iter().chain(&r.dw.unwrap().to_vec_f64().unwrap()).all(|&v| v == 0.0)
        );
        let empty = Tensor::zeros([0, 4], DType::F32);
        let r = Tensor::linear_cross_entropy(&empty, &w, &Tensor::zeros(0, DType::I64), o, 2, [true, true]).unwrap();
        assert_eq!((r.loss.to_scalar_f64().unwrap(), r.dx.unwrap().dims()), (0.0, &[0, 4][..]));
        assert_eq!(r.dw.unwrap().dims(), [5, 4]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let (x, w) = (rnd(&[3, 4], 5, DType::F32), rnd(&[5, 4], 6, DType::F32));
        let t = Tensor::from_vec(vec![0i64, 1, 4], 3).unwrap();
        let o = CrossEntropy::default();
        let f = |x: &Tensor, w: &Tensor, t: &Tensor, chunk| Tensor::linear_cross_entropy(x, w, t, o, chunk, [true; 2]);
        assert!(f(&x, &w, &t, 2).is_ok());
        assert!(f(&x, &w.t().unwrap(), &t, 2).is_err(), "inner dimensions differ");
        assert!(f(&x, &w, &t.narrow(0, 0, 2).unwrap(), 2).is_err(), "one target per row");
        assert!(f(&x, &w, &t, 0).is_err(), "empty chunks");
        assert!(f(&x, &w.to_dtype(DType::F64).unwrap(), &t, 2).is_err(), "dtypes differ");
        let bad = Tensor::from_vec(vec![0i64, 5, 1], 3).unwrap();
        assert_eq!(
            f(&x, &w, &bad, 2).unwrap_err().to_string(),
            "linear_cross_entropy: index 5 out of range for size 5"
        );
        assert!(f(&x, &w, &t.to_dtype(DType::F32).unwrap(), 2).is_err(), "targets must be I64");
    }

    #[test]
    fn default_chunks_bound_the_logits() {
        use crate::Device::{Cpu, Cuda};
        assert_eq!(linear_cross_entropy_chunk_rows(50257, Cpu), 1024);
        assert_eq!(linear_cross_entropy_chunk_rows(50257, Cuda(0)), 4096);
        // 2^28 / 256000 = 1048 rows, down to a multiple of 64.
        assert_eq!(linear_cross_entropy_chunk_rows(256_000, Cuda(0)), 1024);
        assert_eq!(linear_cross_entropy_chunk_rows(1 << 30, Cuda(0)), 256);
        assert_eq!(linear_cross_entropy_chunk_rows(0, Cpu), 1024);
    }
}
