//! The tiled attention kernels shared by flash, block-sparse and Scatterbrain's local
//! part: a forward with an online softmax and a backward that recomputes each tile's
//! probabilities from the saved log-sum-exp. Per-task scratch is a few tiles; nothing
//! of size n_q × n_k is ever allocated.
//!
//! Every output block of the backward has one owner, so the result does not depend on
//! scheduling. With heads enough to keep the threads busy it runs one pass per head (a
//! task owns the head's dQ, dK and dV, and each visited tile's scores and `dO·Vᵀ` are
//! recomputed once: five tile products); otherwise two passes, one over key tiles
//! accumulating dK and dV, one over query tiles accumulating dQ (each recomputing the
//! scores and `dO·Vᵀ` of the tiles it visits: seven tile products).

use super::rowops::{self, AttnFloat};
use super::{AttentionGrads, AttentionOpts, AttentionOut, Dims, Heads, by_dtype, check_saved, compute_all, row_dots};
use crate::ops::matmul::{Mat, gemm_into};
use crate::{BlockMask, Result, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Which (query tile, key tile) pairs a tiled attention visits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TilePlan<'a> {
    /// Tile edge in rows, for queries and keys alike.
    pub tile: usize,
    /// Tiles to visit (`None`: all); its block must equal `tile`.
    pub mask: Option<&'a BlockMask>,
}

/// How a tile pair is visited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Visit {
    Skip,
    /// Every key of the tile is visible to every query.
    Full,
    /// The causal boundary crosses the tile: query row 0 sees this many of its keys.
    Causal(isize),
}

impl TilePlan<'_> {
    fn tiles(&self, n: usize) -> usize {
        n.div_ceil(self.tile)
    }

    /// `None` when the pair is skipped, else the causal offset the row kernels take
    /// (`Some(None)`: every key of the tile is visible).
    fn visited(&self, dims: Dims, opts: &AttentionOpts, qt: usize, kt: usize) -> Option<Option<isize>> {
        match self.visit(dims, opts, qt, kt) {
            Visit::Skip => None,
            Visit::Full => Some(None),
            Visit::Causal(first) => Some(Some(first)),
        }
    }

    fn visit(&self, dims: Dims, opts: &AttentionOpts, qt: usize, kt: usize) -> Visit {
        if self.mask.is_some_and(|m| !m.get(qt, kt)) {
            return Visit::Skip;
        }
        let (i0, j0) = (qt * self.tile, kt * self.tile);
        let i1 = (i0 + self.tile).min(dims.nq);
        let j1 = (j0 + self.tile).min(dims.nk);
        if !opts.causal {
            return Visit::Full;
        }
        if dims.causal_limit(true, i1 - 1) <= j0 {
            Visit::Skip
        } else if dims.causal_limit(true, i0) >= j1 {
            Visit::Full
        } else {
            Visit::Causal(i0 as isize + dims.nk as isize - dims.nq as isize + 1 - j0 as isize)
        }
    }

    /// Fraction of the tile pairs that are visited (for reports).
    pub fn visited_fraction(&self, dims: Dims, opts: &AttentionOpts) -> f64 {
        let (qt, kt) = (self.tiles(dims.nq), self.tiles(dims.nk));
        let visited = (0..qt).flat_map(|a| (0..kt).map(move |b| (a, b)));
        let n = visited.filter(|&(a, b)| self.visit(dims, opts, a, b) != Visit::Skip).count();
        n as f64 / (qt * kt).max(1) as f64
    }
}

/// A contiguous row-major scratch matrix as a GEMM operand.
fn dense(cols: usize) -> Mat {
    Mat { offset: 0, rs: cols, cs: 1 }
}

/// The same scratch matrix transposed.
fn dense_t(cols: usize) -> Mat {
    Mat { offset: 0, rs: 1, cs: cols }
}

const SEQ: Parallelism = Parallelism::None;

/// The tiled forward: returns the output (bh × n_q × d, contiguous) and the per-row
/// log-sum-exp (bh × n_q).
pub(crate) fn forward<T: AttnFloat>(
    q: Heads<T>,
    k: Heads<T>,
    v: Heads<T>,
    dims: Dims,
    plan: TilePlan,
    opts: &AttentionOpts,
) -> (Vec<T>, Vec<T>) {
    let (nq, d, tile) = (dims.nq, dims.d, plan.tile);
    let mut out = vec![T::zero(); dims.bh() * nq * d];
    let mut lse = vec![T::zero(); dims.bh() * nq];
    if nq == 0 {
        return (out, lse);
    }
    let scale: T = dims.scale();
    out.par_chunks_mut(nq * d).zip(lse.par_chunks_mut(nq)).enumerate().for_each(|(bh, (out, lse))| {
        out.par_chunks_mut(tile * d).zip(lse.par_chunks_mut(tile)).enumerate().for_each(|(qt, (acc, lse))| {
            let (i0, br) = (qt * tile, lse.len());
            let mut qs = vec![T::zero(); br * d];
            q.copy_rows(bh, i0, &mut qs, d, scale);
            let (mut m, mut l) = (vec![T::neg_infinity(); br], vec![T::zero(); br]);
            let mut s = vec![T::zero(); br * tile];
            for kt in 0..plan.tiles(dims.nk) {
                let Some(causal) = plan.visited(dims, opts, qt, kt) else { continue };
                let j0 = kt * tile;
                let bc = tile.min(dims.nk - j0);
                let s = &mut s[..br * bc];
                gemm_into((br, bc, d), s, 0, &qs, dense(d), k.data, k.mat_t(bh, j0), false, SEQ);
                let drop = dims.tile_dropout(opts, bh, i0, j0);
                rowops::softmax_step(s, bc, &mut m, &mut l, acc, d, causal, drop);
                gemm_into((br, d, bc), acc, 0, s, dense(bc), v.data, v.mat(bh, j0), true, SEQ);
            }
            for (r, row) in acc.chunks_exact_mut(d).enumerate() {
                if l[r] == T::zero() {
                    row.fill(T::zero());
                    lse[r] = T::neg_infinity();
                } else {
                    let inv = l[r].recip();
                    row.iter_mut().for_each(|x| *x *= inv);
                    lse[r] = m[r] + l[r].ln();
                }
            }
        })
    });
    (out, lse)
}

/// Everything the tiled backward reads: inputs, output gradient and saved row statistics.
#[derive(Clone, Copy)]
pub(crate) struct BackwardInputs<'a, T> {
    pub q: Heads<'a, T>,
    pub k: Heads<'a, T>,
    pub v: Heads<'a, T>,
    pub dout: Heads<'a, T>,
    /// Per-row log-sum-exp of the forward (bh × n_q).
    pub lse: &'a [T],
    /// Per-row `dO·O` (bh × n_q).
    pub dsum: &'a [T],
}

/// Scratch of one backward task: the probabilities, their dropped-out copy and `dO·Vᵀ`
/// (turned into score gradients in place), each one tile.
struct Scratch<T> {
    p: Vec<T>,
    pd: Vec<T>,
    ds: Vec<T>,
}

impl<T: AttnFloat> Scratch<T> {
    fn new(tile: usize, dropout: bool) -> Self {
        let n = tile * tile;
        Scratch { p: vec![T::zero(); n], pd: if dropout { vec![T::zero(); n] } else { vec![] }, ds: vec![T::zero(); n] }
    }
}

/// Recomputes the probabilities `p` and score gradients `ds` of the tile at (`i0`, `j0`)
/// (`br × bc`); the query operand `qa` is pre-scaled by 1/√d, `ka` is the key tile.
#[allow(clippy::too_many_arguments)]
fn tile_grads<T: AttnFloat>(
    x: &BackwardInputs<T>,
    dims: Dims,
    opts: &AttentionOpts,
    (bh, i0, j0, br, bc): (usize, usize, usize, usize, usize),
    (qs, qa): (&[T], Mat),
    (ks, ka): (&[T], Mat),
    causal: Option<isize>,
    scratch: &mut Scratch<T>,
) {
    let (p, ds) = (&mut scratch.p[..br * bc], &mut scratch.ds[..br * bc]);
    let rows = bh * dims.nq + i0..bh * dims.nq + i0 + br;
    gemm_into((br, bc, dims.d), p, 0, qs, qa, ks, ka, false, SEQ);
    rowops::probs(p, bc, &x.lse[rows.clone()], causal);
    gemm_into((br, bc, dims.d), ds, 0, x.dout.data, x.dout.mat(bh, i0), x.v.data, x.v.mat_t(bh, j0), false, SEQ);
    rowops::score_grads(p, ds, bc, &x.dsum[rows], dims.tile_dropout(opts, bh, i0, j0));
}

/// The tiled backward: `(dq, dk, dv)`, each contiguous (bh × n × d).
pub(crate) fn backward<T: AttnFloat>(
    x: BackwardInputs<T>,
    dims: Dims,
    plan: TilePlan,
    opts: &AttentionOpts,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    if one_pass_pays(dims.bh(), rayon::current_num_threads()) {
        return head_pass(&x, dims, plan, opts);
    }
    let (dk, dv) = key_pass(&x, dims, plan, opts);
    (query_pass(&x, dims, plan, opts), dk, dv)
}

/// Whether one pass per head beats the two passes on `threads` threads: with every
/// head's tiles costing the same, `⌈heads / threads⌉` rounds of five tile products
/// against the two passes' seven per head spread evenly.
pub(super) fn one_pass_pays(heads: usize, threads: usize) -> bool {
    heads.div_ceil(threads.max(1)) * 5 * threads.max(1) <= heads * 7
}

/// Where one key tile's gradients go: its rows of dK and dV, and, in the one-pass
/// backward, the head's whole dQ.
struct KeyTileGrads<'a, T> {
    dk: &'a mut [T],
    dv: &'a mut [T],
    dq: Option<&'a mut [T]>,
}

/// Accumulates the gradients of key tile `kt` of head `bh` over the query tiles it sees
/// (dK still to be scaled by 1/√d; dQ, when asked, too).
fn key_tile<T: AttnFloat>(
    x: &BackwardInputs<T>,
    dims: Dims,
    plan: TilePlan,
    opts: &AttentionOpts,
    (bh, kt): (usize, usize),
    g: KeyTileGrads<T>,
    scratch: &mut Scratch<T>,
) {
    let (d, tile) = (dims.d, plan.tile);
    let (j0, bc) = (kt * tile, g.dk.len() / d);
    let mut ks = vec![T::zero(); bc * d];
    x.k.copy_rows(bh, j0, &mut ks, d, dims.scale());
    let mut dq = g.dq;
    for qt in 0..plan.tiles(dims.nq) {
        let Some(causal) = plan.visited(dims, opts, qt, kt) else { continue };
        let i0 = qt * tile;
        let br = tile.min(dims.nq - i0);
        let at = (bh, i0, j0, br, bc);
        tile_grads(x, dims, opts, at, (x.q.data, x.q.mat(bh, i0)), (&ks, dense_t(d)), causal, scratch);
        let p = &scratch.p[..br * bc];
        let pd = match dims.tile_dropout(opts, bh, i0, j0) {
            Some(drop) => {
                let pd = &mut scratch.pd[..br * bc];
                pd.copy_from_slice(p);
                rowops::dropout_in_place(pd, bc, drop);
                &*pd
            }
            None => p,
        };
        gemm_into((bc, d, br), g.dv, 0, pd, dense_t(bc), x.dout.data, x.dout.mat(bh, i0), true, SEQ);
        let ds = &scratch.ds[..br * bc];
        gemm_into((bc, d, br), g.dk, 0, ds, dense_t(bc), x.q.data, x.q.mat(bh, i0), true, SEQ);
        if let Some(dq) = dq.as_deref_mut() {
            gemm_into((br, d, bc), dq, i0 * d, ds, dense(bc), x.k.data, x.k.mat(bh, j0), true, SEQ);
        }
    }
}

/// dQ, dK and dV, parallel over heads: each task walks its head's key tiles.
fn head_pass<T: AttnFloat>(
    x: &BackwardInputs<T>,
    dims: Dims,
    plan: TilePlan,
    opts: &AttentionOpts,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (nq, nk, d, tile) = (dims.nq, dims.nk, dims.d, plan.tile);
    let mut dq = vec![T::zero(); dims.bh() * nq * d];
    let mut dk = vec![T::zero(); dims.bh() * nk * d];
    let mut dv = vec![T::zero(); dims.bh() * nk * d];
    if nq == 0 || nk == 0 {
        return (dq, dk, dv);
    }
    let scale: T = dims.scale();
    let heads = dq.par_chunks_mut(nq * d).zip(dk.par_chunks_mut(nk * d)).zip(dv.par_chunks_mut(nk * d));
    heads.enumerate().for_each(|(bh, ((dq, dk), dv))| {
        let mut scratch = Scratch::new(tile, opts.dropout > 0.0);
        for (kt, (dk, dv)) in dk.chunks_mut(tile * d).zip(dv.chunks_mut(tile * d)).enumerate() {
            let g = KeyTileGrads { dk, dv, dq: Some(&mut *dq) };
            key_tile(x, dims, plan, opts, (bh, kt), g, &mut scratch);
        }
        dk.iter_mut().chain(dq.iter_mut()).for_each(|g| *g *= scale);
    });
    (dq, dk, dv)
}

/// dK and dV, parallel over (head, key tile).
fn key_pass<T: AttnFloat>(x: &BackwardInputs<T>, dims: Dims, plan: TilePlan, opts: &AttentionOpts) -> (Vec<T>, Vec<T>) {
    let (nk, d, tile) = (dims.nk, dims.d, plan.tile);
    let mut dk = vec![T::zero(); dims.bh() * nk * d];
    let mut dv = vec![T::zero(); dims.bh() * nk * d];
    if nk == 0 {
        return (dk, dv);
    }
    let scale: T = dims.scale();
    dk.par_chunks_mut(nk * d).zip(dv.par_chunks_mut(nk * d)).enumerate().for_each(|(bh, (dk, dv))| {
        dk.par_chunks_mut(tile * d).zip(dv.par_chunks_mut(tile * d)).enumerate().for_each(|(kt, (dk, dv))| {
            let mut scratch = Scratch::new(tile, opts.dropout > 0.0);
            key_tile(x, dims, plan, opts, (bh, kt), KeyTileGrads { dk: &mut *dk, dv, dq: None }, &mut scratch);
            dk.iter_mut().for_each(|g| *g *= scale);
        })
    });
    (dk, dv)
}

/// dQ, parallel over (head, query tile).
fn query_pass<T: AttnFloat>(x: &BackwardInputs<T>, dims: Dims, plan: TilePlan, opts: &AttentionOpts) -> Vec<T> {
    let (nq, d, tile) = (dims.nq, dims.d, plan.tile);
    let mut dq = vec![T::zero(); dims.bh() * nq * d];
    if nq == 0 {
        return dq;
    }
    let scale: T = dims.scale();
    dq.par_chunks_mut(nq * d).enumerate().for_each(|(bh, dq)| {
        dq.par_chunks_mut(tile * d).enumerate().for_each(|(qt, dq)| {
            let (i0, br) = (qt * tile, dq.len() / d);
            let mut qs = vec![T::zero(); br * d];
            x.q.copy_rows(bh, i0, &mut qs, d, scale);
            let mut scratch = Scratch::new(tile, false);
            for kt in 0..plan.tiles(dims.nk) {
                let Some(causal) = plan.visited(dims, opts, qt, kt) else { continue };
                let j0 = kt * tile;
                let bc = tile.min(dims.nk - j0);
                let at = (bh, i0, j0, br, bc);
                tile_grads(x, dims, opts, at, (&qs, dense(d)), (x.k.data, x.k.mat_t(bh, j0)), causal, &mut scratch);
                let ds = &scratch.ds[..br * bc];
                gemm_into((br, d, bc), dq, 0, ds, dense(bc), x.k.data, x.k.mat(bh, j0), true, SEQ);
            }
            dq.iter_mut().for_each(|g| *g *= scale);
        })
    });
    dq
}

/// The tiled forward on tensors: converts to the compute dtype and back.
pub(crate) fn forward_tensors(
    op: &'static str,
    [q, k, v]: [&Tensor; 3],
    dims: Dims,
    plan: TilePlan,
    opts: &AttentionOpts,
) -> Result<AttentionOut> {
    let dtype = q.dtype();
    let ([q, k, v], cdt) = compute_all([q, k, v], op)?;
    by_dtype!(cdt, op, |T| {
        let (out, lse) = forward::<T>(Heads::new(&q, op)?, Heads::new(&k, op)?, Heads::new(&v, op)?, dims, plan, opts);
        let out = Tensor::from_vec(out, dims.q_shape())?.to_dtype(dtype)?;
        Ok(AttentionOut { out, lse: Tensor::from_vec(lse, dims.row_shape())? })
    })
}

/// The tiled backward on tensors from the forward's output and log-sum-exp.
pub(crate) fn backward_tensors(
    op: &'static str,
    [q, k, v]: [&Tensor; 3],
    fwd: &AttentionOut,
    dout: &Tensor,
    dims: Dims,
    plan: TilePlan,
    opts: &AttentionOpts,
) -> Result<AttentionGrads> {
    check_saved(fwd, dout, dims, op)?;
    let dtype = q.dtype();
    let ([q, k, v, out, dout], cdt) = compute_all([q, k, v, &fwd.out, dout], op)?;
    let lse = fwd.lse.to_dtype(cdt)?.contiguous()?;
    by_dtype!(cdt, op, |T| {
        let (out, dout) = (Heads::<T>::new(&out, op)?, Heads::<T>::new(&dout, op)?);
        let dsum = row_dots(&dout, &out, dims);
        let lse = &lse.cpu_slice::<T>(op)?[lse.layout().offset()..];
        let x = BackwardInputs {
            q: Heads::new(&q, op)?,
            k: Heads::new(&k, op)?,
            v: Heads::new(&v, op)?,
            dout,
            lse,
            dsum: &dsum,
        };
        let (dq, dk, dv) = backward(x, dims, plan, opts);
        let wrap = |g: Vec<T>, shape: [usize; 4]| Tensor::from_vec(g, shape)?.to_dtype(dtype);
        Ok(AttentionGrads {
            dq: wrap(dq, dims.q_shape())?,
            dk: wrap(dk, dims.k_shape())?,
            dv: wrap(dv, dims.k_shape())?,
        })
    })
}
