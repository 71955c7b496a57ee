//! Scatterbrain (Chen et al. 2021): attention as sparse + low-rank. The unnormalised
//! weights `exp(q·k/√d)` are estimated by Performer's positive random features
//! `φ(x) = exp(w·x − |x|²/2)/√m` (x scaled by d^(-1/4), orthogonal Gaussian `w`), and
//! replaced by their exact value on a local band of `window` blocks around each query
//! block: weights = low-rank − low-rank on the band + exact on the band. On the band the
//! low-rank terms cancel, so the kernel sums the exact band with the tiled kernels (as
//! block-sparse attention) and the low-rank estimate over the blocks outside the band from
//! per-block sums `Σ φ(k)·vᵀ` — time and memory linear in the sequence length.
//!
//! Each row's two parts carry their own stabiliser (the running max of the exact scores,
//! the largest feature exponent); the output does not depend on them, so backward treats
//! them as constants. Backward reuses the tiled kernels for the band with the combined
//! log-sum-exp, and adds the low-rank gradients through the features.

use super::rowops::AttnFloat;
use super::tiling::{self, BackwardInputs, TilePlan};
use super::{AttentionGrads, AttentionOpts, AttentionOut, Dims, Heads, by_dtype, check_dout, compute_all, row_dots};
use crate::ops::matmul::{Mat, gemm_into};
use crate::{BlockMask, Result, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Scatterbrain's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scatterbrain {
    /// Random features of the low-rank part (more: lower error, more work).
    pub features: usize,
    /// Block edge of the exact local part, in tokens.
    pub block: usize,
    /// Neighbouring blocks on each side whose keys a query block sees exactly (0: its own).
    pub window: usize,
    /// Seed of the random feature matrix.
    pub seed: u64,
}

impl Scatterbrain {
    fn check(&self, dims: Dims, opts: &AttentionOpts, op: &'static str) -> Result<()> {
        if self.features == 0 || self.block == 0 {
            crate::bail!(op, "features and block must be at least 1, got {self:?}");
        }
        if opts.dropout > 0.0 {
            crate::bail!(op, "attention dropout is not defined for the low-rank part; use dropout 0");
        }
        if opts.causal && dims.nq != dims.nk {
            crate::bail!(op, "causal scatterbrain needs as many queries as keys, got {} and {}", dims.nq, dims.nk);
        }
        Ok(())
    }

    /// The exact part's block mask: key blocks within `window` of the query block.
    pub fn local_mask(&self, n_q: usize, n_k: usize) -> Result<BlockMask> {
        BlockMask::local(n_q.div_ceil(self.block), n_k.div_ceil(self.block), self.block, self.window)
    }

    /// The (features × d) projection: blocks of d orthonormal Gaussian directions, each
    /// row scaled by the norm of an independent Gaussian vector (Performer's ORF).
    pub(crate) fn projection<T: AttnFloat>(&self, d: usize) -> Result<Vec<T>> {
        let m = self.features;
        let g = Tensor::randn([2 * m, d], 0.0, 1.0, self.seed)?.to_vec_f64()?;
        let (dirs, norms) = g.split_at(m * d);
        let mut w = dirs.to_vec();
        for start in (0..m).step_by(d) {
            for r in start..(start + d).min(m) {
                for p in start..r {
                    let dot: f64 = (0..d).map(|c| w[r * d + c] * w[p * d + c]).sum();
                    (0..d).for_each(|c| w[r * d + c] -= dot * w[p * d + c]);
                }
                let len = (0..d).map(|c| w[r * d + c].powi(2)).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
                (0..d).for_each(|c| w[r * d + c] /= len);
            }
        }
        for (row, src) in w.chunks_exact_mut(d).zip(norms.chunks_exact(d)) {
            let len = src.iter().map(|x| x * x).sum::<f64>().sqrt();
            row.iter_mut().for_each(|x| *x *= len);
        }
        Ok(w.into_iter().map(T::from_f64).collect())
    }
}

const SEQ: Parallelism = Parallelism::None;

/// Why a GPU call runs on the CPU: sizes outside the band kernels'.
const THROUGH_HOST: &str =
    "runs on the GPU for as many queries as keys, head_dim 32, 64 or 128 and blocks of a multiple of 64";

fn dense(cols: usize) -> Mat {
    Mat { offset: 0, rs: cols, cs: 1 }
}

fn dense_t(cols: usize) -> Mat {
    Mat { offset: 0, rs: 1, cs: cols }
}

/// The random features of one head's rows: `feat = exp(x̃·Wᵀ − |x̃|²/2 − stab)/√m`.
struct Features<T> {
    /// The rows scaled by d^(-1/4) (n × d).
    xs: Vec<T>,
    /// The features (n × m).
    feat: Vec<T>,
    /// The stabiliser subtracted in each row's exponent (n; all equal for keys).
    stab: Vec<T>,
}

fn features<T: AttnFloat>(x: &Heads<T>, bh: usize, n: usize, d: usize, w: &[T], per_row: bool) -> Features<T> {
    let m = w.len() / d;
    let mut xs = vec![T::zero(); n * d];
    x.copy_rows(bh, 0, &mut xs, d, T::from_f64((d as f64).powf(-0.25)));
    let mut feat = vec![T::zero(); n * m];
    gemm_into((n, m, d), &mut feat, 0, &xs, dense(d), w, dense_t(d), false, SEQ);
    let half = T::from_f64(0.5);
    for (row, x) in feat.chunks_exact_mut(m).zip(xs.chunks_exact(d)) {
        let h = x.iter().fold(T::zero(), |a, &v| a + v * v) * half;
        row.iter_mut().for_each(|z| *z -= h);
    }
    let row_max = |row: &[T]| row.iter().fold(T::neg_infinity(), |a, &z| a.max(z));
    let mut stab: Vec<T> = feat.chunks_exact(m).map(row_max).collect();
    if !per_row {
        let all = stab.iter().fold(T::neg_infinity(), |a, &z| a.max(z));
        stab.fill(all);
    }
    let inv_sqrt_m = T::from_f64(1.0 / (m as f64).sqrt());
    for (row, &s) in feat.chunks_exact_mut(m).zip(&stab) {
        row.iter_mut().for_each(|z| *z = (*z - s).exp() * inv_sqrt_m);
    }
    Features { xs, feat, stab }
}

/// Per-block sums `Σ_rows aᵀ·b` (a: n × m, b: n × e) over blocks of `block` rows, then for
/// each target `t` the sum over the source blocks in `[0, lo(t)) ∪ [hi(t), blocks)`.
fn outside_sums<T: AttnFloat>(
    (a, b): (&[T], &[T]),
    (n, m, e, block): (usize, usize, usize, usize),
    targets: usize,
    range: impl Fn(usize) -> (usize, usize),
) -> Vec<T> {
    let blocks = n.div_ceil(block);
    let sz = m * e;
    // prefix[x] = Σ_{u<x}, suffix[x] = Σ_{u≥x}.
    let mut prefix = vec![T::zero(); (blocks + 1) * sz];
    let mut suffix = vec![T::zero(); (blocks + 1) * sz];
    for u in 0..blocks {
        let (r0, rows) = (u * block, block.min(n - u * block));
        let one = &mut prefix[(u + 1) * sz..(u + 2) * sz];
        gemm_into(
            (m, e, rows),
            one,
            0,
            a,
            Mat { offset: r0 * m, rs: 1, cs: m },
            b,
            Mat { offset: r0 * e, rs: e, cs: 1 },
            false,
            SEQ,
        );
        suffix[u * sz..(u + 1) * sz].copy_from_slice(one);
    }
    for u in 1..=blocks {
        let (done, rest) = prefix.split_at_mut(u * sz);
        rest[..sz].iter_mut().zip(&done[(u - 1) * sz..]).for_each(|(x, &p)| *x += p);
    }
    for u in (0..blocks).rev() {
        let (head, tail) = suffix.split_at_mut((u + 1) * sz);
        head[u * sz..].iter_mut().zip(&tail[..sz]).for_each(|(x, &s)| *x += s);
    }
    let mut out = vec![T::zero(); targets * sz];
    for (t, o) in out.chunks_exact_mut(sz).enumerate() {
        let (lo, hi) = range(t);
        let (lo, hi) = (lo.min(blocks), hi.min(blocks).max(lo.min(blocks)));
        o.iter_mut().zip(&prefix[lo * sz..]).zip(&suffix[hi * sz..]).for_each(|((o, &p), &s)| *o = p + s);
    }
    out
}

/// A column of ones, to sum rows with [`outside_sums`].
fn ones<T: AttnFloat>(n: usize) -> Vec<T> {
    vec![T::one(); n]
}

/// Everything one head's low-rank part needs, recomputed from q, k and v.
struct LowRank<T> {
    q: Features<T>,
    k: Features<T>,
    /// Per query block `Σ_{j outside} φ(k_j)·v_jᵀ` (blocks × m × d).
    kv: Vec<T>,
    /// Per query block `Σ_{j outside} φ(k_j)` (blocks × m).
    ksum: Vec<T>,
}

struct Ctx<'a, T> {
    cfg: &'a Scatterbrain,
    dims: Dims,
    causal: bool,
    w: &'a [T],
}

impl<T: AttnFloat> Ctx<'_, T> {
    fn m(&self) -> usize {
        self.cfg.features
    }

    /// Key blocks outside query block `t`'s band (and, when causal, before it).
    fn keys_outside(&self, t: usize) -> (usize, usize) {
        let w = self.cfg.window;
        (t.saturating_sub(w), if self.causal { usize::MAX } else { t + w + 1 })
    }

    /// Query blocks whose outside contains key block `u`.
    fn queries_outside(&self, u: usize) -> (usize, usize) {
        let w = self.cfg.window;
        (if self.causal { 0 } else { u.saturating_sub(w) }, u + w + 1)
    }

    fn low_rank(&self, q: &Heads<T>, k: &Heads<T>, v: &Heads<T>, bh: usize) -> LowRank<T> {
        let Dims { nq, nk, d, .. } = self.dims;
        let (m, block) = (self.m(), self.cfg.block);
        let qf = features(q, bh, nq, d, self.w, true);
        let kf = features(k, bh, nk, d, self.w, false);
        let mut vh = vec![T::zero(); nk * d];
        v.copy_rows(bh, 0, &mut vh, d, T::one());
        let targets = nq.div_ceil(block);
        let kv = outside_sums((&kf.feat, &vh), (nk, m, d, block), targets, |t| self.keys_outside(t));
        let ksum = outside_sums((&kf.feat, &ones(nk)), (nk, m, 1, block), targets, |t| self.keys_outside(t));
        LowRank { q: qf, k: kf, kv, ksum }
    }

    /// Adds the low-rank part to one head's exact local output and log-sum-exp, in place.
    fn forward_head(&self, lr: &LowRank<T>, out: &mut [T], lse: &mut [T]) {
        let (m, d, block) = (self.m(), self.dims.d, self.cfg.block);
        let c = lr.k.stab.first().copied().unwrap_or(T::zero());
        let mut num = vec![T::zero(); block * d];
        for (t, (out, lse)) in out.chunks_mut(block * d).zip(lse.chunks_mut(block)).enumerate() {
            let rows = lse.len();
            let phi = &lr.q.feat[t * block * m..];
            let num = &mut num[..rows * d];
            gemm_into((rows, d, m), num, 0, phi, dense(m), &lr.kv, Mat { offset: t * m * d, rs: d, cs: 1 }, false, SEQ);
            for r in 0..rows {
                let den_l = (0..m).fold(T::zero(), |a, x| a + phi[r * m + x] * lr.ksum[t * m + x]);
                let (ls, ll) = (lse[r], lr.q.stab[t * block + r] + c);
                let top = ls.max(ll);
                let (ws, wl) = ((ls - top).exp(), (ll - top).exp());
                let den = ws + wl * den_l;
                let o = &mut out[r * d..(r + 1) * d];
                if den > T::zero() {
                    let inv = den.recip();
                    o.iter_mut().zip(&num[r * d..]).for_each(|(o, &n)| *o = (ws * *o + wl * n) * inv);
                    lse[r] = top + den.ln();
                } else {
                    o.fill(T::zero());
                    lse[r] = T::neg_infinity();
                }
            }
        }
    }

    /// One head's low-rank gradients `(dq, dk, dv)` (n × d each).
    fn backward_head(&self, lr: &LowRank<T>, v: &Heads<T>, dout: &Heads<T>, bh: usize, x: (&[T], &[T])) -> [Vec<T>; 3] {
        let Dims { nq, nk, d, .. } = self.dims;
        let (m, block) = (self.m(), self.cfg.block);
        let (lse, dsum) = x;
        let c = lr.k.stab.first().copied().unwrap_or(T::zero());
        let mut dov = vec![T::zero(); nq * d];
        dout.copy_rows(bh, 0, &mut dov, d, T::one());
        // g_i φ_i: the features turned into probabilities; dφ_i = g_i (KV_out dO_i − D_i Σφ(k)_out).
        let mut gphi = lr.q.feat.clone();
        let mut gd = vec![T::zero(); nq];
        let mut dphi = vec![T::zero(); nq * m];
        for (i, row) in gphi.chunks_exact_mut(m).enumerate() {
            let g = if lse[i] == T::neg_infinity() { T::zero() } else { (lr.q.stab[i] + c - lse[i]).exp() };
            row.iter_mut().for_each(|x| *x *= g);
            gd[i] = g * dsum[i];
        }
        for t in 0..nq.div_ceil(block) {
            let (r0, rows) = (t * block, block.min(nq - t * block));
            let kv = Mat { offset: t * m * d, rs: 1, cs: d };
            gemm_into(
                (rows, m, d),
                &mut dphi,
                r0 * m,
                &dov,
                Mat { offset: r0 * d, rs: d, cs: 1 },
                &lr.kv,
                kv,
                false,
                SEQ,
            );
            for r in r0..r0 + rows {
                let g = if lse[r] == T::neg_infinity() { T::zero() } else { (lr.q.stab[r] + c - lse[r]).exp() };
                let row = &mut dphi[r * m..(r + 1) * m];
                row.iter_mut().zip(&lr.ksum[t * m..]).for_each(|(x, &s)| *x = g * (*x - dsum[r] * s));
            }
        }
        // Key side: QdO_u = Σ_{i: u outside} g_i φ_i dO_iᵀ and Qd_u = Σ g_i D_i φ_i.
        let targets = nk.div_ceil(block);
        let qdo = outside_sums((&gphi, &dov), (nq, m, d, block), targets, |u| self.queries_outside(u));
        let qd = outside_sums((&lr.q.feat, &gd), (nq, m, 1, block), targets, |u| self.queries_outside(u));
        let mut vh = vec![T::zero(); nk * d];
        v.copy_rows(bh, 0, &mut vh, d, T::one());
        let mut dpsi = vec![T::zero(); nk * m];
        let mut dv = vec![T::zero(); nk * d];
        for u in 0..targets {
            let (r0, rows) = (u * block, block.min(nk - u * block));
            let at = |cols| Mat { offset: r0 * cols, rs: cols, cs: 1 };
            gemm_into(
                (rows, m, d),
                &mut dpsi,
                r0 * m,
                &vh,
                at(d),
                &qdo,
                Mat { offset: u * m * d, rs: 1, cs: d },
                false,
                SEQ,
            );
            for row in dpsi[r0 * m..(r0 + rows) * m].chunks_exact_mut(m) {
                row.iter_mut().zip(&qd[u * m..]).for_each(|(x, &s)| *x -= s);
            }
            gemm_into(
                (rows, d, m),
                &mut dv,
                r0 * d,
                &lr.k.feat,
                at(m),
                &qdo,
                Mat { offset: u * m * d, rs: d, cs: 1 },
                false,
                SEQ,
            );
        }
        [self.through_features(&lr.q, dphi), self.through_features(&lr.k, dpsi), dv]
    }

    /// Chains a feature gradient to the unscaled rows: `dx = d^(-1/4) (G·W − x̃ ∘ ΣG)` with `G = dφ ∘ φ`.
    fn through_features(&self, f: &Features<T>, mut g: Vec<T>) -> Vec<T> {
        let (m, d) = (self.m(), self.dims.d);
        let n = f.xs.len() / d;
        g.iter_mut().zip(&f.feat).for_each(|(g, &p)| *g *= p);
        let mut dx = vec![T::zero(); n * d];
        gemm_into((n, d, m), &mut dx, 0, &g, dense(m), self.w, dense(d), false, SEQ);
        let s = T::from_f64((d as f64).powf(-0.25));
        for ((dx, x), g) in dx.chunks_exact_mut(d).zip(f.xs.chunks_exact(d)).zip(g.chunks_exact(m)) {
            let sum = g.iter().fold(T::zero(), |a, &v| a + v);
            dx.iter_mut().zip(x).for_each(|(dx, &x)| *dx = (*dx - x * sum) * s);
        }
        dx
    }
}

impl Tensor {
    /// Scatterbrain attention of queries `self` (batch, heads, n_q, d) over keys and values
    /// (batch, heads, n_k, d): exact on a band of `cfg.window` blocks around each query
    /// block, Performer random features elsewhere. Causal needs n_q = n_k; no dropout.
    /// Returns the output and the combined log-sum-exp that backward needs.
    pub fn scatterbrain_attention(
        &self,
        k: &Tensor,
        v: &Tensor,
        cfg: &Scatterbrain,
        opts: &AttentionOpts,
    ) -> Result<AttentionOut> {
        let op = "scatterbrain_attention";
        let dims = Dims::check(self, k, v, opts, op)?;
        cfg.check(dims, opts, op)?;
        if let Some(dev) = crate::cuda::off_host(op, &[self, k, v])? {
            if crate::cuda::scatterbrain::composable(dims, cfg) {
                return crate::cuda::scatterbrain::forward(self, k, v, cfg, opts);
            }
            let [q, k, v] = crate::cuda::through_host(op, THROUGH_HOST, [self, k, v])?;
            let r = q.scatterbrain_attention(&k, &v, cfg, opts)?;
            return Ok(AttentionOut { out: r.out.to_device(dev)?, lse: r.lse.to_device(dev)? });
        }
        let mask = cfg.local_mask(dims.nq, dims.nk)?;
        let plan = TilePlan { tile: cfg.block, mask: Some(&mask) };
        let dtype = self.dtype();
        let ([q, k, v], cdt) = compute_all([self, k, v], op)?;
        by_dtype!(cdt, op, |T| {
            let (q, k, v) = (Heads::<T>::new(&q, op)?, Heads::<T>::new(&k, op)?, Heads::<T>::new(&v, op)?);
            let (mut out, mut lse) = tiling::forward(q, k, v, dims, plan, opts);
            let w = cfg.projection::<T>(dims.d)?;
            let ctx = Ctx { cfg, dims, causal: opts.causal, w: &w };
            if dims.nq > 0 {
                let rows = out.par_chunks_mut(dims.nq * dims.d).zip(lse.par_chunks_mut(dims.nq));
                rows.enumerate().for_each(|(bh, (out, lse))| ctx.forward_head(&ctx.low_rank(&q, &k, &v, bh), out, lse));
            }
            let out = Tensor::from_vec(out, dims.q_shape())?.to_dtype(dtype)?;
            Ok(AttentionOut { out, lse: Tensor::from_vec(lse, dims.row_shape())? })
        })
    }

    /// Gradients of [`scatterbrain_attention`](Self::scatterbrain_attention) from its output,
    /// log-sum-exp and the output gradient `dout`.
    pub fn scatterbrain_attention_backward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cfg: &Scatterbrain,
        fwd: &AttentionOut,
        dout: &Tensor,
        opts: &AttentionOpts,
    ) -> Result<AttentionGrads> {
        let op = "scatterbrain_attention_backward";
        let dims = Dims::check(q, k, v, opts, op)?;
        cfg.check(dims, opts, op)?;
        check_dout(dout, dims, op)?;
        check_dout(&fwd.out, dims, op)?;
        if fwd.lse.dims() != dims.row_shape() {
            crate::bail!(op, "saved log-sum-exp of shape {} does not match the inputs", fwd.lse.shape());
        }
        if let Some(dev) = crate::cuda::off_host(op, &[q, k, v, &fwd.out, &fwd.lse, dout])? {
            if crate::cuda::scatterbrain::composable(dims, cfg) {
                return crate::cuda::scatterbrain::backward([q, k, v], cfg, fwd, dout, opts);
            }
            let saved = [q, k, v, &fwd.out, &fwd.lse, dout];
            let [q, k, v, out, lse, dout] = crate::cuda::through_host(op, THROUGH_HOST, saved)?;
            let g = Tensor::scatterbrain_attention_backward(&q, &k, &v, cfg, &AttentionOut { out, lse }, &dout, opts)?;
            return Ok(AttentionGrads { dq: g.dq.to_device(dev)?, dk: g.dk.to_device(dev)?, dv: g.dv.to_device(dev)? });
        }
        let mask = cfg.local_mask(dims.nq, dims.nk)?;
        let plan = TilePlan { tile: cfg.block, mask: Some(&mask) };
        let dtype = q.dtype();
        let ([q, k, v, out, dout], cdt) = compute_all([q, k, v, &fwd.out, dout], op)?;
        let lse = fwd.lse.to_dtype(cdt)?.contiguous()?;
        by_dtype!(cdt, op, |T| {
            let (q, k, v) = (Heads::<T>::new(&q, op)?, Heads::<T>::new(&k, op)?, Heads::<T>::new(&v, op)?);
            let (out, dout) = (Heads::<T>::new(&out, op)?, Heads::<T>::new(&dout, op)?);
            let dsum = row_dots(&dout, &out, dims);
            let lse = &lse.cpu_slice::<T>(op)?[lse.layout().offset()..];
            let x = BackwardInputs { q, k, v, dout, lse, dsum: &dsum };
            let (mut dq, mut dk, mut dv) = tiling::backward(x, dims, plan, opts);
            let w = cfg.projection::<T>(dims.d)?;
            let ctx = Ctx { cfg, dims, causal: opts.causal, w: &w };
            let (nq, nk, d) = (dims.nq, dims.nk, dims.d);
            if nq > 0 && nk > 0 {
                let per_head = dq.par_chunks_mut(nq * d).zip(dk.par_chunks_mut(nk * d)).zip(dv.par_chunks_mut(nk * d));
                per_head.enumerate().for_each(|(bh, ((dq, dk), dv))| {
                    let rows = (&lse[bh * nq..(bh + 1) * nq], &dsum[bh * nq..(bh + 1) * nq]);
                    let grads = ctx.backward_head(&ctx.low_rank(&q, &k, &v, bh), &v, &dout, bh, rows);
                    for (dst, src) in [dq, dk, dv].into_iter().zip(grads) {
                        dst.iter_mut().zip(src).for_each(|(a, b)| *a += b);
                    }
                });
            }
            let wrap = |g: Vec<T>, shape: [usize; 4]| Tensor::from_vec(g, shape)?.to_dtype(dtype);
            Ok(AttentionGrads {
                dq: wrap(dq, dims.q_shape())?,
                dk: wrap(dk, dims.k_shape())?,
                dv: wrap(dv, dims.k_shape())?,
            })
        })
    }
}
