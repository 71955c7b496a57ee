//! Dropout.

use super::need;
use crate::Var;
use monarch_tensor::Result;

impl Var {
    /// Zeroes elements with probability `p` (mask from `seed` and position) and scales
    /// the rest by `1/(1-p)`. Backward regenerates the same mask; nothing is saved.
    pub fn dropout(&self, p: f64, seed: u64) -> Result<Var> {
        let y = self.value().dropout(p, seed)?;
        Var::record("dropout", y, [self], move |g, [n]| Ok([need(n, || g.dropout(p, seed))?]))
    }
}
