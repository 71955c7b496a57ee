//! `kernels/layer_norm.cu`: layer normalisation over the last dimension.

use super::{cfg_1d, cfg_rows, column_chunks};
use crate::buffer::Check;
use crate::device::Arg;
use crate::{DType, Result, View, ViewMut, kernels};
use cudarc::driver::LaunchConfig;

/// `y = (x - mean)·rstd·w + b` over rows of contiguous `x` (`rows` x `cols`, f32 or
/// bf16; `w`, `b` optional of `cols`), saving `mean` and `rstd` (f32, `rows`).
/// Kernel `layer_norm_fwd_{f32,bf16}(x, w, b, y, mean, rstd, rows, cols, eps)` (null w/b
/// allowed), block (X, Y) of `cfg_rows`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    x: View<'_>,
    w: Option<View<'_>>,
    b: Option<View<'_>>,
    rows: usize,
    cols: usize,
    eps: f32,
    y: ViewMut<'_>,
    mean: ViewMut<'_>,
    rstd: ViewMut<'_>,
) -> Result<()> {
    let c = Check { op: "layer_norm" };
    let dt = x.dtype();
    c.input("x", &x, dt, rows * cols)?;
    for p in w.iter().chain(&b) {
        c.input("w/b", p, dt, cols)?;
        c.same_device(x.device(), [p.device()])?;
    }
    c.output("y", &y, dt, rows * cols)?;
    c.output("mean", &mean, DType::F32, rows)?;
    c.output("rstd", &rstd, DType::F32, rows)?;
    let dev = x.device().clone();
    c.same_device(&dev, [y.device(), mean.device(), rstd.device()])?;
    if rows * cols == 0 {
        return Ok(());
    }
    let f = dev.function(kernels::LAYER_NORM, &format!("layer_norm_fwd_{}", dt.kernel_suffix(c.op)?))?;
    let args = [
        Arg::U64(x.ptr()),
        Arg::U64(w.map_or(0, |w| w.ptr())),
        Arg::U64(b.map_or(0, |b| b.ptr())),
        Arg::U64(y.ptr()),
        Arg::U64(mean.ptr()),
        Arg::U64(rstd.ptr()),
        Arg::len(rows),
        Arg::len(cols),
        Arg::F32(eps),
    ];
    dev.launch(&f, cfg_rows(rows, cols), &args)
}

/// `(dx, dw, db)` of [`layer_norm`] from the saved `mean` and `rstd`; `dw`, `db` (`cols`,
/// the input's dtype) are sums over rows. Kernels: `layer_norm_bwd_dx_{f32,bf16}(x, w,
/// mean, rstd, dy, dx, rows, cols)` with `cfg_rows`;
/// `layer_norm_bwd_dwdb_partial_{f32,bf16}(x, mean, rstd, dy, part, rows, cols)` with block
/// (32, 8), grid (ceil(cols/32), chunks); `layer_norm_bwd_dwdb_finish_{f32,bf16}(part, dw,
/// db, chunks, cols)` with 256 threads. Deterministic.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    x: View<'_>,
    w: Option<View<'_>>,
    mean: View<'_>,
    rstd: View<'_>,
    dy: View<'_>,
    rows: usize,
    cols: usize,
    dx: ViewMut<'_>,
    dw: ViewMut<'_>,
    db: ViewMut<'_>,
) -> Result<()> {
    let c = Check { op: "layer_norm_backward" };
    let dt = x.dtype();
    c.input("x", &x, dt, rows * cols)?;
    c.input("dy", &dy, dt, rows * cols)?;
    if let Some(w) = &w {
        c.input("w", w, dt, cols)?;
    }
    c.input("mean", &mean, DType::F32, rows)?;
    c.input("rstd", &rstd, DType::F32, rows)?;
    c.output("dx", &dx, dt, rows * cols)?;
    c.output("dw", &dw, dt, cols)?;
    c.output("db", &db, dt, cols)?;
    let dev = x.device().clone();
    c.same_device(&dev, [dy.device(), mean.device(), rstd.device(), dx.device(), dw.device(), db.device()])?;
    if cols == 0 {
        return Ok(());
    }
    let suffix = dt.kernel_suffix(c.op)?;
    if rows > 0 {
        let f = dev.function(kernels::LAYER_NORM, &format!("layer_norm_bwd_dx_{suffix}"))?;
        let args = [
            Arg::U64(x.ptr()),
            Arg::U64(w.map_or(0, |w| w.ptr())),
            Arg::U64(mean.ptr()),
            Arg::U64(rstd.ptr()),
            Arg::U64(dy.ptr()),
            Arg::U64(dx.ptr()),
            Arg::len(rows),
            Arg::len(cols),
        ];
        dev.launch(&f, cfg_rows(rows, cols), &args)?;
    }
    let chunks = column_chunks(rows, cols, dev.sm_count());
    let part = dev.alloc(DType::F32, 2 * chunks * cols)?;
    let f = dev.function(kernels::LAYER_NORM, &format!("layer_norm_bwd_dwdb_partial_{suffix}"))?;
    let cfg = LaunchConfig {
        grid_dim: (cols.div_ceil(32) as u32, chunks as u32, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    let args = [
        Arg::U64(x.ptr()),
        Arg::U64(mean.ptr()),
        Arg::U64(rstd.ptr()),
        Arg::U64(dy.ptr()),
        Arg::U64(part.device_ptr()),
        Arg::len(rows),
        Arg::len(cols),
    ];
    dev.launch(&f, cfg, &args)?;
    let f = dev.function(kernels::LAYER_NORM, &format!("layer_norm_bwd_dwdb_finish_{suffix}"))?;
    let args = [Arg::U64(part.device_ptr()), Arg::U64(dw.ptr()), Arg::U64(db.ptr()), Arg::len(chunks), Arg::len(cols)];
    dev.launch(&f, cfg_1d(cols.div_ceil(256) as u32, 256), &args)
}
