//! Views and joins: reshape, permute, transpose, narrow, squeeze, broadcast, cat,
//! split, dtype casts. Backward of a view is the inverse view of the gradient.

use super::need;
use crate::Var;
use monarch_tensor::{DType, Dim, Result, Shape, Tensor};

impl Var {
    /// The same elements under a new shape.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Var> {
        let y = self.value().reshape(shape)?;
        let input = self.shape().clone();
        Var::record("reshape", y, [self], move |g, [n]| Ok([need(n, || g.reshape(&input))?]))
    }

    /// Reorders dimensions: output dimension `i` is input dimension `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Var> {
        let y = self.value().permute(perm)?;
        let mut inverse = vec![0; perm.len()];
        perm.iter().enumerate().for_each(|(i, &p)| inverse[p] = i);
        Var::record("permute", y, [self], move |g, [n]| Ok([need(n, || g.permute(&inverse))?]))
    }

    /// Swaps two dimensions.
    pub fn transpose(&self, d0: impl Dim, d1: impl Dim) -> Result<Var> {
        let (a, b) = (d0.resolve(self.shape(), "transpose")?, d1.resolve(self.shape(), "transpose")?);
        let y = self.value().transpose(a, b)?;
        Var::record("transpose", y, [self], move |g, [n]| Ok([need(n, || g.transpose(a, b))?]))
    }

    /// Swaps the last two dimensions.
    pub fn t(&self) -> Result<Var> {
        if self.value().rank() < 2 {
            return self.value().t().map(Var::constant);
        }
        self.transpose(-2, -1)
    }

    /// Restricts dimension `dim` to `start..start + len`; backward pads with zeros.
    pub fn narrow(&self, dim: impl Dim, start: usize, len: usize) -> Result<Var> {
        let d = dim.resolve(self.shape(), "narrow")?;
        let y = self.value().narrow(d, start, len)?;
        let input = self.shape().clone();
        // Into an earlier node's gradient backward hands on the slice itself, joined
        // with the other slices there in one copy; into a leaf's, the zero-padded slice.
        let y = Var::record("narrow", y, [self], move |g, [n]| {
            Ok([need(n, || {
                let size = input.dims()[d];
                let before = Tensor::zeros_on(input.with_dim(d, start), g.dtype(), g.device())?;
                let after = Tensor::zeros_on(input.with_dim(d, size - start - len), g.dtype(), g.device())?;
                Tensor::cat(&[&before, g, &after], d)
            })?])
        })?;
        y.mark_slice(d, start);
        Ok(y)
    }

    /// Inserts a dimension of size 1.
    pub fn unsqueeze(&self, dim: i64) -> Result<Var> {
        let y = self.value().unsqueeze(dim)?;
        let input = self.shape().clone();
        Var::record("unsqueeze", y, [self], move |g, [n]| Ok([need(n, || g.reshape(&input))?]))
    }

    /// Removes a dimension of size 1.
    pub fn squeeze(&self, dim: impl Dim) -> Result<Var> {
        let y = self.value().squeeze(dim)?;
        let input = self.shape().clone();
        Var::record("squeeze", y, [self], move |g, [n]| Ok([need(n, || g.reshape(&input))?]))
    }

    /// Merges dimensions `from..` into one.
    pub fn flatten_from(&self, from: impl Dim) -> Result<Var> {
        let d = from.resolve(self.shape(), "flatten_from")?;
        let mut dims = self.dims()[..d].to_vec();
        dims.push(self.dims()[d..].iter().product());
        self.reshape(dims)
    }

    /// All elements as one dimension.
    pub fn flatten_all(&self) -> Result<Var> {
        self.reshape(self.value().elem_count())
    }

    /// Views the var at a larger shape (stride-0 repeats); backward sums the repeats.
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Var> {
        let y = self.value().broadcast_as(shape)?;
        let input = self.shape().clone();
        Var::record("broadcast_as", y, [self], move |g, [n]| Ok([need(n, || g.sum_to(&input))?]))
    }

    /// A contiguous copy (identity for gradients).
    pub fn contiguous(&self) -> Result<Var> {
        let y = self.value().contiguous()?;
        Var::record("contiguous", y, [self], move |g, [n]| Ok([need(n, || Ok(g.clone()))?]))
    }

    /// The values converted to `dtype`; the gradient is converted back.
    pub fn to_dtype(&self, dtype: DType) -> Result<Var> {
        let y = self.value().to_dtype(dtype)?;
        let from = self.dtype();
        Var::record("to_dtype", y, [self], move |g, [n]| Ok([need(n, || g.to_dtype(from))?]))
    }

    /// Joins vars along `dim`; backward splits the gradient into views.
    pub fn cat(vars: &[&Var], dim: impl Dim) -> Result<Var> {
        let values: Vec<&Tensor> = vars.iter().map(|v| v.value()).collect();
        let y = Tensor::cat(&values, dim)?;
        let first = vars.first().map(|v| v.shape().clone()).unwrap_or_default();
        let d = dim.resolve(&first, "cat")?;
        let sizes: Vec<usize> = vars.iter().map(|v| v.dims()[d]).collect();
        Var::record_n("cat", y, vars, move |g, needs| {
            let parts = g.split(&sizes, d)?;
            Ok(parts.into_iter().zip(needs).map(|(p, &n)| n.then_some(p)).collect())
        })
    }

    /// Stacks vars of one shape along a new dimension `dim`.
    pub fn stack(vars: &[&Var], dim: i64) -> Result<Var> {
        let parts = vars.iter().map(|v| v.unsqueeze(dim)).collect::<Result<Vec<_>>>()?;
        Var::cat(&parts.iter().collect::<Vec<_>>(), dim)
    }

    /// Splits along `dim` into parts of the given sizes.
    pub fn split(&self, sizes: &[usize], dim: impl Dim) -> Result<Vec<Var>> {
        let d = dim.resolve(self.shape(), "split")?;
        self.value().split(sizes, d)?; // validates the sizes
        let mut start = 0;
        sizes
            .iter()
            .map(|&s| {
                start += s;
                self.narrow(d, start - s, s)
            })
            .collect()
    }

    /// Splits along `dim` into `n` equal parts.
    pub fn chunk(&self, n: usize, dim: impl Dim) -> Result<Vec<Var>> {
        let d = dim.resolve(self.shape(), "chunk")?;
        let size = self.value().chunk(n, d)?[0].dims()[d];
        self.split(&vec![size; n], d)
    }
}
