//! Softmax and log-softmax along a dimension.

use super::need;
use crate::Var;
use monarch_tensor::{Dim, Result, Tensor};

impl Var {
    fn softmax_impl(&self, dim: impl Dim, log: bool) -> Result<Var> {
        let d = dim.resolve(self.shape(), "softmax")?;
        let y = if log { self.value().log_softmax(d)? } else { self.value().softmax(d)? };
        let saved = y.clone();
        Var::record(if log { "log_softmax" } else { "softmax" }, y, [self], move |g, [n]| {
            Ok([need(n, || Tensor::softmax_backward(&saved, g, d, log))?])
        })
    }

    /// `exp(x) / Σ exp(x)` along `dim`.
    pub fn softmax(&self, dim: impl Dim) -> Result<Var> {
        self.softmax_impl(dim, false)
    }

    /// `x - log Σ exp(x)` along `dim`.
    pub fn log_softmax(&self, dim: impl Dim) -> Result<Var> {
        self.softmax_impl(dim, true)
    }
}
