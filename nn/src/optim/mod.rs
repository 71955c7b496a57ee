//! Optimisers over named parameters and learning-rate schedules.

mod adamw;
mod schedule;
mod sgd;

pub use adamw::AdamW;
pub use schedule::WarmupCosine;
pub use sgd::Sgd;

use crate::NamedParams;
use monarch_autograd::Gradients;
use monarch_tensor::{Result, Tensor};
use std::collections::HashMap;

/// Updates parameters from their gradients.
pub trait Optimizer {
    /// One update of every parameter in `params` that has a gradient in `grads`.
    fn step(&mut self, params: &NamedParams, grads: &Gradients) -> Result<()>;
    /// The current learning rate.
    fn lr(&self) -> f64;
    /// Sets the learning rate (for schedules).
    fn set_lr(&mut self, lr: f64);
    /// The optimiser state as named tensors (`<param>.<buffer>`), for checkpoints.
    fn state(&self, params: &NamedParams) -> Vec<(String, Tensor)>;
    /// Restores state saved by [`state`](Self::state) for the parameters present;
    /// parameters without saved state start fresh.
    fn load_state(&mut self, params: &NamedParams, saved: &HashMap<String, Tensor>) -> Result<()>;
}

/// Whether AdamW should decay a parameter by default: matrices yes; biases, norm
/// gains (rank < 2) and embedding tables no.
pub fn decays(name: &str, value: &Tensor) -> bool {
    let embedding = ["wte", "wpe", "embed", "pos_embed", "cls_token"].iter().any(|e| name.contains(e));
    value.rank() >= 2 && !embedding
}
