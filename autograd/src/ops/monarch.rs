//! The Monarch product and the Monarch layer.

use crate::{Var, autocast};
use monarch_tensor::ops::UnaryOp;
use monarch_tensor::{Result, Tensor};

impl Var {
    /// The Monarch product `x (.., k·p) → (.., l·s)` with factors `w1` (k, q, p) and
    /// `w2` (l, s, r); see [`Tensor::monarch_mul`].
    pub fn monarch_mul(&self, w1: &Var, w2: &Var) -> Result<Var> {
        let m = monarch_tensor::MonarchShape::of(w1.shape(), w2.shape())?.m();
        if self.dims().last() != Some(&(w1.dims()[0] * w1.dims()[2])) {
            return Err(monarch_tensor::Error::ShapeMismatch {
                op: "monarch_mul",
                lhs: self.shape().clone(),
                rhs: w1.shape().clone(),
            });
        }
        self.monarch_linear(w1, w2, None, m)
    }

    /// The Monarch layer `x (.., in) → (.., out)` with zero-padded inputs, truncated
    /// outputs and an optional bias (see [`Tensor::monarch_linear`]). Backward is four
    /// batches of GEMMs from the saved (permuted) first-factor output.
    pub fn monarch_linear(&self, w1: &Var, w2: &Var, bias: Option<&Var>, out: usize) -> Result<Var> {
        let low = match bias {
            Some(b) => autocast::cast([self, w1, w2, b], |[x, w1, w2, b]| x.monarch_linear(&w1, &w2, Some(&b), out)),
            None => autocast::cast([self, w1, w2], |[x, w1, w2]| x.monarch_linear(&w1, &w2, None, out)),
        };
        if let Some(r) = low {
            return r;
        }
        let res = self.value().monarch_linear(w1.value(), w2.value(), bias.map(|b| b.value()), out)?;
        let (x, a, b, mid) = (self.value().clone(), w1.value().clone(), w2.value().clone(), res.mid);
        let mut inputs = vec![self, w1, w2];
        inputs.extend(bias);
        Var::record_n("monarch_linear", res.y, &inputs, move |g, needs| {
            let [dx, dw1, dw2] = Tensor::monarch_backward(&x, &a, &b, &mid, g, [needs[0], needs[1], needs[2]])?;
            let mut grads = smallvec::smallvec![dx, dw1, dw2];
            if needs.len() == 4 {
                let bias_grad =
                    if needs[3] { Some(g.reshape([g.elem_count() / out.max(1), out])?.sum(0)?) } else { None };
                grads.push(bias_grad);
            }
            Ok(grads)
        })
    }
    /// `self.monarch_linear(w1, w2, bias, out)` followed by `act`: one op with the
    /// activation fused into the Monarch layer's output permutation forward and into its
    /// gradient's backward where [`Tensor::monarch_linear_act`] can (the MLP activations
    /// of [`monarch_tensor::MONARCH_FUSED_ACTS`], on the CPU and on a GPU in the
    /// group-major layout); the two ops composed elsewhere. The same function either way.
    pub fn monarch_linear_act(&self, w1: &Var, w2: &Var, bias: Option<&Var>, out: usize, act: UnaryOp) -> Result<Var> {
        let low = match bias {
            Some(b) => {
                autocast::cast([self, w1, w2, b], |[x, w1, w2, b]| x.monarch_linear_act(&w1, &w2, Some(&b), out, act))
            }
            None => autocast::cast([self, w1, w2], |[x, w1, w2]| x.monarch_linear_act(&w1, &w2, None, out, act)),
        };
        if let Some(r) = low {
            return r;
        }
        let bias_t = bias.map(|b| b.value().clone());
        let Some(res) = self.value().monarch_linear_act(w1.value(), w2.value(), bias_t.as_ref(), out, act)? else {
            return self.monarch_linear(w1, w2, bias, out)?.unary(act);
        };
        let (x, a, b, mid, pre) = (self.value().clone(), w1.value().clone(), w2.value().clone(), res.mid, res.pre);
        let mut inputs = vec![self, w1, w2];
        inputs.extend(bias);
        Var::record_n("monarch_linear_act", res.y, &inputs, move |g, needs| {
            let want = [needs[0], needs[1], needs[2], needs.get(3).copied().unwrap_or(false)];
            let saved = [&mid, &pre];
            let [dx, dw1, dw2, db] = Tensor::monarch_act_backward(&x, &a, &b, bias_t.as_ref(), saved, g, act, want)?;
            let mut grads = smallvec::smallvec![dx, dw1, dw2];
            if needs.len() == 4 {
                grads.push(db);
            }
            Ok(grads)
        })
    }
}
