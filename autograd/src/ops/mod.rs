//! Differentiable operations on [`Var`](crate::Var), one file per family, mirroring
//! `monarch_tensor`'s ops. Each records a backward rule that saves only what it needs.

mod attention;
mod binary;
mod block_sparse;
mod butterfly;
mod dropout;
mod index;
mod loss;
mod matmul;
mod monarch;
mod norm;
mod reduce;
mod shape;
mod softmax;
mod unary;

use monarch_tensor::{Result, Tensor};

/// `Some(f())` when the gradient is needed, else `None`.
pub(crate) fn need(needed: bool, f: impl FnOnce() -> Result<Tensor>) -> Result<Option<Tensor>> {
    needed.then(f).transpose()
}
