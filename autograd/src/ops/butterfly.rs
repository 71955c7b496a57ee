//! The classic butterfly product.

use super::need;
use crate::Var;
use monarch_tensor::{Result, Tensor};

impl Var {
    /// The butterfly product `x (.., in) → (.., out)` with twiddles of shape
    /// (stacks, log₂ n, n/2, 2, 2) (see [`Tensor::butterfly_mul`]). Backward recomputes
    /// each row's factor inputs instead of saving `log₂ n` intermediates.
    pub fn butterfly_mul(&self, twiddle: &Var, out: usize) -> Result<Var> {
        let y = self.value().butterfly_mul(twiddle.value(), out)?;
        let (x, t) = (self.value().clone(), twiddle.value().clone());
        Var::record("butterfly_mul", y, [self, twiddle], move |g, [nx, nt]| {
            let (dx, dt) = Tensor::butterfly_backward(&x, &t, g)?;
            Ok([need(nx, || Ok(dx))?, need(nt, || Ok(dt))?])
        })
    }
}
