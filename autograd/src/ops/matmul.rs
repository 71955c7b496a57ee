//! Matrix products: batched `matmul` and the fused dense layer `linear`.

use super::need;
use crate::{Var, autocast};
use monarch_tensor::{Error, Result, Tensor};

/// Views `(.., r, c)` as `(rows, c)` (copies if the rows do not merge).
fn rows(t: &Tensor) -> Result<Tensor> {
    let c = *t.dims().last().unwrap_or(&1);
    t.reshape([t.elem_count() / c.max(1), c])
}

impl Var {
    /// Matrix product over the last two dimensions with broadcast batch dimensions.
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        if let Some(r) = autocast::cast([self, rhs], |[a, b]| a.matmul(&b)) {
            return r;
        }
        let y = self.value().matmul(rhs.value())?;
        let (a, b) = (self.value().clone(), rhs.value().clone());
        Var::record("matmul", y, [self, rhs], move |g, [na, nb]| {
            let ga = need(na, || g.matmul(&b.t()?)?.sum_to(a.shape()))?;
            let gb = need(nb, || {
                if b.rank() == 2 && a.rank() > 2 {
                    // One tall GEMM instead of a batch of products and a reduction.
                    rows(&a)?.t()?.matmul(&rows(g)?)
                } else {
                    a.t()?.matmul(g)?.sum_to(b.shape())
                }
            })?;
            Ok([ga, gb])
        })
    }

    /// The dense layer `x · wᵀ + b` with `x` of shape (.., in), `w` of shape (out, in)
    /// (PyTorch layout) and an optional bias (out). Backward computes `dw` directly in
    /// (out, in) layout with one GEMM over all rows.
    pub fn linear(&self, w: &Var, b: Option<&Var>) -> Result<Var> {
        let low = match b {
            Some(b) => autocast::cast([self, w, b], |[x, w, b]| x.linear(&w, Some(&b))),
            None => autocast::cast([self, w], |[x, w]| x.linear(&w, None)),
        };
        if let Some(r) = low {
            return r;
        }
        let (out, inp) = w.value().shape().matrix_dims("linear")?;
        if w.value().rank() != 2 || self.dims().last() != Some(&inp) {
            return Err(Error::ShapeMismatch { op: "linear", lhs: self.shape().clone(), rhs: w.shape().clone() });
        }
        if let Some(b) = b
            && b.dims() != [out]
        {
            return Err(Error::ShapeMismatch { op: "linear", lhs: w.shape().clone(), rhs: b.shape().clone() });
        }
        let wt = w.value().t()?;
        let y = match b {
            Some(b) => self.value().matmul_bias(&wt, b.value())?,
            None => self.value().matmul(&wt)?,
        };
        let (x, wv) = (self.value().clone(), w.value().clone());
        let mut inputs = vec![self, w];
        inputs.extend(b);
        Var::record_n("linear", y, &inputs, move |g, needs| {
            let g2 = rows(g)?;
            let mut grads =
                smallvec::smallvec![need(needs[0], || g.matmul(&wv))?, need(needs[1], || g2.t()?.matmul(&rows(&x)?))?,];
            if needs.len() == 3 {
                grads.push(need(needs[2], || g2.sum(0))?);
            }
            Ok(grads)
        })
    }
}
