//! `kernels/embedding.cu`: row gather (`index_select`, embedding lookup) and its
//! backward scatter-add (`index_add`).

use super::cfg_rows;
use crate::buffer::Check;
use crate::device::Arg;
use crate::{DType, Result, View, ViewMut, kernels};

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

/// `out[o, i, :] = src[o, ids[i], :]` with `ids` i64 (`n`), `src` (outer, size, inner) and
/// `out` (outer, n, inner), f32 or bf16. Out-of-range ids give zero rows and are counted
/// into `bad` (one i32 on the device) when given. Kernel `index_select_{f32,bf16}(src, ids,
/// out, bad, outer, size, n, inner)`, block (X, Y) of [`cfg_rows`](super::cfg_rows) over
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
    let f = dev.function(kernels::EMBEDDING, &format!("index_select_{}", dt.kernel_suffix(c.op)?))?;
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
