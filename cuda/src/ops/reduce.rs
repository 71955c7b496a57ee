//! `kernels/reduce.cu`: sum / max / min / argmax / argmin over rows or leading rows.

use super::{cfg_1d, cfg_rows, column_chunks};
use crate::buffer::Check;
use crate::device::Arg;
use crate::{DType, Result, View, ViewMut, kernels};
use cudarc::driver::LaunchConfig;

/// What a reduction computes (the CPU's `ReduceOp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum.
    Sum = 0,
    /// Largest element.
    Max = 1,
    /// Smallest element.
    Min = 2,
    /// Index of the first largest element (i64 output).
    ArgMax = 3,
    /// Index of the first smallest element (i64 output).
    ArgMin = 4,
}

impl ReduceOp {
    fn out_dtype(self, input: DType) -> DType {
        if matches!(self, ReduceOp::ArgMax | ReduceOp::ArgMin) { DType::I64 } else { input }
    }
}

/// Reduces each row of contiguous `x` (`rows` x `cols`, f32 or bf16) into `out[row]`
/// (the input's dtype, or i64 for arg ops). f32 accumulation.
/// Kernel `reduce_rows_{f32,bf16}(x, out, rows, cols, op)`, block (X, Y) of
/// `cfg_rows`: Y rows of X threads.
pub fn reduce_rows(op: ReduceOp, x: View<'_>, rows: usize, cols: usize, out: ViewMut<'_>) -> Result<()> {
    let c = Check { op: "reduce_rows" };
    let dt = x.dtype();
    c.input("x", &x, dt, rows * cols)?;
    c.output("out", &out, op.out_dtype(dt), rows)?;
    let dev = x.device().clone();
    c.same_device(&dev, [out.device()])?;
    if rows == 0 {
        return Ok(());
    }
    let f = dev.function(kernels::REDUCE, &format!("reduce_rows_{}", dt.kernel_suffix("reduce_rows")?))?;
    let args = [Arg::U64(x.ptr()), Arg::U64(out.ptr()), Arg::len(rows), Arg::len(cols), Arg::I32(op as i32)];
    dev.launch(&f, cfg_rows(rows, cols), &args)
}

/// Reduces the `rows` leading rows of contiguous `x` (`rows` x `cols`) into one row
/// `out[col]` (e.g. a bias gradient). Two kernels: `reduce_cols_partial_{f32,bf16}(x,
/// part, rows, cols, op)` with block (32, 8) and grid (ceil(cols/32), chunks) writes
/// (f32 value, i64 index) partials; `reduce_cols_finish_{f32,bf16}(part, out, chunks,
/// cols, op)` combines the chunks in order (deterministic), 256 threads.
pub fn reduce_cols(op: ReduceOp, x: View<'_>, rows: usize, cols: usize, out: ViewMut<'_>) -> Result<()> {
    let c = Check { op: "reduce_cols" };
    let dt = x.dtype();
    c.input("x", &x, dt, rows * cols)?;
    c.output("out", &out, op.out_dtype(dt), cols)?;
    let dev = x.device().clone();
    c.same_device(&dev, [out.device()])?;
    if cols == 0 {
        return Ok(());
    }
    let suffix = dt.kernel_suffix("reduce_cols")?;
    let chunks = column_chunks(rows, cols, dev.sm_count());
    // (f32 value, i64 index) per partial: 16 bytes.
    let part = dev.alloc(DType::I64, 2 * chunks * cols)?;
    let f1 = dev.function(kernels::REDUCE, &format!("reduce_cols_partial_{suffix}"))?;
    let cfg = LaunchConfig {
        grid_dim: (cols.div_ceil(32) as u32, chunks as u32, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    let args = [Arg::U64(x.ptr()), Arg::U64(part.device_ptr()), Arg::len(rows), Arg::len(cols), Arg::I32(op as i32)];
    dev.launch(&f1, cfg, &args)?;
    let f2 = dev.function(kernels::REDUCE, &format!("reduce_cols_finish_{suffix}"))?;
    let args =
        [Arg::U64(part.device_ptr()), Arg::U64(out.ptr()), Arg::len(chunks), Arg::len(cols), Arg::I32(op as i32)];
    dev.launch(&f2, cfg_1d(cols.div_ceil(256) as u32, 256), &args)
}
