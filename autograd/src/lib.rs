//! Tape-based reverse-mode automatic differentiation over [`monarch_tensor::Tensor`].
//!
//! Operations on [`Var`]s compute their value eagerly and record, on a shared [`Tape`],
//! a backward rule that owns exactly the tensors it needs. [`Var::backward`] consumes
//! the tape in reverse, frees each rule's saved tensors as soon as it has run, and
//! returns [`Gradients`] keyed by the leaves ([`Param`]s and [`Var::leaf`]s). Inputs
//! that need no gradient (constants, frozen parameters) cost nothing in backward.
//!
//! ```
//! use monarch_autograd::{Param, Var};
//! use monarch_tensor::Tensor;
//! let w = Param::new(Tensor::from_vec(vec![2.0f32, -1.0], 2)?);
//! let x = Var::constant(Tensor::from_vec(vec![3.0f32, 4.0], 2)?);
//! let loss = w.var().mul(&x)?.sum_all()?;
//! let grads = loss.backward()?;
//! assert_eq!(grads.get(&w).unwrap().to_vec::<f32>()?, vec![3.0, 4.0]);
//! # Ok::<(), monarch_tensor::Error>(())
//! ```

mod autocast;
mod grad_mode;
mod gradcheck;
mod grads;
mod ops;
mod param;
mod tape;
mod var;

pub use autocast::{AutocastGuard, autocast, low_output, low_precision};
pub use grad_mode::{NoGradGuard, is_grad_enabled, no_grad};
pub use gradcheck::{GradcheckOpts, gradcheck};
pub use grads::Gradients;
pub use param::{Param, VarId};
pub use tape::Tape;
pub use var::Var;
