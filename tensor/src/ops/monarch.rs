//! The Monarch product (Dao et al. 2022): two block-diagonal factors with fixed
//! permutations between them, computed as two batches of GEMMs on contiguous blocks.
//! The input's block split, its zero padding and the output truncation are folded into
//! GEMM strides (padding is never materialised), and so is the middle permutation when
//! `l` divides `q` (the layer's shapes): each first-factor block then splits into `l`
//! GEMMs that write straight into the second factor's block order. The output
//! permutation is one pass fused with the bias (and its inverse one pass over the output
//! gradient), because GEMMs that write with a column stride of `l` ran slower than
//! contiguous GEMMs plus that pass (see docs/PERFORMANCE.md). Other shapes take one
//! more pass for the middle permutation.
//!
//! Factors `w1` of shape (k, q, p) and `w2` of shape (l, s, r) with `l·r = k·q`. For an
//! input row `x` of length `n = k·p`:
//! `out1[kk·q+qq] = Σ_pp w1[kk,qq,pp]·x[kk·p+pp]`, `y[ll·r+rr] = out1[rr·l+ll]`,
//! `z[ll·s+ss] = Σ_rr w2[ll,ss,rr]·y[ll·r+rr]` and `out[ss·l+ll] = z[ll·s+ss]`.
//! Inputs shorter than `k·p` are zero-padded and outputs may be truncated (both without
//! touching the padding: the GEMMs simply skip it).

use super::matmul::{GemmElem, Mat};
use super::strided_gemm::gemm_strided;
use super::unary::{unary_grad_row, unary_row};
use super::{UnaryOp, compute_dtype, same_dtype};
use crate::cpu::items_per_task;
use crate::{CpuStorage, Error, Float, Result, Shape, Tensor};
use gemm::Parallelism;

/// The factor dimensions of a Monarch product: `w1` is (k, q, p), `w2` is (l, s, r).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonarchShape {
    /// Blocks of the first factor.
    pub k: usize,
    /// Output rows of each first-factor block.
    pub q: usize,
    /// Input columns of each first-factor block.
    pub p: usize,
    /// Blocks of the second factor.
    pub l: usize,
    /// Output rows of each second-factor block.
    pub s: usize,
    /// Input columns of each second-factor block.
    pub r: usize,
}

impl MonarchShape {
    /// The dimensions of two factor shapes, checked (rank 3 each, `l·r = k·q`).
    pub fn of(w1: &Shape, w2: &Shape) -> Result<Self> {
        let op = "monarch";
        let (&[k, q, p], &[l, s, r]) = (w1.dims(), w2.dims()) else {
            crate::bail!(op, "factors must be 3-D (k, q, p) and (l, s, r), got {w1} and {w2}");
        };
        if l * r != k * q {
            crate::bail!(op, "factors {w1} and {w2} do not chain: l·r = {} but k·q = {}", l * r, k * q);
        }
        Ok(MonarchShape { k, q, p, l, s, r })
    }

    /// Input length the factors take, `k·p` (shorter inputs are zero-padded).
    pub fn n(&self) -> usize {
        self.k * self.p
    }

    /// Output length the factors give, `l·s` (outputs may be truncated).
    pub fn m(&self) -> usize {
        self.l * self.s
    }

    /// Columns of input block `kk` that exist when the input has `inp` features.
    fn in_width(&self, kk: usize, inp: usize) -> usize {
        inp.saturating_sub(kk * self.p).min(self.p)
    }

    /// Rows `ss` of output block `ll` whose output `ss·l + ll` is kept (a prefix).
    fn out_count(&self, ll: usize, out: usize) -> usize {
        out.saturating_sub(ll).div_ceil(self.l).min(self.s)
    }
}

/// The results of [`Tensor::monarch_linear`].
#[derive(Clone, Debug)]
pub struct MonarchOut {
    /// The output, (.., out).
    pub y: Tensor,
    /// What backward needs: on the CPU the first factor's output in the second factor's
    /// block order, shape (l, rows, r), `mid[ll, b, rr] = out1[b, rr·l+ll]`, in the
    /// compute dtype; on a GPU `out1`, (rows, k·q): group-major `[b, ll·r + rr]` for
    /// 2 ≤ l ≤ 64, else natural `[b, rr·l + ll]` (`MonarchDims::group_major`).
    pub mid: Tensor,
}

/// The results of [`Tensor::monarch_linear_act`].
#[derive(Clone, Debug)]
pub struct MonarchActOut {
    /// `act(monarch_linear(x) + bias)`, (.., out).
    pub y: Tensor,
    /// As [`MonarchOut::mid`] on a GPU.
    pub mid: Tensor,
    /// The pre-activation without the bias, (rows, l·s), group-major: entry
    /// `[b, ll·s + ss]` is output column `ss·l + ll` (columns past `out` are unused: 0 on
    /// the CPU, computed on a GPU).
    pub pre: Tensor,
}

/// The activations [`Tensor::monarch_linear_act`] fuses: those of MLP blocks, whose
/// derivative depends on the pre-activation alone.
pub const MONARCH_FUSED_ACTS: [UnaryOp; 3] = [UnaryOp::GeluTanh, UnaryOp::GeluErf, UnaryOp::Relu];

/// Whether a product is big enough to spread over threads.
fn par(work: usize) -> Parallelism {
    if work >= 1 << 18 { Parallelism::Rayon(0) } else { Parallelism::None }
}

/// Multiply-adds of the largest single GEMM under which a layer's rows are split over
/// threads rather than each GEMM: small products spend more on spreading than they gain.
const ROW_SPLIT_MACS: usize = 1 << 23;

fn row_major(offset: usize, rs: usize) -> Mat {
    Mat { offset, rs, cs: 1 }
}

/// Problem sizes of one call: `rows` input rows of `inp` features to `out` features.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    rows: usize,
    inp: usize,
    out: usize,
    sh: MonarchShape,
    /// Whether the GEMMs may spread over threads (not inside a row chunk, which has its
    /// own thread).
    threads: bool,
}

/// `f(lo, hi)` on the row ranges of `chunk` rows (the last ragged) that cover `rows`,
/// over rayon; the results with their ranges, in row order.
fn over_chunks<R: Send>(rows: usize, chunk: usize, f: impl Fn(usize, usize) -> R + Sync) -> Vec<((usize, usize), R)> {
    use rayon::prelude::*;
    let ranges: Vec<(usize, usize)> = (0..rows).step_by(chunk.max(1)).map(|lo| (lo, (lo + chunk).min(rows))).collect();
    ranges.into_par_iter().map(|(lo, hi)| ((lo, hi), f(lo, hi))).collect()
}

/// [`forward`], with the rows split over threads where [`Sizes::row_chunk`] says so:
/// each chunk runs whole on one thread, then `yt` (`[ll, b, rr]`) is assembled from the
/// chunks' blocks; `y` and `zt` are the chunks' rows in order.
fn forward_rows<T: GemmElem + Float>(
    x: &[T],
    w1: &[T],
    w2: &[T],
    bias: Option<&[T]>,
    z: Sizes,
    act: Option<UnaryOp>,
) -> (Vec<T>, Vec<T>, Option<Vec<T>>) {
    let Some(chunk) = z.row_chunk() else { return forward(x, w1, w2, bias, z, act) };
    let (l, r, ls) = (z.sh.l, z.sh.r, z.sh.l * z.sh.s);
    let parts =
        over_chunks(z.rows, chunk, |lo, hi| forward(&x[lo * z.inp..hi * z.inp], w1, w2, bias, z.rows_of(lo, hi), act));
    let (mut y, mut yt) = (Vec::with_capacity(z.rows * z.out), vec![T::ZERO; l * z.rows * r]);
    let mut zt = act.map(|_| Vec::with_capacity(z.rows * ls));
    for ((lo, hi), (py, pyt, pzt)) in parts {
        let n = hi - lo;
        y.extend_from_slice(&py);
        for ll in 0..l {
            yt[(ll * z.rows + lo) * r..(ll * z.rows + hi) * r].copy_from_slice(&pyt[ll * n * r..(ll + 1) * n * r]);
        }
        if let (Some(zt), Some(p)) = (zt.as_mut(), pzt) {
            zt.extend_from_slice(&p);
        }
    }
    (y, yt, zt)
}

/// The Monarch layer: `(y, yt)`, and with `act` also `zt` (the group-major
/// pre-activation `[b, ll·s + ss]`, bias not added), `y` then being the activation of the
/// output plus bias, applied in the output permutation's pass.
fn forward<T: GemmElem + Float>(
    x: &[T],
    w1: &[T],
    w2: &[T],
    bias: Option<&[T]>,
    z: Sizes,
    act: Option<UnaryOp>,
) -> (Vec<T>, Vec<T>, Option<Vec<T>>) {
    let MonarchShape { k, q, p, l, s, r } = z.sh;
    let (rows, kq) = (z.rows, k * q);
    let mut yt = vec![T::ZERO; l * rows * r];
    if q % l == 0 {
        // yt[ll, b, kk·q/l + t] = Σ_pp x[b, kk·p+pp] · w1[kk, ll + l·t, pp]: with l | q the
        // middle permutation maps the first factor's rows ll, ll+l, … of block kk to one
        // contiguous run of yt, so the GEMMs write yt directly.
        for kk in 0..k {
            let w = z.sh.in_width(kk, z.inp);
            let a = row_major(kk * p, z.inp);
            for ll in 0..l {
                let w1t = Mat { offset: (kk * q + ll) * p, rs: 1, cs: l * p };
                let d = row_major(ll * rows * r + kk * q / l, r);
                gemm_strided((rows, q / l, w), &mut yt, d, x, a, w1, w1t, false, z.par(rows * q / l * w));
            }
        }
    } else {
        let mut out1 = take_scratch::<T>(rows * kq);
        for kk in 0..k {
            let w = z.sh.in_width(kk, z.inp);
            // out1[b, kk·q+qq] = Σ_pp x[b, kk·p+pp] · w1[kk, qq, pp]
            let w1t = Mat { offset: kk * q * p, rs: 1, cs: p };
            let (a, d) = (row_major(kk * p, z.inp), row_major(kk * q, kq));
            gemm_strided((rows, q, w), &mut out1, d, x, a, w1, w1t, false, z.par(rows * q * w));
        }
        // yt[ll, b, rr] = out1[b, rr·l+ll]: the middle permutation in one pass, so that the
        // second factor's GEMMs (here and in backward, which keeps yt) read contiguous blocks.
        for_rows(&mut yt, r, |lb, row| {
            let (ll, b) = (lb / rows, lb % rows);
            for (rr, v) in row.iter_mut().enumerate() {
                *v = out1[b * kq + rr * l + ll];
            }
        });
        give_scratch(out1);
    }
    // zt[b, ll, ss] = Σ_rr yt[ll, b, rr] · w2[ll, ss, rr], each block's rows contiguous;
    // the output permutation is then one pass within each row that also adds the bias (a
    // GEMM writing with column stride l directly is slower than that pass).
    let mut zt = take_scratch::<T>(rows * l * s);
    for ll in 0..l {
        let cnt = z.sh.out_count(ll, z.out);
        let a = row_major(ll * rows * r, r);
        let w2t = Mat { offset: ll * s * r, rs: 1, cs: r };
        let d = row_major(ll * s, l * s);
        gemm_strided((rows, cnt, r), &mut zt, d, &yt, a, w2, w2t, false, z.par(rows * cnt * r));
    }
    if act.is_some() && z.out < l * s {
        // The kept pre-activation is whole: zeros past the output (scratch holds anything).
        for_rows(&mut zt, l * s, |_, row| {
            for (ll, block) in row.chunks_mut(s).enumerate() {
                block[z.sh.out_count(ll, z.out)..].fill(T::ZERO);
            }
        });
    }
    let mut y = vec![T::ZERO; rows * z.out];
    for_rows(&mut y, z.out, |b, yr| {
        // Output ss·l + ll is zt[b, ll, ss]: row chunks of l outputs share one ss.
        let zr = &zt[b * l * s..(b + 1) * l * s];
        match bias {
            Some(bias) => {
                for (ss, (ys, bs)) in yr.chunks_mut(l).zip(bias.chunks(l)).enumerate() {
                    for (ll, (v, &c)) in ys.iter_mut().zip(bs).enumerate() {
                        *v = zr[ll * s + ss] + c;
                    }
                }
            }
            None => {
                for (ss, ys) in yr.chunks_mut(l).enumerate() {
                    for (ll, v) in ys.iter_mut().enumerate() {
                        *v = zr[ll * s + ss];
                    }
                }
            }
        }
        // The activation on the row while it is in L1, vectorised (contiguous).
        if let Some(a) = act {
            unary_row(yr, a);
        }
    });
    if act.is_some() {
        return (y, yt, Some(zt));
    }
    give_scratch(zt);
    (y, yt, None)
}

thread_local! {
    /// Scratch buffers of this thread, reused across calls: the large temporaries of a
    /// training loop would otherwise fault in fresh zeroed pages on every call.
    static SCRATCH: std::cell::RefCell<Vec<Box<dyn std::any::Any>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Buffers kept per thread (a backward pass holds three at once).
const SCRATCH_KEPT: usize = 4;

/// A buffer of `len` elements from this thread's scratch. Its contents are arbitrary:
/// callers write every element they later read.
fn take_scratch<T: GemmElem>(len: usize) -> Vec<T> {
    let reused = SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let i = s.iter().position(|b| b.downcast_ref::<Vec<T>>().is_some_and(|v| v.capacity() >= len))?;
        s.swap_remove(i).downcast::<Vec<T>>().ok()
    });
    let mut v = reused.map_or_else(|| Vec::with_capacity(len), |b| *b);
    v.resize(len, T::ZERO);
    v
}

/// Returns a buffer to this thread's scratch (the smallest is dropped beyond `SCRATCH_KEPT`).
fn give_scratch<T: GemmElem>(v: Vec<T>) {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.push(Box::new(v));
        if s.len() > SCRATCH_KEPT {
            let size = |b: &Box<dyn std::any::Any>| b.downcast_ref::<Vec<T>>().map_or(0, |v| v.capacity());
            let smallest = (0..s.len()).min_by_key(|&i| size(&s[i])).expect("not empty");
            s.swap_remove(smallest);
        }
    });
}

/// Runs `f(row, data)` on every row of `width` elements of `buf`, over rayon for large buffers.
fn for_rows<T: GemmElem>(buf: &mut [T], width: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if width == 0 {
        return;
    }
    if buf.len() >= crate::cpu::PAR_MIN {
        use rayon::prelude::*;
        buf.par_chunks_mut(width).with_min_len(items_per_task(width)).enumerate().for_each(|(b, r)| f(b, r));
    } else {
        buf.chunks_mut(width).enumerate().for_each(|(b, r)| f(b, r));
    }
}

/// What the backward of a fused activation reads: the forward's `zt`, bias and activation.
type ActSaved<'a, T> = (&'a [T], Option<&'a [T]>, UnaryOp);

/// [`backward`], with the rows split over threads where [`Sizes::row_chunk`] says so:
/// each chunk gathers its rows of `yt` and runs whole on one thread; `dx` and `dzt` are the
/// chunks' rows in order, `dw1` and `dw2` the sums of the chunks' (in chunk order).
fn backward_rows<T: GemmElem + Float>(
    [x, w1, w2, yt, dy]: [&[T]; 5],
    z: Sizes,
    want: [bool; 3],
    fused: Option<ActSaved<'_, T>>,
) -> ([Option<Vec<T>>; 3], Option<Vec<T>>) {
    let Some(chunk) = z.row_chunk() else { return backward([x, w1, w2, yt, dy], z, want, fused) };
    let (l, r, ls) = (z.sh.l, z.sh.r, z.sh.l * z.sh.s);
    let parts = over_chunks(z.rows, chunk, |lo, hi| {
        let mut pyt = Vec::with_capacity(l * (hi - lo) * r);
        for ll in 0..l {
            pyt.extend_from_slice(&yt[(ll * z.rows + lo) * r..(ll * z.rows + hi) * r]);
        }
        let pf = fused.map(|(zt, bias, act)| (&zt[lo * ls..hi * ls], bias, act));
        let (px, pg) = (&x[lo * z.inp..hi * z.inp], &dy[lo * z.out..hi * z.out]);
        backward([px, w1, w2, &pyt, pg], z.rows_of(lo, hi), want, pf)
    });
    let mut dx = want[0].then(|| Vec::with_capacity(z.rows * z.inp));
    let (mut dw1, mut dw2): (Option<Vec<T>>, Option<Vec<T>>) = (None, None);
    let mut dzt = fused.map(|_| Vec::with_capacity(z.rows * ls));
    let add = |sum: &mut Option<Vec<T>>, part: Option<Vec<T>>| match (sum.as_mut(), part) {
        (Some(s), Some(p)) => s.iter_mut().zip(p).for_each(|(a, b)| *a += b),
        (None, p) => *sum = p,
        (Some(_), None) => {}
    };
    for (_, ([pdx, pdw1, pdw2], pdzt)) in parts {
        if let (Some(dx), Some(p)) = (dx.as_mut(), pdx) {
            dx.extend_from_slice(&p);
        }
        add(&mut dw1, pdw1);
        add(&mut dw2, pdw2);
        if let (Some(d), Some(p)) = (dzt.as_mut(), pdzt) {
            d.extend_from_slice(&p);
        }
    }
    ([dx, dw1, dw2], dzt)
}

/// Gradients `[dx, dw1, dw2]`, each only when wanted. With `fused`, `dy` is the
/// activation output's gradient: it is multiplied by the activation's derivative at
/// `zt + bias` in the pass that undoes
/// the output permutation, and that product (`dzt`, the pre-activation's gradient) is
/// returned too.
fn backward<T: GemmElem + Float>(
    [x, w1, w2, yt, dy]: [&[T]; 5],
    z: Sizes,
    want: [bool; 3],
    fused: Option<ActSaved<'_, T>>,
) -> ([Option<Vec<T>>; 3], Option<Vec<T>>) {
    let MonarchShape { k, q, p, l, s, r } = z.sh;
    let (rows, kq) = (z.rows, k * q);
    // dzt[b, ll, ss] = dy[b, ss·l+ll]: the output permutation undone in one pass within
    // each row, so that the GEMMs below read blocks with contiguous rows. Entries past the
    // output (ss ≥ out_count) are never read, and with an activation are zero.
    let mut dzt = take_scratch::<T>(rows * l * s);
    // The fused activation's bias in group-major order, `bias_g[ll·s + ss] = bias[ss·l + ll]`
    // (0 past the output).
    let bias_g = fused
        .and_then(|(_, bias, _)| bias)
        .map(|bias| (0..l * s).map(|i| bias.get((i % s) * l + i / s).copied().unwrap_or(T::ZERO)).collect::<Vec<T>>());
    for_rows(&mut dzt, l * s, |b, row| {
        let dyr = &dy[b * z.out..(b + 1) * z.out];
        match fused {
            None => {
                for (ss, gs) in dyr.chunks(l).enumerate() {
                    for (ll, &g) in gs.iter().enumerate() {
                        row[ll * s + ss] = g;
                    }
                }
            }
            Some((zt, _, act)) => {
                row.fill(T::ZERO);
                for (ss, gs) in dyr.chunks(l).enumerate() {
                    for (ll, &g) in gs.iter().enumerate() {
                        row[ll * s + ss] = g;
                    }
                }
                // Times the derivative at the pre-activation, contiguous in this layout
                // (the bias permuted alike once per call).
                let zr = &zt[b * l * s..(b + 1) * l * s];
                unary_grad_row(row, zr, bias_g.as_deref(), act);
            }
        }
    });
    let mut dw2 = want[2].then(|| vec![T::ZERO; l * s * r]);
    let need_dout1 = want[0] || want[1];
    let mut dyt = take_scratch::<T>(if need_dout1 { l * rows * r } else { 0 });
    for ll in 0..l {
        let cnt = z.sh.out_count(ll, z.out);
        let y_ll = row_major(ll * rows * r, r);
        if let Some(dw2) = dw2.as_mut() {
            // dw2[ll, ss, rr] = Σ_b dy[b, ss·l+ll] · yt[ll, b, rr]
            let dzt_t = Mat { offset: ll * s, rs: 1, cs: l * s };
            let d = row_major(ll * s * r, r);
            gemm_strided((cnt, r, rows), dw2, d, &dzt, dzt_t, yt, y_ll, false, z.par(cnt * r * rows));
        }
        if need_dout1 {
            // dyt[ll, b, rr] = Σ_ss dy[b, ss·l+ll] · w2[ll, ss, rr]
            let (a, w) = (row_major(ll * s, l * s), row_major(ll * s * r, r));
            let d = row_major(ll * rows * r, r);
            gemm_strided((rows, r, cnt), &mut dyt, d, &dzt, a, w2, w, false, z.par(rows * r * cnt));
        }
    }
    // Kept for the fused activation's bias gradient, else back to scratch for the buffers below.
    let dzt = keep_dzt(dzt, fused.is_some());
    let mut dw1 = want[1].then(|| vec![T::ZERO; k * q * p]);
    let mut dx = want[0].then(|| vec![T::ZERO; rows * z.inp]);
    if q % l == 0 {
        // With l | q, rows ll, ll+l, … of first-factor block kk are one contiguous run of
        // dyt (see `forward`): the GEMMs read dyt directly.
        for kk in 0..k {
            let (w, x_kk) = (z.sh.in_width(kk, z.inp), row_major(kk * p, z.inp));
            for ll in 0..l {
                let run = ll * rows * r + kk * q / l;
                let w1_rows = Mat { offset: (kk * q + ll) * p, rs: l * p, cs: 1 };
                if let Some(dw1) = dw1.as_mut() {
                    // dw1[kk, ll + l·t, pp] = Σ_b dyt[ll, b, kk·q/l + t] · x[b, kk·p+pp]
                    let dt = Mat { offset: run, rs: 1, cs: r };
                    gemm_strided((q / l, w, rows), dw1, w1_rows, &dyt, dt, x, x_kk, false, z.par(q / l * w * rows));
                }
                if let Some(dx) = dx.as_mut() {
                    // dx[b, kk·p+pp] += Σ_t dyt[ll, b, kk·q/l + t] · w1[kk, ll + l·t, pp]
                    let work = z.par(rows * w * q / l);
                    gemm_strided((rows, w, q / l), dx, x_kk, &dyt, row_major(run, r), w1, w1_rows, ll > 0, work);
                }
            }
        }
        give_scratch(dyt);
        return ([dx, dw1, dw2], dzt);
    }
    // dout1[b, rr·l+ll] = dyt[ll, b, rr]: the middle permutation undone in one pass.
    let mut dout1 = take_scratch::<T>(if need_dout1 { rows * kq } else { 0 });
    if need_dout1 {
        for_rows(&mut dout1, kq, |b, row| {
            // Entry rr·l + ll comes from dyt[ll, b, rr]: chunks of l share one rr.
            for (rr, chunk) in row.chunks_mut(l).enumerate() {
                for (ll, v) in chunk.iter_mut().enumerate() {
                    *v = dyt[(ll * rows + b) * r + rr];
                }
            }
        });
    }
    give_scratch(dyt);
    for kk in 0..k {
        let w = z.sh.in_width(kk, z.inp);
        let x_kk = row_major(kk * p, z.inp);
        let w1_kk = row_major(kk * q * p, p);
        if let Some(dw1) = dw1.as_mut() {
            // dw1[kk, qq, pp] = Σ_b dout1[b, kk·q+qq] · x[b, kk·p+pp]
            let dt = Mat { offset: kk * q, rs: 1, cs: kq };
            gemm_strided((q, w, rows), dw1, w1_kk, &dout1, dt, x, x_kk, false, z.par(q * w * rows));
        }
        if let Some(dx) = dx.as_mut() {
            // dx[b, kk·p+pp] = Σ_qq dout1[b, kk·q+qq] · w1[kk, qq, pp]
            let d1 = row_major(kk * q, kq);
            gemm_strided((rows, w, q), dx, x_kk, &dout1, d1, w1, w1_kk, false, z.par(rows * w * q));
        }
    }
    give_scratch(dout1);
    ([dx, dw1, dw2], dzt)
}

/// `dzt` when the caller wants it (the fused activation's bias gradient), else back to scratch.
fn keep_dzt<T: GemmElem>(dzt: Vec<T>, keep: bool) -> Option<Vec<T>> {
    if keep {
        return Some(dzt);
    }
    give_scratch(dzt);
    None
}

/// Checks that `bias`, if given, is a vector of `out` entries of `x`'s dtype.
fn check_bias(x: &Tensor, bias: Option<&Tensor>, out: usize, op: &'static str) -> Result<()> {
    if let Some(b) = bias {
        same_dtype(x, b, op)?;
        if b.dims() != [out] {
            crate::bail!(op, "bias of shape {} does not match {out} outputs", b.shape());
        }
    }
    Ok(())
}

/// The data of a tensor in its compute dtype, contiguous, from its first element.
fn data<T: crate::WithDType>(t: &Tensor, op: &'static str) -> Result<(Tensor, usize)> {
    let c = compute_dtype(t, op)?.contiguous()?;
    let off = c.layout().offset();
    c.cpu_slice::<T>(op)?;
    Ok((c, off))
}

/// Runs `$body` with `$ty` bound to f32 or f64, whichever `$t` computes in.
macro_rules! by_float {
    ($t:expr, $op:expr, $ty:ident => $body:expr) => {
        match compute_dtype($t, $op)?.dtype() {
            crate::DType::F32 => {
                type $ty = f32;
                $body
            }
            _ => {
                type $ty = f64;
                $body
            }
        }
    };
}

impl Tensor {
    /// Checks operands of a Monarch product and returns its sizes.
    fn monarch_sizes(&self, w1: &Tensor, w2: &Tensor, out: usize, op: &'static str) -> Result<Sizes> {
        same_dtype(self, w1, op)?;
        same_dtype(self, w2, op)?;
        let sh = MonarchShape::of(w1.shape(), w2.shape())?;
        let Some(&inp) = self.dims().last().filter(|&&i| i > 0) else {
            crate::bail!(op, "the input must have a non-empty feature dimension, got shape {}", self.shape());
        };
        if inp > sh.n() {
            crate::bail!(op, "input of {inp} features is longer than the factors' {} (shape {})", sh.n(), self.shape());
        }
        if out > sh.m() {
            crate::bail!(op, "{out} outputs asked but the factors give {}", sh.m());
        }
        Ok(Sizes { rows: self.elem_count() / inp.max(1), inp, out, sh, threads: true })
    }

    /// The Monarch product of `x` (.., k·p) with factors `w1` (k, q, p) and `w2`
    /// (l, s, r): (.., l·s). See the module documentation for the exact definition.
    pub fn monarch_mul(&self, w1: &Tensor, w2: &Tensor) -> Result<Tensor> {
        let sh = MonarchShape::of(w1.shape(), w2.shape())?;
        if self.dims().last() != Some(&sh.n()) {
            return Err(Error::ShapeMismatch { op: "monarch_mul", lhs: self.shape().clone(), rhs: w1.shape().clone() });
        }
        Ok(self.monarch_linear(w1, w2, None, sh.m())?.y)
    }

    /// The Monarch layer `x (.., in) → (.., out)`: inputs zero-padded to `k·p`, the
    /// Monarch product, outputs truncated to `out`, plus an optional `bias` (out) that
    /// is folded into the second GEMM. Also returns the intermediate that
    /// [`monarch_backward`](Self::monarch_backward) needs.
    pub fn monarch_linear(&self, w1: &Tensor, w2: &Tensor, bias: Option<&Tensor>, out: usize) -> Result<MonarchOut> {
        let op = "monarch_linear";
        let z = self.monarch_sizes(w1, w2, out, op)?;
        check_bias(self, bias, out, op)?;
        if self.device() != crate::Device::Cpu {
            let (y, mid) = self.cuda_monarch(w1, w2, bias, z.sh, out)?;
            return Ok(MonarchOut { y, mid });
        }
        let (y, mid, _) = self.cpu_monarch(w1, w2, bias, z, None, op)?;
        Ok(MonarchOut { y, mid })
    }

    /// `act` of [`monarch_linear`](Self::monarch_linear) for the activations of MLP
    /// blocks (`GeluTanh`, `GeluErf`, `Relu`; see [`MONARCH_FUSED_ACTS`]), applied in the
    /// pass that permutes the output (and its derivative in the pass that permutes the
    /// output gradient, see [`monarch_act_backward`](Self::monarch_act_backward)) instead
    /// of a pass of its own each way. `None` for other activations, and where the layout
    /// has no such pass: on a GPU when the products do not write group-major copies
    /// (`MonarchDims::grouped_stores`: l outside 2..=64, or strided stores). Compose the
    /// two ops then.
    pub fn monarch_linear_act(
        &self,
        w1: &Tensor,
        w2: &Tensor,
        bias: Option<&Tensor>,
        out: usize,
        act: UnaryOp,
    ) -> Result<Option<MonarchActOut>> {
        let op = "monarch_linear_act";
        let z = self.monarch_sizes(w1, w2, out, op)?;
        check_bias(self, bias, out, op)?;
        if !MONARCH_FUSED_ACTS.contains(&act) {
            return Ok(None);
        }
        if self.device() != crate::Device::Cpu {
            return self.cuda_monarch_act(w1, w2, bias, z.sh, out, act);
        }
        let (y, mid, pre) = self.cpu_monarch(w1, w2, bias, z, Some(act), op)?;
        Ok(pre.map(|pre| MonarchActOut { y, mid, pre }))
    }

    /// The CPU forward: `(y, mid, pre)`, `pre` with `act` only.
    fn cpu_monarch(
        &self,
        w1: &Tensor,
        w2: &Tensor,
        bias: Option<&Tensor>,
        z: Sizes,
        act: Option<UnaryOp>,
        op: &'static str,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let mut out_dims = self.dims().to_vec();
        *out_dims.last_mut().expect("rank checked") = z.out;
        let (y, mid, pre) = by_float!(self, op, T => {
            let ((xc, xo), (ac, ao), (bc, bo)) = (data::<T>(self, op)?, data::<T>(w1, op)?, data::<T>(w2, op)?);
            let bias = bias.map(|b| data::<T>(b, op)).transpose()?;
            let bias = bias.as_ref().map(|(t, o)| t.cpu_slice::<T>(op).map(|s| &s[*o..])).transpose()?;
            let (x, a, b) = (&xc.cpu_slice::<T>(op)?[xo..], &ac.cpu_slice::<T>(op)?[ao..], &bc.cpu_slice::<T>(op)?[bo..]);
            let (y, mid, pre) = forward_rows::<T>(x, a, b, bias, z, act);
            (CpuStorage::from(y), CpuStorage::from(mid), pre.map(CpuStorage::from))
        });
        let pre = pre.map(|p| Tensor::from_cpu(p, [z.rows, z.sh.l * z.sh.s]));
        Ok((
            Tensor::from_cpu(y, out_dims).to_dtype(self.dtype())?,
            Tensor::from_cpu(mid, [z.sh.l, z.rows, z.sh.r]),
            pre,
        ))
    }

    /// Gradients `[dx, dw1, dw2, dbias]` of [`monarch_linear_act`](Self::monarch_linear_act)
    /// with `act` from the output gradient `dy` and the saved `mid` and `pre`, each
    /// computed only when `want`ed (`dbias` needs `bias`).
    #[allow(clippy::too_many_arguments)]
    pub fn monarch_act_backward(
        x: &Tensor,
        w1: &Tensor,
        w2: &Tensor,
        bias: Option<&Tensor>,
        [mid, pre]: [&Tensor; 2],
        dy: &Tensor,
        act: UnaryOp,
        want: [bool; 4],
    ) -> Result<[Option<Tensor>; 4]> {
        let op = "monarch_act_backward";
        let out = *dy.dims().last().unwrap_or(&0);
        let z = x.monarch_sizes(w1, w2, out, op)?;
        check_bias(x, bias, out, op)?;
        if !MONARCH_FUSED_ACTS.contains(&act) {
            crate::bail!(op, "{} is not an activation the Monarch op fuses", act.name());
        }
        if !z.backward_shapes_fit(x, mid, dy) || pre.dims() != [z.rows, z.sh.l * z.sh.s] {
            return Err(Error::ShapeMismatch { op, lhs: x.shape().clone(), rhs: dy.shape().clone() });
        }
        if x.device() != crate::Device::Cpu {
            return Tensor::cuda_monarch_act_backward([x, w1, w2, mid, pre, dy], bias, z.sh, act, want);
        }
        let grads = [want[0], want[1], want[2]];
        let fused = Some((pre, bias, act));
        let ([dx, dw1, dw2], dpre) = Tensor::cpu_monarch_backward([x, w1, w2, mid, dy], z, grads, fused, op)?;
        let dbias = match (want[3] && bias.is_some(), dpre) {
            (true, Some(d)) => Some(bias_grad(&d, z.sh.l, z.sh.s, out)?.to_dtype(x.dtype())?),
            _ => None,
        };
        Ok([dx, dw1, dw2, dbias])
    }

    /// Gradients `[dx, dw1, dw2]` of [`monarch_linear`](Self::monarch_linear) from the
    /// output gradient `dy` and the saved `mid`, each computed only when `want`ed: four
    /// batches of GEMMs on contiguous blocks and one pass per permutation.
    pub fn monarch_backward(
        x: &Tensor,
        w1: &Tensor,
        w2: &Tensor,
        mid: &Tensor,
        dy: &Tensor,
        want: [bool; 3],
    ) -> Result<[Option<Tensor>; 3]> {
        let op = "monarch_backward";
        let out = *dy.dims().last().unwrap_or(&0);
        let z = x.monarch_sizes(w1, w2, out, op)?;
        if !z.backward_shapes_fit(x, mid, dy) {
            return Err(Error::ShapeMismatch { op, lhs: x.shape().clone(), rhs: dy.shape().clone() });
        }
        if x.device() != crate::Device::Cpu {
            return Tensor::cuda_monarch_backward(x, w1, w2, mid, dy, z.sh, want);
        }
        Ok(Tensor::cpu_monarch_backward([x, w1, w2, mid, dy], z, want, None, op)?.0)
    }

    /// The CPU backward over `[x, w1, w2, mid, dy]`; with `fused` (`pre`, `bias`, the
    /// activation) through the activation's derivative, returning the pre-activation's
    /// gradient (rows, l·s) too.
    fn cpu_monarch_backward(
        [x, w1, w2, mid, dy]: [&Tensor; 5],
        z: Sizes,
        want: [bool; 3],
        fused: Option<(&Tensor, Option<&Tensor>, UnaryOp)>,
        op: &'static str,
    ) -> Result<([Option<Tensor>; 3], Option<Tensor>)> {
        let ([dx, dw1, dw2], dpre) = by_float!(x, op, T => {
            let ((xc, xo), (ac, ao), (bc, bo)) = (data::<T>(x, op)?, data::<T>(w1, op)?, data::<T>(w2, op)?);
            let ((oc, oo), (gc, go)) = (data::<T>(mid, op)?, data::<T>(dy, op)?);
            let (xs, a, b) = (&xc.cpu_slice::<T>(op)?[xo..], &ac.cpu_slice::<T>(op)?[ao..], &bc.cpu_slice::<T>(op)?[bo..]);
            let (o1, g) = (&oc.cpu_slice::<T>(op)?[oo..], &gc.cpu_slice::<T>(op)?[go..]);
            let pre = fused.map(|(p, _, _)| data::<T>(p, op)).transpose()?;
            let bias = fused.and_then(|(_, b, _)| b).map(|b| data::<T>(b, op)).transpose()?;
            let pre = pre.as_ref().map(|(t, o)| t.cpu_slice::<T>(op).map(|s| &s[*o..])).transpose()?;
            let bias = bias.as_ref().map(|(t, o)| t.cpu_slice::<T>(op).map(|s| &s[*o..])).transpose()?;
            let act = fused.map(|(_, _, a)| a);
            let (grads, dpre) = backward_rows::<T>([xs, a, b, o1, g], z, want, pre.zip(act).map(|(p, a)| (p, bias, a)));
            (grads.map(|v| v.map(CpuStorage::from)), dpre.map(CpuStorage::from))
        });
        let wrap = |s: Option<CpuStorage>, shape: &Shape| {
            s.map(|s| Tensor::from_cpu(s, shape).to_dtype(x.dtype())).transpose()
        };
        let dpre = dpre.map(|d| Tensor::from_cpu(d, [z.rows, z.sh.l * z.sh.s]));
        Ok(([wrap(dx, x.shape())?, wrap(dw1, w1.shape())?, wrap(dw2, w2.shape())?], dpre))
    }
}

impl Sizes {
    /// How a product of `work` multiply-adds runs: over threads when this call may and
    /// the product is big enough.
    fn par(&self, work: usize) -> Parallelism {
        if self.threads { par(work) } else { Parallelism::None }
    }

    /// Rows per chunk when this call's rows are split over threads (each chunk's GEMMs
    /// on one thread): when every GEMM is under [`ROW_SPLIT_MACS`] and each of at least
    /// two threads gets 64 rows or more. `None`: one call, each GEMM spread itself.
    fn row_chunk(&self) -> Option<usize> {
        let MonarchShape { q, p, l, s, r, .. } = self.sh;
        let threads = rayon::current_num_threads();
        // The first factor's GEMMs are q/l wide when l | q (see `forward`), else q.
        let first = if l > 0 && q % l == 0 { q / l } else { q };
        let per_gemm = self.rows * (first * p).max(s * r);
        let chunk = self.rows.div_ceil(threads.max(1));
        (self.threads && threads > 1 && chunk >= 64 && per_gemm < ROW_SPLIT_MACS && l > 0).then_some(chunk)
    }

    /// These sizes for rows `lo..hi`, its GEMMs on the calling thread.
    fn rows_of(&self, lo: usize, hi: usize) -> Sizes {
        Sizes { rows: hi - lo, threads: false, ..*self }
    }

    /// Whether `dy` has `x`'s rows and `mid` the layout of `x`'s device (CPU: (l, rows,
    /// r); GPU: (rows, k·q)).
    fn backward_shapes_fit(&self, x: &Tensor, mid: &Tensor, dy: &Tensor) -> bool {
        let same_rows = dy.rank() == x.rank() && dy.dims()[..dy.rank() - 1] == x.dims()[..x.rank() - 1];
        let mid_dims = if x.device() != crate::Device::Cpu {
            vec![self.rows, self.sh.k * self.sh.q]
        } else {
            vec![self.sh.l, self.rows, self.sh.r]
        };
        same_rows && mid.dims() == mid_dims
    }
}

/// The bias gradient from the pre-activation's group-major gradient `dpre` (rows, l·s):
/// `dbias[ss·l + ll] = Σ_b dpre[b, ll·s + ss]` for the first `out` columns.
pub(crate) fn bias_grad(dpre: &Tensor, l: usize, s: usize, out: usize) -> Result<Tensor> {
    let cols = dpre.sum(0)?.reshape([l, s])?.transpose(0, 1)?.contiguous()?;
    cols.reshape([l * s])?.narrow(0, 0, out)?.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn rnd(shape: &[usize], seed: u64) -> Tensor {
        Tensor::randn(shape, 0.0, 1.0, seed).unwrap().to_dtype(DType::F64).unwrap()
    }

    /// The dense matrix by the closed form of the issue:
    /// `M[ss·l+ll, kk·p+pp] = Σ_{qq: (kk·q+qq) mod l = ll} w2[ll, ss, (kk·q+qq) div l] · w1[kk, qq, pp]`.
    fn closed_form(w1: &Tensor, w2: &Tensor) -> Vec<Vec<f64>> {
        let MonarchShape { k, q, p, l, s, r } = MonarchShape::of(w1.shape(), w2.shape()).unwrap();
        let (a, b) = (w1.to_vec::<f64>().unwrap(), w2.to_vec::<f64>().unwrap());
        let mut m = vec![vec![0.0; k * p]; l * s];
        for kk in 0..k {
            for qq in 0..q {
                let (ll, rr) = ((kk * q + qq) % l, (kk * q + qq) / l);
                for ss in 0..s {
                    for pp in 0..p {
                        m[ss * l + ll][kk * p + pp] += b[(ll * s + ss) * r + rr] * a[(kk * q + qq) * p + pp];
                    }
                }
            }
        }
        m
    }

    #[test]
    fn matches_the_closed_form_on_square_rectangular_and_uneven_shapes() {
        // (k, q, p, l, s, r): square 4×4 grid, rectangular both ways, l ≠ k.
        for (i, &(k, q, p, l, s, r)) in
            [(4, 4, 4, 4, 4, 4), (3, 2, 5, 3, 4, 2), (2, 6, 3, 4, 2, 3), (4, 3, 2, 2, 5, 6), (1, 3, 7, 3, 2, 1)]
                .iter()
                .enumerate()
        {
            let (w1, w2) = (rnd(&[k, q, p], i as u64), rnd(&[l, s, r], 10 + i as u64));
            let m = closed_form(&w1, &w2);
            let x = rnd(&[2, 3, k * p], 20 + i as u64);
            let y = x.monarch_mul(&w1, &w2).unwrap();
            assert_eq!(y.dims(), &[2, 3, l * s]);
            let (xv, yv) = (x.to_vec::<f64>().unwrap(), y.to_vec::<f64>().unwrap());
            for row in 0..6 {
                for (o, mo) in m.iter().enumerate() {
                    let want: f64 = mo.iter().zip(&xv[row * k * p..]).map(|(a, b)| a * b).sum();
                    assert!((yv[row * l * s + o] - want).abs() < 1e-10, "shape {i} row {row} out {o}");
                }
            }
        }
    }

    /// Rows split over two threads give what one call gives: forward (with and without a
    /// fused activation, with the middle permutation in the GEMMs or as a pass) and every
    /// gradient, on a ragged split (1003 rows), padded inputs and truncated outputs.
    #[test]
    fn rows_split_over_threads_match_one_call() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        // (k, q, p, l, s, r, inputs, outputs): l | q, and l ∤ q.
        for (k, q, p, l, s, r, inp, out) in [(4, 16, 16, 4, 16, 16, 60, 62), (3, 8, 10, 4, 6, 6, 30, 24)] {
            let (w1, w2) = (rnd(&[k, q, p], 1), rnd(&[l, s, r], 2));
            let (x, dy, b) = (rnd(&[1003, inp], 3), rnd(&[1003, out], 4), rnd(&[out], 5));
            let f = |t: &Tensor| t.contiguous().unwrap().to_vec::<f64>().unwrap();
            let (xv, w1v, w2v, dyv, bv) = (f(&x), f(&w1), f(&w2), f(&dy), f(&b));
            let sh = MonarchShape { k, q, p, l, s, r };
            let z = Sizes { rows: 1003, inp, out, sh, threads: true };
            pool.install(|| {
                assert!(z.row_chunk().is_some(), "the split is not taken");
                for act in [None, Some(UnaryOp::GeluTanh)] {
                    let whole = forward(&xv, &w1v, &w2v, Some(&bv), z, act);
                    let split = forward_rows(&xv, &w1v, &w2v, Some(&bv), z, act);
                    assert_eq!((&whole.0, &whole.1, &whole.2), (&split.0, &split.1, &split.2));
                    let fused = whole.2.as_deref().map(|zt| (zt, Some(&bv[..]), UnaryOp::GeluTanh));
                    let inputs = [&xv[..], &w1v, &w2v, &whole.1, &dyv];
                    let (one, one_dzt) = backward(inputs, z, [true; 3], fused);
                    let (two, two_dzt) = backward_rows(inputs, z, [true; 3], fused);
                    assert_eq!((&one[0], &one_dzt), (&two[0], &two_dzt), "dx and dzt are row by row");
                    for (a, b) in one[1..].iter().zip(&two[1..]) {
                        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
                        assert!(a.iter().zip(b).all(|(u, v)| (u - v).abs() <= 1e-10 * (1.0 + u.abs())));
                    }
                }
            });
        }
    }

    #[test]
    fn padding_truncation_and_bias() {
        // 4 blocks of 3 take 10 inputs (2 padded) and give 11 of 12 outputs.
        let (w1, w2) = (rnd(&[4, 3, 3], 1), rnd(&[4, 3, 3], 2));
        let (x, b) = (rnd(&[5, 10], 3), rnd(&[11], 4));
        let got = x.monarch_linear(&w1, &w2, Some(&b), 11).unwrap().y;
        let padded = Tensor::cat(&[&x, &Tensor::zeros([5, 2], DType::F64)], 1).unwrap();
        let full = padded.monarch_mul(&w1, &w2).unwrap().narrow(1, 0, 11).unwrap().add(&b).unwrap();
        for (g, w) in got.to_vec::<f64>().unwrap().iter().zip(full.to_vec::<f64>().unwrap()) {
            assert!((g - w).abs() < 1e-12);
        }
        // f32 and bf16 run too (bf16 computed in f32).
        for dt in [DType::F32, DType::BF16] {
            let y =
                x.to_dtype(dt).unwrap().monarch_linear(&w1.to_dtype(dt).unwrap(), &w2.to_dtype(dt).unwrap(), None, 12);
            assert_eq!(y.unwrap().y.dtype(), dt);
        }
    }

    /// Column sums of a group-major (rows, l·s) array land at their natural columns.
    #[test]
    fn the_bias_gradient_sums_group_major_columns_into_natural_order() {
        let (rows, l, s, out) = (3, 2, 3, 5);
        let v: Vec<f32> = (0..rows * l * s).map(|i| (i * i % 7) as f32 - 2.0).collect();
        let dpre = Tensor::from_vec(v.clone(), [rows, l * s]).unwrap();
        let got = bias_grad(&dpre, l, s, out).unwrap().to_vec_f32().unwrap();
        let want: Vec<f32> = (0..out).map(|j| (0..rows).map(|b| v[b * l * s + (j % l) * s + j / l]).sum()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let (w1, w2) = (rnd(&[4, 3, 3], 1), rnd(&[4, 3, 3], 2));
        assert!(rnd(&[2, 13], 0).monarch_linear(&w1, &w2, None, 12).is_err());
        assert!(rnd(&[2, 12], 0).monarch_linear(&w1, &w2, None, 13).is_err());
        assert!(rnd(&[2, 11], 0).monarch_mul(&w1, &w2).is_err());
        assert!(rnd(&[2, 12], 0).monarch_mul(&w1, &rnd(&[4, 3, 2], 0)).is_err());
        assert!(rnd(&[2, 12], 0).monarch_mul(&w1, &rnd(&[3, 3], 0)).is_err());
        assert!(rnd(&[2, 12], 0).monarch_linear(&w1, &w2, Some(&rnd(&[11], 0)), 12).is_err());
        assert!(Tensor::scalar(1.0f64).monarch_linear(&w1, &w2, None, 12).is_err());
        assert!(rnd(&[5, 0], 0).monarch_linear(&w1, &w2, None, 12).is_err(), "no input features");
    }
}
