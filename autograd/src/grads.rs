//! The gradients backward produces, keyed by leaf.

use crate::{Param, Var, VarId};
use monarch_tensor::{DType, Result, Tensor};
use std::collections::HashMap;

/// Something whose gradient can be looked up: a [`Param`], a leaf [`Var`] or a [`VarId`].
pub trait GradKey {
    /// The key, if this is a leaf.
    fn grad_key(&self) -> Option<VarId>;
}
impl GradKey for Param {
    fn grad_key(&self) -> Option<VarId> {
        Some(self.id())
    }
}
impl GradKey for Var {
    fn grad_key(&self) -> Option<VarId> {
        self.leaf_id()
    }
}
impl GradKey for VarId {
    fn grad_key(&self) -> Option<VarId> {
        Some(*self)
    }
}

/// Gradients of leaves. Backward calls can accumulate into one store (micro-batches).
#[derive(Default, Clone, Debug)]
pub struct Gradients {
    map: HashMap<VarId, Tensor>,
}

impl Gradients {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The gradient of a leaf, if it received one.
    pub fn get(&self, key: &impl GradKey) -> Option<&Tensor> {
        self.map.get(&key.grad_key()?)
    }

    /// Removes and returns a leaf's gradient.
    pub fn remove(&mut self, key: &impl GradKey) -> Option<Tensor> {
        self.map.remove(&key.grad_key()?)
    }

    /// Adds `g` to the gradient stored for `id`.
    pub(crate) fn accumulate(&mut self, id: VarId, g: Tensor) -> Result<()> {
        let g = match self.map.remove(&id) {
            Some(prev) => prev.add(&g)?,
            None => g,
        };
        self.map.insert(id, g);
        Ok(())
    }

    /// Number of leaves with a gradient.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no leaf has a gradient.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All (leaf, gradient) pairs, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&VarId, &Tensor)> {
        self.map.iter()
    }

    /// Multiplies every gradient by `factor` (e.g. 1/micro-batches).
    pub fn scale(&mut self, factor: f64) -> Result<()> {
        for g in self.map.values_mut() {
            *g = g.mul_scalar(factor)?;
        }
        Ok(())
    }

    /// The squared L2 norm of all gradients taken together, in parts: the host
    /// gradients' sum of squares (in f64) and, per GPU, the f32 sum of its gradients'
    /// squares as a scalar still on that device, for the caller to read when it likes
    /// (with [`Tensor::read_scalars`], together with other results: reading waits for
    /// the device).
    pub fn squared_norm_parts(&self) -> Result<(f64, Vec<Tensor>)> {
        let mut host = 0.0;
        let mut per_device: Vec<Tensor> = Vec::new();
        for g in self.map.values() {
            if g.device() == monarch_tensor::Device::Cpu {
                host += g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar_f64()?;
                continue;
            }
            let part = g.to_dtype(DType::F32)?.sqr()?.sum_all()?;
            match per_device.iter_mut().find(|t| t.device() == g.device()) {
                Some(total) => *total = total.add(&part)?,
                None => per_device.push(part),
            }
        }
        Ok((host, per_device))
    }

    /// The L2 norm of all gradients taken together (see
    /// [`squared_norm_parts`](Self::squared_norm_parts)): the host waits for each GPU
    /// once, not once per gradient.
    pub fn global_norm(&self) -> Result<f64> {
        let (host, parts) = self.squared_norm_parts()?;
        let sq = host + Tensor::read_scalars(&parts.iter().collect::<Vec<_>>())?.iter().sum::<f64>();
        Ok(sq.sqrt())
    }

    /// Scales all gradients so their global norm, `norm` (as [`global_norm`](Self::global_norm)
    /// gives it), is at most `max_norm`; a non-finite norm leaves them as they are.
    pub fn clip_to_norm(&mut self, max_norm: f64, norm: f64) -> Result<()> {
        if norm > max_norm && norm.is_finite() {
            self.scale(max_norm / norm)?;
        }
        Ok(())
    }

    /// Scales all gradients so their global norm is at most `max_norm`; returns the norm
    /// before clipping.
    pub fn clip_global_norm(&mut self, max_norm: f64) -> Result<f64> {
        let norm = self.global_norm()?;
        self.clip_to_norm(max_norm, norm)?;
        Ok(norm)
    }
}
