//! `kernels/softmax.cu`: softmax and log-softmax over the last dimension.

use super::cfg_rows;
use crate::buffer::Check;
use crate::device::Arg;
use crate::{Result, View, ViewMut, kernels};

/// `y = softmax(x)` (or `log_softmax` with `log`) over each row of contiguous `x`
/// (`rows` x `cols`, f32 or bf16). Kernel `softmax_fwd_{f32,bf16}(x, y, rows, cols, log)`,
/// block (X, Y) of `cfg_rows`.
pub fn softmax(x: View<'_>, rows: usize, cols: usize, log: bool, y: ViewMut<'_>) -> Result<()> {
    let c = Check { op: "softmax" };
    let dt = x.dtype();
    c.input("x", &x, dt, rows * cols)?;
    c.output("y", &y, dt, rows * cols)?;
    let dev = x.device().clone();
    c.same_device(&dev, [y.device()])?;
    if rows * cols == 0 {
        return Ok(());
    }
    let f = dev.function(kernels::SOFTMAX, &format!("softmax_fwd_{}", dt.kernel_suffix("softmax")?))?;
    let args = [Arg::U64(x.ptr()), Arg::U64(y.ptr()), Arg::len(rows), Arg::len(cols), Arg::I32(log as i32)];
    dev.launch(&f, cfg_rows(rows, cols), &args)
}

/// The input gradient from the saved output `y` and `dy`: `y·(dy - Σ dy·y)`, or
/// `dy - exp(y)·Σ dy` for log-softmax. Kernel `softmax_bwd_{f32,bf16}(y, dy, dx, rows,
/// cols, log)`, launched like [`softmax`].
pub fn softmax_backward(y: View<'_>, dy: View<'_>, rows: usize, cols: usize, log: bool, dx: ViewMut<'_>) -> Result<()> {
    let c = Check { op: "softmax_backward" };
    let dt = y.dtype();
    c.input("y", &y, dt, rows * cols)?;
    c.input("dy", &dy, dt, rows * cols)?;
    c.output("dx", &dx, dt, rows * cols)?;
    let dev = y.device().clone();
    c.same_device(&dev, [dy.device(), dx.device()])?;
    if rows * cols == 0 {
        return Ok(());
    }
    let f = dev.function(kernels::SOFTMAX, &format!("softmax_bwd_{}", dt.kernel_suffix("softmax_backward")?))?;
    let args = [
        Arg::U64(y.ptr()),
        Arg::U64(dy.ptr()),
        Arg::U64(dx.ptr()),
        Arg::len(rows),
        Arg::len(cols),
        Arg::I32(log as i32),
    ];
    dev.launch(&f, cfg_rows(rows, cols), &args)
}
