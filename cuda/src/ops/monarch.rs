//! `kernels/monarch.cu`: Monarch forward and backward as grouped strided GEMMs (two
//! forward, four backward), on group-major copies of the permuted rows made by
//! `monarch_permute` passes ([`MonarchDims::group_major`]) or with the permutations
//! folded into the index arithmetic; optionally the products on cuBLASLt
//! ([`CUBLAS_ENV`]) and a following activation fused into the permutation passes
//! ([`monarch_forward_act`], [`monarch_backward_act`]).

use crate::buffer::Check;
use crate::device::Arg;
use crate::gemm::{GemmArgs, Precision};
use crate::{CudaDevice, DType, Result, View, ViewMut, kernels};
use cudarc::driver::LaunchConfig;
use std::sync::Arc;

/// The environment variable that, set to `0`, keeps every Monarch product on the
/// in-place strided path ([`MonarchDims::group_major`] false): for timing the two paths
/// against each other on a GPU. Results are the same either way.
pub const GROUP_MAJOR_ENV: &str = "MONARCH_GROUP_MAJOR";

/// The environment variable that, set to `1`, has the products that write permuted rows
/// (the output, `dout1`) store them in place at stride l while the permuted rows they
/// read stay group-major ([`MonarchDims::grouped_stores`] false): two permutation passes
/// instead of four per forward+backward, for timing against the default on a GPU.
pub const STRIDED_STORES_ENV: &str = "MONARCH_STRIDED_STORES";

/// The environment variable that, set to `1`, runs the Monarch products through
/// cuBLASLt strided-batched GEMMs instead of `grouped_gemm_*` where sizes allow
/// ([`MonarchDims::cublas`]): every product of the group-major layout has unit-stride
/// rows, so each is one batched GEMM over the groups, batches interleaved along the row.
/// For timing the vendor's GEMMs against the handwritten ones on a GPU; the
/// permutations stay `monarch_permute_*` passes.
pub const CUBLAS_ENV: &str = "MONARCH_CUBLAS";

/// Whether the environment variable `name` is `1` (`true`) or `0` (`false`), read once
/// per process by the caller's `OnceLock`; `default` when unset or anything else.
fn env_switch(name: &str, default: bool) -> bool {
    match std::env::var(name).as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => default,
    }
}

/// The sizes of a Monarch product (issue 3's definition): factors `blkdiag1` (k, q, p)
/// and `blkdiag2` (l, s, r) with l·r = k·q; input rows of `n_in` ≤ k·p (zero-padded),
/// output rows of `m_out` ≤ l·s (truncated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonarchDims {
    /// Rows (all leading dimensions flattened).
    pub batch: usize,
    /// Input features actually present.
    pub n_in: usize,
    /// Output features kept.
    pub m_out: usize,
    /// blkdiag1 blocks.
    pub k: usize,
    /// blkdiag1 block rows.
    pub q: usize,
    /// blkdiag1 block columns.
    pub p: usize,
    /// blkdiag2 blocks.
    pub l: usize,
    /// blkdiag2 block rows.
    pub s: usize,
    /// blkdiag2 block columns.
    pub r: usize,
}

impl MonarchDims {
    /// Checks the factor shapes against each other and the padded sizes.
    pub fn check(&self) -> Result<()> {
        let d = self;
        if d.l * d.r != d.k * d.q || d.n_in > d.k * d.p || d.m_out > d.l * d.s || d.k * d.l == 0 {
            crate::error::bail!(
                "monarch",
                "inconsistent Monarch sizes {d:?} (need l·r = k·q, n_in ≤ k·p, m_out ≤ l·s)"
            );
        }
        Ok(())
    }

    /// Length of the intermediate `out1` (per row): k·q.
    pub fn mid(&self) -> usize {
        self.k * self.q
    }

    /// Whether the products run on group-major copies of the permuted rows (for 2 ≤ l ≤
    /// 64): `out1` saved as `[b, ll·r + rr]` and the output, its gradient and `dout1` as
    /// `[b, ll·s + ss]` / `[b, ll·r + rr]` for the natural `[b, ss·l + ll]` /
    /// `[b, rr·l + ll]`, each made by one `monarch_permute_*` pass, so that every product
    /// reads and writes unit strides (a stride-l store writes 2 bytes per 32-byte sector;
    /// a stride-l load repeats that once per column tile). Otherwise the products read
    /// and write the permuted rows in place.
    /// [`GROUP_MAJOR_ENV`]`=0` turns the copies off (read once per process).
    pub fn group_major(&self) -> bool {
        static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ALLOWED.get_or_init(|| env_switch(GROUP_MAJOR_ENV, true)) && (2..=64).contains(&self.l)
    }

    /// Whether, with [`group_major`](Self::group_major), the output and `dout1` are also
    /// written group-major and permuted after (the default), rather than stored in place at
    /// stride l ([`STRIDED_STORES_ENV`]`=1`).
    pub fn grouped_stores(&self) -> bool {
        static STRIDED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        self.group_major() && !*STRIDED.get_or_init(|| env_switch(STRIDED_STORES_ENV, false))
    }

    /// Whether the products go to cuBLASLt ([`CUBLAS_ENV`]`=1`, read once per process):
    /// only for exact sizes (`n_in = k·p`, `m_out = l·s`), since cuBLASLt has no column
    /// limits to pad and truncate with. Those whose operands lack a unit stride (stride-l
    /// rows in place) or that add a bias stay on the kernel.
    pub fn cublas(&self) -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| env_switch(CUBLAS_ENV, false)) && self.exact()
    }

    /// Whether no input is padded and no output truncated.
    fn exact(&self) -> bool {
        self.n_in == self.k * self.p && self.m_out == self.l * self.s
    }

    /// `(rows, l, s, m_out)`: the sizes of the output's permutation.
    fn io_sizes(&self) -> (usize, usize, usize, usize) {
        (self.batch, self.l, self.s, self.m_out)
    }

    /// The same for the intermediate's: `(rows, l, r, k·q)`.
    fn mid_sizes(&self) -> (usize, usize, usize, usize) {
        (self.batch, self.l, self.r, self.mid())
    }
}

/// `struct GemmOperand` / `GemmOutput` of the kernel: strides of (group, first index, k)
/// or (group, m, n), the column limit and which index is the batch row.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Operand {
    p: u64,
    sg: i64,
    sx: i64,
    sy: i64,
    col_lim: i64,
    row_dim: i32,
    flag: i32,
}

/// `struct GemmOutput`: the output's [`Operand`] fields (`flag`: accumulate) and an
/// optional bias added at the column (0: none).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Output {
    o: Operand,
    bias: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct GroupedGemm {
    a: Operand,
    b: Operand,
    c: Output,
    m: i32,
    n: i32,
    k: i32,
    groups: i32,
    k_splits: i32,
    pad: i32,
    partial: u64,
}

const NO_LIMIT: i64 = i64::MAX;

fn op(p: u64, sg: usize, sx: usize, sy: usize, col_lim: i64, row_dim: i32) -> Operand {
    Operand { p, sg: sg as i64, sx: sx as i64, sy: sy as i64, col_lim, row_dim, flag: 0 }
}

/// An output with plain strides.
fn out(p: u64, sg: usize, sx: usize, sy: usize, col_lim: i64, row_dim: i32) -> Output {
    Output { o: op(p, sg, sx, sy, col_lim, row_dim), bias: 0 }
}

/// One grouped GEMM `C(g,m,n) = Σ_k A(g,m,k)·B(g,n,k)` of a Monarch pass: its operand
/// and output descriptors, whether it adds to C, and (M, N, K, groups).
#[derive(Clone, Copy, Debug)]
struct Gemm {
    a: Operand,
    b: Operand,
    c: Output,
    accumulate: bool,
    dims: (usize, usize, usize, usize),
}

/// The output tile (rows, columns) of one block of `grouped_gemm_*` for a dtype: the
/// kernel's `GemmConfig`.
fn gemm_tile(dt: DType) -> (usize, usize) {
    if dt == DType::BF16 { (128, 64) } else { (64, 64) }
}

/// Launches one [`Gemm`] (see `kernels/monarch.cu`): a one-dimensional grid of
/// tiles·groups·splits blocks of 128 threads, (group, split) fastest; with splits > 1 an
/// f32 partial buffer and `grouped_gemm_splits_*` (256 threads, grid-stride) finish it.
fn grouped_gemm(dev: &Arc<CudaDevice>, dt: DType, gemm: &Gemm) -> Result<()> {
    let Gemm { a, b, mut c, accumulate, dims: (m, n, k, groups) } = *gemm;
    if m * n * groups == 0 {
        return Ok(());
    }
    c.o.flag = accumulate as i32;
    let suffix = dt.kernel_suffix("monarch")?;
    let (bm, bn) = gemm_tile(dt);
    let tiles = m.div_ceil(bm) * n.div_ceil(bn) * groups;
    // Split K when the output tiles alone cannot fill the device (weight gradients).
    let target = dev.sm_count() as usize * 2;
    let splits = if tiles >= target { 1 } else { target.div_ceil(tiles).min(k.div_ceil(256)).max(1) };
    // The kernel indexes in i32 (tile-local and block numbers) and i64 (global offsets);
    // sizes or grids past i32 are refused rather than wrapped.
    let fits = |v: usize| i32::try_from(v).is_ok();
    if !(fits(m) && fits(n) && fits(k) && fits(groups * splits) && fits(tiles * splits)) {
        crate::error::bail!("monarch", "GEMM of {m}x{n}x{k} in {groups} groups is too large for the grouped kernel");
    }
    let partial = if splits > 1 { Some(dev.alloc(DType::F32, splits * groups * m * n)?) } else { None };
    let g = GroupedGemm {
        a,
        b,
        c,
        m: m as i32,
        n: n as i32,
        k: k as i32,
        groups: groups as i32,
        k_splits: splits as i32,
        pad: 0,
        partial: partial.as_ref().map_or(0, |p| p.device_ptr()),
    };
    let f = dev.function(kernels::MONARCH, &format!("grouped_gemm_{suffix}"))?;
    let cfg = LaunchConfig { grid_dim: ((tiles * splits) as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
    dev.launch(&f, cfg, &[Arg::of(&g)])?;
    if splits > 1 {
        let f = dev.function(kernels::MONARCH, &format!("grouped_gemm_splits_{suffix}"))?;
        dev.launch(&f, super::cfg_1d(dev.grid_for(groups * m * n, 256), 256), &[Arg::of(&g)])?;
    }
    Ok(())
}

/// Runs one product: through cuBLASLt when `blas` and [`strided_batched`] maps it (the
/// kernel after a one-time warning if cuBLASLt declines it), else `grouped_gemm_*`.
fn run_gemm(dev: &Arc<CudaDevice>, dt: DType, gemm: &Gemm, blas: bool) -> Result<()> {
    let Some((args, ptrs)) = blas.then(|| strided_batched(gemm, dt)).flatten() else {
        return grouped_gemm(dev, dt, gemm);
    };
    match crate::gemm::matmul_at(dev, &args, ptrs) {
        Err(crate::CudaError::Blas { op: "heuristic", msg }) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                eprintln!("warning: cuBLASLt has no algorithm for a Monarch product ({msg}); using the kernel")
            });
            grouped_gemm(dev, dt, gemm)
        }
        done => done,
    }
}

/// The cuBLASLt strided-batched GEMM of `g` and its addresses `[a, b, bias, c]`, if
/// each operand has a unit stride along one index, the output along n, and no bias is
/// added: group g's A, B and C start `sg` elements after group g-1's, rows `sx` or `sy`
/// apart. Column limits are ignored, so the caller passes only products of exact sizes
/// ([`MonarchDims::cublas`]).
fn strided_batched(g: &Gemm, dt: DType) -> Option<(GemmArgs, [u64; 4])> {
    let (m, n, k, groups) = g.dims;
    // A (g, m, k) is op(A)[m][k]: stored m×k (rows sx apart) or k×m (rows sy apart).
    let (trans_a, ld_a) = match (g.a.sx, g.a.sy) {
        (sx, 1) => (false, sx),
        (1, sy) => (true, sy),
        _ => return None,
    };
    // B (g, n, k) is op(B)[k][n]: stored n×k (rows sx apart) or k×n (rows sy apart).
    let (trans_b, ld_b) = match (g.b.sx, g.b.sy) {
        (sx, 1) => (true, sx),
        (1, sy) => (false, sy),
        _ => return None,
    };
    if g.c.o.sy != 1 || g.c.bias != 0 {
        return None;
    }
    let precision = if dt == DType::BF16 { Precision::Bf16 } else { Precision::F32 };
    let args = GemmArgs {
        trans_a,
        trans_b,
        batch: groups,
        stride_a: g.a.sg as usize,
        stride_b: g.b.sg as usize,
        stride_c: g.c.o.sg as usize,
        ld_a: ld_a as usize,
        ld_b: ld_b as usize,
        ld_c: g.c.o.sx as usize,
        beta: if g.accumulate { 1.0 } else { 0.0 },
        ..GemmArgs::new(m, n, k, precision)
    };
    args.check_ld().ok()?;
    Some((args, [g.a.p, g.b.p, 0, g.c.o.p]))
}

/// Forward: `out1 = blkdiag1 ⊙ x` (batch, k·q; saved group-major when
/// [`MonarchDims::group_major`]), then `out` (batch, m_out) `= blkdiag2 ⊙ P(out1)`
/// with the output permutation, plus `bias` (m_out) if given. `x` has row stride
/// `n_in`, all f32 or all bf16; `out1` is saved for the backward.
pub fn monarch_forward(
    d: MonarchDims,
    x: View<'_>,
    w1: View<'_>,
    w2: View<'_>,
    bias: Option<View<'_>>,
    out1: ViewMut<'_>,
    out: ViewMut<'_>,
) -> Result<()> {
    forward(d, [x, w1, w2], bias, out1, None, out)
}

/// [`monarch_forward`] followed by `act`, fused into the output's permutation pass:
/// `out = act(blkdiag2 ⊙ P(out1) + bias)`, with the pre-activation saved in `pre`
/// (batch, l·s) group-major, bias not added, for [`monarch_backward_act`]. Needs
/// [`MonarchDims::grouped_stores`].
#[allow(clippy::too_many_arguments)]
pub fn monarch_forward_act(
    d: MonarchDims,
    act: Act,
    x: View<'_>,
    w1: View<'_>,
    w2: View<'_>,
    bias: Option<View<'_>>,
    out1: ViewMut<'_>,
    pre: ViewMut<'_>,
    out: ViewMut<'_>,
) -> Result<()> {
    forward(d, [x, w1, w2], bias, out1, Some((act, pre)), out)
}

/// The refusal of a fused activation where the output is not written group-major.
fn needs_grouped_stores(d: &MonarchDims, op: &'static str) -> Result<()> {
    if !d.grouped_stores() {
        crate::error::bail!(
            op,
            "the fused activation needs the group-major layout (2 ≤ l ≤ 64, {STRIDED_STORES_ENV} unset)"
        );
    }
    Ok(())
}

/// [`monarch_forward`], with an activation fused and its pre-activation saved in `pre`
/// if given.
fn forward(
    d: MonarchDims,
    [x, w1, w2]: [View<'_>; 3],
    bias: Option<View<'_>>,
    out1: ViewMut<'_>,
    fused: Option<(Act, ViewMut<'_>)>,
    out: ViewMut<'_>,
) -> Result<()> {
    d.check()?;
    let (act, pre) = fused.map_or((None, None), |(a, p)| (Some(a), Some(p)));
    let c = Check { op: if pre.is_some() { "monarch_forward_act" } else { "monarch_forward" } };
    let dt = x.dtype();
    c.input("x", &x, dt, d.batch * d.n_in)?;
    c.input("blkdiag1", &w1, dt, d.k * d.q * d.p)?;
    c.input("blkdiag2", &w2, dt, d.l * d.s * d.r)?;
    c.output("out1", &out1, dt, d.batch * d.mid())?;
    c.output("out", &out, dt, d.batch * d.m_out)?;
    let dev = x.device().clone();
    c.same_device(&dev, [w1.device(), w2.device(), out1.device(), out.device()])?;
    if let Some(b) = &bias {
        c.input("bias", b, dt, d.m_out)?;
        c.same_device(&dev, [b.device()])?;
    }
    if let Some(p) = &pre {
        needs_grouped_stores(&d, c.op)?;
        c.output("pre", p, dt, d.batch * d.l * d.s)?;
        c.same_device(&dev, [p.device()])?;
    }
    dt.kernel_suffix(c.op)?;
    let bias = bias.map_or(0, |b| b.ptr());
    // Grouped: the first product's natural output and the second's group-major output
    // in scratch (or `pre`), each permuted into place after its product.
    let (grouped, stores) = (d.group_major(), d.grouped_stores());
    let want_yg = stores && pre.is_none();
    let (out1n, yg) =
        (scratch(&dev, dt, grouped, d.batch * d.mid())?, scratch(&dev, dt, want_yg, d.batch * d.l * d.s)?);
    let (out1n, y) = (ptr_or(&out1n, out1.ptr()), pre.as_ref().map_or(ptr_or(&yg, out.ptr()), |p| p.ptr()));
    let [first, second] = forward_gemms(&d, stores, [x.ptr(), w1.ptr(), w2.ptr(), bias, out1n, out1.ptr(), y]);
    run_gemm(&dev, dt, &first, d.cublas())?;
    if grouped {
        permute(&dev, dt, d.mid_sizes(), [out1n, out1.ptr(), 0, 0], true, Fused::Nothing)?;
    }
    run_gemm(&dev, dt, &second, d.cublas())?;
    if stores {
        let fused = act.map_or(Fused::Nothing, Fused::Act);
        permute(&dev, dt, d.io_sizes(), [y, out.ptr(), bias, 0], false, fused)?;
    }
    Ok(())
}

/// The forward's two products over buffers at `[x, w1, w2, bias, out1n, out1, out]`
/// (bias 0: none): the first writes `out1n` in natural order, the second reads `out1`.
/// With [`MonarchDims::group_major`] the caller permutes `out1n` into `out1`
/// (group-major) between them, else `out1n` is `out1`; with `grouped_stores` `out` is
/// the (batch, l·s) group-major scratch and the bias is left to the permutation that
/// follows, else `out` is written in place with the bias.
fn forward_gemms(d: &MonarchDims, grouped_stores: bool, [x, w1, w2, bias, out1n, out1, y]: [u64; 7]) -> [Gemm; 2] {
    let (kq, nin, mout) = (d.mid(), d.n_in, d.m_out);
    [
        // out1[b, kk·q+qq] = Σ_pp x[b, kk·p+pp] w1[kk,qq,pp]
        Gemm {
            a: op(x, d.p, nin, 1, nin as i64, 1),
            b: op(w1, d.q * d.p, d.p, 1, NO_LIMIT, 0),
            c: out(out1n, d.q, kq, 1, NO_LIMIT, 1),
            accumulate: false,
            dims: (d.batch, d.q, d.p, d.k),
        },
        // out[b, ss·l+ll] = Σ_rr out1[b, rr·l+ll] w2[ll,ss,rr]
        Gemm {
            a: mid_operand(d, out1, true),
            b: op(w2, d.s * d.r, d.r, 1, NO_LIMIT, 0),
            // out[b, ll·s + ss] group-major, or natural with the bias at the column j.
            c: if grouped_stores {
                out(y, d.s, d.l * d.s, 1, NO_LIMIT, 1)
            } else {
                Output { bias, ..out(y, 1, mout, d.l, mout as i64, 1) }
            },
            accumulate: false,
            dims: (d.batch, d.s, d.r, d.l),
        },
    ]
}

/// `out1` read grouped by ll: element (g = ll, b, rr) in either layout, with the batch
/// row b as the first index (`b_first`, the forward) or as k (dw2).
fn mid_operand(d: &MonarchDims, out1: u64, b_first: bool) -> Operand {
    let (sg, s_rr) = if d.group_major() { (d.r, 1) } else { (1, d.l) };
    if b_first { op(out1, sg, d.mid(), s_rr, NO_LIMIT, 1) } else { op(out1, sg, s_rr, d.mid(), NO_LIMIT, 2) }
}

/// Backward from `dout` (batch, m_out) and the saved `out1`: writes `dx` (batch, n_in)
/// and `dw1`, `dw2` (factor shapes), adding to them when `accumulate`. Four grouped
/// GEMMs; the intermediate `dout1` (batch, k·q) comes from the device's cache.
#[allow(clippy::too_many_arguments)]
pub fn monarch_backward(
    d: MonarchDims,
    x: View<'_>,
    w1: View<'_>,
    w2: View<'_>,
    out1: View<'_>,
    dout: View<'_>,
    dx: ViewMut<'_>,
    dw1: ViewMut<'_>,
    dw2: ViewMut<'_>,
    accumulate: bool,
) -> Result<()> {
    backward(d, [x, w1, w2, out1], dout, None, [dx, dw1, dw2], accumulate)
}

/// What [`monarch_backward_act`] needs of the fused activation: which it was, the
/// forward's `pre` and `bias`, and where the pre-activation's gradient goes.
pub struct ActGrad<'a> {
    /// The activation.
    pub act: Act,
    /// The pre-activation [`monarch_forward_act`] saved (batch, l·s), group-major.
    pub pre: View<'a>,
    /// The forward's bias (m_out), if it had one.
    pub bias: Option<View<'a>>,
    /// The pre-activation's gradient (batch, l·s), group-major, written here: its
    /// column sums are the bias gradient (column ll·s + ss is bias entry ss·l + ll).
    pub dpre: ViewMut<'a>,
}

/// The backward of [`monarch_forward_act`] from the activation output's gradient `dout`
/// (batch, m_out): the activation's derivative is fused into `dout`'s permutation pass,
/// which writes `act.dpre`; then the four products of [`monarch_backward`].
#[allow(clippy::too_many_arguments)]
pub fn monarch_backward_act(
    d: MonarchDims,
    x: View<'_>,
    w1: View<'_>,
    w2: View<'_>,
    out1: View<'_>,
    dout: View<'_>,
    act: ActGrad<'_>,
    [dx, dw1, dw2]: [ViewMut<'_>; 3],
    accumulate: bool,
) -> Result<()> {
    backward(d, [x, w1, w2, out1], dout, Some(act), [dx, dw1, dw2], accumulate)
}

/// [`monarch_backward`], through the fused activation's derivative when `fused` is given.
fn backward(
    d: MonarchDims,
    [x, w1, w2, out1]: [View<'_>; 4],
    dout: View<'_>,
    fused: Option<ActGrad<'_>>,
    [dx, dw1, dw2]: [ViewMut<'_>; 3],
    accumulate: bool,
) -> Result<()> {
    d.check()?;
    let c = Check { op: if fused.is_some() { "monarch_backward_act" } else { "monarch_backward" } };
    let dt = x.dtype();
    c.input("x", &x, dt, d.batch * d.n_in)?;
    c.input("blkdiag1", &w1, dt, d.k * d.q * d.p)?;
    c.input("blkdiag2", &w2, dt, d.l * d.s * d.r)?;
    c.input("out1", &out1, dt, d.batch * d.mid())?;
    c.input("dout", &dout, dt, d.batch * d.m_out)?;
    c.output("dx", &dx, dt, d.batch * d.n_in)?;
    c.output("dw1", &dw1, dt, d.k * d.q * d.p)?;
    c.output("dw2", &dw2, dt, d.l * d.s * d.r)?;
    let dev = x.device().clone();
    c.same_device(
        &dev,
        [w1.device(), w2.device(), out1.device(), dout.device(), dx.device(), dw1.device(), dw2.device()],
    )?;
    if let Some(g) = &fused {
        needs_grouped_stores(&d, c.op)?;
        c.input("pre", &g.pre, dt, d.batch * d.l * d.s)?;
        c.output("dpre", &g.dpre, dt, d.batch * d.l * d.s)?;
        c.same_device(&dev, [g.pre.device(), g.dpre.device()])?;
        if let Some(b) = &g.bias {
            c.input("bias", b, dt, d.m_out)?;
            c.same_device(&dev, [b.device()])?;
        }
    }
    dt.kernel_suffix(c.op)?;
    let dout1 = dev.alloc(dt, d.batch * d.mid())?;
    // Group-major copies of dout (read by the first and last products; with the activation,
    // dpre) and of the first product's output dout1 (permuted to natural order for the
    // second and third).
    let (grouped, stores) = (d.group_major(), d.grouped_stores());
    let (doutg, dout1g) = (
        scratch(&dev, dt, grouped && fused.is_none(), d.batch * d.l * d.s)?,
        scratch(&dev, dt, stores, d.batch * d.mid())?,
    );
    let dout_ptr = fused.as_ref().map_or(ptr_or(&doutg, dout.ptr()), |g| g.dpre.ptr());
    let dout1g_ptr = ptr_or(&dout1g, 0);
    if let Some(g) = &fused {
        let (bias, pre) = (g.bias.as_ref().map_or(0, |b| b.ptr()), g.pre.ptr());
        permute(&dev, dt, d.io_sizes(), [dout.ptr(), dout_ptr, bias, pre], true, Fused::Grad(g.act))?;
    } else if grouped {
        permute(&dev, dt, d.io_sizes(), [dout.ptr(), dout_ptr, 0, 0], true, Fused::Nothing)?;
    }
    let bufs = [x.ptr(), w1.ptr(), w2.ptr(), out1.ptr(), dout_ptr, dout1.device_ptr(), dx.ptr(), dw1.ptr(), dw2.ptr()];
    for (i, g) in backward_gemms(&d, stores, bufs, dout1g_ptr, accumulate).iter().enumerate() {
        run_gemm(&dev, dt, g, d.cublas())?;
        if i == 0 && stores {
            permute(&dev, dt, d.mid_sizes(), [dout1g_ptr, dout1.device_ptr(), 0, 0], false, Fused::Nothing)?;
        }
    }
    Ok(())
}

/// A scratch buffer of `n` elements when `wanted` (a group-major copy), else none.
fn scratch(dev: &Arc<CudaDevice>, dt: DType, wanted: bool, n: usize) -> Result<Option<crate::DeviceBuffer>> {
    if wanted { dev.alloc(dt, n).map(Some) } else { Ok(None) }
}

/// The address of `b`, or `or` without one.
fn ptr_or(b: &Option<crate::DeviceBuffer>, or: u64) -> u64 {
    b.as_ref().map_or(or, |b| b.device_ptr())
}

/// An activation that the permutation passes apply on the way (the kernel's `fn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// GELU, tanh approximation.
    GeluTanh = 0,
    /// GELU, exact erf form.
    GeluErf = 1,
    /// ReLU.
    Relu = 2,
}

/// What a permutation pass fuses (the kernel's `act` and `fn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fused {
    /// Nothing (a bias, if given, when going back to natural order).
    Nothing,
    /// Back to natural order: the activation of the value plus the bias.
    Act(Act),
    /// To group-major: the natural gradient times the activation's derivative at the
    /// saved pre-activation (`aux`) plus the bias.
    Grad(Act),
}

impl Fused {
    /// The kernel's `(act, fn)`.
    fn codes(self) -> (i32, i32) {
        match self {
            Fused::Nothing => (0, 0),
            Fused::Act(a) => (1, a as i32),
            Fused::Grad(a) => (2, a as i32),
        }
    }
}

/// `monarch_permute_*` over `[src, dst, bias, aux]` (0: none) for `(rows, l, s, mout)`:
/// natural (rows, mout) to group-major (rows, l·s) if `to_group`, else back, adding the
/// bias; with what `fused` says.
fn permute(
    dev: &Arc<CudaDevice>,
    dt: DType,
    (rows, l, s, mout): (usize, usize, usize, usize),
    [src, dst, bias, aux]: [u64; 4],
    to_group: bool,
    fused: Fused,
) -> Result<()> {
    let per = 2048 / l; // MP_CHUNK / l values of ss per block
    let blocks = rows * s.div_ceil(per);
    if i32::try_from(blocks).is_err() || i32::try_from(l * s).is_err() {
        crate::error::bail!("monarch", "{rows} rows of {} are too many for the permutation kernel", l * s);
    }
    let (l, s, mout, to_group) = (l as i32, s as i32, mout as i32, to_group as i32);
    let (act, func) = fused.codes();
    let f = dev.function(kernels::MONARCH, &format!("monarch_permute_{}", dt.kernel_suffix("monarch")?))?;
    let args = [
        Arg::U64(src),
        Arg::U64(dst),
        Arg::U64(bias),
        Arg::U64(aux),
        Arg::I32(l),
        Arg::I32(s),
        Arg::I32(mout),
        Arg::I32(to_group),
        Arg::I32(act),
        Arg::I32(func),
    ];
    dev.launch(&f, super::cfg_1d(blocks as u32, 256), &args)
}

/// The backward's four products over buffers at `[x, w1, w2, out1, dout, dout1, dx, dw1,
/// dw2]` (`dout1`, batch × k·q, is scratch), adding to dx, dw1, dw2 when `accumulate`.
/// With [`MonarchDims::group_major`], `dout` is group-major (batch, l·s); with
/// `grouped_stores` the first product writes `dout1g` (group-major [b, ll·r + rr]),
/// which the caller permutes into `dout1` before the second, else `dout1` in place.
fn backward_gemms(d: &MonarchDims, grouped_stores: bool, bufs: [u64; 9], dout1g: u64, accumulate: bool) -> [Gemm; 4] {
    let [x, w1, w2, out1, dout, dout1, dx, dw1, dw2] = bufs;
    let (kq, nin, mout, b) = (d.mid(), d.n_in, d.m_out, d.batch);
    // dout element (ll, b, ss): natural at b·m_out + ss·l + ll (zero past m_out), or
    // group-major at b·l·s + ll·s + ss.
    let (dg, db, dss, dlim) = if d.group_major() { (d.s, d.l * d.s, 1, NO_LIMIT) } else { (1, mout, d.l, mout as i64) };
    [
        // dout1[b, rr·l+ll] = Σ_ss dout[b, ss·l+ll] w2[ll,ss,rr]
        Gemm {
            a: op(dout, dg, db, dss, dlim, 1),
            b: op(w2, d.s * d.r, 1, d.r, NO_LIMIT, 0),
            c: if grouped_stores { out(dout1g, d.r, kq, 1, NO_LIMIT, 1) } else { out(dout1, 1, kq, d.l, NO_LIMIT, 1) },
            accumulate: false,
            dims: (b, d.r, d.s, d.l),
        },
        // dx[b, kk·p+pp] = Σ_qq dout1[b, kk·q+qq] w1[kk,qq,pp]
        Gemm {
            a: op(dout1, d.q, kq, 1, NO_LIMIT, 1),
            b: op(w1, d.q * d.p, 1, d.p, NO_LIMIT, 0),
            c: out(dx, d.p, nin, 1, nin as i64, 1),
            accumulate,
            dims: (b, d.p, d.q, d.k),
        },
        // dw1[kk,qq,pp] = Σ_b dout1[b, kk·q+qq] x[b, kk·p+pp]
        Gemm {
            a: op(dout1, d.q, 1, kq, NO_LIMIT, 2),
            b: op(x, d.p, 1, nin, nin as i64, 2),
            c: out(dw1, d.q * d.p, d.p, 1, NO_LIMIT, 0),
            accumulate,
            dims: (d.q, d.p, b, d.k),
        },
        // dw2[ll,ss,rr] = Σ_b dout[b, ss·l+ll] out1[b, rr·l+ll]
        Gemm {
            a: op(dout, dg, dss, db, dlim, 2),
            b: mid_operand(d, out1, false),
            c: out(dw2, d.s * d.r, d.r, 1, NO_LIMIT, 0),
            accumulate,
            dims: (d.s, d.r, b, d.l),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_kernel_structs() {
        assert_eq!(std::mem::size_of::<Operand>(), 48);
        assert_eq!(std::mem::size_of::<Output>(), 56);
        assert_eq!(std::mem::size_of::<GroupedGemm>(), 2 * 48 + 56 + 24 + 8);
    }

    /// Runs a [`Gemm`] on host buffers (its pointers are indices into `bufs`) with the
    /// kernel's semantics: operand (g, x, y) at `g·sg + x·sx + y·sy`, read as 0 and not
    /// written where its column (the offset without the batch-row term) reaches
    /// `col_lim`; the bias added at the output's column.
    fn interpret(g: &Gemm, bufs: &mut [Vec<f64>]) {
        let column = |o: &Operand, gi: usize, x: usize, y: usize| {
            let (gi, x, y) = (gi as i64, x as i64, y as i64);
            gi * o.sg + if o.row_dim == 1 { 0 } else { x * o.sx } + if o.row_dim == 2 { 0 } else { y * o.sy }
        };
        let at = |o: &Operand, gi: usize, x: usize, y: usize| {
            (gi as i64 * o.sg + x as i64 * o.sx + y as i64 * o.sy) as usize
        };
        let read = |bufs: &[Vec<f64>], o: &Operand, gi, x, y| {
            if column(o, gi, x, y) >= o.col_lim { 0.0 } else { bufs[o.p as usize][at(o, gi, x, y)] }
        };
        let (m, n, k, groups) = g.dims;
        for gi in 0..groups {
            for mi in 0..m {
                for ni in 0..n {
                    let v: f64 = (0..k).map(|ki| read(bufs, &g.a, gi, mi, ki) * read(bufs, &g.b, gi, ni, ki)).sum();
                    let (c, col) = (&g.c.o, column(&g.c.o, gi, mi, ni));
                    if col < c.col_lim {
                        let v = if g.c.bias != 0 { v + bufs[g.c.bias as usize][col as usize] } else { v };
                        let dst = &mut bufs[c.p as usize][at(c, gi, mi, ni)];
                        *dst = if g.accumulate { *dst + v } else { v };
                    }
                }
            }
        }
    }

    /// The descriptors compute the Monarch product and its gradients as defined (padded
    /// input, truncated output, l ≠ k, q a multiple of l or not), against loops written
    /// from the definition: out1[b, kk·q+qq] = Σ w1[kk,qq,pp] x̃[b, kk·p+pp],
    /// out[b, ss·l+ll] = Σ w2[ll,ss,rr] out1[b, rr·l+ll], and their transposes for the
    /// backward; on group-major copies (2 ≤ l ≤ 64) and on the permuted rows in place.
    #[test]
    fn descriptors_compute_the_monarch_product_and_its_gradients() {
        let ragged = MonarchDims { batch: 3, n_in: 10, m_out: 13, k: 4, q: 3, p: 3, l: 2, s: 7, r: 6 };
        let divisible = MonarchDims { q: 4, r: 8, ..ragged };
        // l = 1: no permutation at all; l = 65: stride-l rows read and written in place.
        let one = MonarchDims { m_out: 5, l: 1, s: 6, r: 12, ..ragged };
        let wide = MonarchDims { batch: 2, n_in: 9, m_out: 100, k: 5, q: 13, p: 2, l: 65, s: 2, r: 1 };
        assert!(ragged.group_major() && divisible.group_major() && !one.group_major() && !wide.group_major());
        for d in [ragged, divisible, one, wide] {
            check_descriptors(d, d.group_major(), false);
        }
        // Group-major loads with the output and dout1 stored in place (STRIDED_STORES_ENV).
        for d in [ragged, divisible] {
            check_descriptors(d, false, false);
        }
    }

    /// Through cuBLASLt (CUBLAS_ENV), as `strided_batched` maps them, the products of
    /// exact sizes compute the same: all six on the group-major layout (the MLP block's
    /// l = k = 4 among them), those with unit strides otherwise.
    #[test]
    fn strided_batched_gemms_compute_the_monarch_product_and_its_gradients() {
        let exact = MonarchDims { batch: 3, n_in: 12, m_out: 14, k: 4, q: 4, p: 3, l: 2, s: 7, r: 8 };
        let mlp = MonarchDims { batch: 5, n_in: 8, m_out: 16, k: 4, q: 4, p: 2, l: 4, s: 4, r: 4 };
        assert!(exact.exact() && mlp.exact() && exact.group_major());
        assert_eq!(check_descriptors(exact, true, true), 6);
        assert_eq!(check_descriptors(mlp, true, true), 6);
        // Output and dout1 stored at stride l: those two products stay on the kernel.
        assert_eq!(check_descriptors(exact, false, true), 4);
        // l = 1 needs no permutation; the forward's second product adds the bias in place.
        let one = MonarchDims { batch: 3, n_in: 12, m_out: 6, k: 4, q: 3, p: 3, l: 1, s: 6, r: 12 };
        assert_eq!(check_descriptors(one, false, true), 5);
        // Stride-l rows in place (l > 64) have no unit stride: only the products of the
        // first factor (out1, dx, dw1) map.
        let wide = MonarchDims { batch: 2, n_in: 10, m_out: 130, k: 5, q: 13, p: 2, l: 65, s: 2, r: 1 };
        assert_eq!(check_descriptors(wide, false, true), 3);
    }

    /// The descriptors of `d`, the output and dout1 written group-major when
    /// `grouped_stores`, against the definition; with `blas`, each product that
    /// [`strided_batched`] maps runs as that cuBLASLt GEMM's definition instead. Returns
    /// how many of the six products were mapped (per pass, counted once).
    fn check_descriptors(d: MonarchDims, grouped_stores: bool, blas: bool) -> usize {
        d.check().unwrap();
        let mut seed = 7u64;
        let mut rnd = |n: usize| -> Vec<f64> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
                })
                .collect()
        };
        let (kq, b) = (d.mid(), d.batch);
        let (x, w1, w2, dout) = (rnd(b * d.n_in), rnd(d.k * d.q * d.p), rnd(d.l * d.s * d.r), rnd(b * d.m_out));
        let bias = rnd(d.m_out);
        // The reference, from the definition.
        let xp = |bi: usize, c: usize| if c < d.n_in { x[bi * d.n_in + c] } else { 0.0 };
        let mut out1 = vec![0.0; b * kq];
        let mut out = vec![0.0; b * d.m_out];
        for bi in 0..b {
            for (kk, qq) in (0..d.k).flat_map(|kk| (0..d.q).map(move |qq| (kk, qq))) {
                out1[bi * kq + kk * d.q + qq] =
                    (0..d.p).map(|pp| w1[(kk * d.q + qq) * d.p + pp] * xp(bi, kk * d.p + pp)).sum();
            }
            for (ll, ss) in (0..d.l).flat_map(|ll| (0..d.s).map(move |ss| (ll, ss))) {
                let j = ss * d.l + ll;
                if j < d.m_out {
                    out[bi * d.m_out + j] = bias[j]
                        + (0..d.r)
                            .map(|rr| w2[(ll * d.s + ss) * d.r + rr] * out1[bi * kq + rr * d.l + ll])
                            .sum::<f64>();
                }
            }
        }
        // The gradients of Σ dout·out, by the chain rule on the same loops.
        let doutp = |bi: usize, j: usize| if j < d.m_out { dout[bi * d.m_out + j] } else { 0.0 };
        let (mut dout1, mut dx, mut dw1, mut dw2) =
            (vec![0.0; b * kq], vec![0.0; b * d.n_in], vec![0.0; w1.len()], vec![0.0; w2.len()]);
        for bi in 0..b {
            for (ll, ss, rr) in
                (0..d.l).flat_map(|ll| (0..d.s).flat_map(move |ss| (0..d.r).map(move |rr| (ll, ss, rr))))
            {
                let g = doutp(bi, ss * d.l + ll);
                dout1[bi * kq + rr * d.l + ll] += g * w2[(ll * d.s + ss) * d.r + rr];
                dw2[(ll * d.s + ss) * d.r + rr] += g * out1[bi * kq + rr * d.l + ll];
            }
            for (kk, qq, pp) in
                (0..d.k).flat_map(|kk| (0..d.q).flat_map(move |qq| (0..d.p).map(move |pp| (kk, qq, pp))))
            {
                let g = dout1[bi * kq + kk * d.q + qq];
                if kk * d.p + pp < d.n_in {
                    dx[bi * d.n_in + kk * d.p + pp] += g * w1[(kk * d.q + qq) * d.p + pp];
                }
                dw1[(kk * d.q + qq) * d.p + pp] += g * xp(bi, kk * d.p + pp);
            }
        }
        // The descriptors, over buffers 0..9 in the launchers' order, outputs poisoned.
        let nan = |n: usize| vec![f64::NAN; n];
        let y_len = if grouped_stores { b * d.l * d.s } else { b * d.m_out };
        // Buffers x, w1, w2, out1 (saved), out, bias, out1n (natural scratch), as
        // monarch_forward runs them: out1n permuted into out1 between the products.
        let mut bufs = vec![x, w1, w2, nan(b * kq), nan(y_len), bias.clone(), nan(b * kq)];
        let out1n = if d.group_major() { 6 } else { 3 };
        let mapped = std::cell::Cell::new(0);
        let run = |g: &Gemm, bufs: &mut Vec<Vec<f64>>| match blas.then(|| strided_batched(g, DType::F32)).flatten() {
            Some((args, [a, b, bias, c])) => {
                assert_eq!(bias, 0);
                let mut out = std::mem::take(&mut bufs[c as usize]);
                crate::gemm::host::gemm(&args, &bufs[a as usize], &bufs[b as usize], &mut out);
                bufs[c as usize] = out;
                mapped.set(mapped.get() + 1);
            }
            None => interpret(g, bufs),
        };
        let [first, second] = forward_gemms(&d, grouped_stores, [0, 1, 2, 5, out1n, 3, 4]);
        run(&first, &mut bufs);
        if d.group_major() {
            bufs[3] = permute_to(&bufs[6], d.mid_sizes());
        }
        run(&second, &mut bufs);
        let close = |got: &[f64], want: &[f64], what: &str| {
            assert_eq!(got.len(), want.len(), "{what}");
            for (i, (a, w)) in got.iter().zip(want).enumerate() {
                assert!((a - w).abs() < 1e-12, "{what}[{i}]: {a} vs {w}");
            }
        };
        // The saved out1 in its layout: out1[b, rr·l+ll] at ll·r+rr when group-major.
        let saved = if d.group_major() { permute_to(&out1, d.mid_sizes()) } else { out1.clone() };
        close(&bufs[3], &saved, "out1");
        // A group-major output as monarch_permute leaves it: natural order plus the bias.
        let y = if grouped_stores { permute_back(&bufs[4], d.io_sizes(), Some(&bias)) } else { bufs[4].clone() };
        close(&y, &out, "out");
        bufs.truncate(4);
        // dout as monarch_permute leaves it: [b, ll·s + ss], zero past m_out.
        let dout_arg = if d.group_major() { permute_to(&dout, d.io_sizes()) } else { dout };
        bufs.extend([dout_arg, nan(b * kq), nan(b * d.n_in), nan(dw1.len()), nan(dw2.len()), nan(b * kq)]);
        // As monarch_backward: the first product into dout1g (buffer 9) when grouped, then
        // permuted into dout1 (5).
        let backward = |bufs: &mut Vec<Vec<f64>>, accumulate: bool| {
            for (i, g) in
                backward_gemms(&d, grouped_stores, [0, 1, 2, 3, 4, 5, 6, 7, 8], 9, accumulate).iter().enumerate()
            {
                run(g, bufs);
                if i == 0 && grouped_stores {
                    bufs[5] = permute_back(&bufs[9], d.mid_sizes(), None);
                }
            }
        };
        backward(&mut bufs, false);
        close(&bufs[6], &dx, "dx");
        close(&bufs[7], &dw1, "dw1");
        close(&bufs[8], &dw2, "dw2");
        // accumulate adds to what the gradients held.
        let once = mapped.get();
        backward(&mut bufs, true);
        close(&bufs[6], &dx.iter().map(|v| 2.0 * v).collect::<Vec<_>>(), "dx accumulated");
        close(&bufs[7], &dw1.iter().map(|v| 2.0 * v).collect::<Vec<_>>(), "dw1 accumulated");
        close(&bufs[8], &dw2.iter().map(|v| 2.0 * v).collect::<Vec<_>>(), "dw2 accumulated");
        once
    }

    /// `monarch_permute` to group-major order on the host: `[b, ll·s + ss]` from
    /// `[b, ss·l + ll]`, zero past `mout`.
    fn permute_to(src: &[f64], (rows, l, s, mout): (usize, usize, usize, usize)) -> Vec<f64> {
        let at = |i: usize| (i / (l * s), i % (l * s) / s, i % s);
        let value =
            |(b, ll, ss): (usize, usize, usize)| if ss * l + ll < mout { src[b * mout + ss * l + ll] } else { 0.0 };
        (0..rows * l * s).map(at).map(value).collect()
    }

    /// `monarch_permute` back to natural order on the host: `[b, j]` from `[b, (j % l)·s
    /// + j / l]`, plus the bias.
    fn permute_back(src: &[f64], (rows, l, s, mout): (usize, usize, usize, usize), bias: Option<&[f64]>) -> Vec<f64> {
        let at = |i: usize| (i / mout, i % mout);
        let value = |(b, j): (usize, usize)| src[b * l * s + (j % l) * s + j / l] + bias.map_or(0.0, |v| v[j]);
        (0..rows * mout).map(at).map(value).collect()
    }

    #[test]
    fn sizes_are_checked() {
        let d = MonarchDims { batch: 2, n_in: 16, m_out: 16, k: 4, q: 4, p: 4, l: 4, s: 4, r: 4 };
        assert!(d.check().is_ok());
        assert!(MonarchDims { r: 3, ..d }.check().is_err());
        assert!(MonarchDims { n_in: 17, ..d }.check().is_err());
        assert!(MonarchDims { m_out: 17, ..d }.check().is_err());
    }
}
