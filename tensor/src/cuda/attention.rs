//! Flash attention (dense, or block-sparse over 64×64 tiles) on CUDA tensors. The
//! kernels take any numbers of queries and keys (causal masks aligned at the last of
//! each, as on the CPU: new queries after a key cache see all of it) and head_dim 32, 64 or
//! 128, with attention dropout drawing the CPU's mask; smaller heads are zero-padded to
//! the next of those (exact: the padding adds nothing to q·kᵀ and its outputs are
//! dropped, and the scale stays the heads' own), anything else is a clear error naming
//! what is not supported.

use super::cuda_err;
use super::ops::{alloc, out_mut, same_device};
use crate::ops::attention::{Dims, check_saved};
use crate::{AttentionGrads, AttentionOpts, AttentionOut, BlockMask, DType, Device, Result, Tensor};
use monarch_cuda::ops::flash_attention::{self as kf, ATTN_TILE, AttentionDims};
use std::sync::Mutex;

/// The kernel's sizes, k and v's heads `kv_stride` apart, or why the call has no CUDA kernel.
fn kernel_dims(d: Dims, kv_stride: usize, opts: &AttentionOpts, op: &'static str) -> Result<AttentionDims> {
    if d.d == 0 || d.d > 128 {
        crate::bail!(op, "the CUDA kernels take head_dim up to 128 (got {})", d.d);
    }
    Ok(AttentionDims {
        batch_heads: d.bh(),
        seq_q: d.nq,
        seq_k: d.nk,
        kv_stride,
        head_dim: padded_head_dim(d.d),
        scale: 1.0 / (d.d as f32).sqrt(),
        causal: opts.causal,
        dropout: opts.dropout,
        seed: opts.seed,
    })
}

/// The kernels' head_dim for heads of `d` (1..=128): 32, 64 or 128.
fn padded_head_dim(d: usize) -> usize {
    d.next_power_of_two().max(32)
}

/// `t` (.., d) zero-padded along its last dimension to `to` (itself when `to` is d).
fn pad_heads(t: &Tensor, to: usize) -> Result<Tensor> {
    let mut dims = t.dims().to_vec();
    let d = dims[dims.len() - 1];
    if d == to {
        return t.contiguous();
    }
    *dims.last_mut().expect("attention tensors have rank 4") = to - d;
    let zeros = Tensor::zeros_on(dims, t.dtype(), t.device())?;
    Tensor::cat(&[t, &zeros], t.rank() - 1)
}

/// Elements from one head of a (batch, heads, seq, d) view to the next, when the kernels
/// can read it in place: each head's rows contiguous and the heads evenly spaced without
/// overlap (a packed tensor, or a narrowed key cache).
fn head_stride(t: &Tensor) -> Option<usize> {
    let (&[b, h, n, d], &[s0, s1, s2, s3]) = (t.dims(), t.layout().strides()) else { return None };
    let rows_packed = (d <= 1 || s3 == 1) && (n <= 1 || s2 == d);
    let stride = match (b, h) {
        _ if b * h <= 1 => n * d,
        (_, 1) => s0,
        (1, _) => s1,
        _ if s0 == h * s1 => s1,
        _ => return None,
    };
    (rows_packed && stride >= n * d).then_some(stride)
}

/// Keys and values as the kernels read them, with their heads' stride: in place when both
/// are views the kernels can read with one stride (a key cache's), else packed copies
/// (heads zero-padded to `hd` when narrower).
fn keys_values(k: &Tensor, v: &Tensor, hd: usize) -> Result<(Tensor, Tensor, usize)> {
    let d = k.dims()[3];
    match (head_stride(k), head_stride(v)) {
        (Some(a), Some(b)) if a == b && d == hd => Ok((k.clone(), v.clone(), a)),
        _ => Ok((pad_heads(k, hd)?, pad_heads(v, hd)?, k.dims()[2] * hd)),
    }
}

/// The first `d` of `t`'s padded heads.
fn unpad_heads(t: Tensor, d: usize) -> Result<Tensor> {
    if t.dims().last() == Some(&d) { Ok(t) } else { t.narrow(t.rank() - 1, 0, d)?.contiguous() }
}

/// A block mask as the kernels read it: u8 flags over 64×64 tiles, on `like`'s device.
/// Blocks of a multiple of 64 are split into tiles (a tile never straddles two blocks),
/// so the result is exactly the mask's.
fn tile_mask(mask: Option<&BlockMask>, ad: &AttentionDims, like: &Tensor, op: &'static str) -> Result<Option<Tensor>> {
    let Some(m) = mask else { return Ok(None) };
    let (tq, tk) = (ad.q_tiles(), ad.k_tiles());
    if m.set.len() != m.rows * m.cols {
        crate::bail!(op, "a mask of {}x{} blocks needs {} flags, got {}", m.rows, m.cols, m.rows * m.cols, m.set.len());
    }
    let covering = |n: usize| n.div_ceil(m.block.max(1));
    if m.block % ATTN_TILE != 0 || m.rows != covering(ad.seq_q) || m.cols != covering(ad.seq_k) {
        crate::bail!(
            op,
            "the CUDA kernels take masks of blocks of a multiple of {ATTN_TILE} covering the queries and keys, got {}x{} blocks of {} for {} queries and {} keys",
            m.rows,
            m.cols,
            m.block,
            ad.seq_q,
            ad.seq_k
        );
    }
    let per = m.block / ATTN_TILE;
    let tiles: Vec<bool> = (0..tq * tk).map(|i| m.get(i / tk / per, i % tk / per)).collect();
    let mut kept = KEPT_TILE_MASKS.lock().unwrap_or_else(|e| e.into_inner());
    let device = like.device();
    if let Some(at) = kept.iter().position(|(d, k, _)| *d == device && *k == tiles) {
        let entry = kept.remove(at);
        let flags = entry.2.clone();
        kept.push(entry);
        return Ok(Some(flags));
    }
    let flags = BlockMask::new(tq, tk, ATTN_TILE, tiles.clone())?.to_tensor().to_device(device)?;
    if kept.len() == KEPT_MASKS {
        kept.remove(0);
    }
    kept.push((device, tiles, flags.clone()));
    Ok(Some(flags))
}

/// How many tile masks [`KEPT_TILE_MASKS`] holds.
const KEPT_MASKS: usize = 8;

/// The tile masks uploaded last (device, flags, the flags on that device), the most
/// recently used last. A model's layers share one mask and call forward and backward with
/// it at every step, so each is built and copied to the device once.
static KEPT_TILE_MASKS: Mutex<Vec<(Device, Vec<bool>, Tensor)>> = Mutex::new(Vec::new());

impl Tensor {
    /// [`Tensor::flash_attention`] (no mask) or [`Tensor::block_sparse_attention`] on the device.
    pub(crate) fn cuda_attention(
        &self,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&BlockMask>,
        dims: Dims,
        opts: &AttentionOpts,
        op: &'static str,
    ) -> Result<AttentionOut> {
        same_device(op, self, &[k, v])?;
        let hd = padded_head_dim(dims.d);
        let (k, v, kv_stride) = keys_values(k, v, hd)?;
        let ad = kernel_dims(dims, kv_stride, opts, op)?;
        let q = pad_heads(self, hd)?;
        let m = tile_mask(mask, &ad, &q, op)?;
        let mut out = alloc(&q, q.dtype(), q.shape().clone(), op)?;
        let mut lse = alloc(&q, DType::F32, dims.row_shape(), op)?;
        let mv = m.as_ref().map(|m| m.cuda_elems(op)).transpose()?;
        kf::flash_attention_forward(
            ad,
            q.cuda_view(op)?,
            k.cuda_view(op)?,
            v.cuda_view(op)?,
            mv,
            out_mut(&mut out, op)?,
            out_mut(&mut lse, op)?,
        )
        .map_err(cuda_err(op))?;
        Ok(AttentionOut { out: unpad_heads(out, dims.d)?, lse })
    }

    /// The gradients of [`Tensor::cuda_attention`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cuda_attention_backward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&BlockMask>,
        fwd: &AttentionOut,
        dout: &Tensor,
        dims: Dims,
        opts: &AttentionOpts,
        op: &'static str,
    ) -> Result<AttentionGrads> {
        same_device(op, q, &[k, v, &fwd.out, &fwd.lse, dout])?;
        check_saved(fwd, dout, dims, op)?;
        let hd = padded_head_dim(dims.d);
        let (kc, vc, kv_stride) = keys_values(k, v, hd)?;
        let ad = kernel_dims(dims, kv_stride, opts, op)?;
        let qc = pad_heads(q, hd)?;
        let (o, lse, g) = (pad_heads(&fwd.out, hd)?, fwd.lse.contiguous()?, pad_heads(dout, hd)?);
        let m = tile_mask(mask, &ad, &qc, op)?;
        let mut dq = alloc(&qc, qc.dtype(), qc.shape().clone(), op)?;
        let mut dk = alloc(&qc, qc.dtype(), [dims.batch, dims.heads, dims.nk, hd], op)?;
        let mut dv = alloc(&qc, qc.dtype(), [dims.batch, dims.heads, dims.nk, hd], op)?;
        let mv = m.as_ref().map(|m| m.cuda_elems(op)).transpose()?;
        kf::flash_attention_backward(
            ad,
            qc.cuda_view(op)?,
            kc.cuda_view(op)?,
            vc.cuda_view(op)?,
            mv,
            o.cuda_view(op)?,
            lse.cuda_view(op)?,
            g.cuda_view(op)?,
            out_mut(&mut dq, op)?,
            out_mut(&mut dk, op)?,
            out_mut(&mut dv, op)?,
        )
        .map_err(cuda_err(op))?;
        let d = dims.d;
        Ok(AttentionGrads { dq: unpad_heads(dq, d)?, dk: unpad_heads(dk, d)?, dv: unpad_heads(dv, d)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_of_larger_blocks_split_into_the_kernels_tiles() {
        // 300 tokens: 3 blocks of 128 (the last ragged) become 5 tiles of 64.
        let m = BlockMask::new(3, 3, 128, vec![true, false, false, true, true, false, false, false, true]).unwrap();
        let ad = AttentionDims {
            batch_heads: 1,
            seq_q: 300,
            seq_k: 300,
            kv_stride: 300 * 64,
            head_dim: 64,
            scale: 0.125,
            causal: false,
            dropout: 0.0,
            seed: 0,
        };
        let like = Tensor::zeros(1, DType::F32);
        let got = tile_mask(Some(&m), &ad, &like, "test").unwrap().unwrap().to_vec::<u8>().unwrap();
        #[rustfmt::skip]
        let want = [
            1, 1, 0, 0, 0,
            1, 1, 0, 0, 0,
            1, 1, 1, 1, 0,
            1, 1, 1, 1, 0,
            0, 0, 0, 0, 1,
        ];
        assert_eq!(got, want);
        let small = BlockMask::new(10, 10, 32, vec![true; 100]).unwrap();
        assert!(tile_mask(Some(&small), &ad, &like, "test").is_err(), "32-blocks straddle tiles");
        let short = BlockMask::new(2, 2, 128, vec![true; 4]).unwrap();
        assert!(tile_mask(Some(&short), &ad, &like, "test").is_err(), "the mask must cover the sequence");
        // 100 queries over 300 keys: 1x3 blocks of 128 become 2x5 tiles.
        let wide = AttentionDims { seq_q: 100, kv_stride: 300 * 64, ..ad };
        let m = BlockMask::new(1, 3, 128, vec![false, true, true]).unwrap();
        let got = tile_mask(Some(&m), &wide, &like, "test").unwrap().unwrap();
        assert_eq!(got.dims(), [2, 5]);
        assert_eq!(got.to_vec::<u8>().unwrap(), [0, 0, 1, 1, 1, 0, 0, 1, 1, 1]);
        assert!(tile_mask(Some(&short), &wide, &like, "test").is_err(), "2 rows of blocks for 100 queries");
    }

    #[test]
    fn keys_read_in_place_are_views_with_packed_rows_and_evenly_spaced_heads() {
        let cache = Tensor::zeros([2, 3, 10, 4], DType::F32);
        assert_eq!(head_stride(&cache), Some(40));
        let first = cache.narrow(2, 0, 6).unwrap();
        assert_eq!(head_stride(&first), Some(40), "a cache's first positions");
        assert_eq!(head_stride(&cache.narrow(0, 1, 1).unwrap().narrow(2, 2, 5).unwrap()), Some(40));
        assert_eq!(head_stride(&cache.narrow(1, 0, 2).unwrap()), None, "batches 3 heads apart, 2 heads left");
        assert_eq!(head_stride(&cache.narrow(3, 0, 2).unwrap()), None, "rows with gaps");
        assert_eq!(head_stride(&cache.transpose(1, 2).unwrap()), None);
        let one = Tensor::zeros([1, 1, 5, 4], DType::F32).broadcast_as([3, 1, 5, 4]).unwrap();
        assert_eq!(head_stride(&one), None, "broadcast heads overlap");
    }
}
