//! Fused cross-entropy loss.

use super::need;
use crate::Var;
use monarch_tensor::{CrossEntropy, Result, Tensor};

impl Var {
    /// Mean cross-entropy of (N, C) logits against (N) `I64` targets (see
    /// [`Tensor::cross_entropy`]); backward is one fused pass over the logits.
    pub fn cross_entropy(&self, targets: &Tensor, opts: CrossEntropy) -> Result<Var> {
        let (loss, lse) = self.value().cross_entropy(targets, opts)?;
        let (logits, targets) = (self.value().clone(), targets.clone());
        Var::record("cross_entropy", loss, [self], move |g, [n]| {
            Ok([need(n, || Tensor::cross_entropy_backward(&logits, &targets, &lse, g, opts))?])
        })
    }
}
