//! Elementwise binary arithmetic, comparisons and selection, with NumPy broadcasting.

use super::{float_map2, same_dtype};
use crate::cpu::map::{map2, map3};
use crate::{CpuStorage, DType, Error, Float, Layout, Result, Shape, Tensor, with_cpu_pair};

/// An elementwise arithmetic function of two tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a · b`
    Mul,
    /// `a / b`
    Div,
    /// `max(a, b)`
    Max,
    /// `min(a, b)`
    Min,
}

impl BinaryOp {
    /// The op's name in errors and on the tape.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Max => "maximum",
            BinaryOp::Min => "minimum",
        }
    }

    #[inline(always)]
    fn f<T: Float>(self, a: T, b: T) -> T {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Max => {
                if b > a {
                    b
                } else {
                    a
                }
            }
            BinaryOp::Min => {
                if b < a {
                    b
                } else {
                    a
                }
            }
        }
    }
}

/// An elementwise comparison; the result is a `U8` tensor of 0 and 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `a == b`
    Eq,
    /// `a != b`
    Ne,
    /// `a < b`
    Lt,
    /// `a <= b`
    Le,
    /// `a > b`
    Gt,
    /// `a >= b`
    Ge,
}

impl CmpOp {
    #[inline(always)]
    fn f<T: PartialOrd>(self, a: T, b: T) -> u8 {
        (match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        }) as u8
    }
}

impl Tensor {
    /// The common broadcast shape of `self` and `rhs` and both layouts viewed at it.
    pub fn broadcast_layouts(&self, rhs: &Tensor, op: &'static str) -> Result<(Shape, Layout, Layout)> {
        let shape = self.shape().broadcast_with(rhs.shape(), op)?;
        Ok((shape.clone(), self.layout().broadcast_as(&shape)?, rhs.layout().broadcast_as(&shape)?))
    }

    /// Views the tensor at a larger shape by repeating size-1 and missing leading
    /// dimensions (stride 0, no copy).
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        Ok(self.with_layout(self.layout().broadcast_as(&shape.into())?))
    }

    /// Elementwise `op(self, rhs)` with broadcasting (float dtypes).
    pub fn binary(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        let (shape, la, lb) = self.broadcast_layouts(rhs, op.name())?;
        if self.device() != crate::Device::Cpu || rhs.device() != crate::Device::Cpu {
            return self.cuda_binary(rhs, op, &shape, &la, &lb);
        }
        let (a, b) = (self.with_layout(la), rhs.with_layout(lb));
        Ok(float_map2!(&a, &b, op.name(), shape, |va, la, vb, lb| map2(va, la, vb, lb, |x, y| op.f(x, y))))
    }

    /// `self + rhs`, broadcasting.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Add)
    }
    /// `self - rhs`, broadcasting.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Sub)
    }
    /// `self · rhs`, broadcasting.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Mul)
    }
    /// `self / rhs`, broadcasting.
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Div)
    }
    /// Elementwise maximum, broadcasting.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Max)
    }
    /// Elementwise minimum, broadcasting.
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Min)
    }

    /// Elementwise comparison with broadcasting, any dtype; 1 where it holds, else 0 (`U8`).
    pub fn cmp(&self, rhs: &Tensor, op: CmpOp) -> Result<Tensor> {
        same_dtype(self, rhs, "cmp")?;
        let (shape, la, lb) = self.broadcast_layouts(rhs, "cmp")?;
        if self.device() != crate::Device::Cpu || rhs.device() != crate::Device::Cpu {
            return self.cuda_cmp(rhs, op, &shape, &la, &lb);
        }
        let out = with_cpu_pair!(self.cpu("cmp")?, rhs.cpu("cmp")?,
            (a, b) => map2(a, &la, b, &lb, |x, y| op.f(x, y)),
            unreachable!("dtypes checked above"));
        Ok(Tensor::from_cpu(CpuStorage::U8(out), shape))
    }
    /// `self == rhs` as 0/1.
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Eq)
    }
    /// `self != rhs` as 0/1.
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Ne)
    }
    /// `self < rhs` as 0/1.
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Lt)
    }
    /// `self <= rhs` as 0/1.
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Le)
    }
    /// `self > rhs` as 0/1.
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Gt)
    }
    /// `self >= rhs` as 0/1.
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Ge)
    }

    /// Compares with a scalar (converted to this dtype).
    pub fn cmp_scalar(&self, v: f64, op: CmpOp) -> Result<Tensor> {
        self.cmp(&self.scalar_beside(v, self.dtype())?, op)
    }

    /// A 0-dimensional `dtype` tensor holding `v` on this tensor's device.
    pub(crate) fn scalar_beside(&self, v: f64, dtype: DType) -> Result<Tensor> {
        Tensor::full_on(v, (), dtype, self.device())
    }

    /// `self` (any dtype, nonzero meaning true) selects `on_true` or `on_false`
    /// elementwise; all three broadcast together.
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        same_dtype(on_true, on_false, "where_cond")?;
        let mask = if self.dtype() == DType::U8 { self.clone() } else { self.cmp_scalar(0.0, CmpOp::Ne)? };
        let shape = mask.shape().broadcast_with(on_true.shape(), "where_cond")?;
        let shape = shape.broadcast_with(on_false.shape(), "where_cond")?;
        let lm = mask.layout().broadcast_as(&shape)?;
        let (lt, lf) = (on_true.layout().broadcast_as(&shape)?, on_false.layout().broadcast_as(&shape)?);
        if [&mask, on_true, on_false].iter().any(|t| t.device() != crate::Device::Cpu) {
            return mask.cuda_where(on_true, on_false, &shape, [&lm, &lt, &lf]);
        }
        let m = mask.cpu_slice::<u8>("where_cond")?;
        let out = with_cpu_pair!(on_true.cpu("where_cond")?, on_false.cpu("where_cond")?,
            (t, f) => CpuStorage::from(map3((m, &lm), (t, &lt), (f, &lf), |c, x, y| if c != 0 { x } else { y })),
            unreachable!("dtypes checked above"));
        Ok(Tensor::from_cpu(out, shape))
    }

    /// `value` where `mask` (broadcast to this shape) is nonzero, else `self`.
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        let shape = self.shape().broadcast_with(mask.shape(), "masked_fill")?;
        if &shape != self.shape() {
            return Err(Error::Broadcast { op: "masked_fill", lhs: self.shape().clone(), rhs: mask.shape().clone() });
        }
        mask.where_cond(&self.scalar_beside(value, self.dtype())?, self)
    }
}

/// Reads element `i` of a contiguous one-element-per-value CPU slice as f64 (test helper).
#[cfg(test)]
pub(crate) fn approx_eq<T: crate::WithDType>(a: &[T], b: &[f64], tol: f64) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x.as_f64() - y).abs() <= tol * (1.0 + y.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_arithmetic_and_views() {
        let a = Tensor::from_vec((0..6).map(|x| x as f32).collect(), [2, 3]).unwrap();
        let row = Tensor::from_vec(vec![10f32, 20., 30.], 3).unwrap();
        let col = Tensor::from_vec(vec![1f32, 2.], [2, 1]).unwrap();
        assert_eq!(a.add(&row).unwrap().to_vec::<f32>().unwrap(), vec![10., 21., 32., 13., 24., 35.]);
        assert_eq!(a.mul(&col).unwrap().to_vec::<f32>().unwrap(), vec![0., 1., 2., 6., 8., 10.]);
        // A transposed (non-contiguous) operand.
        let at = a.t().unwrap();
        let s = at.sub(&col.t().unwrap()).unwrap();
        assert_eq!(s.dims(), &[3, 2]);
        assert_eq!(s.to_vec::<f32>().unwrap(), vec![-1., 1., 0., 2., 1., 3.]);
        let err = a.add(&col.t().unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "add: shapes [2, 3] and [1, 2] cannot be broadcast together");
    }

    #[test]
    fn comparisons_where_and_masked_fill() {
        let a = Tensor::from_vec(vec![1i64, 5, 3], 3).unwrap();
        let b = Tensor::from_vec(vec![2i64, 5, 1], 3).unwrap();
        assert_eq!(a.lt(&b).unwrap().to_vec::<u8>().unwrap(), vec![1, 0, 0]);
        assert_eq!(a.ge(&b).unwrap().to_vec::<u8>().unwrap(), vec![0, 1, 1]);
        let x = Tensor::from_vec(vec![1f32, -2., 3.], 3).unwrap();
        let y = Tensor::zeros(3, DType::F32);
        let m = x.gt(&y).unwrap();
        assert_eq!(m.where_cond(&x, &y).unwrap().to_vec::<f32>().unwrap(), vec![1., 0., 3.]);
        assert_eq!(x.masked_fill(&m, -9.0).unwrap().to_vec::<f32>().unwrap(), vec![-9., -2., -9.]);
        assert!(matches!(a.lt(&x), Err(Error::DTypeMismatch { .. })));
    }

    #[test]
    fn large_strided_inputs_use_the_parallel_path() {
        let n = 300;
        let v: Vec<f64> = (0..n * n).map(|i| i as f64).collect();
        let a = Tensor::from_vec(v.clone(), [n, n]).unwrap();
        let got = a.t().unwrap().add(&a).unwrap().to_vec::<f64>().unwrap();
        let want: Vec<f64> = (0..n * n).map(|i| v[(i % n) * n + i / n] + v[i]).collect();
        assert!(approx_eq(&got, &want, 0.0));
    }
}
