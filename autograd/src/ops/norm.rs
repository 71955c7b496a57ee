//! Layer normalisation.

use super::need;
use crate::Var;
use monarch_tensor::{Result, Tensor};

impl Var {
    /// Layer normalisation over the last dimension with optional weight and bias;
    /// backward is one fused pass from the saved mean and rstd.
    pub fn layer_norm(&self, w: Option<&Var>, b: Option<&Var>, eps: f64) -> Result<Var> {
        let out = self.value().layer_norm(w.map(|w| w.value()), b.map(|b| b.value()), eps)?;
        let (x, wv) = (self.value().clone(), w.map(|w| w.value().clone()));
        let (mean, rstd) = (out.mean, out.rstd);
        let has_w = w.is_some();
        let mut inputs = vec![self];
        inputs.extend(w);
        inputs.extend(b);
        Var::record_n("layer_norm", out.y, &inputs, move |g, needs| {
            let (dx, dw, db) = Tensor::layer_norm_backward(&x, wv.as_ref(), &mean, &rstd, g)?;
            let mut grads = smallvec::smallvec![need(needs[0], || Ok(dx))?];
            if has_w {
                grads.push(need(needs[1], || Ok(dw))?);
            }
            if needs.len() > grads.len() {
                grads.push(need(needs[grads.len()], || Ok(db))?);
            }
            Ok(grads)
        })
    }
}
