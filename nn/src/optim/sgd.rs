//! Stochastic gradient descent with optional momentum.

use super::Optimizer;
use crate::NamedParams;
use monarch_autograd::{Gradients, VarId};
use monarch_tensor::{DType, Result, Tensor};
use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// SGD with momentum and L2 weight decay, as `torch.optim.SGD`.
pub struct Sgd {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0 for plain SGD).
    pub momentum: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    velocity: HashMap<VarId, Tensor>,
}

impl Sgd {
    /// A fresh optimiser.
    pub fn new(lr: f64, momentum: f64, weight_decay: f64) -> Self {
        Sgd { lr, momentum, weight_decay, velocity: HashMap::new() }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &NamedParams, grads: &Gradients) -> Result<()> {
        for (_, p) in params {
            let Some(g) = grads.get(p) else { continue };
            let buf = if self.momentum > 0.0 {
                let (shape, device) = (p.value().shape().clone(), p.value().device());
                // A fresh buffer is made where the parameter lives (on a GPU, not copied).
                let v = match self.velocity.entry(p.id()) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => e.insert(Tensor::zeros_on(&shape, DType::F32, device)?),
                };
                // A restored buffer (a checkpoint's, on the host) follows the parameter.
                if v.device() != device {
                    *v = v.to_device(device)?;
                }
                Some(v)
            } else {
                None
            };
            p.update(|w| monarch_tensor::ops::sgd_step(w, g, buf, self.lr, self.momentum, self.weight_decay))?;
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn state(&self, params: &NamedParams) -> Vec<(String, Tensor)> {
        params
            .iter()
            .filter_map(|(n, p)| self.velocity.get(&p.id()).map(|v| (format!("{n}.momentum_buffer"), v.clone())))
            .collect()
    }

    fn load_state(&mut self, params: &NamedParams, saved: &HashMap<String, Tensor>) -> Result<()> {
        for (name, p) in params {
            if let Some(v) = saved.get(&format!("{name}.momentum_buffer")) {
                if v.shape() != p.value().shape() {
                    return Err(monarch_tensor::Error::ShapeMismatch {
                        op: "Sgd::load_state",
                        lhs: p.value().shape().clone(),
                        rhs: v.shape().clone(),
                    });
                }
                self.velocity.insert(p.id(), v.to_dtype(DType::F32)?);
            }
        }
        Ok(())
    }
}
