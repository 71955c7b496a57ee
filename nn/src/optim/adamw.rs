//! AdamW with decoupled weight decay, its moments keyed by parameter.

use super::{Optimizer, decays};
use crate::NamedParams;
use monarch_autograd::{Gradients, VarId};
use monarch_tensor::{DType, Error, Result, Tensor};
use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// AdamW (as `torch.optim.AdamW`); weight decay applies only where
/// [`decays`](super::decays) says so (not to biases, norms or embeddings).
pub struct AdamW {
    /// Hyper-parameters; `lr` is updated by schedules.
    pub hyper: monarch_tensor::AdamW,
    moments: HashMap<VarId, (Tensor, Tensor, u64)>,
}

impl AdamW {
    /// A fresh optimiser.
    pub fn new(hyper: monarch_tensor::AdamW) -> Self {
        AdamW { hyper, moments: HashMap::new() }
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, params: &NamedParams, grads: &Gradients) -> Result<()> {
        for (name, p) in params {
            let Some(g) = grads.get(p) else { continue };
            let (shape, device) = (p.value().shape().clone(), p.value().device());
            // Fresh moments are made where the parameter lives (on a GPU, not copied).
            let zeros = || Tensor::zeros_on(&shape, DType::F32, device);
            let (m, v, t) = match self.moments.entry(p.id()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert((zeros()?, zeros()?, 0)),
            };
            // Restored moments (a checkpoint's, on the host) move to the parameter's device.
            if m.device() != device {
                (*m, *v) = (m.to_device(device)?, v.to_device(device)?);
            }
            *t += 1;
            let hyper = if decays(name, &p.value()) {
                self.hyper
            } else {
                monarch_tensor::AdamW { weight_decay: 0.0, ..self.hyper }
            };
            let step = *t;
            p.update(|w| hyper.step(w, g, m, v, step))
                .map_err(|e| Error::invalid("AdamW", format!("parameter {name}: {e}")))?;
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.hyper.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.hyper.lr = lr;
    }

    fn state(&self, params: &NamedParams) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, p) in params {
            if let Some((m, v, t)) = self.moments.get(&p.id()) {
                out.push((format!("{name}.exp_avg"), m.clone()));
                out.push((format!("{name}.exp_avg_sq"), v.clone()));
                out.push((format!("{name}.step"), Tensor::from_vec(vec![*t as i64], 1).expect("one element")));
            }
        }
        out
    }

    fn load_state(&mut self, params: &NamedParams, saved: &HashMap<String, Tensor>) -> Result<()> {
        for (name, p) in params {
            let get = |k: &str| saved.get(&format!("{name}.{k}"));
            let (Some(m), Some(v), Some(t)) = (get("exp_avg"), get("exp_avg_sq"), get("step")) else { continue };
            let shape = p.value().shape().clone();
            if m.shape() != &shape || v.shape() != &shape {
                return Err(Error::ShapeMismatch { op: "AdamW::load_state", lhs: shape, rhs: m.shape().clone() });
            }
            let step = t.to_scalar_f64()? as u64;
            self.moments.insert(p.id(), (m.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?, step));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monarch_autograd::Param;

    fn step(opt: &mut AdamW, params: &NamedParams) {
        let loss = params[0].1.var().sqr().unwrap().sum_all().unwrap();
        opt.step(params, &loss.backward().unwrap()).unwrap();
    }

    #[test]
    fn state_round_trips_and_decay_skips_vectors() {
        let hyper = monarch_tensor::AdamW { lr: 0.1, weight_decay: 0.5, ..Default::default() };
        let mk = || vec![("w".to_string(), Param::new(Tensor::from_vec(vec![1f32, -2.0], [1, 2]).unwrap()))];
        let (a, b) = (mk(), mk());
        let (mut oa, mut ob) = (AdamW::new(hyper), AdamW::new(hyper));
        step(&mut oa, &a);
        step(&mut ob, &b);
        // Save a's state and load it into a fresh optimiser: the next steps agree.
        let saved: HashMap<String, Tensor> = oa.state(&a).into_iter().collect();
        assert_eq!(saved.len(), 3);
        let mut oc = AdamW::new(hyper);
        oc.load_state(&b, &saved).unwrap();
        step(&mut oa, &a);
        step(&mut oc, &b);
        assert_eq!(a[0].1.value().to_vec::<f32>().unwrap(), b[0].1.value().to_vec::<f32>().unwrap());
        assert!(decays("h.0.mlp.c_fc.weight", &a[0].1.value()));
        assert!(!decays("wte.weight", &a[0].1.value()));
        assert!(!decays("ln_f.bias", &Tensor::zeros(2, DType::F32)));
    }
}
