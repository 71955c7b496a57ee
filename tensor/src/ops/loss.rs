//! Fused cross-entropy over logits, with ignored targets and label smoothing.

use super::compute_dtype;
use crate::cpu::{PAR_MIN, items_per_task};
use crate::{CpuStorage, DType, Error, Float, Result, Tensor, simd_dispatch};
use rayon::prelude::*;

/// Options of [`Tensor::cross_entropy`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CrossEntropy {
    /// Rows whose target equals this value add nothing to the loss or the count.
    pub ignore_index: Option<i64>,
    /// Mixes the one-hot target with the uniform distribution: `(1-ε)·onehot + ε/C`.
    pub label_smoothing: f64,
}

impl CrossEntropy {
    fn check(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            crate::bail!("cross_entropy", "label_smoothing must lie in [0, 1], got {}", self.label_smoothing);
        }
        Ok(())
    }
}

simd_dispatch! {
    /// `Σ e^(x − m)` over a row: exponentials in the logits' precision in 16 independent
    /// lanes (so that the loop vectorises), each block of 1024 summed into an f64 total.
    fn sum_exp<T: Float> = sum_exp_impl(xs: &[T], m: T) -> f64
}

#[inline(always)]
fn sum_exp_impl<T: Float>(xs: &[T], m: T) -> f64 {
    const LANES: usize = 16;
    let mut total = 0.0;
    for block in xs.chunks(1024) {
        let mut acc = [T::zero(); LANES];
        let mut lanes = block.chunks_exact(LANES);
        for ch in &mut lanes {
            for (a, &x) in acc.iter_mut().zip(ch) {
                *a += (x - m).fast_exp();
            }
        }
        let tail: f64 = lanes.remainder().iter().map(|&x| (x - m).fast_exp().as_f64()).sum();
        total += acc.iter().map(|a| a.as_f64()).sum::<f64>() + tail;
    }
    total
}

/// Per-row `(loss, logsumexp)`; ignored rows give `(0, lse)`.
fn rows_loss<T: Float>(x: &[T], t: &[i64], c: usize, o: CrossEntropy) -> Vec<(f64, f64)> {
    let row = |(r, xs): (usize, &[T])| {
        let m = xs.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
        let sum = sum_exp(xs, m);
        let lse = sum.ln() + m.as_f64();
        if Some(t[r]) == o.ignore_index {
            return (0.0, lse);
        }
        let nll = lse - xs[t[r] as usize].as_f64();
        let smooth =
            if o.label_smoothing > 0.0 { lse - xs.iter().map(|v| v.as_f64()).sum::<f64>() / c as f64 } else { 0.0 };
        ((1.0 - o.label_smoothing) * nll + o.label_smoothing * smooth, lse)
    };
    if x.len() >= PAR_MIN {
        x.par_chunks(c).with_min_len(items_per_task(c)).enumerate().map(row).collect()
    } else {
        x.chunks(c).enumerate().map(row).collect()
    }
}

impl Tensor {
    /// Checks (N, C) logits against (N) `I64` targets; returns the targets' values when
    /// the check read them (device targets whose upload bounds settle it are not read).
    fn ce_targets(&self, targets: &Tensor, o: &CrossEntropy) -> Result<Option<Vec<i64>>> {
        let op = "cross_entropy";
        o.check()?;
        let (n, c) = self.shape().matrix_dims(op)?;
        if self.rank() != 2 || targets.dims() != [n] {
            return Err(Error::ShapeMismatch { op, lhs: self.shape().clone(), rhs: targets.shape().clone() });
        }
        super::index::checked_indices(targets, c, o.ignore_index, op)
    }

    /// Mean cross-entropy of (N, C) logits against (N) `I64` class targets, over the rows
    /// not ignored (0 when all are). Returns the scalar loss and the per-row
    /// log-sum-exp (N) that [`cross_entropy_backward`](Self::cross_entropy_backward) needs,
    /// both in the logits' dtype.
    pub fn cross_entropy(&self, targets: &Tensor, o: CrossEntropy) -> Result<(Tensor, Tensor)> {
        self.cross_entropy_as(targets, o, self.dtype())
    }

    /// [`cross_entropy`](Self::cross_entropy) with the loss and log-sum-exp in f32 (f64
    /// for f64 logits) whatever the logits' dtype, the precision they are computed in:
    /// bf16 logits are read as they are, without a widened copy of them (the same values
    /// as widening them first and taking `cross_entropy`).
    pub fn cross_entropy_wide(&self, targets: &Tensor, o: CrossEntropy) -> Result<(Tensor, Tensor)> {
        let wide = if self.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
        self.cross_entropy_as(targets, o, wide)
    }

    /// The cross-entropy with its results in `dt`.
    fn cross_entropy_as(&self, targets: &Tensor, o: CrossEntropy, dt: DType) -> Result<(Tensor, Tensor)> {
        let checked = self.ce_targets(targets, &o)?;
        if self.device() != crate::Device::Cpu {
            return self.cuda_cross_entropy(targets, o, dt);
        }
        let t = checked.map_or_else(|| targets.to_vec::<i64>(), Ok)?;
        let c = self.dims()[1];
        let x = compute_dtype(self, "cross_entropy")?.contiguous()?;
        let s = x.layout().offset();
        let rows = match x.cpu("cross_entropy")? {
            CpuStorage::F32(v) => rows_loss(&v[s..], &t, c, o),
            CpuStorage::F64(v) => rows_loss(&v[s..], &t, c, o),
            other => return Err(Error::UnsupportedDType { op: "cross_entropy", dtype: other.dtype() }),
        };
        let count = t.iter().filter(|&&v| Some(v) != o.ignore_index).count();
        let loss = rows.iter().map(|r| r.0).sum::<f64>() / count.max(1) as f64;
        let lse: Vec<f64> = rows.iter().map(|r| r.1).collect();
        Ok((Tensor::full(loss, (), dt), Tensor::from_vec(lse, t.len())?.to_dtype(dt)?))
    }

    /// Gradient of the mean cross-entropy with respect to the logits, scaled by the
    /// loss gradient `dloss` (one element): `(softmax - target distribution) · dloss /
    /// count` on rows not ignored, 0 on ignored rows. On a GPU, `dloss` (which may be a
    /// host scalar) and the count are used on the device: nothing is read back.
    pub fn cross_entropy_backward(
        logits: &Tensor,
        targets: &Tensor,
        lse: &Tensor,
        dloss: &Tensor,
        o: CrossEntropy,
    ) -> Result<Tensor> {
        // The clone shares the buffer, so the host writes the gradient into a copy.
        Self::cross_entropy_backward_owned(logits.clone(), targets, lse, dloss, o)
    }

    /// [`cross_entropy_backward`](Self::cross_entropy_backward) taking the logits by
    /// value: f32 or f64 logits on the host that no other tensor holds become their
    /// gradient in place, with no second (N, C) buffer to allocate and fill (a language
    /// model head's is N × 50257).
    pub fn cross_entropy_backward_owned(
        logits: Tensor,
        targets: &Tensor,
        lse: &Tensor,
        dloss: &Tensor,
        o: CrossEntropy,
    ) -> Result<Tensor> {
        let op = "cross_entropy_backward";
        let checked = logits.ce_targets(targets, &o)?;
        if lse.dims() != [logits.dims()[0]] {
            return Err(Error::ShapeMismatch { op, lhs: logits.shape().clone(), rhs: lse.shape().clone() });
        }
        if dloss.elem_count() != 1 {
            crate::bail!(op, "the loss gradient must be one element, got shape {}", dloss.shape());
        }
        if logits.device() != crate::Device::Cpu {
            return logits.cuda_cross_entropy_backward(targets, lse, dloss, o);
        }
        let t = checked.map_or_else(|| targets.to_vec::<i64>(), Ok)?;
        let c = logits.dims()[1];
        let count = t.iter().filter(|&&v| Some(v) != o.ignore_index).count().max(1);
        let dloss = dloss.to_scalar_f64()?;
        let lse = lse.to_vec_f64()?;
        let scale = dloss / count as f64;
        let dtype = logits.dtype();
        // bf16 and f16 logits are widened; f32 and f64 ones are `logits` itself, dropped
        // here so that a buffer no other tensor holds is written in place.
        let mut g = compute_dtype(&logits, op)?;
        drop(logits);
        match g.dtype() {
            DType::F32 => rows_grad(g.as_mut_slice::<f32>()?, &t, &lse, c, scale, o),
            _ => rows_grad(g.as_mut_slice::<f64>()?, &t, &lse, c, scale, o),
        }
        g.to_dtype(dtype)
    }
}

/// Overwrites rows of `c` logits with their gradient: `(softmax − smoothed one-hot) ·
/// scale`, 0 on ignored rows.
fn rows_grad<T: Float>(x: &mut [T], t: &[i64], lse: &[f64], c: usize, scale: f64, o: CrossEntropy) {
    if c == 0 {
        return;
    }
    let (eps, off) = (o.label_smoothing, o.label_smoothing / c as f64);
    let (scale_t, off_t) = (T::from_f64(scale), T::from_f64(off));
    let hit = T::from_f64((1.0 - eps) * scale);
    let row = |(r, xs): (usize, &mut [T])| {
        if Some(t[r]) == o.ignore_index {
            xs.fill(T::zero());
            return;
        }
        grad_row(xs, T::from_f64(lse[r]), off_t, scale_t);
        xs[t[r] as usize] -= hit;
    };
    if x.len() >= PAR_MIN {
        x.par_chunks_mut(c).with_min_len(items_per_task(c)).enumerate().for_each(row);
    } else {
        x.chunks_mut(c).enumerate().for_each(row);
    }
}

simd_dispatch! {
    /// `x ← (e^(x − lse) − off) · scale` over a row of logits: the softmax less the
    /// uniform share of the label smoothing, scaled (the target's one-hot part is added by
    /// the caller).
    fn grad_row<T: Float> = grad_row_impl(xs: &mut [T], lse: T, off: T, scale: T)
}

#[inline(always)]
fn grad_row_impl<T: Float>(xs: &mut [T], lse: T, off: T, scale: T) {
    for x in xs.iter_mut() {
        *x = ((*x - lse).fast_exp() - off) * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn wide_results_of_bf16_logits_are_those_of_the_widened_logits() {
        let logits = Tensor::randn([6, 50], 0.0, 3.0, 7).unwrap().to_dtype(DType::BF16).unwrap();
        let targets = Tensor::from_vec(vec![3i64, -1, 49, 0, 7, 7], 6).unwrap();
        let o = CrossEntropy { ignore_index: Some(-1), label_smoothing: 0.05 };
        let (loss, lse) = logits.cross_entropy_wide(&targets, o).unwrap();
        let widened = logits.to_dtype(DType::F32).unwrap();
        let (want_loss, want_lse) = widened.cross_entropy(&targets, o).unwrap();
        assert_eq!((loss.dtype(), lse.dtype()), (DType::F32, DType::F32));
        assert_eq!(loss.to_vec::<f32>().unwrap(), want_loss.to_vec::<f32>().unwrap());
        assert_eq!(lse.to_vec::<f32>().unwrap(), want_lse.to_vec::<f32>().unwrap());
        // The plain op keeps the logits' dtype.
        assert_eq!(logits.cross_entropy(&targets, o).unwrap().1.dtype(), DType::BF16);
        // The gradient from the bf16 logits is the widened logits' gradient, rounded once.
        let d = Tensor::scalar(0.5f32);
        let g = Tensor::cross_entropy_backward(&logits, &targets, &lse, &d, o).unwrap();
        let want = Tensor::cross_entropy_backward(&widened, &targets, &want_lse, &d, o).unwrap();
        assert_eq!(g.dtype(), DType::BF16);
        assert_eq!(g.to_vec_f64().unwrap(), want.to_dtype(DType::BF16).unwrap().to_vec_f64().unwrap());
    }

    #[test]
    fn matches_the_definition_with_ignore_and_smoothing() {
        let logits = Tensor::from_vec(vec![1f64, 2., 0.5, -1., 0., 3., 2., 2., 2.], [3, 3]).unwrap();
        let targets = Tensor::from_vec(vec![1i64, -100, 0], 3).unwrap();
        let o = CrossEntropy { ignore_index: Some(-100), label_smoothing: 0.1 };
        let (loss, lse) = logits.cross_entropy(&targets, o).unwrap();
        let lp = logits.log_softmax(1).unwrap().to_vec::<f64>().unwrap();
        let row = |r: usize, t: usize| 0.9 * -lp[r * 3 + t] + 0.1 * -(lp[r * 3] + lp[r * 3 + 1] + lp[r * 3 + 2]) / 3.0;
        let want = (row(0, 1) + row(2, 0)) / 2.0;
        assert!((loss.to_scalar_f64().unwrap() - want).abs() < 1e-12);
        let g = Tensor::cross_entropy_backward(&logits, &targets, &lse, &Tensor::scalar(1.0f64), o)
            .unwrap()
            .to_vec::<f64>()
            .unwrap();
        assert_eq!(&g[3..6], &[0.0, 0.0, 0.0]);
        // Each non-ignored row of the gradient sums to zero (softmax and target both sum to 1).
        assert!((g[0] + g[1] + g[2]).abs() < 1e-12);
        let bad = Tensor::from_vec(vec![3i64, 0, 0], 3).unwrap();
        assert_eq!(
            logits.cross_entropy(&bad, o).unwrap_err().to_string(),
            "cross_entropy: index 3 out of range for size 3"
        );
        assert!(logits.cross_entropy(&Tensor::zeros(2, DType::I64), o).is_err());
        // By value: the same gradient, in place where the logits are the buffer's only
        // holder, copied first where another tensor shares them (which keeps its values).
        let dl = Tensor::scalar(0.5f64);
        let want = Tensor::cross_entropy_backward(&logits, &targets, &lse, &dl, o).unwrap().to_vec::<f64>().unwrap();
        let shared = logits.clone();
        let got = Tensor::cross_entropy_backward_owned(shared, &targets, &lse, &dl, o).unwrap();
        assert_eq!(got.to_vec::<f64>().unwrap(), want);
        assert_eq!(logits.to_vec::<f64>().unwrap()[..3], [1.0, 2.0, 0.5], "the shared logits are untouched");
        let own = Tensor::from_vec(logits.to_vec::<f64>().unwrap(), [3, 3]).unwrap();
        assert_eq!(
            Tensor::cross_entropy_backward_owned(own, &targets, &lse, &dl, o).unwrap().to_vec::<f64>().unwrap(),
            want
        );
        let f32s = logits.to_dtype(DType::F32).unwrap();
        let want32 = Tensor::cross_entropy_backward(&f32s, &targets, &lse, &dl, o).unwrap().to_vec::<f32>().unwrap();
        let got32 = Tensor::cross_entropy_backward_owned(f32s, &targets, &lse, &dl, o).unwrap();
        assert_eq!(got32.to_vec::<f32>().unwrap(), want32);
        assert!(Tensor::cross_entropy_backward_owned(logits, &bad, &lse, &dl, o).is_err());
    }
}
