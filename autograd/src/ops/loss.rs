//! Fused cross-entropy loss, alone and with the output layer before it.

use super::need;
use crate::{Var, autocast, is_grad_enabled};
use monarch_tensor::{CrossEntropy, Result, Tensor, linear_cross_entropy_chunk_rows};

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

    /// `self.linear(weight, None)?.cross_entropy(targets, opts)` for (N, D) rows and a
    /// (V, D) weight without holding the (N, V) logits: see
    /// [`Tensor::linear_cross_entropy`]. `chunk_rows` defaults to
    /// [`linear_cross_entropy_chunk_rows`]. The gradients are computed in the forward
    /// (only those needed; none under [`no_grad`](crate::no_grad)) and scaled in the
    /// backward. Under autocast the products run in its dtype, as `linear`'s do.
    pub fn linear_cross_entropy(
        &self,
        weight: &Var,
        targets: &Tensor,
        opts: CrossEntropy,
        chunk_rows: Option<usize>,
    ) -> Result<Var> {
        let fused = |x: &Var, w: &Var| -> Result<Var> {
            let (on, classes) = (is_grad_enabled(), w.dims().first().copied().unwrap_or(0));
            let chunk = chunk_rows.unwrap_or_else(|| linear_cross_entropy_chunk_rows(classes, x.value().device()));
            let want = [on && x.requires_grad(), on && w.requires_grad()];
            let r = Tensor::linear_cross_entropy(x.value(), w.value(), targets, opts, chunk, want)?;
            let (dx, dw) = (r.dx, r.dw);
            Var::record("linear_cross_entropy", r.loss, [x, w], move |g, [nx, nw]| {
                let scaled = |d: Option<Tensor>, needed: bool| -> Result<Option<Tensor>> {
                    match d {
                        Some(d) if needed => Ok(Some(d.mul(&g.to_dtype(d.dtype())?)?)),
                        _ => Ok(None),
                    }
                };
                Ok([scaled(dx, nx)?, scaled(dw, nw)?])
            })
        };
        if let Some(r) = autocast::cast([self, weight], |[x, w]| fused(&x, &w)) {
            return r;
        }
        fused(self, weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Gradients, no_grad};
    use monarch_tensor::DType;

    /// Loss and the gradients of x and w, fused (over `chunk`-row chunks) or separate.
    fn run(fused: Option<usize>, low: Option<DType>) -> (f64, Vec<f32>, Vec<f32>) {
        let (x, w) = (Tensor::randn([10, 12], 0.0, 1.0, 1).unwrap(), Tensor::randn([30, 12], 0.0, 0.5, 2).unwrap());
        let targets = Tensor::from_vec(vec![1i64, 29, -100, 0, 7, 7, -100, 12, 3, 20], 10).unwrap();
        let o = CrossEntropy { ignore_index: Some(-100), label_smoothing: 0.05 };
        let (xv, wv) = (Var::leaf(x), Var::leaf(w));
        let _cast = autocast(low);
        let loss = match fused {
            Some(chunk) => xv.linear_cross_entropy(&wv, &targets, o, Some(chunk)).unwrap(),
            None => xv.linear(&wv, None).unwrap().cross_entropy(&targets, o).unwrap(),
        };
        assert_eq!(loss.dtype(), DType::F32);
        let mut grads = Gradients::new();
        loss.mul_scalar(0.3).unwrap().backward_into(&mut grads).unwrap();
        let g = |v: &Var| grads.get(v).unwrap().to_vec_f32().unwrap();
        (loss.value().to_scalar_f64().unwrap(), g(&xv), g(&wv))
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        for (i, (p, q)) in a.iter().zip(b).enumerate() {
            assert!((p - q).abs() <= tol * (1.0 + q.abs()), "element {i}: {p} against {q}");
        }
    }

    #[test]
    fn the_fused_head_matches_linear_then_cross_entropy() {
        let (loss, dx, dw) = run(None, None);
        for chunk in [3, 10] {
            let (l, fx, fw) = run(Some(chunk), None);
            assert!((l - loss).abs() < 1e-6, "chunk {chunk}: {l} against {loss}");
            close(&fx, &dx, 1e-6);
            close(&fw, &dw, 1e-6);
        }
        // Under autocast both take bf16 logits to an f32 loss.
        let (loss, dx, dw) = run(None, Some(DType::BF16));
        let (l, fx, fw) = run(Some(4), Some(DType::BF16));
        assert!((l - loss).abs() < 1e-5, "{l} against {loss}");
        close(&fx, &dx, 2e-2);
        close(&fw, &dw, 2e-2);
    }

    #[test]
    fn no_grad_records_nothing() {
        let (x, w) = (Var::leaf(Tensor::ones([2, 3], DType::F32)), Var::leaf(Tensor::ones([4, 3], DType::F32)));
        let _off = no_grad();
        let t = Tensor::from_vec(vec![0i64, 3], 2).unwrap();
        let loss = x.linear_cross_entropy(&w, &t, CrossEntropy::default(), None).unwrap();
        assert!(!loss.requires_grad());
        // Equal logits: the loss is log 4.
        assert!((loss.value().to_scalar_f64().unwrap() - 4f64.ln()).abs() < 1e-6);
    }
}
