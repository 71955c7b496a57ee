//! Trainable parameters: shared handles to a tensor with a stable gradient key.

use crate::Var;
use monarch_tensor::{Error, Result, Tensor};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The key under which a leaf's gradient is stored in [`Gradients`](crate::Gradients).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VarId(u64);

impl VarId {
    /// A fresh id, unique within the process.
    pub(crate) fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        VarId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

struct Inner {
    id: VarId,
    value: RwLock<Tensor>,
    requires_grad: AtomicBool,
}

/// A trainable tensor. Cloning gives another handle to the same parameter; the value
/// can be replaced or updated in place (by optimisers) between steps.
#[derive(Clone)]
pub struct Param(Arc<Inner>);

impl Param {
    /// A parameter that requires a gradient.
    pub fn new(value: Tensor) -> Self {
        Param(Arc::new(Inner { id: VarId::fresh(), value: RwLock::new(value), requires_grad: AtomicBool::new(true) }))
    }

    /// The gradient key.
    pub fn id(&self) -> VarId {
        self.0.id
    }

    /// The current value (a cheap handle to the same storage).
    pub fn value(&self) -> Tensor {
        self.0.value.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the value; the shape and dtype must stay the same.
    pub fn set(&self, value: Tensor) -> Result<()> {
        let mut v = self.0.value.write().unwrap_or_else(|e| e.into_inner());
        if v.shape() != value.shape() {
            return Err(Error::ShapeMismatch { op: "Param::set", lhs: v.shape().clone(), rhs: value.shape().clone() });
        }
        if v.dtype() != value.dtype() {
            return Err(Error::DTypeMismatch { op: "Param::set", lhs: v.dtype(), rhs: value.dtype() });
        }
        *v = value;
        Ok(())
    }

    /// Runs `f` with mutable access to the value (in-place optimiser updates).
    pub fn update<R>(&self, f: impl FnOnce(&mut Tensor) -> R) -> R {
        f(&mut self.0.value.write().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether backward computes a gradient for this parameter.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad.load(Ordering::Relaxed)
    }

    /// Freezes (`false`) or unfreezes the parameter.
    pub fn set_requires_grad(&self, on: bool) {
        self.0.requires_grad.store(on, Ordering::Relaxed)
    }

    /// The parameter as a [`Var`] for use in a forward pass: a gradient leaf when it
    /// requires a gradient, else a constant.
    pub fn var(&self) -> Var {
        if self.requires_grad() { Var::leaf_with_id(self.value(), self.id()) } else { Var::constant(self.value()) }
    }
}

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Param({:?}, {:?})", self.id(), self.value())
    }
}
