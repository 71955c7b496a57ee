//! Layer normalisation over the last dimension, saving the mean and reciprocal
//! standard deviation for a single-pass backward.

use super::compute_dtype;
use crate::cpu::{PAR_MIN, items_per_task};
use crate::{CpuStorage, Error, Float, Result, Tensor};
use rayon::prelude::*;

/// The results of [`Tensor::layer_norm`].
#[derive(Clone, Debug)]
pub struct LayerNormOut {
    /// The normalised, scaled and shifted output.
    pub y: Tensor,
    /// Per-row mean (the input's shape without its last dimension).
    pub mean: Tensor,
    /// Per-row `1/√(var + eps)`.
    pub rstd: Tensor,
}

/// Contiguous f32/f64 data of a tensor with the dtype the kernels run in.
fn data(t: &Tensor, op: &'static str) -> Result<Tensor> {
    compute_dtype(t, op)?.contiguous()
}

fn forward<T: Float>(x: &[T], w: Option<&[T]>, b: Option<&[T]>, c: usize, eps: f64) -> (Vec<T>, Vec<T>, Vec<T>) {
    let rows = x.len() / c.max(1);
    let mut y = vec![T::zero(); x.len()];
    let mut stats = vec![(T::zero(), T::zero()); rows];
    type Row<'a, T> = ((&'a mut [T], &'a mut (T, T)), &'a [T]);
    let row = |((y, st), x): Row<T>| {
        let mean = x.iter().map(|v| v.as_f64()).sum::<f64>() / c as f64;
        let var = x.iter().map(|v| (v.as_f64() - mean).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        let (m, r) = (T::from_f64(mean), T::from_f64(rstd));
        for (j, (y, &x)) in y.iter_mut().zip(x).enumerate() {
            let h = (x - m) * r;
            *y = h * w.map_or(T::one(), |w| w[j]) + b.map_or(T::zero(), |b| b[j]);
        }
        *st = (m, r);
    };
    if c > 0 {
        if x.len() >= PAR_MIN {
            y.par_chunks_mut(c)
                .zip(stats.par_iter_mut())
                .zip(x.par_chunks(c))
                .with_min_len(items_per_task(c))
                .for_each(row);
        } else {
            y.chunks_mut(c).zip(stats.iter_mut()).zip(x.chunks(c)).for_each(row);
        }
    }
    let (mean, rstd) = stats.into_iter().unzip();
    (y, mean, rstd)
}

/// The data of an optional contiguous tensor from its offset on.
fn opt_slice<'a, T: crate::WithDType>(t: Option<&'a Tensor>, op: &'static str) -> Result<Option<&'a [T]>> {
    t.map(|t| t.cpu_slice::<T>(op).map(|s| &s[t.layout().offset()..])).transpose()
}

/// Returns (dx, dw, db) for rows of `c`.
fn backward<T: Float>(
    x: &[T],
    w: Option<&[T]>,
    mean: &[T],
    rstd: &[T],
    dy: &[T],
    c: usize,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut dx = vec![T::zero(); x.len()];
    if c == 0 {
        return (dx, vec![], vec![]);
    }
    let per_task = items_per_task(c);
    // Each task handles a block of rows: writes its dx rows and returns partial dw, db.
    let block = |(bi, dxb): (usize, &mut [T])| -> (Vec<T>, Vec<T>) {
        let (mut dw, mut db) = (vec![T::zero(); c], vec![T::zero(); c]);
        for (k, dxr) in dxb.chunks_mut(c).enumerate() {
            let r = bi * per_task + k;
            let (xr, gr) = (&x[r * c..(r + 1) * c], &dy[r * c..(r + 1) * c]);
            let (m, s) = (mean[r], rstd[r]);
            let (mut sum_g, mut sum_gh) = (0.0f64, 0.0f64);
            for j in 0..c {
                let h = (xr[j] - m) * s;
                let g = gr[j] * w.map_or(T::one(), |w| w[j]);
                sum_g += g.as_f64();
                sum_gh += (g * h).as_f64();
                dw[j] += gr[j] * h;
                db[j] += gr[j];
            }
            let (mg, mgh) = (T::from_f64(sum_g / c as f64), T::from_f64(sum_gh / c as f64));
            for j in 0..c {
                let h = (xr[j] - m) * s;
                let g = gr[j] * w.map_or(T::one(), |w| w[j]);
                dxr[j] = s * (g - mg - h * mgh);
            }
        }
        (dw, db)
    };
    let add = |(mut a, mut b): (Vec<T>, Vec<T>), (c2, d2): (Vec<T>, Vec<T>)| {
        a.iter_mut().zip(c2).for_each(|(a, c)| *a += c);
        b.iter_mut().zip(d2).for_each(|(b, d)| *b += d);
        (a, b)
    };
    let zero = || (vec![T::zero(); c], vec![T::zero(); c]);
    let (dw, db) = if x.len() >= PAR_MIN {
        dx.par_chunks_mut(per_task * c).enumerate().map(block).reduce(zero, add)
    } else {
        dx.chunks_mut(per_task * c).enumerate().map(block).fold(zero(), add)
    };
    (dx, dw, db)
}

impl Tensor {
    fn ln_check(&self, p: Option<&Tensor>, op: &'static str) -> Result<()> {
        let c = *self.dims().last().unwrap_or(&0);
        match p {
            Some(p) if p.dims() != [c] => {
                Err(Error::ShapeMismatch { op, lhs: self.shape().clone(), rhs: p.shape().clone() })
            }
            Some(p) => super::same_dtype(self, p, op),
            None => Ok(()),
        }
    }

    /// Layer normalisation over the last dimension: `(x - mean)/√(var + eps) · w + b`,
    /// with the optional weight and bias of the last dimension's size.
    pub fn layer_norm(&self, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64) -> Result<LayerNormOut> {
        let op = "layer_norm";
        if self.dims().last().is_none_or(|&c| c == 0) {
            crate::bail!(op, "needs a non-empty last dimension, got shape {}", self.shape());
        }
        if !(eps >= 0.0 && eps.is_finite()) {
            crate::bail!(op, "eps must be a finite number >= 0, got {eps}");
        }
        self.ln_check(w, op)?;
        self.ln_check(b, op)?;
        if self.device() != crate::Device::Cpu {
            let (y, mean, rstd) = self.cuda_layer_norm(w, b, eps)?;
            return Ok(LayerNormOut { y, mean, rstd });
        }
        let c = self.dims()[self.rank() - 1];
        let stats_shape = crate::Shape::from(&self.dims()[..self.rank() - 1]);
        let x = data(self, op)?;
        let (w, b) = (w.map(|w| data(w, op)).transpose()?, b.map(|b| data(b, op)).transpose()?);
        macro_rules! run {
            ($v:expr, $ty:ty) => {{
                let (ws, bs) = (opt_slice::<$ty>(w.as_ref(), op)?, opt_slice::<$ty>(b.as_ref(), op)?);
                let (y, m, r) = forward(&$v[x.layout().offset()..], ws, bs, c, eps);
                (CpuStorage::from(y), CpuStorage::from(m), CpuStorage::from(r))
            }};
        }
        let (y, m, r) = match x.cpu(op)? {
            CpuStorage::F32(v) => run!(v, f32),
            CpuStorage::F64(v) => run!(v, f64),
            s => return Err(Error::UnsupportedDType { op, dtype: s.dtype() }),
        };
        let dt = self.dtype();
        Ok(LayerNormOut {
            y: Tensor::from_cpu(y, self.shape()).to_dtype(dt)?,
            mean: Tensor::from_cpu(m, stats_shape.clone()),
            rstd: Tensor::from_cpu(r, stats_shape),
        })
    }

    /// Gradients `(dx, dw, db)` of [`layer_norm`](Self::layer_norm) from the saved mean
    /// and rstd; `dw` and `db` are sums over all rows.
    pub fn layer_norm_backward(
        x: &Tensor,
        w: Option<&Tensor>,
        mean: &Tensor,
        rstd: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let op = "layer_norm_backward";
        super::same_shape(x, dy, op)?;
        x.ln_check(w, op)?;
        if x.device() != crate::Device::Cpu {
            return Tensor::cuda_layer_norm_backward(x, w, mean, rstd, dy);
        }
        let c = *x.dims().last().unwrap_or(&0);
        let (xd, gd) = (data(x, op)?, data(dy, op)?);
        let w = w.map(|w| data(w, op)).transpose()?;
        let (md, rd) = (data(mean, op)?, data(rstd, op)?);
        macro_rules! run {
            ($ty:ty) => {{
                let sl = |t| opt_slice::<$ty>(Some(t), op).map(|s| s.unwrap_or(&[]));
                let ws = opt_slice::<$ty>(w.as_ref(), op)?;
                let (dx, dw, db) = backward(sl(&xd)?, ws, sl(&md)?, sl(&rd)?, sl(&gd)?, c);
                (CpuStorage::from(dx), CpuStorage::from(dw), CpuStorage::from(db))
            }};
        }
        let (dx, dw, db) = match xd.dtype() {
            crate::DType::F32 => run!(f32),
            _ => run!(f64),
        };
        let dt = x.dtype();
        Ok((
            Tensor::from_cpu(dx, x.shape()).to_dtype(dt)?,
            Tensor::from_cpu(dw, c).to_dtype(dt)?,
            Tensor::from_cpu(db, c).to_dtype(dt)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_normalised() {
        let x = Tensor::from_vec(vec![1f64, 2., 3., 4., -1., 1., 1., -1.], [2, 4]).unwrap();
        let w = Tensor::from_vec(vec![1f64, 2., 1., 1.], 4).unwrap();
        let b = Tensor::from_vec(vec![0f64, 0., 0., 10.], 4).unwrap();
        let o = x.layer_norm(Some(&w), Some(&b), 0.0).unwrap();
        let y = o.y.to_vec::<f64>().unwrap();
        let s = (1.25f64).sqrt();
        assert!((y[0] - (-1.5 / s)).abs() < 1e-12);
        assert!((y[1] - 2.0 * (-0.5 / s)).abs() < 1e-12);
        assert!((y[7] - 9.0).abs() < 1e-12);
        assert_eq!(o.mean.to_vec::<f64>().unwrap(), vec![2.5, 0.0]);
        assert!((o.rstd.to_vec::<f64>().unwrap()[1] - 1.0).abs() < 1e-12);
        let bad = Tensor::zeros(3, crate::DType::F64);
        assert!(x.layer_norm(Some(&bad), None, 1e-5).is_err());
        assert!(Tensor::zeros([5, 0], crate::DType::F64).layer_norm(None, None, 1e-5).is_err(), "no features");
        assert!(Tensor::scalar(1.0f64).layer_norm(None, None, 1e-5).is_err());
        for eps in [-1e-5, f64::NAN, f64::INFINITY] {
            let e = x.layer_norm(None, None, eps).unwrap_err().to_string();
            assert!(e.contains("eps must be a finite number >= 0"), "{e}");
        }
    }
}
