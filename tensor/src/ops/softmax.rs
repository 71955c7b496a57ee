//! Softmax and log-softmax along a dimension, with their fused backward kernels.

use super::{float_map, float_map2, same_shape};
use crate::cpu::{PAR_MIN, items_per_task};
use crate::{Dim, Float, Result, Tensor};
use rayon::prelude::*;

/// Applies `f(src_row, dst_row)` to every row of contiguous rows of `len`.
pub(crate) fn rows_map<T: Float>(src: &[T], len: usize, f: impl Fn(&[T], &mut [T]) + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); src.len()];
    if len == 0 {
        return out;
    }
    if src.len() >= PAR_MIN {
        out.par_chunks_mut(len).zip(src.par_chunks(len)).with_min_len(items_per_task(len)).for_each(|(o, s)| f(s, o));
    } else {
        out.chunks_mut(len).zip(src.chunks(len)).for_each(|(o, s)| f(s, o));
    }
    out
}

/// Like [`rows_map`] with two same-shaped inputs.
pub(crate) fn rows_map2<T: Float>(a: &[T], b: &[T], len: usize, f: impl Fn(&[T], &[T], &mut [T]) + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); a.len()];
    if len == 0 {
        return out;
    }
    if a.len() >= PAR_MIN {
        out.par_chunks_mut(len)
            .zip(a.par_chunks(len).zip(b.par_chunks(len)))
            .with_min_len(items_per_task(len))
            .for_each(|(o, (x, y))| f(x, y, o));
    } else {
        out.chunks_mut(len).zip(a.chunks(len).zip(b.chunks(len))).for_each(|(o, (x, y))| f(x, y, o));
    }
    out
}

fn softmax_row<T: Float>(x: &[T], y: &mut [T], log: bool) {
    let m = x.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
    let m = if m == T::neg_infinity() { T::zero() } else { m };
    let mut sum = T::zero();
    for (y, &x) in y.iter_mut().zip(x) {
        *y = (x - m).fast_exp();
        sum += *y;
    }
    if log {
        let lse = sum.ln() + m;
        y.iter_mut().zip(x).for_each(|(y, &x)| *y = x - lse);
    } else {
        let inv = sum.recip();
        y.iter_mut().for_each(|y| *y *= inv);
    }
}

fn softmax_backward_row<T: Float>(y: &[T], g: &[T], o: &mut [T], log: bool) {
    if log {
        let s = T::from_f64(g.iter().map(|v| v.as_f64()).sum());
        o.iter_mut().zip(y.iter().zip(g)).for_each(|(o, (&y, &g))| *o = g - y.fast_exp() * s);
    } else {
        let s = T::from_f64(y.iter().zip(g).map(|(&y, &g)| (y * g).as_f64()).sum());
        o.iter_mut().zip(y.iter().zip(g)).for_each(|(o, (&y, &g))| *o = y * (g - s));
    }
}

impl Tensor {
    /// Moves `dim` last and makes the data contiguous, so kernels can work on rows.
    /// Returns the row-major tensor and a function that puts results back.
    fn rows_along(&self, dim: impl Dim, op: &'static str) -> Result<(Tensor, usize)> {
        let d = dim.resolve(self.shape(), op)?;
        let last = self.rank() - 1;
        Ok((self.transpose(d, last)?.contiguous()?, d))
    }

    fn softmax_impl(&self, dim: impl Dim, log: bool) -> Result<Tensor> {
        let op = if log { "log_softmax" } else { "softmax" };
        let (x, d) = self.rows_along(dim, op)?;
        let len = x.dims().last().copied().unwrap_or(1);
        if x.device() != crate::Device::Cpu {
            return x.cuda_softmax_rows(log)?.transpose(d, self.rank() - 1)?.contiguous();
        }
        let y = float_map!(&x, op, x.shape(), |v, l| rows_map(&v[l.offset()..], len, |s, o| softmax_row(s, o, log)));
        y.transpose(d, self.rank() - 1)?.contiguous()
    }

    /// `exp(x) / Σ exp(x)` along `dim`.
    pub fn softmax(&self, dim: impl Dim) -> Result<Tensor> {
        self.softmax_impl(dim, false)
    }

    /// `x - log Σ exp(x)` along `dim`.
    pub fn log_softmax(&self, dim: impl Dim) -> Result<Tensor> {
        self.softmax_impl(dim, true)
    }

    /// Input gradient of softmax from its output `y`: `y · (dy - Σ dy·y)` along `dim`.
    pub fn softmax_backward(y: &Tensor, dy: &Tensor, dim: impl Dim, log: bool) -> Result<Tensor> {
        let op = if log { "log_softmax_backward" } else { "softmax_backward" };
        same_shape(y, dy, op)?;
        let (yr, d) = y.rows_along(dim, op)?;
        let (gr, _) = dy.rows_along(d, op)?;
        let len = yr.dims().last().copied().unwrap_or(1);
        if yr.device() != crate::Device::Cpu {
            return Tensor::cuda_softmax_backward_rows(&yr, &gr, log)?.transpose(d, y.rank() - 1)?.contiguous();
        }
        let dx = float_map2!(&yr, &gr, op, yr.shape(), |vy, ly, vg, lg| {
            rows_map2(&vy[ly.offset()..], &vg[lg.offset()..], len, |y, g, o| softmax_backward_row(y, g, o, log))
        });
        dx.transpose(d, y.rank() - 1)?.contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_rows_sum_to_one_along_any_dim() {
        let x = Tensor::from_vec(vec![1f64, 2., 3., 4., 1., 0.], [2, 3]).unwrap();
        let s = x.softmax(1).unwrap().to_vec::<f64>().unwrap();
        let z: f64 = [1f64, 2., 3.].iter().map(|v| v.exp()).sum();
        assert!((s[2] - 3f64.exp() / z).abs() < 1e-12);
        let s0 = x.softmax(0).unwrap().to_vec::<f64>().unwrap();
        assert!((s0[0] + s0[3] - 1.0).abs() < 1e-12);
        assert!((s0[0] - 1.0 / (1.0 + 3f64.exp())).abs() < 1e-12);
        let ls = x.log_softmax(-1).unwrap().to_vec::<f64>().unwrap();
        assert!((ls[2] - (3.0 - z.ln())).abs() < 1e-12);
        let big = Tensor::from_vec(vec![1000f32, 0.], 2).unwrap().softmax(0).unwrap();
        assert_eq!(big.to_vec::<f32>().unwrap(), vec![1.0, 0.0]);
    }
}
