//! Scatterbrain attention on a GPU, composed of device ops around the block-sparse flash
//! kernels. The exact band is [`Tensor::block_sparse_attention`] with the local mask; the
//! low-rank part is batched matrix products over blocks of rows, where the sum over the
//! key blocks outside a query block's band is one product with a 0/1 block-selection
//! matrix; the two parts are combined per row with their own stabilisers, as the fused
//! CPU kernel (`ops/attention/scatterbrain.rs`) combines them. Backward runs the
//! block-sparse backward with the combined output and log-sum-exp (the band's exact
//! weights) and adds the low-rank gradients through the features.
//!
//! Nothing here is specific to a GPU: the tests run the same composition on the CPU,
//! in f64, against the fused kernel.

use crate::ops::attention::{Dims, Scatterbrain};
use crate::{AttentionGrads, AttentionOpts, AttentionOut, CmpOp, DType, Device, Result, Tensor};
use monarch_cuda::ops::flash_attention::ATTN_TILE;
use std::sync::Mutex;

/// Whether the band's kernels take these sizes: as many queries as keys (at least one),
/// head_dim 32, 64 or 128, and blocks of a multiple of their 64-token tile.
pub(crate) fn composable(dims: Dims, cfg: &Scatterbrain) -> bool {
    dims.nq == dims.nk && dims.nq > 0 && [32, 64, 128].contains(&dims.d) && cfg.block % ATTN_TILE == 0
}

/// The dtype the low-rank part is computed in: f64 for f64 inputs, else f32.
fn compute_dtype(t: &Tensor) -> DType {
    if t.dtype() == DType::F64 { DType::F64 } else { DType::F32 }
}

/// What a call builds on the host and keeps on the device: the feature projection
/// (seed, features, head_dim) and the block-selection matrix (blocks, window, causal).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kept {
    Projection { seed: u64, features: usize, d: usize },
    Selection { blocks: usize, window: usize, causal: bool },
}

/// How many constants [`KEPT`] holds.
const KEPT_MAX: usize = 16;

/// The constants built last (key, dtype, device, tensor), the most recently used last.
/// Every layer calls forward and backward with the same ones at every step, so each is
/// built and copied to the device once.
static KEPT: Mutex<Vec<(Kept, DType, Device, Tensor)>> = Mutex::new(Vec::new());

/// The constant `key` in `dtype` on `device`, made by `make` (on the host) when not kept.
fn kept(key: Kept, dtype: DType, device: Device, make: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
    let mut all = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(at) = all.iter().position(|(k, dt, dev, _)| *k == key && *dt == dtype && *dev == device) {
        let entry = all.remove(at);
        let t = entry.3.clone();
        all.push(entry);
        return Ok(t);
    }
    let t = make()?.to_dtype(dtype)?.to_device(device)?;
    if all.len() == KEPT_MAX {
        all.remove(0);
    }
    all.push((key, dtype, device, t.clone()));
    Ok(t)
}

/// The random-feature projection (features × d), as the CPU kernel draws it.
fn projection(cfg: &Scatterbrain, d: usize, dtype: DType, device: Device) -> Result<Tensor> {
    let key = Kept::Projection { seed: cfg.seed, features: cfg.features, d };
    kept(key, dtype, device, || Tensor::from_vec(cfg.projection::<f64>(d)?, [cfg.features, d]))
}

/// `sel[t][u] = 1` when key block `u` lies outside query block `t`'s band (and, when
/// causal, before it): the blocks whose keys `t` sees through the features.
fn selection(cfg: &Scatterbrain, blocks: usize, causal: bool, dtype: DType, device: Device) -> Result<Tensor> {
    let w = cfg.window;
    let key = Kept::Selection { blocks, window: w, causal };
    kept(key, dtype, device, || {
        let mut sel = vec![0.0f64; blocks * blocks];
        for (t, row) in sel.chunks_exact_mut(blocks.max(1)).enumerate() {
            let (lo, hi) = (t.saturating_sub(w), if causal { blocks } else { (t + w + 1).min(blocks) });
            row[..lo].fill(1.0);
            row[hi..].fill(1.0);
        }
        Tensor::from_vec(sel, [blocks, blocks])
    })
}

/// Rows (B, H, n, e) padded with zero rows to whole blocks: (B, H, blocks, block, e).
fn blocked(x: &Tensor, block: usize) -> Result<Tensor> {
    let (b, h, n, e) = (x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]);
    let blocks = n.div_ceil(block);
    let pad = blocks * block - n;
    let x = if pad == 0 {
        x.clone()
    } else {
        Tensor::cat(&[x, &Tensor::zeros_on([b, h, pad, e], x.dtype(), x.device())?], 2)?
    };
    x.reshape([b, h, blocks, block, e])
}

/// The inverse of [`blocked`]: (B, H, blocks, block, e) to the first `n` rows (B, H, n, e).
fn unblocked(x: &Tensor, n: usize) -> Result<Tensor> {
    let d = x.dims();
    x.reshape([d[0], d[1], d[2] * d[3], d[4]])?.narrow(2, 0, n)
}

/// Per-block values (B, H, blocks, r, c) summed, for each target block, over the source
/// blocks that `sel` (targets × blocks) marks: (B, H, targets, r, c).
fn outside(per_block: &Tensor, sel: &Tensor) -> Result<Tensor> {
    let d = per_block.dims().to_vec();
    let flat = per_block.reshape([d[0], d[1], d[2], d[3] * d[4]])?;
    sel.matmul(&flat)?.reshape([d[0], d[1], sel.dims()[0], d[3], d[4]])
}

/// One side's random features: `feat = exp(x̃·Wᵀ − |x̃|²/2 − stab)/√m` with
/// `x̃ = x·d^(-1/4)`, the stabiliser the row's largest exponent (queries) or the head's
/// (keys).
struct Features {
    /// x̃ (B, H, n, d).
    xs: Tensor,
    /// The features (B, H, n, m).
    feat: Tensor,
    /// The stabiliser, (B, H, n, 1) for queries, (B, H, 1, 1) for keys.
    stab: Tensor,
}

fn features(x: &Tensor, w: &Tensor, per_row: bool) -> Result<Features> {
    let (d, m) = (x.dims()[3], w.dims()[0]);
    let xs = x.mul_scalar((d as f64).powf(-0.25))?;
    let z = xs.matmul(&w.t()?)?.sub(&xs.sqr()?.sum_keepdim(3)?.mul_scalar(0.5)?)?;
    let stab = if per_row { z.max_keepdim(3)? } else { z.max_keepdim([2, 3])? };
    let feat = z.sub(&stab)?.exp()?.mul_scalar(1.0 / (m as f64).sqrt())?;
    Ok(Features { xs, feat, stab })
}

/// Everything the low-rank part needs, recomputed from q, k and v (in the compute dtype).
struct LowRank {
    q: Features,
    k: Features,
    /// The query features in blocks (B, H, T, block, m).
    q_blocks: Tensor,
    /// The key features in blocks (B, H, T, block, m).
    k_blocks: Tensor,
    /// The values in the compute dtype, in blocks (B, H, T, block, d).
    v_blocks: Tensor,
    /// Per query block `Σ_{j outside} φ(k_j)·v_jᵀ` (B, H, T, m, d).
    kv: Tensor,
    /// Per query block `Σ_{j outside} φ(k_j)` (B, H, T, 1, m).
    ksum: Tensor,
    /// The block-selection matrix (T × T).
    sel: Tensor,
    /// The projection (m × d).
    w: Tensor,
    /// The query stabiliser plus the key's: each row's low-rank exponent offset (B, H, n, 1).
    offset: Tensor,
}

impl LowRank {
    /// From the inputs in any float dtype (computed in [`compute_dtype`]'s).
    fn new(q: &Tensor, k: &Tensor, v: &Tensor, cfg: &Scatterbrain, causal: bool) -> Result<LowRank> {
        let (dtype, device, n, d) = (compute_dtype(q), q.device(), q.dims()[2], q.dims()[3]);
        let (q, k, v) = (&q.to_dtype(dtype)?, &k.to_dtype(dtype)?, &v.to_dtype(dtype)?);
        let w = projection(cfg, d, dtype, device)?;
        let sel = selection(cfg, n.div_ceil(cfg.block), causal, dtype, device)?;
        let (qf, kf) = (features(q, &w, true)?, features(k, &w, false)?);
        let (k_blocks, v_blocks) = (blocked(&kf.feat, cfg.block)?, blocked(v, cfg.block)?);
        let kv = outside(&k_blocks.transpose(3, 4)?.matmul(&v_blocks)?, &sel)?;
        let ksum = outside(&k_blocks.sum_keepdim(3)?, &sel)?;
        let offset = qf.stab.add(&kf.stab)?;
        let q_blocks = blocked(&qf.feat, cfg.block)?;
        Ok(LowRank { q: qf, k: kf, q_blocks, k_blocks, v_blocks, kv, ksum, sel, w, offset })
    }

    /// Chains a feature gradient `g` (B, H, n, m) to the unscaled rows:
    /// `dx = d^(-1/4) (G·W − x̃ ∘ ΣG)` with `G = g ∘ φ`.
    fn through_features(&self, f: &Features, g: &Tensor) -> Result<Tensor> {
        let d = f.xs.dims()[3];
        let g = g.mul(&f.feat)?;
        g.matmul(&self.w)?.sub(&f.xs.mul(&g.sum_keepdim(3)?)?)?.mul_scalar((d as f64).powf(-0.25))
    }
}

/// Scatterbrain forward on the inputs' device; see the module documentation. The caller
/// has checked the inputs, the configuration and [`composable`].
pub(crate) fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cfg: &Scatterbrain,
    opts: &AttentionOpts,
) -> Result<AttentionOut> {
    let n = q.dims()[2];
    let band = q.block_sparse_attention(k, v, &cfg.local_mask(n, n)?, opts)?;
    let cdt = compute_dtype(q);
    let lr = LowRank::new(q, k, v, cfg, opts.causal)?;
    let num = unblocked(&lr.q_blocks.matmul(&lr.kv)?, n)?;
    let den_low = unblocked(&lr.q_blocks.matmul(&lr.ksum.transpose(3, 4)?)?, n)?;
    // Each part's weight relative to the larger of the two stabilisers.
    let lse_band = band.lse.to_dtype(cdt)?.unsqueeze(-1)?;
    let top = lse_band.maximum(&lr.offset)?;
    let (w_band, w_low) = (lse_band.sub(&top)?.exp()?, lr.offset.sub(&top)?.exp()?);
    let den = w_band.add(&w_low.mul(&den_low)?)?;
    // den is 0 only when both parts are (no key outside the band and the band's weight
    // underflowed); the output is then 0 and the log-sum-exp −∞, as on the CPU.
    let tiny = if cdt == DType::F64 { f64::MIN_POSITIVE } else { f64::from(f32::MIN_POSITIVE) };
    let out = band.out.to_dtype(cdt)?.mul(&w_band)?.add(&num.mul(&w_low)?)?;
    let out = out.div(&den.maximum(&den.scalar_beside(tiny, cdt)?)?)?;
    let lse = top.add(&den.log()?)?.squeeze(3)?;
    Ok(AttentionOut { out: out.to_dtype(q.dtype())?, lse })
}

/// Gradients of [`forward`] from its output, log-sum-exp and the output gradient.
pub(crate) fn backward(
    [q, k, v]: [&Tensor; 3],
    cfg: &Scatterbrain,
    fwd: &AttentionOut,
    dout: &Tensor,
    opts: &AttentionOpts,
) -> Result<AttentionGrads> {
    let n = q.dims()[2];
    let band = Tensor::block_sparse_attention_backward(q, k, v, &cfg.local_mask(n, n)?, fwd, dout, opts)?;
    let cdt = compute_dtype(q);
    let (out, dout, lse) = (fwd.out.to_dtype(cdt)?, dout.to_dtype(cdt)?, fwd.lse.to_dtype(cdt)?.unsqueeze(-1)?);
    let lr = LowRank::new(q, k, v, cfg, opts.causal)?;
    let dsum = dout.mul(&out)?.sum_keepdim(3)?;
    // g_i: the row's low-rank probability scale; 0 for a row that sees nothing.
    let seen = lse.cmp_scalar(f64::NEG_INFINITY, CmpOp::Gt)?;
    let g = seen.where_cond(&lr.offset.sub(&lse)?.exp()?, &lse.scalar_beside(0.0, cdt)?)?;
    // Query side: dφ_i = g_i (KV_out dO_i − D_i Σφ(k)_out).
    let dout_blocks = blocked(&dout, cfg.block)?;
    let dphi = dout_blocks.matmul(&lr.kv.transpose(3, 4)?)?.sub(&blocked(&dsum, cfg.block)?.mul(&lr.ksum)?)?;
    let dq = lr.through_features(&lr.q, &unblocked(&dphi, n)?.mul(&g)?)?;
    // Key side: QdO_u = Σ_{i: u outside} g_i φ_i dO_iᵀ and Qd_u = Σ g_i D_i φ_i.
    let sel_t = lr.sel.t()?;
    let gphi_blocks = blocked(&lr.q.feat.mul(&g)?, cfg.block)?;
    let qdo = outside(&gphi_blocks.transpose(3, 4)?.matmul(&dout_blocks)?, &sel_t)?;
    let qd = outside(&blocked(&lr.q.feat.mul(&g.mul(&dsum)?)?, cfg.block)?.sum_keepdim(3)?, &sel_t)?;
    let dpsi = lr.v_blocks.matmul(&qdo.transpose(3, 4)?)?.sub(&qd)?;
    let dk = lr.through_features(&lr.k, &unblocked(&dpsi, n)?)?;
    let dv = unblocked(&lr.k_blocks.matmul(&qdo)?, n)?;
    let add = |exact: &Tensor, low: Tensor| exact.to_dtype(cdt)?.add(&low)?.to_dtype(q.dtype());
    Ok(AttentionGrads { dq: add(&band.dq, dq)?, dk: add(&band.dk, dk)?, dv: add(&band.dv, dv)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(shape: &[usize], seed: u64, std: f64) -> Tensor {
        Tensor::randn(shape, 0.0, std, seed).unwrap().to_dtype(DType::F64).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
        a.iter().zip(&b).map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() / (1.0 + y.abs()) }).fold(0.0, f64::max)
    }

    /// The composition, run on the CPU in f64, against the fused CPU kernel: forward and
    /// backward, causal or not, a ragged last block, windows 0 and 1, and keys large
    /// enough that the exact and low-rank stabilisers differ.
    #[test]
    fn the_composition_matches_the_fused_kernel() {
        for (causal, window, n, std) in
            [(false, 1, 200, 1.0), (true, 1, 200, 1.0), (true, 0, 130, 2.0), (false, 0, 64, 1.5)]
        {
            let cfg = Scatterbrain { features: 24, block: 64, window, seed: 5 };
            let opts = AttentionOpts { causal, ..Default::default() };
            let (q, k, v, dout) = (
                rnd(&[2, 2, n, 32], 1, std),
                rnd(&[2, 2, n, 32], 2, std),
                rnd(&[2, 2, n, 32], 3, 1.0),
                rnd(&[2, 2, n, 32], 4, 1.0),
            );
            let want = q.scatterbrain_attention(&k, &v, &cfg, &opts).unwrap();
            let got = forward(&q, &k, &v, &cfg, &opts).unwrap();
            let case = format!("causal {causal} window {window} n {n}");
            assert!(max_diff(&got.out, &want.out) < 1e-12, "{case}: out");
            assert!(max_diff(&got.lse, &want.lse) < 1e-12, "{case}: lse");
            let wg = Tensor::scatterbrain_attention_backward(&q, &k, &v, &cfg, &want, &dout, &opts).unwrap();
            let gg = backward([&q, &k, &v], &cfg, &want, &dout, &opts).unwrap();
            for (name, a, b) in [("dq", &gg.dq, &wg.dq), ("dk", &gg.dk, &wg.dk), ("dv", &gg.dv, &wg.dv)] {
                assert!(max_diff(a, b) < 1e-11, "{case}: {name} off by {}", max_diff(a, b));
            }
        }
    }

    /// In f32 (what a GPU computes in), the composition stays within f32 rounding of the
    /// fused kernel: no step of it cancels catastrophically.
    #[test]
    fn in_f32_the_composition_stays_close_to_the_fused_kernel() {
        let cfg = Scatterbrain { features: 32, block: 64, window: 1, seed: 2 };
        let f32s = |t: Tensor| t.to_dtype(DType::F32).unwrap();
        let shape = [1, 2, 256, 64];
        let (q, k, v, dout) = (
            f32s(rnd(&shape, 6, 1.0)),
            f32s(rnd(&shape, 7, 1.0)),
            f32s(rnd(&shape, 8, 1.0)),
            f32s(rnd(&shape, 9, 1.0)),
        );
        for causal in [false, true] {
            let opts = AttentionOpts { causal, ..Default::default() };
            let want = q.scatterbrain_attention(&k, &v, &cfg, &opts).unwrap();
            let got = forward(&q, &k, &v, &cfg, &opts).unwrap();
            assert!(max_diff(&got.out, &want.out) < 1e-5 && max_diff(&got.lse, &want.lse) < 1e-5);
            let wg = Tensor::scatterbrain_attention_backward(&q, &k, &v, &cfg, &want, &dout, &opts).unwrap();
            let gg = backward([&q, &k, &v], &cfg, &want, &dout, &opts).unwrap();
            for (a, b) in [(&gg.dq, &wg.dq), (&gg.dk, &wg.dk), (&gg.dv, &wg.dv)] {
                assert!(max_diff(a, b) < 1e-4, "causal {causal}: off by {}", max_diff(a, b));
            }
        }
    }

    #[test]
    fn the_selection_marks_the_blocks_outside_the_band() {
        let cfg = Scatterbrain { features: 4, block: 64, window: 1, seed: 0 };
        let sel = |causal| selection(&cfg, 5, causal, DType::F32, Device::Cpu).unwrap().to_vec::<f32>().unwrap();
        #[rustfmt::skip]
        let both = [
            0., 0., 1., 1., 1.,
            0., 0., 0., 1., 1.,
            1., 0., 0., 0., 1.,
            1., 1., 0., 0., 0.,
            1., 1., 1., 0., 0.,
        ];
        assert_eq!(sel(false), both);
        let causal: Vec<f32> = both.iter().enumerate().map(|(i, &x)| if i % 5 > i / 5 { 0.0 } else { x }).collect();
        assert_eq!(sel(true), causal);
    }
}
