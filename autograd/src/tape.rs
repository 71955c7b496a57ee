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
    /// Set on a `narrow` (dim, start): its gradient is that slice of its input's, which
    /// backward collects with the input's other slices instead of zero-padding it.
    slice_of: Option<(usize, usize)>,
}

/// The gradient gathered so far for a node's output.
enum Pending {
    /// A whole gradient.
    Full(Tensor),
    /// Only slices along `dim` of a gradient of `shape`, zero elsewhere (the outputs'
    /// gradients of narrows of this node: q, k and v out of a fused projection).
    Slices { shape: Shape, dim: usize, parts: Vec<(usize, Tensor)> },
}

impl Pending {
    /// Adds `other` (a whole gradient, or a slice at `(dim, start)` of one of `shape`).
    fn add(self, other: Pending) -> Result<Pending> {
        Ok(match (self, other) {
            (Pending::Slices { shape, dim, mut parts }, Pending::Slices { shape: s2, dim: d2, parts: p2 })
                if s2 == shape && d2 == dim =>
            {
                parts.extend(p2);
                Pending::Slices { shape, dim, parts }
            }
            (a, b) => Pending::Full(a.into_full()?.add(&b.into_full()?)?),
        })
    }

    /// The whole gradient: the slices joined with zeros between them in one `cat`
    /// (slices overlapping an earlier one are zero-padded and added).
    fn into_full(self) -> Result<Tensor> {
        let (shape, dim, mut parts) = match self {
            Pending::Full(t) => return Ok(t),
            Pending::Slices { shape, dim, parts } => (shape, dim, parts),
        };
        parts.sort_by_key(|(start, _)| *start);
        let Some((dtype, device)) = parts.first().map(|(_, t)| (t.dtype(), t.device())) else {
            return Err(Error::invalid("backward", "a sliced gradient with no slices"));
        };
        let zeros = |len: usize| Tensor::zeros_on(shape.with_dim(dim, len), dtype, device);
        let (mut pieces, mut overlapping, mut pos) = (Vec::new(), Vec::new(), 0);
        for (start, t) in parts {
            if start < pos {
                overlapping.push((start, t));
                continue;
            }
            if start > pos {
                pieces.push(zeros(start - pos)?);
            }
            pos = start + t.dims()[dim];
            pieces.push(t);
        }
        if pos < shape.dims()[dim] {
            pieces.push(zeros(shape.dims()[dim] - pos)?);
        }
        let mut full =
            if pieces.len() == 1 { pieces.remove(0) } else { Tensor::cat(&pieces.iter().collect::<Vec<_>>(), dim)? };
        for (start, t) in overlapping {
            full = full.add(&Pending::Slices { shape: shape.clone(), dim, parts: vec![(start, t)] }.into_full()?)?;
        }
        Ok(full)
    }
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
        t.nodes.push(Node { op, inputs, rule, slice_of: None });
        Ok(t.nodes.len() - 1)
    }

    /// Marks node `index`, a narrow of its one input at `(dim, start)`, so that backward
    /// gathers its gradient with the other slices of the input's.
    pub(crate) fn mark_slice(&self, index: usize, dim: usize, start: usize) {
        if let Some(node) = self.0.borrow_mut().nodes.get_mut(index) {
            node.slice_of = Some((dim, start));
        }
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
        let mut pending: Vec<Option<Pending>> = (0..=root).map(|_| None).collect();
        pending[root] = Some(Pending::Full(seed));
        while let Some(node) = nodes.pop() {
            let Some(g) = pending[nodes.len()].take() else { continue };
            // A narrow of an earlier node hands its gradient on as a slice.
            if let (Some((dim, start)), [(Input::Node(j), shape)]) = (node.slice_of, node.inputs.as_slice()) {
                let part = Pending::Slices { shape: shape.clone(), dim, parts: vec![(start, g.into_full()?)] };
                pending[*j] = Some(match pending[*j].take() {
                    Some(prev) => prev.add(part)?,
                    None => part,
                });
                continue;
            }
            let g = g.into_full()?;
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
                            Some(prev) => prev.add(Pending::Full(ig))?,
                            None => Pending::Full(ig),
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
