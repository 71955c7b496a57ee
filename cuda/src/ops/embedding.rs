//! `kernels/embedding.cu`: row gather (`index_select`, embedding lookup) and its
//! backward scatter-add (`index_add`), and their per-element forms (`gather`,
//! `scatter_add`).

use super::{cfg_1d, cfg_rows};
use crate::buffer::Check;
use crate::device::Arg;
use crate::{CudaDevice, DType, Result, View, ViewMut, kernels};
use std::sync::Arc;

/// The (outer, size, inner) split of a contiguous tensor around the indexed dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexDims {
    /// Product of the dimensions before the indexed one.
    pub outer: usize,
    /// Size of the indexed dimension of the table.
    pub size: usize,
    /// Product of the dimensions after it (the embedding width for a lookup).
    pub inner: usize,
}

/// The kernel suffix of a lookup's values: the float types' and `i64`, `u8` (lookups
/// move values, they do no arithmetic).
fn lookup_suffix(dt: DType, op: &'static str) -> Result<&'static str> {
    match dt {
        DType::I64 => Ok("i64"),
        DType::U8 => Ok("u8"),
        dt => dt.kernel_suffix(op),
    }
}

/// `out[o, i, :] = src[o, ids[i], :]` with `ids` i64 (`n`), `src` (outer, size, inner) and
/// `out` (outer, n, inner), f32, bf16, i64 or u8. Out-of-range ids give zero rows and are counted
/// into `bad` (one i32 on the device) when given. Kernel `index_select_{f32,bf16,i64,u8}(src, ids,
/// out, bad, outer, size, n, inner)`, block (X, Y) of `cfg_rows` over
/// `outer·n` rows of `inner`.
pub fn index_select(
    src: View<'_>,
    ids: View<'_>,
    d: IndexDims,
    out: ViewMut<'_>,
    bad: Option<ViewMut<'_>>,
) -> Result<()> {
    let c = Check { op: "index_select" };
    let dt = src.dtype();
    let n = ids.len();
    c.input("src", &src, dt, d.outer * d.size * d.inner)?;
    c.input("ids", &ids, DType::I64, n)?;
    c.output("out", &out, dt, d.outer * n * d.inner)?;
    if let Some(b) = &bad {
        c.output("bad", b, DType::I32, 1)?;
    }
    let dev = src.device().clone();
    c.same_device(&dev, [ids.device(), out.device()])?;
    if d.outer * n * d.inner == 0 {
        return Ok(());
    }
    let f = dev.function(kernels::EMBEDDING, &format!("index_select_{}", lookup_suffix(dt, c.op)?))?;
    let args = [
        Arg::U64(src.ptr()),
        Arg::U64(ids.ptr()),
        Arg::U64(out.ptr()),
        Arg::U64(bad.map_or(0, |b| b.ptr())),
        Arg::len(d.outer),
        Arg::len(d.size),
        Arg::len(n),
        Arg::len(d.inner),
    ];
    dev.launch(&f, cfg_rows(d.outer * n, d.inner), &args)
}

/// `dst[o, ids[i], :] += src[o, i, :]` into an f32 `dst` (outer, size, inner) from `src`
/// (outer, n, inner, f32 or bf16); repeated ids accumulate (f32 atomics, so the order of
/// additions, and the last bits, may vary between runs). Out-of-range ids are skipped and
/// counted into `bad`. Kernel `index_add_{f32,bf16}(dst, ids, src, bad, outer, size, n,
/// inner)`, launched like [`index_select`].
pub fn index_add(dst: ViewMut<'_>, ids: View<'_>, src: View<'_>, d: IndexDims, bad: Option<ViewMut<'_>>) -> Result<()> {
    let c = Check { op: "index_add" };
    let dt = src.dtype();
    let n = ids.len();
    c.output("dst", &dst, DType::F32, d.outer * d.size * d.inner)?;
    c.input("ids", &ids, DType::I64, n)?;
    c.input("src", &src, dt, d.outer * n * d.inner)?;
    if let Some(b) = &bad {
        c.output("bad", b, DType::I32, 1)?;
    }
    let dev = src.device().clone();
    c.same_device(&dev, [ids.device(), dst.device()])?;
    if d.outer * n * d.inner == 0 {
        return Ok(());
    }
    let f = dev.function(kernels::EMBEDDING, &format!("index_add_{}", dt.kernel_suffix(c.op)?))?;
    let args = [
        Arg::U64(dst.ptr()),
        Arg::U64(ids.ptr()),
        Arg::U64(src.ptr()),
        Arg::U64(bad.map_or(0, |b| b.ptr())),
        Arg::len(d.outer),
        Arg::len(d.size),
        Arg::len(n),
        Arg::len(d.inner),
    ];
    dev.launch(&f, cfg_rows(d.outer * n, d.inner), &args)
}

/// `out[p] = src[o, idx[p], i]` for every position `p = (o, j, i)` of an `idx` (i64) of
/// shape (outer, n, inner); `src` is (outer, size, inner) and `out` has `idx`'s length,
/// f32, bf16, i64 or u8. Out-of-range indices give zeros and are counted into `bad`. Kernel
/// `gather_{f32,bf16,i64,u8}(src, idx, out, bad, size, n, inner, total)`, 256 threads, grid-stride.
pub fn gather(
    src: View<'_>,
    idx: View<'_>,
    d: IndexDims,
    n: usize,
    out: ViewMut<'_>,
    bad: Option<ViewMut<'_>>,
) -> Result<()> {
    let c = Check { op: "gather" };
    let dt = src.dtype();
    let total = d.outer * n * d.inner;
    c.input("src", &src, dt, d.outer * d.size * d.inner)?;
    c.input("idx", &idx, DType::I64, total)?;
    c.output("out", &out, dt, total)?;
    let dev = src.device().clone();
    c.same_device(&dev, [idx.device(), out.device()])?;
    per_element(c, &dev, dt, [src.ptr(), idx.ptr(), out.ptr()], bad, d, n)
}

/// `dst[o, idx[p], i] += src[p]` for every position `p = (o, j, i)` of an `idx` (i64) of
/// shape (outer, n, inner), into an f32 `dst` (outer, size, inner) from `src` (f32 or
/// bf16, `idx`'s length); repeated indices accumulate through f32 atomics (the order of
/// additions may vary between runs). Out-of-range indices are skipped and counted into
/// `bad`. Kernel `scatter_add_{f32,bf16}(dst, idx, src, bad, size, n, inner, total)`.
pub fn scatter_add(
    dst: ViewMut<'_>,
    idx: View<'_>,
    src: View<'_>,
    d: IndexDims,
    n: usize,
    bad: Option<ViewMut<'_>>,
) -> Result<()> {
    let c = Check { op: "scatter_add" };
    let dt = src.dtype();
    let total = d.outer * n * d.inner;
    c.output("dst", &dst, DType::F32, d.outer * d.size * d.inner)?;
    c.input("idx", &idx, DType::I64, total)?;
    c.input("src", &src, dt, total)?;
    let dev = src.device().clone();
    c.same_device(&dev, [idx.device(), dst.device()])?;
    per_element(c, &dev, dt, [dst.ptr(), idx.ptr(), src.ptr()], bad, d, n)
}

/// Launches the per-element kernel `{op}_{dtype}` over the index's positions.
fn per_element(
    c: Check,
    dev: &Arc<CudaDevice>,
    dt: DType,
    ptrs: [u64; 3],
    bad: Option<ViewMut<'_>>,
    d: IndexDims,
    n: usize,
) -> Result<()> {
    if let Some(b) = &bad {
        c.output("bad", b, DType::I32, 1)?;
    }
    let total = d.outer * n * d.inner;
    if total == 0 {
        return Ok(());
    }
    let suffix = if c.op == "gather" { lookup_suffix(dt, c.op)? } else { dt.kernel_suffix(c.op)? };
    let f = dev.function(kernels::EMBEDDING, &format!("{}_{suffix}", c.op))?;
    let args = [
        Arg::U64(ptrs[0]),
        Arg::U64(ptrs[1]),
        Arg::U64(ptrs[2]),
        Arg::U64(bad.map_or(0, |b| b.ptr())),
        Arg::len(d.size),
        Arg::len(n),
        Arg::len(d.inner),
        Arg::len(total),
    ];
    dev.launch(&f, cfg_1d(dev.grid_for(total, 256), 256), &args)
}
