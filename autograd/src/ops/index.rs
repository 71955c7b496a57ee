//! Indexing with constant indices: row selection (embeddings) and gather.

use super::need;
use crate::Var;
use monarch_tensor::{Dim, Result, Tensor};

impl Var {
    /// Selects entries `ids` (`I64` vector) along `dim`; `table.index_select(&ids, 0)`
    /// is an embedding lookup, whose backward adds rows into a zero table.
    pub fn index_select(&self, ids: &Tensor, dim: impl Dim) -> Result<Var> {
        let d = dim.resolve(self.shape(), "index_select")?;
        let y = self.value().index_select(ids, d)?;
        let (ids, input) = (ids.clone(), self.shape().clone());
        Var::record("index_select", y, [self], move |g, [n]| {
            Ok([need(n, || Tensor::zeros_on(&input, g.dtype(), g.device())?.index_add(&ids, g, d))?])
        })
    }

    /// `out[.., j, ..] = self[.., index[.., j, ..], ..]` along `dim`.
    pub fn gather(&self, index: &Tensor, dim: impl Dim) -> Result<Var> {
        let d = dim.resolve(self.shape(), "gather")?;
        let y = self.value().gather(index, d)?;
        let (index, input) = (index.clone(), self.shape().clone());
        Var::record("gather", y, [self], move |g, [n]| {
            Ok([need(n, || Tensor::zeros_on(&input, g.dtype(), g.device())?.scatter_add(&index, g, d))?])
        })
    }
}
