//! Elementwise unary functions and their fused derivatives.

use super::{float_map, float_map2, same_shape};
use crate::cpu::PAR_MIN;
use crate::cpu::map::{map1, map2};
use crate::layout::Layout;
use crate::{Float, Result, Tensor, simd_dispatch};
use rayon::prelude::*;

/// An elementwise function of one tensor.
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
    /// logistic sigmoid `1/(1+e^-x)`
    Sigmoid,
    /// `max(x, 0)`
    Relu,
    /// GELU, tanh approximation (GPT-2's)
    GeluTanh,
    /// GELU, exact form `x·Φ(x)` with the error function
    GeluErf,
    /// SiLU / swish `x·σ(x)`
    Silu,
    /// `|x|`
    Abs,
    /// `x²`
    Sqr,
    /// `1/x`
    Recip,
    /// `x^e`
    Powf(f64),
    /// `x·mul + add`
    Affine {
        /// Multiplier.
        mul: f64,
        /// Addend.
        add: f64,
    },
    /// `x` clamped to `[min, max]`
    Clamp {
        /// Lower bound.
        min: f64,
        /// Upper bound.
        max: f64,
    },
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;

impl UnaryOp {
    /// The op's name in errors and on the tape.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::GeluErf => "gelu_erf",
            UnaryOp::Silu => "silu",
            UnaryOp::Abs => "abs",
            UnaryOp::Sqr => "sqr",
            UnaryOp::Recip => "recip",
            UnaryOp::Powf(_) => "powf",
            UnaryOp::Affine { .. } => "affine",
            UnaryOp::Clamp { .. } => "clamp",
        }
    }

    /// Whether the derivative is computed from the output `y` (true) or the input `x`.
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

    /// Whether the derivative is a constant, so backward needs no saved tensor.
    pub fn grad_is_constant(self) -> bool {
        matches!(self, UnaryOp::Neg | UnaryOp::Affine { .. })
    }

    /// The function at `x`.
    #[inline(always)]
    pub fn f<T: Float>(self, x: T) -> T {
        let c = |v: f64| T::from_f64(v);
        let one = T::one();
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => x.sqrt().recip(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => one / (one + (-x).fast_exp()),
            UnaryOp::Relu => x.max(T::zero()),
            UnaryOp::GeluTanh => c(0.5) * x * (one + (c(SQRT_2_OVER_PI) * (x + c(GELU_C) * x * x * x)).fast_tanh()),
            UnaryOp::GeluErf => c(0.5) * x * (one + (x * c(std::f64::consts::FRAC_1_SQRT_2)).fast_erf()),
            UnaryOp::Silu => x / (one + (-x).fast_exp()),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Sqr => x * x,
            UnaryOp::Recip => x.recip(),
            UnaryOp::Powf(e) => x.powf(c(e)),
            UnaryOp::Affine { mul, add } => x * c(mul) + c(add),
            UnaryOp::Clamp { min, max } => x.max(c(min)).min(c(max)),
        }
    }

    /// The derivative, given the saved value `s`: the output when
    /// [`grad_from_output`](Self::grad_from_output) holds, else the input.
    #[inline(always)]
    pub fn df<T: Float>(self, s: T) -> T {
        let c = |v: f64| T::from_f64(v);
        let (zero, one) = (T::zero(), T::one());
        match self {
            UnaryOp::Neg => -one,
            UnaryOp::Exp => s,
            UnaryOp::Log => s.recip(),
            UnaryOp::Sqrt => c(0.5) / s,
            UnaryOp::Rsqrt => c(-0.5) * s * s * s,
            UnaryOp::Tanh => one - s * s,
            UnaryOp::Sigmoid => s * (one - s),
            UnaryOp::Relu => {
                if s > zero {
                    one
                } else {
                    zero
                }
            }
            UnaryOp::GeluTanh => {
                let x2 = s * s;
                let t = (c(SQRT_2_OVER_PI) * (s + c(GELU_C) * x2 * s)).fast_tanh();
                c(0.5) * (one + t) + c(0.5) * s * (one - t * t) * c(SQRT_2_OVER_PI) * (one + c(3.0 * GELU_C) * x2)
            }
            UnaryOp::GeluErf => {
                let cdf = c(0.5) * (one + (s * c(std::f64::consts::FRAC_1_SQRT_2)).fast_erf());
                let pdf = (c(-0.5) * s * s).fast_exp() * c(0.398_942_280_401_432_7);
                cdf + s * pdf
            }
            UnaryOp::Silu => {
                let sig = one / (one + (-s).fast_exp());
                sig * (one + s * (one - sig))
            }
            UnaryOp::Abs => {
                if s > zero {
                    one
                } else if s < zero {
                    -one
                } else {
                    zero
                }
            }
            UnaryOp::Sqr => c(2.0) * s,
            UnaryOp::Recip => -(s * s),
            UnaryOp::Powf(e) => c(e) * s.powf(c(e - 1.0)),
            UnaryOp::Affine { mul, .. } => c(mul),
            UnaryOp::Clamp { min, max } => {
                if s >= c(min) && s <= c(max) {
                    one
                } else {
                    zero
                }
            }
        }
    }
}

/// `$each!(OP)` with `op` matched to a constant for the hot activations, so that the loop
/// `$each` expands to is compiled once per op and vectorises (a loop over a runtime
/// `op` matches inside every iteration and does not).
macro_rules! with_fixed_op {
    ($op:expr, $each:ident) => {
        match $op {
            UnaryOp::GeluTanh => $each!(UnaryOp::GeluTanh),
            UnaryOp::GeluErf => $each!(UnaryOp::GeluErf),
            UnaryOp::Relu => $each!(UnaryOp::Relu),
            UnaryOp::Silu => $each!(UnaryOp::Silu),
            UnaryOp::Exp => $each!(UnaryOp::Exp),
            UnaryOp::Tanh => $each!(UnaryOp::Tanh),
            UnaryOp::Sigmoid => $each!(UnaryOp::Sigmoid),
            other => $each!(other),
        }
    };
}

simd_dispatch! {
    /// `row[i] = op(row[i])`, compiled for AVX2 / AVX-512 where the CPU has them.
    fn unary_row<T: Float> = unary_row_impl(row: &mut [T], op: UnaryOp)
}

/// The loop for one fixed `op` (the match outside it), so that it vectorises.
#[inline(always)]
fn unary_row_impl<T: Float>(row: &mut [T], op: UnaryOp) {
    macro_rules! each {
        ($op:expr) => {
            row.iter_mut().for_each(|v| *v = $op.f(*v))
        };
    }
    with_fixed_op!(op, each)
}

simd_dispatch! {
    /// `row[i] *= op'(saved[i] + shift[i])` (no shift: 0), vectorised like [`unary_row`].
    fn unary_grad_row<T: Float> = unary_grad_row_impl(row: &mut [T], saved: &[T], shift: Option<&[T]>, op: UnaryOp)
}

#[inline(always)]
fn unary_grad_row_impl<T: Float>(row: &mut [T], saved: &[T], shift: Option<&[T]>, op: UnaryOp) {
    macro_rules! each {
        ($op:expr) => {
            match shift {
                Some(b) => row.iter_mut().zip(saved).zip(b).for_each(|((g, &x), &c)| *g *= $op.df(x + c)),
                None => row.iter_mut().zip(saved).for_each(|(g, &x)| *g *= $op.df(x)),
            }
        };
    }
    with_fixed_op!(op, each)
}

/// `op` over a tensor's data: contiguous data in vectorised chunks (over rayon when
/// large), strided data through `map1`.
fn unary_vec<T: Float>(v: &[T], l: &Layout, op: UnaryOp) -> Vec<T> {
    let Some(r) = l.contiguous_range() else { return map1(v, l, |x| op.f(x)) };
    let mut out = v[r].to_vec();
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(PAR_MIN).for_each(|c| unary_row(c, op));
    } else {
        unary_row(&mut out, op);
    }
    out
}

/// `dy · op'(saved)` over `[saved, dy]`'s data, vectorised like [`unary_vec`].
fn unary_grad_vec<T: Float>([vs, vd]: [&[T]; 2], [ls, ld]: [&Layout; 2], op: UnaryOp) -> Vec<T> {
    let (Some(rs), Some(rd)) = (ls.contiguous_range(), ld.contiguous_range()) else {
        return map2(vs, ls, vd, ld, |s, g| g * op.df(s));
    };
    let (mut out, saved) = (vd[rd].to_vec(), &vs[rs]);
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(PAR_MIN).zip(saved.par_chunks(PAR_MIN)).for_each(|(o, s)| unary_grad_row(o, s, None, op));
    } else {
        unary_grad_row(&mut out, saved, None, op);
    }
    out
}

impl Tensor {
    /// Applies an elementwise function (float dtypes).
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        if self.device() != crate::Device::Cpu {
            return self.cuda_unary(op);
        }
        Ok(float_map!(self, op.name(), self.shape(), |v, l| unary_vec(v, l, op)))
    }

    /// The input gradient `dy · f'(·)` of [`unary`](Self::unary), given the saved value
    /// (output or input, see [`UnaryOp::grad_from_output`]) and the output gradient.
    pub fn unary_backward(op: UnaryOp, saved: &Tensor, dy: &Tensor) -> Result<Tensor> {
        same_shape(saved, dy, op.name())?;
        if dy.device() != crate::Device::Cpu {
            return Tensor::cuda_unary_backward(op, saved, dy);
        }
        Ok(float_map2!(saved, dy, op.name(), dy.shape(), |vs, ls, vd, ld| unary_grad_vec([vs, vd], [ls, ld], op)))
    }

    /// `-x`
    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }
    /// `e^x`
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }
    /// natural logarithm
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }
    /// square root
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }
    /// `1/√x`
    pub fn rsqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Rsqrt)
    }
    /// hyperbolic tangent
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh)
    }
    /// logistic sigmoid
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }
    /// `max(x, 0)`
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }
    /// GELU, tanh approximation
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::GeluTanh)
    }
    /// GELU, exact erf form
    pub fn gelu_erf(&self) -> Result<Tensor> {
        self.unary(UnaryOp::GeluErf)
    }
    /// `x·σ(x)`
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Silu)
    }
    /// `|x|`
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Abs)
    }
    /// `x²`
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqr)
    }
    /// `1/x`
    pub fn recip(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Recip)
    }
    /// `x^e`
    pub fn powf(&self, e: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Powf(e))
    }
    /// `x·mul + add`
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Affine { mul, add })
    }
    /// `x + v`
    pub fn add_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0, v)
    }
    /// `x·v`
    pub fn mul_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(v, 0.0)
    }
    /// `x` clamped to `[min, max]`
    pub fn clamp(&self, min: f64, max: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Clamp { min, max })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPS: [UnaryOp; 17] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::GeluTanh,
        UnaryOp::GeluErf,
        UnaryOp::Silu,
        UnaryOp::Abs,
        UnaryOp::Sqr,
        UnaryOp::Recip,
        UnaryOp::Powf(1.7),
        UnaryOp::Affine { mul: -2.0, add: 0.5 },
        UnaryOp::Clamp { min: 0.4, max: 1.5 },
    ];

    /// The vectorised contiguous path (serial and in parallel chunks) and the strided path
    /// give exactly `f` and `dy · f'` element by element, forward and backward.
    #[test]
    fn every_path_computes_the_definition_elementwise() {
        for n in [1000, 70_001] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 2001) as f32 - 1000.0) / 250.0).collect();
            let g: Vec<f32> = (0..n).map(|i| ((i * 104_729 % 997) as f32 - 498.0) / 300.0).collect();
            let (xt, gt) = (Tensor::from_vec(x.clone(), n).unwrap(), Tensor::from_vec(g.clone(), n).unwrap());
            for op in OPS.into_iter().filter(|op| !matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt)) {
                // Equal, or both NaN (powf of a negative).
                let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x == y || (x.is_nan() && y.is_nan()));
                let want: Vec<f32> = x.iter().map(|&v| op.f(v)).collect();
                assert!(same(&xt.unary(op).unwrap().to_vec_f32().unwrap(), &want), "{op:?} n={n}");
                let dwant: Vec<f32> = x.iter().zip(&g).map(|(&s, &d)| d * op.df(s)).collect();
                let got = Tensor::unary_backward(op, &xt, &gt).unwrap().to_vec_f32().unwrap();
                assert!(same(&got, &dwant), "{op:?}' n={n}");
            }
        }
        // A transposed view takes the strided path.
        let x = Tensor::from_vec((0..12).map(|i| i as f32 / 3.0 - 2.0).collect::<Vec<f32>>(), [3, 4]).unwrap();
        let t = x.t().unwrap();
        let want: Vec<f32> = t.to_vec_f32().unwrap().iter().map(|&v| UnaryOp::GeluTanh.f(v)).collect();
        assert_eq!(t.unary(UnaryOp::GeluTanh).unwrap().to_vec_f32().unwrap(), want);
    }

    #[test]
    fn known_values() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(UnaryOp::GeluErf.f(1.0f64), 0.841_344_746_068_542_9));
        assert!(close(UnaryOp::GeluTanh.f(1.0f64), 0.841_191_990_607_477_2));
        assert!(close(UnaryOp::Silu.f(2.0f64), 2.0 / (1.0 + (-2.0f64).exp())));
        assert!(close(UnaryOp::Sigmoid.f(0.0f64), 0.5));
    }

    #[test]
    fn derivatives_match_central_differences() {
        for op in OPS {
            for &x in &[0.3f64, 0.9, 1.3, 2.1] {
                let h = 1e-6;
                let numeric = (op.f(x + h) - op.f(x - h)) / (2.0 * h);
                let s = if op.grad_from_output() { op.f(x) } else { x };
                let analytic = op.df(s);
                assert!(
                    (numeric - analytic).abs() < 1e-6 * (1.0 + analytic.abs()),
                    "{op:?} at {x}: {numeric} vs {analytic}"
                );
            }
        }
    }

    #[test]
    fn half_precision_is_computed_in_f32_and_rounded_back() {
        let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], 3).unwrap().to_dtype(crate::DType::BF16).unwrap();
        let e = t.exp().unwrap();
        assert_eq!(e.dtype(), crate::DType::BF16);
        let v = e.to_vec_f64().unwrap();
        assert!((v[2] - 3f64.exp()).abs() / 3f64.exp() < 1e-2);
        let i = Tensor::from_vec(vec![1i64, 2], 2).unwrap();
        assert!(matches!(i.exp(), Err(crate::Error::UnsupportedDType { op: "exp", .. })));
    }
}
