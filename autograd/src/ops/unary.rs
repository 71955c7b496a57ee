//! Elementwise functions of one var.

use super::need;
use crate::Var;
use monarch_tensor::{Result, Tensor, UnaryOp};

impl Var {
    /// Applies an elementwise function; backward uses the fused derivative kernel and
    /// saves only the input or only the output, whichever the derivative needs.
    pub fn unary(&self, op: UnaryOp) -> Result<Var> {
        let y = self.value().unary(op)?;
        let saved = if op.grad_is_constant() {
            None
        } else if op.grad_from_output() {
            Some(y.clone())
        } else {
            Some(self.value().clone())
        };
        Var::record(op.name(), y, [self], move |g, [n]| {
            Ok([need(n, || match &saved {
                Some(s) => Tensor::unary_backward(op, s, g),
                None => g.mul_scalar(op.df(0.0f64)),
            })?])
        })
    }

    /// `-x`
    pub fn neg(&self) -> Result<Var> {
        self.unary(UnaryOp::Neg)
    }
    /// `e^x`
    pub fn exp(&self) -> Result<Var> {
        self.unary(UnaryOp::Exp)
    }
    /// natural logarithm
    pub fn log(&self) -> Result<Var> {
        self.unary(UnaryOp::Log)
    }
    /// square root
    pub fn sqrt(&self) -> Result<Var> {
        self.unary(UnaryOp::Sqrt)
    }
    /// `1/√x`
    pub fn rsqrt(&self) -> Result<Var> {
        self.unary(UnaryOp::Rsqrt)
    }
    /// hyperbolic tangent
    pub fn tanh(&self) -> Result<Var> {
        self.unary(UnaryOp::Tanh)
    }
    /// logistic sigmoid
    pub fn sigmoid(&self) -> Result<Var> {
        self.unary(UnaryOp::Sigmoid)
    }
    /// `max(x, 0)`
    pub fn relu(&self) -> Result<Var> {
        self.unary(UnaryOp::Relu)
    }
    /// GELU, tanh approximation
    pub fn gelu_tanh(&self) -> Result<Var> {
        self.unary(UnaryOp::GeluTanh)
    }
    /// GELU, exact erf form
    pub fn gelu_erf(&self) -> Result<Var> {
        self.unary(UnaryOp::GeluErf)
    }
    /// `x·σ(x)`
    pub fn silu(&self) -> Result<Var> {
        self.unary(UnaryOp::Silu)
    }
    /// `|x|`
    pub fn abs(&self) -> Result<Var> {
        self.unary(UnaryOp::Abs)
    }
    /// `x²`
    pub fn sqr(&self) -> Result<Var> {
        self.unary(UnaryOp::Sqr)
    }
    /// `1/x`
    pub fn recip(&self) -> Result<Var> {
        self.unary(UnaryOp::Recip)
    }
    /// `x^e`
    pub fn powf(&self, e: f64) -> Result<Var> {
        self.unary(UnaryOp::Powf(e))
    }
    /// `x·mul + add`
    pub fn affine(&self, mul: f64, add: f64) -> Result<Var> {
        self.unary(UnaryOp::Affine { mul, add })
    }
    /// `x + v`
    pub fn add_scalar(&self, v: f64) -> Result<Var> {
        self.affine(1.0, v)
    }
    /// `x·v`
    pub fn mul_scalar(&self, v: f64) -> Result<Var> {
        self.affine(v, 0.0)
    }
    /// `x` clamped to `[min, max]`
    pub fn clamp(&self, min: f64, max: f64) -> Result<Var> {
        self.unary(UnaryOp::Clamp { min, max })
    }
}
