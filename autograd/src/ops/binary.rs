//! Elementwise functions of two vars with broadcasting, and selection by a mask.

use super::need;
use crate::Var;
use monarch_tensor::{BinaryOp, CmpOp, Result, Tensor};

impl Var {
    /// `op(self, rhs)` with NumPy broadcasting; gradients are summed back over the
    /// broadcast dimensions.
    pub fn binary(&self, rhs: &Var, op: BinaryOp) -> Result<Var> {
        let y = self.value().binary(rhs.value(), op)?;
        let (sa, sb) = (self.shape().clone(), rhs.shape().clone());
        let saved = match op {
            BinaryOp::Add | BinaryOp::Sub => None,
            _ => Some((self.value().clone(), rhs.value().clone())),
        };
        Var::record(op.name(), y, [self, rhs], move |g, [na, nb]| {
            let (ga, gb) = match (op, &saved) {
                (BinaryOp::Add, _) => (need(na, || Ok(g.clone()))?, need(nb, || Ok(g.clone()))?),
                (BinaryOp::Sub, _) => (need(na, || Ok(g.clone()))?, need(nb, || g.neg())?),
                (BinaryOp::Mul, Some((a, b))) => (need(na, || g.mul(b))?, need(nb, || g.mul(a))?),
                (BinaryOp::Div, Some((a, b))) => {
                    (need(na, || g.div(b))?, need(nb, || g.mul(a)?.div(&b.sqr()?)?.neg())?)
                }
                (BinaryOp::Max | BinaryOp::Min, Some((a, b))) => {
                    // The gradient goes to the operand that was selected (the left on ties).
                    let cmp = if op == BinaryOp::Max { CmpOp::Ge } else { CmpOp::Le };
                    let left = a.cmp(b, cmp)?;
                    let zero = Tensor::zeros_on((), g.dtype(), g.device())?;
                    (need(na, || left.where_cond(g, &zero))?, need(nb, || left.where_cond(&zero, g))?)
                }
                _ => unreachable!("operands saved for every op but add and sub"),
            };
            Ok([ga.map(|t| t.sum_to(&sa)).transpose()?, gb.map(|t| t.sum_to(&sb)).transpose()?])
        })
    }

    /// `self + rhs`, broadcasting.
    pub fn add(&self, rhs: &Var) -> Result<Var> {
        self.binary(rhs, BinaryOp::Add)
    }
    /// `self - rhs`, broadcasting.
    pub fn sub(&self, rhs: &Var) -> Result<Var> {
        self.binary(rhs, BinaryOp::Sub)
    }
    /// `self · rhs`, broadcasting.
    pub fn mul(&self, rhs: &Var) -> Result<Var> {
        self.binary(rhs, BinaryOp::Mul)
    }
    /// `self / rhs`, broadcasting.
    pub fn div(&self, rhs: &Var) -> Result<Var> {
        self.binary(rhs, BinaryOp::Div)
    }
    /// Elementwise maximum, broadcasting.
    pub fn maximum(&self, rhs: &Var) -> Result<Var> {
        self.binary(rhs, BinaryOp::Max)
    }
    /// Elementwise minimum, broadcasting.
    pub fn minimum(&self, rhs: &Var) -> Result<Var> {
        self.binary(rhs, BinaryOp::Min)
    }

    /// `on_true` where `mask` (a constant, nonzero = true) holds, else `on_false`; all
    /// three broadcast together.
    pub fn where_cond(mask: &Tensor, on_true: &Var, on_false: &Var) -> Result<Var> {
        let y = mask.where_cond(on_true.value(), on_false.value())?;
        let (st, sf) = (on_true.shape().clone(), on_false.shape().clone());
        let mask = mask.clone();
        Var::record("where_cond", y, [on_true, on_false], move |g, [nt, nf]| {
            let zero = Tensor::zeros_on((), g.dtype(), g.device())?;
            Ok([
                need(nt, || mask.where_cond(g, &zero)?.sum_to(&st))?,
                need(nf, || mask.where_cond(&zero, g)?.sum_to(&sf))?,
            ])
        })
    }

    /// `value` where `mask` (broadcast to this shape) is nonzero, else `self`.
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Var> {
        let y = self.value().masked_fill(mask, value)?;
        let mask = mask.clone();
        Var::record("masked_fill", y, [self], move |g, [n]| Ok([need(n, || g.masked_fill(&mask, 0.0))?]))
    }
}
