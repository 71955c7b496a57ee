//! `kernels/binary.cu`: broadcasting arithmetic, comparisons and `where`.

use super::{MAX_DIMS, cfg_1d, copy::extent};
use crate::buffer::Check;
use crate::device::Arg;
use crate::{CudaError, DType, Result, View, ViewMut, kernels};

/// An elementwise arithmetic function of two operands (the CPU's `BinaryOp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`
    Add = 0,
    /// `a - b`
    Sub = 1,
    /// `a · b`
    Mul = 2,
    /// `a / b`
    Div = 3,
    /// `max(a, b)` (`a` unless `b > a`)
    Max = 4,
    /// `min(a, b)` (`a` unless `b < a`)
    Min = 5,
}

/// An elementwise comparison writing 0/1 bytes (the CPU's `CmpOp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `a == b`
    Eq = 0,
    /// `a != b`
    Ne = 1,
    /// `a < b`
    Lt = 2,
    /// `a <= b`
    Le = 3,
    /// `a > b`
    Gt = 4,
    /// `a >= b`
    Ge = 5,
}

/// One operand of a broadcasting op: a view read through element `strides` over the
/// output shape (0 on broadcast dimensions).
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    /// The data, from its first element.
    pub view: View<'a>,
    /// Element strides, one per output dimension.
    pub strides: &'a [usize],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Broadcast6 {
    shape: [i64; MAX_DIMS],
    stride: [[i64; MAX_DIMS]; 3],
    ndim: i32,
    /// Explicit, zeroed: the struct is copied into kernel arguments as whole words.
    pad: i32,
}

/// The geometry of an op over `shape` and whether every operand is dense row-major.
fn geometry(op: &'static str, shape: &[usize], ins: &[&Operand<'_>]) -> Result<(Broadcast6, usize, bool)> {
    let mut g = Broadcast6 { shape: [1; MAX_DIMS], stride: [[0; MAX_DIMS]; 3], ndim: shape.len() as i32, pad: 0 };
    let mut row_major = vec![0usize; shape.len()];
    let mut acc = 1;
    for d in (0..shape.len()).rev() {
        row_major[d] = acc;
        acc *= shape[d];
    }
    let mut n = 0;
    let mut dense = true;
    for (k, o) in ins.iter().enumerate() {
        let (count, span) = extent(op, shape, o.strides)?;
        Check { op }.input("operand", &o.view, o.view.dtype(), span)?;
        n = count;
        dense &= shape.iter().zip(o.strides.iter().zip(&row_major)).all(|(&s, (a, b))| s == 1 || a == b);
        for (d, &s) in o.strides.iter().enumerate() {
            g.stride[k][d] = s as i64;
        }
    }
    for (d, &s) in shape.iter().enumerate() {
        g.shape[d] = s as i64;
    }
    Ok((g, n, dense))
}

/// `out[i] = op(a[·], b[·])` over `shape` (≤ 6 dims), out contiguous, f32 or bf16.
/// Kernel `binary_{f32,bf16}(a, b, out, Broadcast6, n, op, dense)`, 256 threads, grid-stride.
pub fn binary(op: BinaryOp, a: Operand<'_>, b: Operand<'_>, shape: &[usize], out: ViewMut<'_>) -> Result<()> {
    let c = Check { op: "binary" };
    let (g, n, dense) = geometry("binary", shape, &[&a, &b])?;
    let dt = a.view.dtype();
    c.input("b", &b.view, dt, 0)?;
    c.output("out", &out, dt, n)?;
    let dev = a.view.device().clone();
    c.same_device(&dev, [b.view.device(), out.device()])?;
    if n == 0 {
        return Ok(());
    }
    let f = dev.function(kernels::BINARY, &format!("binary_{}", dt.kernel_suffix("binary")?))?;
    let args = [
        Arg::U64(a.view.ptr()),
        Arg::U64(b.view.ptr()),
        Arg::U64(out.ptr()),
        Arg::of(&g),
        Arg::len(n),
        Arg::I32(op as i32),
        Arg::I32(dense as i32),
    ];
    dev.launch(&f, cfg_1d(dev.grid_for(n, 256), 256), &args)
}

/// `out[i] = op(a[·], b[·]) as u8` over `shape`; f32, bf16 or i64 operands, u8 output.
/// Kernel `cmp_{f32,bf16,i64}(a, b, out, Broadcast6, n, op, dense)`.
pub fn cmp(op: CmpOp, a: Operand<'_>, b: Operand<'_>, shape: &[usize], out: ViewMut<'_>) -> Result<()> {
    let c = Check { op: "cmp" };
    let (g, n, dense) = geometry("cmp", shape, &[&a, &b])?;
    let dt = a.view.dtype();
    c.input("b", &b.view, dt, 0)?;
    c.output("out", &out, DType::U8, n)?;
    let dev = a.view.device().clone();
    c.same_device(&dev, [b.view.device(), out.device()])?;
    let suffix = match dt {
        DType::I64 => "i64",
        _ => dt.kernel_suffix("cmp")?,
    };
    if n == 0 {
        return Ok(());
    }
    let f = dev.function(kernels::BINARY, &format!("cmp_{suffix}"))?;
    let args = [
        Arg::U64(a.view.ptr()),
        Arg::U64(b.view.ptr()),
        Arg::U64(out.ptr()),
        Arg::of(&g),
        Arg::len(n),
        Arg::I32(op as i32),
        Arg::I32(dense as i32),
    ];
    dev.launch(&f, cfg_1d(dev.grid_for(n, 256), 256), &args)
}

/// `out[i] = cond[·] != 0 ? a[·] : b[·]` over `shape`; `cond` u8, `a`, `b`, `out` f32, bf16,
/// i64 or u8. Kernel `where_{f32,bf16,i64,u8}(cond, a, b, out, Broadcast6, n, dense)`.
pub fn where_cond(cond: Operand<'_>, a: Operand<'_>, b: Operand<'_>, shape: &[usize], out: ViewMut<'_>) -> Result<()> {
    let c = Check { op: "where" };
    if cond.view.dtype() != DType::U8 {
        return Err(CudaError::DType { op: "where", expected: DType::U8, got: cond.view.dtype() });
    }
    let (g, n, dense) = geometry("where", shape, &[&cond, &a, &b])?;
    let dt = a.view.dtype();
    c.input("b", &b.view, dt, 0)?;
    c.output("out", &out, dt, n)?;
    let dev = a.view.device().clone();
    c.same_device(&dev, [cond.view.device(), b.view.device(), out.device()])?;
    if n == 0 {
        return Ok(());
    }
    let suffix = match dt {
        DType::I64 => "i64",
        DType::U8 => "u8",
        _ => dt.kernel_suffix("where")?,
    };
    let f = dev.function(kernels::BINARY, &format!("where_{suffix}"))?;
    let args = [
        Arg::U64(cond.view.ptr()),
        Arg::U64(a.view.ptr()),
        Arg::U64(b.view.ptr()),
        Arg::U64(out.ptr()),
        Arg::of(&g),
        Arg::len(n),
        Arg::I32(dense as i32),
    ];
    dev.launch(&f, cfg_1d(dev.grid_for(n, 256), 256), &args)
}
