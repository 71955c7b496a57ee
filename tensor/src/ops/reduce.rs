//! Reductions over chosen dimensions: sum, mean, max, min, argmax, argmin, logsumexp.
//!
//! Two fast paths cover nearly every call: reducing the trailing dimensions of
//! contiguous data (rows) and reducing the leading ones (column accumulation, e.g. a
//! bias gradient). Anything else is permuted into rows first.

use super::compute_dtype;
use crate::cpu::{PAR_MIN, items_per_task};
use crate::shape::Dims6;
use crate::{CpuStorage, DType, Dims, Error, Float, Result, Shape, Tensor};
use rayon::prelude::*;

/// What a reduction computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum of the elements.
    Sum,
    /// Largest element.
    Max,
    /// Smallest element.
    Min,
    /// Index of the (first) largest element, as `I64`.
    ArgMax,
    /// Index of the (first) smallest element, as `I64`.
    ArgMin,
}

impl ReduceOp {
    fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::ArgMax => "argmax",
            ReduceOp::ArgMin => "argmin",
        }
    }
}

/// Running state of one output element.
#[derive(Clone, Copy)]
struct Acc<T> {
    value: T,
    index: usize,
}

impl ReduceOp {
    fn init<T: Float>(self) -> Acc<T> {
        let value = match self {
            ReduceOp::Sum => T::zero(),
            ReduceOp::Max | ReduceOp::ArgMax => T::neg_infinity(),
            ReduceOp::Min | ReduceOp::ArgMin => T::infinity(),
        };
        Acc { value, index: 0 }
    }

    #[inline(always)]
    fn step<T: Float>(self, acc: &mut Acc<T>, x: T, i: usize) {
        match self {
            ReduceOp::Sum => acc.value += x,
            ReduceOp::Max | ReduceOp::ArgMax => {
                if x > acc.value || (i == 0 && acc.value == T::neg_infinity()) {
                    *acc = Acc { value: x, index: i }
                }
            }
            ReduceOp::Min | ReduceOp::ArgMin => {
                if x < acc.value || (i == 0 && acc.value == T::infinity()) {
                    *acc = Acc { value: x, index: i }
                }
            }
        }
    }

    fn row<T: Float>(self, row: &[T]) -> Acc<T> {
        if self == ReduceOp::Sum {
            // Eight independent lanes: vectorises, and rounds like a blocked sum.
            let mut lanes = [T::zero(); 8];
            let chunks = row.chunks_exact(8);
            let tail = chunks.remainder();
            for c in chunks {
                for (l, &x) in lanes.iter_mut().zip(c) {
                    *l += x;
                }
            }
            let s = lanes.iter().chain(tail).map(|x| x.as_f64()).sum::<f64>();
            return Acc { value: T::from_f64(s), index: 0 };
        }
        let mut acc = self.init();
        for (i, &x) in row.iter().enumerate() {
            self.step(&mut acc, x, i);
        }
        acc
    }
}

/// Reduces contiguous `x` of `kept × count` elements, laid out as rows of `count`
/// (`columns == false`) or as `count` rows of `kept` columns.
fn reduce_any<T: Float>(x: &[T], columns: bool, kept: usize, count: usize, op: ReduceOp) -> Vec<Acc<T>> {
    if count == 0 || kept == 0 {
        return vec![op.init(); kept];
    }
    if columns { reduce_cols(x, count, kept, op) } else { reduce_rows(x, count, op) }
}

/// Reduces rows of `len` (> 0) elements of contiguous `x`.
fn reduce_rows<T: Float>(x: &[T], len: usize, op: ReduceOp) -> Vec<Acc<T>> {
    if x.len() >= PAR_MIN {
        x.par_chunks(len).with_min_len(items_per_task(len)).map(|r| op.row(r)).collect()
    } else {
        x.chunks(len).map(|r| op.row(r)).collect()
    }
}

/// Reduces the leading `rows` rows of contiguous `x` (rows × cols) into one row. Each
/// task owns a slab of columns (at least 256, so that every row read is a long run) and
/// walks all rows in order, so results do not depend on the thread count.
fn reduce_cols<T: Float>(x: &[T], rows: usize, cols: usize, op: ReduceOp) -> Vec<Acc<T>> {
    if op == ReduceOp::Sum {
        // Plain accumulators (not `Acc`) so that the inner loop vectorises.
        let mut out = vec![T::zero(); cols];
        by_slabs(x, rows, &mut out, |o, _, src| o.iter_mut().zip(src).for_each(|(a, &v)| *a += v));
        return out.into_iter().map(|value| Acc { value, index: 0 }).collect();
    }
    let mut out = vec![op.init(); cols];
    by_slabs(x, rows, &mut out, |o, r, src| o.iter_mut().zip(src).for_each(|(a, &v)| op.step(a, v, r)));
    out
}

/// Runs `step(accumulators, row, values)` over the `rows` rows of `x` (rows × out.len()),
/// each task owning a slab of at least 256 columns of `out` and walking all rows in order.
fn by_slabs<T: Float, A: Send>(x: &[T], rows: usize, out: &mut [A], step: impl Fn(&mut [A], usize, &[T]) + Sync) {
    let cols = out.len();
    let slab = (cols / (4 * rayon::current_num_threads())).max(256).min(cols.max(1));
    let task = |(s, o): (usize, &mut [A])| {
        let (c0, w) = (s * slab, o.len());
        (0..rows).for_each(|r| step(o, r, &x[r * cols + c0..r * cols + c0 + w]));
    };
    if x.len() >= PAR_MIN {
        out.par_chunks_mut(slab).enumerate().for_each(task);
    } else {
        out.chunks_mut(slab).enumerate().for_each(task);
    }
}

fn finish<T: Float>(acc: Vec<Acc<T>>, op: ReduceOp) -> CpuStorage {
    match op {
        ReduceOp::ArgMax | ReduceOp::ArgMin => CpuStorage::I64(acc.iter().map(|a| a.index as i64).collect()),
        _ => T::into_storage(acc.iter().map(|a| a.value).collect()),
    }
}

impl Tensor {
    /// Reduces over `dims`; with `keepdim` the reduced dimensions stay as size 1.
    pub fn reduce(&self, dims: impl Dims, op: ReduceOp, keepdim: bool) -> Result<Tensor> {
        let dims = dims.resolve_all(self.shape(), op.name())?;
        let kept_shape: Shape = {
            let mut s: Dims6 = self.dims().into();
            dims.iter().for_each(|&d| s[d] = 1);
            s.into()
        };
        let rank = self.rank();
        let n = dims.len();
        let count: usize = dims.iter().map(|&d| self.dims()[d]).product();
        if count == 0 && op != ReduceOp::Sum {
            crate::bail!(op.name(), "reduction over an empty dimension of shape {}", self.shape());
        }
        let dtype = self.dtype();
        // The device's kernels read bf16 and accumulate in f32 themselves.
        let x = if dtype == DType::BF16 && self.device() != crate::Device::Cpu {
            self.clone()
        } else {
            compute_dtype(self, op.name())?
        };
        let suffix = dims.iter().enumerate().all(|(i, &d)| d == rank - n + i);
        let prefix = dims.iter().enumerate().all(|(i, &d)| d == i);
        let (x, columns) = match (x.is_contiguous(), suffix, prefix) {
            (true, true, _) => (x, false),
            (true, false, true) => (x, true),
            _ => {
                let kept = (0..rank).filter(|d| !dims.contains(d));
                let perm: Vec<usize> = kept.chain(dims.iter().copied()).collect();
                (x.permute(&perm)?.contiguous()?, false)
            }
        };
        let kept_count = kept_shape.elem_count();
        let out = if x.device() != crate::Device::Cpu {
            x.cuda_reduce(columns, kept_count, count, op, kept_shape.clone())?
        } else {
            let r = x.layout().contiguous_range().expect("made contiguous above");
            let out = match x.cpu(op.name())? {
                CpuStorage::F32(v) => finish(reduce_any(&v[r], columns, kept_count, count, op), op),
                CpuStorage::F64(v) => finish(reduce_any(&v[r], columns, kept_count, count, op), op),
                s => return Err(Error::UnsupportedDType { op: op.name(), dtype: s.dtype() }),
            };
            Tensor::from_cpu(out, kept_shape.clone())
        };
        let out = if matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) { out } else { out.to_dtype(dtype)? };
        if keepdim {
            return Ok(out);
        }
        let squeezed: Dims6 = (0..rank).filter(|d| !dims.contains(d)).map(|d| self.dims()[d]).collect();
        out.reshape(squeezed)
    }

    /// Sum over `dims`, removing them.
    pub fn sum(&self, dims: impl Dims) -> Result<Tensor> {
        self.reduce(dims, ReduceOp::Sum, false)
    }
    /// Sum over `dims`, keeping them as size 1.
    pub fn sum_keepdim(&self, dims: impl Dims) -> Result<Tensor> {
        self.reduce(dims, ReduceOp::Sum, true)
    }
    /// Sum of all elements, as a 0-dimensional tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.flatten_all()?.sum(0)
    }
    /// Mean over `dims`, removing them.
    pub fn mean(&self, dims: impl Dims) -> Result<Tensor> {
        self.mean_impl(dims, false)
    }
    /// Mean over `dims`, keeping them as size 1.
    pub fn mean_keepdim(&self, dims: impl Dims) -> Result<Tensor> {
        self.mean_impl(dims, true)
    }
    /// Mean of all elements, as a 0-dimensional tensor.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.flatten_all()?.mean(0)
    }
    fn mean_impl(&self, dims: impl Dims, keepdim: bool) -> Result<Tensor> {
        let resolved = dims.resolve_all(self.shape(), "mean")?;
        let count: usize = resolved.iter().map(|&d| self.dims()[d]).product();
        self.reduce(resolved.as_slice(), ReduceOp::Sum, keepdim)?.mul_scalar(1.0 / count as f64)
    }
    /// Maximum over `dims`, removing them.
    pub fn max(&self, dims: impl Dims) -> Result<Tensor> {
        self.reduce(dims, ReduceOp::Max, false)
    }
    /// Maximum over `dims`, keeping them as size 1.
    pub fn max_keepdim(&self, dims: impl Dims) -> Result<Tensor> {
        self.reduce(dims, ReduceOp::Max, true)
    }
    /// Minimum over `dims`, removing them.
    pub fn min(&self, dims: impl Dims) -> Result<Tensor> {
        self.reduce(dims, ReduceOp::Min, false)
    }
    /// Index of the largest element along `dim` (first on ties), as `I64`.
    pub fn argmax(&self, dim: impl crate::Dim) -> Result<Tensor> {
        self.reduce(dim, ReduceOp::ArgMax, false)
    }
    /// Index of the smallest element along `dim` (first on ties), as `I64`.
    pub fn argmin(&self, dim: impl crate::Dim) -> Result<Tensor> {
        self.reduce(dim, ReduceOp::ArgMin, false)
    }

    /// `log Σ exp(x)` over `dims`, computed stably; with `keepdim` the dims stay as size 1.
    pub fn logsumexp(&self, dims: impl Dims, keepdim: bool) -> Result<Tensor> {
        let dims = dims.resolve_all(self.shape(), "logsumexp")?;
        let m = self.max_keepdim(dims.as_slice())?;
        // Rows that are entirely -inf stay -inf rather than becoming NaN.
        let m = m.masked_fill(&m.cmp_scalar(f64::NEG_INFINITY, super::CmpOp::Eq)?, 0.0)?;
        let s = self.sub(&m)?.exp()?.sum_keepdim(dims.as_slice())?.log()?.add(&m)?;
        if keepdim {
            return Ok(s);
        }
        let squeezed: Dims6 = (0..self.rank()).filter(|d| !dims.contains(d)).map(|d| self.dims()[d]).collect();
        s.reshape(squeezed)
    }

    /// All elements as one dimension.
    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(self.elem_count())
    }

    /// Sums the broadcast dimensions away so the result has `shape`, the inverse of
    /// broadcasting `shape` up to this tensor's shape (used for gradients).
    pub fn sum_to(&self, shape: &Shape) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let (rank, target) = (self.rank(), shape.rank());
        let bad = || Error::Broadcast { op: "sum_to", lhs: self.shape().clone(), rhs: shape.clone() };
        if target > rank {
            return Err(bad());
        }
        let mut dims: Vec<usize> = (0..rank - target).collect();
        for (i, &t) in shape.dims().iter().enumerate() {
            let d = rank - target + i;
            match (t, self.dims()[d]) {
                (t, s) if t == s => {}
                (1, _) => dims.push(d),
                _ => return Err(bad()),
            }
        }
        self.sum_keepdim(dims)?.reshape(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iota(shape: &[usize]) -> Tensor {
        let n = shape.iter().product::<usize>();
        Tensor::from_vec((0..n).map(|x| x as f64).collect(), shape).unwrap()
    }

    /// Reference: sum over `dim` by explicit index arithmetic.
    fn naive_sum(x: &[f64], shape: &[usize], dim: usize) -> Vec<f64> {
        let outer: usize = shape[..dim].iter().product();
        let inner: usize = shape[dim + 1..].iter().product();
        let mut out = vec![0.0; outer * inner];
        for o in 0..outer {
            for d in 0..shape[dim] {
                for i in 0..inner {
                    out[o * inner + i] += x[(o * shape[dim] + d) * inner + i];
                }
            }
        }
        out
    }

    #[test]
    fn every_path_matches_index_arithmetic() {
        let shape = [3, 70, 200];
        let x = iota(&shape);
        let v = x.to_vec::<f64>().unwrap();
        for dim in 0..3 {
            assert_eq!(x.sum(dim).unwrap().to_vec::<f64>().unwrap(), naive_sum(&v, &shape, dim), "dim {dim}");
        }
        // Non-contiguous input.
        let t = x.transpose(0, 2).unwrap();
        let want = naive_sum(&v, &shape, 1);
        let got = t.sum(1).unwrap();
        assert_eq!(got.dims(), &[200, 3]);
        assert_eq!(got.t().unwrap().contiguous().unwrap().to_vec::<f64>().unwrap(), want);
        let all = x.sum([0, 1, 2]).unwrap().to_scalar_f64().unwrap();
        let n = 3.0 * 70.0 * 200.0;
        assert_eq!(all, n * (n - 1.0) / 2.0);
        // Column reductions over parallel slabs, the last one partial (1000 = 3·256 + 232).
        let (rows, cols) = (40, 1000);
        let v: Vec<f64> = (0..rows * cols).map(|i| ((i * 7919) % 1009) as f64).collect();
        let x = Tensor::from_vec(v.clone(), [rows, cols]).unwrap();
        let v = &v;
        let col = |c: usize| (0..rows).map(move |r| v[r * cols + c]);
        let sums: Vec<f64> = (0..cols).map(|c| col(c).sum()).collect();
        let firsts_of_max: Vec<i64> = (0..cols)
            .map(|c| {
                let m = col(c).fold(f64::MIN, f64::max);
                col(c).position(|e| e == m).unwrap() as i64
            })
            .collect();
        assert_eq!(x.sum(0).unwrap().to_vec::<f64>().unwrap(), sums);
        assert_eq!(x.argmax(0).unwrap().to_vec::<i64>().unwrap(), firsts_of_max);
    }

    #[test]
    fn max_min_arg_and_mean() {
        let x = Tensor::from_vec(vec![1f32, 7., 7., -2., 0., 5.], [2, 3]).unwrap();
        assert_eq!(x.max(1).unwrap().to_vec::<f32>().unwrap(), vec![7., 5.]);
        assert_eq!(x.argmax(1).unwrap().to_vec::<i64>().unwrap(), vec![1, 2]);
        assert_eq!(x.argmin(0).unwrap().to_vec::<i64>().unwrap(), vec![1, 1, 1]);
        assert_eq!(x.min(0).unwrap().to_vec::<f32>().unwrap(), vec![-2., 0., 5.]);
        assert_eq!(x.mean_keepdim(0).unwrap().dims(), &[1, 3]);
        assert_eq!(x.mean(0).unwrap().to_vec::<f32>().unwrap(), vec![-0.5, 3.5, 6.]);
        assert!(x.max(2).is_err());
        let empty = Tensor::zeros([2, 0], DType::F32);
        assert!(empty.max(1).is_err());
        assert_eq!(empty.sum(1).unwrap().to_vec::<f32>().unwrap(), vec![0., 0.]);
    }

    #[test]
    fn logsumexp_is_stable() {
        let x = Tensor::from_vec(vec![1000f64, 1000., f64::NEG_INFINITY, f64::NEG_INFINITY], [2, 2]).unwrap();
        let l = x.logsumexp(1, false).unwrap().to_vec::<f64>().unwrap();
        assert!((l[0] - (1000.0 + 2f64.ln())).abs() < 1e-9);
        assert_eq!(l[1], f64::NEG_INFINITY);
    }

    #[test]
    fn sum_to_inverts_broadcasting() {
        let x = iota(&[2, 3, 4]);
        let s = x.sum_to(&Shape::from([3, 1])).unwrap();
        assert_eq!(s.dims(), &[3, 1]);
        let want: Vec<f64> =
            (0..3).map(|j| (0..2).flat_map(|i| (0..4).map(move |k| (i * 12 + j * 4 + k) as f64)).sum()).collect();
        assert_eq!(s.to_vec::<f64>().unwrap(), want);
        assert!(x.sum_to(&Shape::from([2, 1])).is_err());
    }
}
