//! The tape: the recorded operations of one forward pass, in order.

use crate::{Gradients, VarId};
use monarch_tensor::{Error, Result, Shape, Tensor};
use smallvec::SmallVec;
use std::cell::RefCell;
use std::rc::Rc;

/// Where an op input's gradient goes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Input {
    /// The output of an earlier node.
    Node(usize),
    /// A leaf: the gradient lands in [`Gradients`].
    Leaf(VarId),
    /// Nobody needs this gradient.
    Skip,
}

/// Input gradients of one rule, one per input (`None` where not needed).
pub(crate) type InputGrads = SmallVec<[Option<Tensor>; 3]>;

/// A backward rule: from the output gradient and which inputs need a gradient, the
/// input gradients. It owns exactly the tensors it saved.
pub(crate) type Rule = Box<dyn FnOnce(&Tensor, &[bool]) -> Result<InputGrads>>;

struct Node {
    op: &'static str,
    inputs: SmallVec<[(Input, Shape); 3]>,
    rule: Rule,
}

#[derive(Default)]
struct Inner {
    nodes: Vec<Node>,
    consumed: bool,
    /// Set when this tape was merged into another: its nodes now live there, shifted
    /// by the offset.
    merged_into: Option<(Tape, usize)>,
}

/// A recording of differentiable operations. Vars derived from one another share a
/// tape; [`Var::backward`](crate::Var::backward) consumes it.
#[derive(Clone, Default)]
pub struct Tape(Rc<RefCell<Inner>>);

impl Tape {
    /// Whether two handles are the same tape.
    pub(crate) fn same(&self, other: &Tape) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }

    /// Where node `index` of this tape lives now, following merges.
    pub(crate) fn resolve(&self, index: usize) -> (Tape, usize) {
        let (mut tape, mut index) = (self.clone(), index);
        loop {
            let next = tape.0.borrow().merged_into.clone();
            match next {
                Some((t, offset)) => (tape, index) = (t, index + offset),
                None => return (tape, index),
            }
        }
    }

    /// Moves every node of `other` (a different, unmerged tape) to the end of this
    /// one, so that vars from two forward branches can meet. Node order stays
    /// topological because `other`'s nodes only refer to each other.
    pub(crate) fn absorb(&self, other: &Tape) -> Result<()> {
        let (mut mine, mut theirs) = (self.0.borrow_mut(), other.0.borrow_mut());
        if mine.consumed || theirs.consumed {
            return bail_consumed("merge");
        }
        let offset = mine.nodes.len();
        for mut node in theirs.nodes.drain(..) {
            for (input, _) in node.inputs.iter_mut() {
                if let Input::Node(j) = input {
                    *j += offset;
                }
            }
            mine.nodes.push(node);
        }
        theirs.merged_into = Some((self.clone(), offset));
        Ok(())
    }

    /// Number of recorded operations.
    pub fn len(&self) -> usize {
        self.0.borrow().nodes.len()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a node and returns its index.
    pub(crate) fn push(&self, op: &'static str, inputs: SmallVec<[(Input, Shape); 3]>, rule: Rule) -> Result<usize> {
        let mut t = self.0.borrow_mut();
        if t.consumed {
            crate::tape::bail_consumed(op)?;
        }
        t.nodes.push(Node { op, inputs, rule });
        Ok(t.nodes.len() - 1)
    }

    /// Runs backward from node `root` with output gradient `seed`, accumulating leaf
    /// gradients into `grads`. Consumes the tape: every node is dropped (freeing its
    /// saved tensors) as soon as its rule has run or is known to be unneeded.
    pub(crate) fn backward(&self, root: usize, seed: Tensor, grads: &mut Gradients) -> Result<()> {
        let mut nodes = {
            let mut t = self.0.borrow_mut();
            if t.consumed {
                bail_consumed("backward")?;
            }
            t.consumed = true;
            std::mem::take(&mut t.nodes)
        };
        nodes.truncate(root + 1);
        let mut pending: Vec<Option<Tensor>> = vec![None; root + 1];
        pending[root] = Some(seed);
        while let Some(node) = nodes.pop() {
            let Some(g) = pending[nodes.len()].take() else { continue };
            let needs: SmallVec<[bool; 3]> = node.inputs.iter().map(|(i, _)| !matches!(i, Input::Skip)).collect();
            let input_grads = (node.rule)(&g, &needs)?;
            drop(g);
            for ((input, shape), ig) in node.inputs.iter().zip(input_grads) {
                let Some(ig) = ig else { continue };
                if ig.shape() != shape {
                    return Err(Error::invalid(
                        "backward",
                        format!(
                            "rule of {} returned a gradient of shape {} for an input of shape {shape}",
                            node.op,
                            ig.shape()
                        ),
                    ));
                }
                match *input {
                    Input::Node(j) => {
                        pending[j] = Some(match pending[j].take() {
                            Some(prev) => prev.add(&ig)?,
                            None => ig,
                        })
                    }
                    Input::Leaf(id) => grads.accumulate(id, ig)?,
                    Input::Skip => {}
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn bail_consumed(op: &'static str) -> Result<()> {
    Err(Error::invalid(op, "the tape was already consumed by backward; run a new forward pass (or detach)"))
}
