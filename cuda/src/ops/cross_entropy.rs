//! `kernels/cross_entropy.cu`: fused cross-entropy with ignored targets and label smoothing.

use super::{cfg_1d, cfg_rows};
use crate::buffer::Check;
use crate::device::Arg;
use crate::{DType, Result, View, ViewMut, kernels};

/// Options (the CPU's `CrossEntropy`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CrossEntropy {
    /// Rows whose target equals this add nothing and are not counted.
    pub ignore_index: Option<i64>,
    /// ε in `(1-ε)·onehot + ε/C`, in [0, 1].
    pub label_smoothing: f32,
}

impl CrossEntropy {
    fn check(&self, op: &'static str) -> Result<()> {
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            crate::error::bail!(op, "label_smoothing must lie in [0, 1], got {}", self.label_smoothing);
        }
        Ok(())
    }
}

/// Forward over (N, C) logits (f32 or bf16) and i64 targets (N). Writes `lse` (N, f32,
/// saved for the backward) and `out` (2 f32: the mean loss over counted rows and the
/// count, which the backward reads on the device). Kernels:
/// `cross_entropy_rows_{f32,bf16}(x, t, loss, lse, N, C, ignore_index, has_ignore, eps)`
/// with block (X, Y) of `cfg_rows` into an internal per-row loss, then
/// `cross_entropy_mean(loss, t, out, N, ignore_index, has_ignore)` with one block of 1024.
pub fn cross_entropy(
    logits: View<'_>,
    targets: View<'_>,
    n: usize,
    classes: usize,
    o: CrossEntropy,
    lse: ViewMut<'_>,
    out: ViewMut<'_>,
) -> Result<()> {
    let c = Check { op: "cross_entropy" };
    o.check(c.op)?;
    let dt = logits.dtype();
    c.input("logits", &logits, dt, n * classes)?;
    c.input("targets", &targets, DType::I64, n)?;
    c.output("lse", &lse, DType::F32, n)?;
    c.output("out", &out, DType::F32, 2)?;
    let dev = logits.device().clone();
    c.same_device(&dev, [targets.device(), lse.device(), out.device()])?;
    let loss = dev.alloc(DType::F32, n.max(1))?;
    let (ignore, has) = (o.ignore_index.unwrap_or(0), o.ignore_index.is_some() as i32);
    if n > 0 {
        let f = dev.function(kernels::CROSS_ENTROPY, &format!("cross_entropy_rows_{}", dt.kernel_suffix(c.op)?))?;
        let args = [
            Arg::U64(logits.ptr()),
            Arg::U64(targets.ptr()),
            Arg::U64(loss.device_ptr()),
            Arg::U64(lse.ptr()),
            Arg::len(n),
            Arg::len(classes),
            Arg::I64(ignore),
            Arg::I32(has),
            Arg::F32(o.label_smoothing),
        ];
        dev.launch(&f, cfg_rows(n, classes), &args)?;
    }
    let f = dev.function(kernels::CROSS_ENTROPY, "cross_entropy_mean")?;
    let args = [
        Arg::U64(loss.device_ptr()),
        Arg::U64(targets.ptr()),
        Arg::U64(out.ptr()),
        Arg::len(n),
        Arg::I64(ignore),
        Arg::I32(has),
    ];
    dev.launch(&f, cfg_1d(1, 1024), &args)
}

/// The logits' gradient `(softmax - target) · dloss / count` (0 on ignored rows), from
/// the forward's `lse`, with the loss gradient `dloss` and the count of rows not ignored
/// `count` (each 1 f32) read on the device.
/// Kernel `cross_entropy_bwd_{f32,bf16}(x, t, lse, count, dloss, dx, N, C, ignore_index,
/// has_ignore, eps)`, 256 threads, one block per row (grid-stride).
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward(
    logits: View<'_>,
    targets: View<'_>,
    lse: View<'_>,
    count: View<'_>,
    dloss: View<'_>,
    n: usize,
    classes: usize,
    o: CrossEntropy,
    dx: ViewMut<'_>,
) -> Result<()> {
    let c = Check { op: "cross_entropy_backward" };
    o.check(c.op)?;
    let dt = logits.dtype();
    c.input("logits", &logits, dt, n * classes)?;
    c.input("targets", &targets, DType::I64, n)?;
    c.input("lse", &lse, DType::F32, n)?;
    c.input("count", &count, DType::F32, 1)?;
    c.input("dloss", &dloss, DType::F32, 1)?;
    c.output("dx", &dx, dt, n * classes)?;
    let dev = logits.device().clone();
    c.same_device(&dev, [targets.device(), lse.device(), count.device(), dloss.device(), dx.device()])?;
    if n * classes == 0 {
        return Ok(());
    }
    let f = dev.function(kernels::CROSS_ENTROPY, &format!("cross_entropy_bwd_{}", dt.kernel_suffix(c.op)?))?;
    let args = [
        Arg::U64(logits.ptr()),
        Arg::U64(targets.ptr()),
        Arg::U64(lse.ptr()),
        Arg::U64(count.ptr()),
        Arg::U64(dloss.ptr()),
        Arg::U64(dx.ptr()),
        Arg::len(n),
        Arg::len(classes),
        Arg::I64(o.ignore_index.unwrap_or(0)),
        Arg::I32(o.ignore_index.is_some() as i32),
        Arg::F32(o.label_smoothing),
    ];
    dev.launch(&f, cfg_1d(dev.grid_for(n * 256, 256), 256), &args)
}
