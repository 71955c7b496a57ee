//! Reductions: sum, mean, max, min, logsumexp.

use super::need;
use crate::Var;
use monarch_tensor::{Dims, Result, Shape, Tensor};

/// The input shape with the reduced dimensions set to 1.
fn kept(shape: &Shape, dims: &[usize]) -> Shape {
    let mut d = shape.dims().to_vec();
    dims.iter().for_each(|&i| d[i] = 1);
    d.into()
}

/// The output gradient viewed at the input's shape: reshape to keep the reduced dims,
/// then broadcast (a view, no copy).
fn spread(g: &Tensor, keep: &Shape, input: &Shape) -> Result<Tensor> {
    g.reshape(keep)?.broadcast_as(input)
}

impl Var {
    fn sum_scaled(&self, dims: impl Dims, keepdim: bool, mean: bool, op: &'static str) -> Result<Var> {
        let dims = dims.resolve_all(self.shape(), op)?;
        let count: usize = dims.iter().map(|&d| self.dims()[d]).product();
        let scale = if mean { 1.0 / count as f64 } else { 1.0 };
        let y = self.value().reduce(dims.as_slice(), monarch_tensor::ReduceOp::Sum, keepdim)?;
        let y = if mean { y.mul_scalar(scale)? } else { y };
        let input = self.shape().clone();
        let keep = kept(&input, &dims);
        Var::record(op, y, [self], move |g, [n]| {
            Ok([need(n, || {
                let g = if mean { g.mul_scalar(scale)? } else { g.clone() };
                spread(&g, &keep, &input)
            })?])
        })
    }

    /// Sum over `dims`, removing them.
    pub fn sum(&self, dims: impl Dims) -> Result<Var> {
        self.sum_scaled(dims, false, false, "sum")
    }
    /// Sum over `dims`, keeping them as size 1.
    pub fn sum_keepdim(&self, dims: impl Dims) -> Result<Var> {
        self.sum_scaled(dims, true, false, "sum")
    }
    /// Mean over `dims`, removing them.
    pub fn mean(&self, dims: impl Dims) -> Result<Var> {
        self.sum_scaled(dims, false, true, "mean")
    }
    /// Mean over `dims`, keeping them as size 1.
    pub fn mean_keepdim(&self, dims: impl Dims) -> Result<Var> {
        self.sum_scaled(dims, true, true, "mean")
    }
    /// Sum of all elements (a 0-dimensional var).
    pub fn sum_all(&self) -> Result<Var> {
        self.flatten_all()?.sum(0)
    }
    /// Mean of all elements (a 0-dimensional var).
    pub fn mean_all(&self) -> Result<Var> {
        self.flatten_all()?.mean(0)
    }

    fn extremum(&self, dims: impl Dims, keepdim: bool, max: bool) -> Result<Var> {
        let op = if max { "max" } else { "min" };
        let dims = dims.resolve_all(self.shape(), op)?;
        let rop = if max { monarch_tensor::ReduceOp::Max } else { monarch_tensor::ReduceOp::Min };
        let y_keep = self.value().reduce(dims.as_slice(), rop, true)?;
        let input = self.shape().clone();
        let keep = kept(&input, &dims);
        let y = if keepdim { y_keep.clone() } else { y_keep.reshape(shape_without(&input, &dims))? };
        let x = self.value().clone();
        Var::record(op, y, [self], move |g, [n]| {
            Ok([need(n, || {
                // Ties share the gradient equally.
                let hit = x.eq(&y_keep)?.to_dtype(x.dtype())?;
                let count = hit.sum_keepdim(dims.as_slice())?;
                spread(g, &keep, &input)?.mul(&hit)?.div(&count)
            })?])
        })
    }

    /// Maximum over `dims`, removing them.
    pub fn max(&self, dims: impl Dims) -> Result<Var> {
        self.extremum(dims, false, true)
    }
    /// Maximum over `dims`, keeping them as size 1.
    pub fn max_keepdim(&self, dims: impl Dims) -> Result<Var> {
        self.extremum(dims, true, true)
    }
    /// Minimum over `dims`, removing them.
    pub fn min(&self, dims: impl Dims) -> Result<Var> {
        self.extremum(dims, false, false)
    }

    /// `log Σ exp(x)` over `dims`; with `keepdim` the dims stay as size 1.
    pub fn logsumexp(&self, dims: impl Dims, keepdim: bool) -> Result<Var> {
        let dims = dims.resolve_all(self.shape(), "logsumexp")?;
        let y_keep = self.value().logsumexp(dims.as_slice(), true)?;
        let input = self.shape().clone();
        let keep = kept(&input, &dims);
        let y = if keepdim { y_keep.clone() } else { y_keep.reshape(shape_without(&input, &dims))? };
        let x = self.value().clone();
        Var::record("logsumexp", y, [self], move |g, [n]| {
            Ok([need(n, || spread(g, &keep, &input)?.mul(&x.sub(&y_keep)?.exp()?))?])
        })
    }
}

fn shape_without(shape: &Shape, dims: &[usize]) -> Shape {
    shape.dims().iter().enumerate().filter(|(i, _)| !dims.contains(i)).map(|(_, &d)| d).collect::<Vec<_>>().into()
}
