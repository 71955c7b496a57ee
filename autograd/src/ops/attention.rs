//! Attention over (batch, heads, seq, head_dim): the naive reference, FlashAttention,
//! block-sparse FlashAttention and Scatterbrain, each recorded with its fused backward.
//! The naive rule saves the probabilities; the others save only the output and the
//! per-row log-sum-exp and recompute the rest.

use crate::{Var, autocast};
use monarch_tensor::{AttentionGrads, AttentionOpts, AttentionOut, BlockMask, Result, Scatterbrain, Tensor};

/// The input gradients of a rule, where needed.
fn pick(g: AttentionGrads, [nq, nk, nv]: [bool; 3]) -> [Option<Tensor>; 3] {
    [nq.then_some(g.dq), nk.then_some(g.dk), nv.then_some(g.dv)]
}

/// Records a tiled attention whose rule calls `backward(q, k, v, fwd, dout)`.
fn record_tiled(
    op: &'static str,
    [q, k, v]: [&Var; 3],
    fwd: AttentionOut,
    backward: impl FnOnce(&Tensor, &Tensor, &Tensor, &AttentionOut, &Tensor) -> Result<AttentionGrads> + 'static,
) -> Result<Var> {
    let (qt, kt, vt) = (q.value().clone(), k.value().clone(), v.value().clone());
    let out = fwd.out.clone();
    Var::record(op, out, [q, k, v], move |g, needs| Ok(pick(backward(&qt, &kt, &vt, &fwd, g)?, needs)))
}

impl Var {
    /// The reference attention of queries `self` (batch, heads, n_q, d) over keys `k` and
    /// values `v` (batch, heads, n_k, d); saves the n_q × n_k probabilities for backward.
    pub fn naive_attention(&self, k: &Var, v: &Var, opts: &AttentionOpts) -> Result<Var> {
        if let Some(r) = autocast::cast([self, k, v], |[q, k, v]| q.naive_attention(&k, &v, opts)) {
            return r;
        }
        let fwd = self.value().naive_attention(k.value(), v.value(), opts)?;
        let (q, kt, vt, probs, opts) = (self.value().clone(), k.value().clone(), v.value().clone(), fwd.probs, *opts);
        Var::record("naive_attention", fwd.out, [self, k, v], move |g, needs| {
            Ok(pick(Tensor::naive_attention_backward(&q, &kt, &vt, &probs, g, &opts)?, needs))
        })
    }

    /// Exact attention computed in tiles (FlashAttention); saves only the output and the
    /// per-row log-sum-exp, and backward recomputes the tiles.
    pub fn flash_attention(&self, k: &Var, v: &Var, opts: &AttentionOpts) -> Result<Var> {
        if let Some(r) = autocast::cast([self, k, v], |[q, k, v]| q.flash_attention(&k, &v, opts)) {
            return r;
        }
        let fwd = self.value().flash_attention(k.value(), v.value(), opts)?;
        let opts = *opts;
        record_tiled("flash_attention", [self, k, v], fwd, move |q, k, v, fwd, g| {
            Tensor::flash_attention_backward(q, k, v, fwd, g, &opts)
        })
    }

    /// Attention restricted to the blocks set in `mask` (and the causal triangle when
    /// asked), computed like [`flash_attention`](Self::flash_attention) skipping unset blocks.
    pub fn block_sparse_attention(&self, k: &Var, v: &Var, mask: &BlockMask, opts: &AttentionOpts) -> Result<Var> {
        if let Some(r) = autocast::cast([self, k, v], |[q, k, v]| q.block_sparse_attention(&k, &v, mask, opts)) {
            return r;
        }
        let fwd = self.value().block_sparse_attention(k.value(), v.value(), mask, opts)?;
        let (mask, opts) = (mask.clone(), *opts);
        record_tiled("block_sparse_attention", [self, k, v], fwd, move |q, k, v, fwd, g| {
            Tensor::block_sparse_attention_backward(q, k, v, &mask, fwd, g, &opts)
        })
    }

    /// Scatterbrain attention: exact on a local band of blocks, random-feature low-rank
    /// elsewhere (see [`Scatterbrain`]).
    pub fn scatterbrain_attention(&self, k: &Var, v: &Var, cfg: &Scatterbrain, opts: &AttentionOpts) -> Result<Var> {
        if let Some(r) = autocast::cast([self, k, v], |[q, k, v]| q.scatterbrain_attention(&k, &v, cfg, opts)) {
            return r;
        }
        let fwd = self.value().scatterbrain_attention(k.value(), v.value(), cfg, opts)?;
        let (cfg, opts) = (*cfg, *opts);
        record_tiled("scatterbrain_attention", [self, k, v], fwd, move |q, k, v, fwd, g| {
            Tensor::scatterbrain_attention_backward(q, k, v, &cfg, fwd, g, &opts)
        })
    }
}
