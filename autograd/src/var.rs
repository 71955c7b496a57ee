//! [`Var`]: a tensor that may carry a place on a tape.

use crate::tape::{Input, InputGrads, Tape};
use crate::{Gradients, VarId, is_grad_enabled};
use monarch_tensor::{DType, Error, Result, Shape, Tensor};
use smallvec::SmallVec;
use std::rc::Rc;

#[derive(Clone)]
enum Track {
    /// Needs no gradient.
    Const,
    /// A gradient leaf that has not met a tape yet.
    Leaf(VarId),
    /// The output of a recorded op.
    Node(Tape, usize),
}

/// A value in a differentiable computation: a [`Tensor`] plus how its gradient flows.
/// Cheap to clone. Operations mirror those of `Tensor` and return `Result<Var>`.
#[derive(Clone)]
pub struct Var {
    value: Tensor,
    track: Track,
    /// The low-precision var this one widens exactly (an autocast product's output cast
    /// back to f32), which autocast takes as the next product's input instead of
    /// rounding this one again (the same values, one pass fewer each way).
    widened: Option<Rc<Var>>,
}

impl Var {
    /// A value that needs no gradient (data, masks, frozen weights).
    pub fn constant(value: Tensor) -> Self {
        Var { value, track: Track::Const, widened: None }
    }

    /// A new gradient leaf; its gradient is looked up with `grads.get(&var)`.
    pub fn leaf(value: Tensor) -> Self {
        Self::leaf_with_id(value, VarId::fresh())
    }

    pub(crate) fn leaf_with_id(value: Tensor, id: VarId) -> Self {
        Var { value, track: Track::Leaf(id), widened: None }
    }

    /// The gradient key if this is a leaf.
    pub fn leaf_id(&self) -> Option<VarId> {
        match self.track {
            Track::Leaf(id) => Some(id),
            _ => None,
        }
    }

    /// The value.
    pub fn value(&self) -> &Tensor {
        &self.value
    }

    /// The value's shape.
    pub fn shape(&self) -> &Shape {
        self.value.shape()
    }

    /// The value's dimensions.
    pub fn dims(&self) -> &[usize] {
        self.value.dims()
    }

    /// The value's dtype.
    pub fn dtype(&self) -> DType {
        self.value.dtype()
    }

    /// Whether a gradient flows through this value.
    pub fn requires_grad(&self) -> bool {
        !matches!(self.track, Track::Const)
    }

    /// `self`, known to widen `low` exactly (every value of `low` converts to `self`'s
    /// without rounding, and `self` is computed from `low` on the tape).
    pub(crate) fn widening(mut self, low: Var) -> Var {
        self.widened = Some(Rc::new(low));
        self
    }

    /// The `dtype` var this one widens exactly, if it is known.
    pub(crate) fn widened_from(&self, dtype: DType) -> Option<&Var> {
        self.widened.as_deref().filter(|low| low.dtype() == dtype)
    }

    /// The same value cut off from the tape.
    pub fn detach(&self) -> Var {
        Var::constant(self.value.clone())
    }

    /// Records `op` with output `value`, inputs `inputs` and a backward `rule`. The rule
    /// receives the output gradient and which inputs need a gradient, and returns one
    /// gradient per input (`None` where not needed). Nothing is recorded when no input
    /// needs a gradient or recording is off ([`no_grad`](crate::no_grad)).
    pub(crate) fn record<const N: usize>(
        op: &'static str,
        value: Tensor,
        inputs: [&Var; N],
        rule: impl FnOnce(&Tensor, [bool; N]) -> Result<[Option<Tensor>; N]> + 'static,
    ) -> Result<Var> {
        Self::record_n(op, value, &inputs, move |g, needs| {
            let needs: [bool; N] = needs.try_into().expect("one flag per input");
            Ok(rule(g, needs)?.into_iter().collect())
        })
    }

    /// [`record`](Self::record) for a variable number of inputs.
    pub(crate) fn record_n(
        op: &'static str,
        value: Tensor,
        inputs: &[&Var],
        rule: impl FnOnce(&Tensor, &[bool]) -> Result<InputGrads> + 'static,
    ) -> Result<Var> {
        if !is_grad_enabled() || inputs.iter().all(|v| !v.requires_grad()) {
            return Ok(Var::constant(value));
        }
        // Vars from separate branches (separate tapes) meet here: merge their tapes.
        let mut tape: Option<Tape> = None;
        for v in inputs {
            if let Track::Node(t, i) = &v.track {
                let (t, _) = t.resolve(*i);
                match &tape {
                    Some(existing) if !existing.same(&t) => existing.absorb(&t)?,
                    Some(_) => {}
                    None => tape = Some(t),
                }
            }
        }
        let tape = tape.unwrap_or_default();
        let wiring: SmallVec<[(Input, Shape); 3]> = inputs
            .iter()
            .map(|v| {
                let input = match &v.track {
                    Track::Const => Input::Skip,
                    Track::Leaf(id) => Input::Leaf(*id),
                    Track::Node(t, i) => Input::Node(t.resolve(*i).1),
                };
                (input, v.shape().clone())
            })
            .collect();
        let index = tape.push(op, wiring, Box::new(rule))?;
        Ok(Var { value, track: Track::Node(tape, index), widened: None })
    }

    /// Marks this var, recorded as a narrow of its input at `(dim, start)`, for backward
    /// to gather its gradient as a slice of the input's.
    pub(crate) fn mark_slice(&self, dim: usize, start: usize) {
        if let Track::Node(t, i) = &self.track {
            let (t, i) = t.resolve(*i);
            t.mark_slice(i, dim, start);
        }
    }

    /// Gradients of this scalar with respect to every leaf it depends on. Consumes the tape.
    pub fn backward(&self) -> Result<Gradients> {
        let mut grads = Gradients::new();
        self.backward_into(&mut grads)?;
        Ok(grads)
    }

    /// Like [`backward`](Self::backward), adding into an existing store (gradient
    /// accumulation over micro-batches).
    pub fn backward_into(&self, grads: &mut Gradients) -> Result<()> {
        if self.value.elem_count() != 1 {
            return Err(Error::invalid(
                "backward",
                format!("needs a single-element output, got shape {}; use backward_with", self.shape()),
            ));
        }
        let seed = Tensor::full_on(1.0, self.shape(), self.dtype(), self.value().device())?;
        self.backward_with(seed, grads)
    }

    /// Backward from an explicit output gradient `seed` of this var's shape.
    pub fn backward_with(&self, seed: Tensor, grads: &mut Gradients) -> Result<()> {
        if seed.shape() != self.shape() {
            return Err(Error::ShapeMismatch { op: "backward", lhs: self.shape().clone(), rhs: seed.shape().clone() });
        }
        match &self.track {
            Track::Const => {
                Err(Error::invalid("backward", "the output does not depend on anything that requires a gradient"))
            }
            Track::Leaf(id) => grads.accumulate(*id, seed),
            Track::Node(tape, i) => {
                let (tape, i) = tape.resolve(*i);
                tape.backward(i, seed, grads)
            }
        }
    }
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.track {
            Track::Const => "const".to_string(),
            Track::Leaf(id) => format!("leaf {id:?}"),
            Track::Node(_, i) => format!("node {i}"),
        };
        write!(f, "Var({kind}, {:?})", self.value)
    }
}
