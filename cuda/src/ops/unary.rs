//! `kernels/unary.cu`: elementwise functions and their fused derivatives.

use super::cfg_1d;
use crate::buffer::Check;
use crate::device::Arg;
use crate::{Result, View, ViewMut, kernels};

/// An elementwise function; the same set and formulas as the CPU's `UnaryOp`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `e^x`
    Exp,
    /// natural logarithm
    Log,
    /// square root
    Sqrt,
    /// `1/√x`
    Rsqrt,
    /// hyperbolic tangent
    Tanh,
    /// logistic sigmoid
    Sigmoid,
    /// `max(x, 0)`
    Relu,
    /// GELU, tanh approximation
    GeluTanh,
    /// GELU, exact erf form
    GeluErf,
    /// `x·σ(x)`
    Silu,
    /// `|x|`
    Abs,
    /// `x²`
    Sqr,
    /// `1/x`
    Recip,
    /// `x^e`
    Powf(f32),
    /// `x·mul + add`
    Affine {
        /// Multiplier.
        mul: f32,
        /// Addend.
        add: f32,
    },
    /// `x` clamped to `[min, max]`
    Clamp {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
}

impl UnaryOp {
    /// The kernel's op code and parameters.
    fn code(self) -> (i32, f32, f32) {
        match self {
            UnaryOp::Neg => (0, 0.0, 0.0),
            UnaryOp::Exp => (1, 0.0, 0.0),
            UnaryOp::Log => (2, 0.0, 0.0),
            UnaryOp::Sqrt => (3, 0.0, 0.0),
            UnaryOp::Rsqrt => (4, 0.0, 0.0),
            UnaryOp::Tanh => (5, 0.0, 0.0),
            UnaryOp::Sigmoid => (6, 0.0, 0.0),
            UnaryOp::Relu => (7, 0.0, 0.0),
            UnaryOp::GeluTanh => (8, 0.0, 0.0),
            UnaryOp::GeluErf => (9, 0.0, 0.0),
            UnaryOp::Silu => (10, 0.0, 0.0),
            UnaryOp::Abs => (11, 0.0, 0.0),
            UnaryOp::Sqr => (12, 0.0, 0.0),
            UnaryOp::Recip => (13, 0.0, 0.0),
            UnaryOp::Powf(e) => (14, e, 0.0),
            UnaryOp::Affine { mul, add } => (15, mul, add),
            UnaryOp::Clamp { min, max } => (16, min, max),
        }
    }

    /// Whether the backward takes the output `y` as its saved value (else the input `x`).
    pub fn grad_from_output(self) -> bool {
        matches!(
            self,
            UnaryOp::Exp
                | UnaryOp::Sqrt
                | UnaryOp::Rsqrt
                | UnaryOp::Tanh
                | UnaryOp::Sigmoid
                | UnaryOp::Relu
                | UnaryOp::Recip
        )
    }
}

/// `y[i] = f(x[i])` over `x.len()` contiguous elements (f32 or bf16; `y` the same dtype,
/// at least as long). Kernel `unary_fwd_{f32,bf16}(x, y, n, op, p0, p1)`, 256 threads,
/// grid-stride, 16-byte accesses when both addresses are 16-byte aligned.
pub fn unary(op: UnaryOp, x: View<'_>, y: ViewMut<'_>) -> Result<()> {
    let c = Check { op: "unary" };
    let n = x.len();
    c.output("y", &y, x.dtype(), n)?;
    let dev = x.device().clone();
    c.same_device(&dev, [y.device()])?;
    let name = format!("unary_fwd_{}", x.dtype().kernel_suffix("unary")?);
    let f = dev.function(kernels::UNARY, &name)?;
    let (code, p0, p1) = op.code();
    let args = [Arg::U64(x.ptr()), Arg::U64(y.ptr()), Arg::len(n), Arg::I32(code), Arg::F32(p0), Arg::F32(p1)];
    dev.launch(&f, cfg_1d(dev.grid_for(n / 4 + 1, 256), 256), &args)
}

/// `dx[i] = dy[i] · f'(saved[i])`, `saved` being the output or the input as
/// [`UnaryOp::grad_from_output`] says. Kernel `unary_bwd_{f32,bf16}(saved, dy, dx, n, op,
/// p0, p1)`, launched like [`unary`].
pub fn unary_backward(op: UnaryOp, saved: View<'_>, dy: View<'_>, dx: ViewMut<'_>) -> Result<()> {
    let c = Check { op: "unary_backward" };
    let n = dy.len();
    c.input("saved", &saved, dy.dtype(), n)?;
    c.output("dx", &dx, dy.dtype(), n)?;
    let dev = dy.device().clone();
    c.same_device(&dev, [saved.device(), dx.device()])?;
    let name = format!("unary_bwd_{}", dy.dtype().kernel_suffix("unary_backward")?);
    let f = dev.function(kernels::UNARY, &name)?;
    let (code, p0, p1) = op.code();
    let args = [
        Arg::U64(saved.ptr()),
        Arg::U64(dy.ptr()),
        Arg::U64(dx.ptr()),
        Arg::len(n),
        Arg::I32(code),
        Arg::F32(p0),
        Arg::F32(p1),
    ];
    dev.launch(&f, cfg_1d(dev.grid_for(n / 4 + 1, 256), 256), &args)
}
