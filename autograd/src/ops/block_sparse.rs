//! The block-sparse dense layer.

use crate::{Var, autocast};
use monarch_tensor::{BlockSparsePlan, Result, Tensor};
use std::sync::Arc;

impl Var {
    /// The block-sparse layer `x (.., in) → (.., out)`: `x·Wᵀ + bias` with `W` given by
    /// its stored `values` under `plan` (see [`Tensor::block_sparse_linear`]). Backward
    /// computes gradients for the stored blocks only, never the dense matrix.
    pub fn block_sparse_linear(&self, values: &Var, plan: &Arc<BlockSparsePlan>, bias: Option<&Var>) -> Result<Var> {
        let low = match bias {
            Some(b) => autocast::cast([self, values, b], |[x, v, b]| x.block_sparse_linear(&v, plan, Some(&b))),
            None => autocast::cast([self, values], |[x, v]| x.block_sparse_linear(&v, plan, None)),
        };
        if let Some(r) = low {
            return r;
        }
        let y = self.value().block_sparse_linear(values.value(), plan, bias.map(|b| b.value()))?;
        let (x, v, plan) = (self.value().clone(), values.value().clone(), plan.clone());
        let out = plan.out_features();
        let mut inputs = vec![self, values];
        inputs.extend(bias);
        Var::record_n("block_sparse_linear", y, &inputs, move |g, needs| {
            let [dx, dv] = Tensor::block_sparse_backward(&x, &v, &plan, g, [needs[0], needs[1]])?;
            let mut grads = smallvec::smallvec![dx, dv];
            if needs.len() == 3 {
                let bias_grad =
                    if needs[2] { Some(g.reshape([g.elem_count() / out.max(1), out])?.sum(0)?) } else { None };
                grads.push(bias_grad);
            }
            Ok(grads)
        })
    }
}
