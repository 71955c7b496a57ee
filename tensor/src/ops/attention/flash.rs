//! FlashAttention on the CPU: the dense tiled kernels of [`tiling`](super::tiling).

use super::decode;
use super::tiling::{self, TilePlan};
use super::{AttentionGrads, AttentionOpts, AttentionOut, Dims};
use crate::{Result, Tensor};

/// Queries and keys per tile of flash attention on the CPU.
pub const FLASH_TILE: usize = 128;

const PLAN: TilePlan = TilePlan { tile: FLASH_TILE, mask: None };

impl Tensor {
    /// Exact attention of queries `self` (batch, heads, n_q, d) over keys and values
    /// (batch, heads, n_k, d), computed in tiles with an online softmax. Returns the output
    /// and the per-row log-sum-exp that [`flash_attention_backward`](Self::flash_attention_backward)
    /// needs; memory beyond those is a few tiles per thread.
    pub fn flash_attention(&self, k: &Tensor, v: &Tensor, opts: &AttentionOpts) -> Result<AttentionOut> {
        let op = "flash_attention";
        let dims = Dims::check(self, k, v, opts, op)?;
        if self.device() != crate::Device::Cpu {
            return self.cuda_attention(k, v, None, dims, opts, op);
        }
        if decode::applies(&dims, opts, k, v) {
            return decode::forward_tensors(op, [self, k, v], dims, opts.causal);
        }
        tiling::forward_tensors(op, [self, k, v], dims, PLAN, opts)
    }

    /// Gradients of [`flash_attention`](Self::flash_attention) from its output, log-sum-exp
    /// and the output gradient `dout`; the probabilities are recomputed tile by tile.
    pub fn flash_attention_backward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        fwd: &AttentionOut,
        dout: &Tensor,
        opts: &AttentionOpts,
    ) -> Result<AttentionGrads> {
        let op = "flash_attention_backward";
        let dims = Dims::check(q, k, v, opts, op)?;
        if q.device() != crate::Device::Cpu {
            return Tensor::cuda_attention_backward(q, k, v, None, fwd, dout, dims, opts, op);
        }
        tiling::backward_tensors(op, [q, k, v], fwd, dout, dims, PLAN, opts)
    }
}
