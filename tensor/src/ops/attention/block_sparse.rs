//! Block-sparse FlashAttention: the tiled kernels visiting only the (query block, key
//! block) pairs set in a [`BlockMask`] whose block is the tile.

use super::tiling::{self, TilePlan};
use super::{AttentionGrads, AttentionOpts, AttentionOut, Dims};
use crate::{BlockMask, Result, Tensor};

/// The tile plan of `mask`, which must cover the queries by its rows and the keys by its
/// columns (`ceil(n / block)` blocks each; the last block may be partial).
fn plan<'a>(mask: &'a BlockMask, dims: Dims, op: &'static str) -> Result<TilePlan<'a>> {
    let want = (dims.nq.div_ceil(mask.block), dims.nk.div_ceil(mask.block));
    if (mask.rows, mask.cols) != want || mask.set.len() != mask.rows * mask.cols {
        crate::bail!(
            op,
            "a {}x{} block mask of block {} does not cover {} queries and {} keys (needs {}x{} blocks)",
            mask.rows,
            mask.cols,
            mask.block,
            dims.nq,
            dims.nk,
            want.0,
            want.1
        );
    }
    Ok(TilePlan { tile: mask.block, mask: Some(mask) })
}

impl Tensor {
    /// Attention of queries `self` (batch, heads, n_q, d) over keys and values (batch,
    /// heads, n_k, d) restricted to the blocks set in `mask` (and the causal triangle when
    /// `opts.causal`): exact softmax over the visible keys, computed like
    /// [`flash_attention`](Self::flash_attention) but skipping unset blocks.
    pub fn block_sparse_attention(
        &self,
        k: &Tensor,
        v: &Tensor,
        mask: &BlockMask,
        opts: &AttentionOpts,
    ) -> Result<AttentionOut> {
        let op = "block_sparse_attention";
        let dims = Dims::check(self, k, v, opts, op)?;
        if self.device() != crate::Device::Cpu {
            return self.cuda_attention(k, v, Some(mask), dims, opts, op);
        }
        tiling::forward_tensors(op, [self, k, v], dims, plan(mask, dims, op)?, opts)
    }

    /// Gradients of [`block_sparse_attention`](Self::block_sparse_attention).
    pub fn block_sparse_attention_backward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &BlockMask,
        fwd: &AttentionOut,
        dout: &Tensor,
        opts: &AttentionOpts,
    ) -> Result<AttentionGrads> {
        let op = "block_sparse_attention_backward";
        let dims = Dims::check(q, k, v, opts, op)?;
        if q.device() != crate::Device::Cpu {
            return Tensor::cuda_attention_backward(q, k, v, Some(mask), fwd, dout, dims, opts, op);
        }
        tiling::backward_tensors(op, [q, k, v], fwd, dout, dims, plan(mask, dims, op)?, opts)
    }
}
