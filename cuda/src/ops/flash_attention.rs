//! `kernels/flash_attention.cu`: fused attention forward and backward (online softmax,
//! no N×N buffer), causal and block-sparse masks.

use crate::buffer::Check;
use crate::device::Arg;
use crate::{DType, Result, View, ViewMut, kernels};
use cudarc::driver::LaunchConfig;

/// The tile of the block mask (queries × keys), also the kernels' tile.
pub const ATTN_TILE: usize = 64;

/// Shapes and options of one attention call: queries (batch, heads, seq_q, head_dim)
/// over keys and values (batch, heads, seq_k, head_dim).
#[derive(Clone, Copy, Debug)]
pub struct AttentionDims {
    /// Batch × heads.
    pub batch_heads: usize,
    /// Queries per head.
    pub seq_q: usize,
    /// Keys (and values) per head.
    pub seq_k: usize,
    /// Elements from one head's keys (and values) to the next's: `seq_k · head_dim` when
    /// packed, more when k and v are views of a longer key cache. Each head's rows are
    /// contiguous; the gradients dk, dv are written packed.
    pub kv_stride: usize,
    /// 32, 64 or 128.
    pub head_dim: usize,
    /// The scale of q·kᵀ before the softmax: 1/√head_dim, or the model's own head
    /// size's when its heads were zero-padded to `head_dim`.
    pub scale: f32,
    /// Causal masking aligned at the last query and key: key j is visible to query i only
    /// when j ≤ i + seq_k − seq_q (queries after a key cache see all of it).
    pub causal: bool,
    /// Probability of dropping an attention probability, in [0, 1): probability
    /// (bh, i, j) is dropped iff `counter_uniform(seed, (bh·seq_q + i)·seq_k + j) < p` (as
    /// f32), the CPU's mask; kept ones are scaled by 1/(1 − p).
    pub dropout: f64,
    /// Seed of the dropout mask.
    pub seed: u64,
}

impl AttentionDims {
    /// Tiles along the queries: the block mask has `q_tiles()` rows.
    pub fn q_tiles(&self) -> usize {
        self.seq_q.div_ceil(ATTN_TILE)
    }
    /// Tiles along the keys: the block mask has `k_tiles()` columns.
    pub fn k_tiles(&self) -> usize {
        self.seq_k.div_ceil(ATTN_TILE)
    }
    fn check(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.dropout) {
            crate::error::bail!("flash_attention", "dropout must lie in [0, 1), got {}", self.dropout);
        }
        if self.kv_stride < self.seq_k * self.head_dim {
            crate::error::bail!(
                "flash_attention",
                "heads of k and v {} elements apart overlap ({} keys of {})",
                self.kv_stride,
                self.seq_k,
                self.head_dim
            );
        }
        if ![32, 64, 128].contains(&self.head_dim) {
            crate::error::bail!("flash_attention", "head_dim must be 32, 64 or 128 (got {})", self.head_dim);
        }
        if self.q_tiles().max(self.k_tiles()) > 65535 || i32::try_from(self.batch_heads).is_err() {
            crate::error::bail!(
                "flash_attention",
                "{} queries or {} keys (at most {} on a GPU) or batch·heads {} out of range",
                self.seq_q,
                self.seq_k,
                65535 * ATTN_TILE,
                self.batch_heads
            );
        }
        Ok(())
    }
    /// Elements of q (and o, dout, dq).
    fn q_elems(&self) -> usize {
        self.batch_heads * self.seq_q * self.head_dim
    }
    /// Elements of dk and dv.
    fn k_elems(&self) -> usize {
        self.batch_heads * self.seq_k * self.head_dim
    }
    /// Elements k and v reach from their start: the last head's rows `kv_stride` apart.
    fn kv_span(&self) -> usize {
        match self.batch_heads {
            0 => 0,
            bh => (bh - 1) * self.kv_stride + self.seq_k * self.head_dim,
        }
    }
}

/// `struct FlashParams` of the kernels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FlashParams {
    q: u64,
    k: u64,
    v: u64,
    o: u64,
    lse: u64,
    dout: u64,
    dq: u64,
    dk: u64,
    dv: u64,
    dq_accum: u64,
    delta: u64,
    mask: u64,
    bh: i32,
    seq_q: i32,
    seq_k: i32,
    scale: f32,
    causal: i32,
    n_k_tiles: i32,
    p_drop: f32,
    drop_scale: f32,
    seed: u64,
    kv_stride: i64,
}

fn params(d: &AttentionDims, mask: Option<&View<'_>>) -> FlashParams {
    FlashParams {
        mask: mask.map_or(0, |m| m.ptr()),
        bh: d.batch_heads as i32,
        seq_q: d.seq_q as i32,
        seq_k: d.seq_k as i32,
        scale: d.scale,
        causal: d.causal as i32,
        n_k_tiles: d.k_tiles() as i32,
        p_drop: d.dropout as f32,
        drop_scale: (1.0 / (1.0 - d.dropout)) as f32,
        seed: d.seed,
        kv_stride: d.kv_stride as i64,
        ..FlashParams::default()
    }
}

/// Dynamic shared memory of the forward kernel (bytes): two stages of (K, V) tiles and,
/// for bf16, the Q tile (the kernel's `FaFwdRows`).
fn fwd_smem(d: usize, elem: usize) -> u32 {
    let q_rows = if elem == 2 { fwd_rows(d, elem) } else { 0 };
    ((4 * ATTN_TILE + q_rows) * (d + 8) * elem) as u32
}

/// The backward kernel's key block and threads (its `FaBwdShape`): bf16 128 keys of 8
/// warps, f32 64 keys of 4.
fn bwd_keys_threads(elem: usize) -> (usize, u32) {
    if elem == 2 { (2 * ATTN_TILE, 256) } else { (ATTN_TILE, 128) }
}

/// Dynamic shared memory of the backward kernel (bytes): K, V and dS of the key block, and
/// per stage (two for bf16, one for f32) Q, dO, lse and delta.
fn bwd_smem(d: usize, elem: usize) -> u32 {
    let stages = if elem == 2 { 2 } else { 1 };
    let keys = bwd_keys_threads(elem).0;
    let tiles = 2 * stages * ATTN_TILE * (d + 8) + 2 * keys * (d + 8) + keys * (ATTN_TILE + 8);
    (tiles * elem + 2 * stages * ATTN_TILE * 4) as u32
}

/// Query rows per block of the forward kernel (its `FaFwdRows`): for bf16 32 per warp up
/// to head_dim 64, else 16.
fn fwd_rows(head_dim: usize, elem: usize) -> usize {
    if elem == 2 && head_dim <= 64 { 2 * ATTN_TILE } else { ATTN_TILE }
}

/// Grid (blocks of `rows` along a sequence of `seq`, batch·heads) of `threads`: tiles of
/// one head run side by side (its K and V stay in L2); heads past 65535 (grid y's limit)
/// continue on z.
fn tiles_cfg(d: &AttentionDims, seq: usize, rows: usize, threads: u32, smem: u32) -> LaunchConfig {
    let y = d.batch_heads.clamp(1, 65535);
    LaunchConfig {
        grid_dim: (seq.div_ceil(rows) as u32, y as u32, d.batch_heads.div_ceil(y) as u32),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem,
    }
}

fn check_mask(c: &Check, d: &AttentionDims, mask: Option<&View<'_>>) -> Result<()> {
    if let Some(m) = mask {
        c.input("mask", m, DType::U8, d.q_tiles() * d.k_tiles())?;
    }
    Ok(())
}

/// The most queries per head that decode with the keys split ([`decode_split`]).
pub const DECODE_QUERIES: usize = 4;

/// Keys per step of the decoding kernel (one per thread); a split holds a multiple.
const DECODE_KEYS: usize = 128;

/// How decoding splits the keys: (splits, keys per split). Enough splits for about two
/// blocks per multiprocessor over all heads, none of fewer than `DECODE_KEYS` keys.
fn decode_split(batch_heads: usize, seq_k: usize, sm_count: usize) -> (usize, usize) {
    let steps = seq_k.div_ceil(DECODE_KEYS).max(1);
    let splits = (2 * sm_count).div_ceil(batch_heads.max(1)).clamp(1, steps);
    let split_keys = steps.div_ceil(splits) * DECODE_KEYS;
    (seq_k.div_ceil(split_keys).max(1), split_keys)
}

/// Forward: `o = softmax(q·kᵀ/√d + masks)·v` and the per-row log-sum-exp `lse`
/// (batch·heads·seq_q, f32; -inf on rows with no visible key, whose output is 0).
/// `mask` is u8 (q_tiles × k_tiles), 1 = visit. Kernel `flash_fwd_{f32,bf16}_d{32,64,128}(FlashParams)`,
/// grid (ceil(seq_q / fwd_rows), batch·heads), 128 threads, dynamic shared memory `fwd_smem`.
/// Decoding (at most [`DECODE_QUERIES`] queries, no block mask, no dropout) splits the
/// keys instead: `flash_decode_*(FlashParams, part, split_keys)`, grid (splits,
/// batch·heads), 128 threads, each split's output and log-sum-exp in an f32 buffer
/// `part` that `flash_decode_combine_*(FlashParams, part, splits)` (grid
/// ceil(batch·heads·seq_q / 4), 128 threads) merges; one split writes `o` and `lse` itself.
pub fn flash_attention_forward(
    d: AttentionDims,
    q: View<'_>,
    k: View<'_>,
    v: View<'_>,
    mask: Option<View<'_>>,
    o: ViewMut<'_>,
    lse: ViewMut<'_>,
) -> Result<()> {
    d.check()?;
    let c = Check { op: "flash_attention_forward" };
    let dt = q.dtype();
    c.input("q", &q, dt, d.q_elems())?;
    c.input("k", &k, dt, d.kv_span())?;
    c.input("v", &v, dt, d.kv_span())?;
    check_mask(&c, &d, mask.as_ref())?;
    c.output("o", &o, dt, d.q_elems())?;
    c.output("lse", &lse, DType::F32, d.batch_heads * d.seq_q)?;
    let dev = q.device().clone();
    c.same_device(&dev, [k.device(), v.device(), o.device(), lse.device()])?;
    if d.q_elems() == 0 {
        return Ok(());
    }
    let mut p = params(&d, mask.as_ref());
    (p.q, p.k, p.v, p.o, p.lse) = (q.ptr(), k.ptr(), v.ptr(), o.ptr(), lse.ptr());
    let (sfx, hd) = (dt.kernel_suffix(c.op)?, d.head_dim);
    if mask.is_none() && d.dropout == 0.0 && d.seq_q <= DECODE_QUERIES {
        let (splits, split_keys) = decode_split(d.batch_heads, d.seq_k, dev.sm_count() as usize);
        let f = dev.function(kernels::FLASH_ATTENTION, &format!("flash_decode_{sfx}_d{hd}"))?;
        let cfg = tiles_cfg(&d, splits, 1, DECODE_KEYS as u32, 0);
        if splits == 1 {
            return dev.launch(&f, cfg, &[Arg::of(&p), Arg::U64(0), Arg::I32(split_keys as i32)]);
        }
        let rows = d.batch_heads * d.seq_q;
        let part = dev.alloc(DType::F32, rows * splits * (hd + 1))?;
        dev.launch(&f, cfg, &[Arg::of(&p), Arg::U64(part.device_ptr()), Arg::I32(split_keys as i32)])?;
        let f = dev.function(kernels::FLASH_ATTENTION, &format!("flash_decode_combine_{sfx}_d{hd}"))?;
        let args = [Arg::of(&p), Arg::U64(part.device_ptr()), Arg::I32(splits as i32)];
        return dev.launch(&f, super::cfg_1d(rows.div_ceil(4) as u32, 128), &args);
    }
    let f = dev.function(kernels::FLASH_ATTENTION, &format!("flash_fwd_{sfx}_d{hd}"))?;
    let (rows, smem) = (fwd_rows(d.head_dim, dt.size()), fwd_smem(d.head_dim, dt.size()));
    dev.launch(&f, tiles_cfg(&d, d.seq_q, rows, 128, smem), &[Arg::of(&p)])
}

/// Backward from the forward's `o`, `lse` and the output gradient `dout`: writes `dq`,
/// `dk`, `dv`. Kernels: `flash_bwd_delta_*` (rows of Σ dO·O, grid ceil(rows/4), 128
/// threads), `flash_bwd_{f32,bf16}_d{D}` (grid (key blocks, batch·heads), `bwd_keys_threads`, dynamic
/// shared memory `bwd_smem`; dq accumulated in an f32 buffer with atomics, so its last
/// bits may vary between runs), `flash_bwd_dq_finish_*` (grid-stride conversion).
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_backward(
    d: AttentionDims,
    q: View<'_>,
    k: View<'_>,
    v: View<'_>,
    mask: Option<View<'_>>,
    o: View<'_>,
    lse: View<'_>,
    dout: View<'_>,
    dq: ViewMut<'_>,
    dk: ViewMut<'_>,
    dv: ViewMut<'_>,
) -> Result<()> {
    d.check()?;
    let c = Check { op: "flash_attention_backward" };
    let dt = q.dtype();
    for (name, t) in [("q", &q), ("o", &o), ("dout", &dout)] {
        c.input(name, t, dt, d.q_elems())?;
    }
    c.input("k", &k, dt, d.kv_span())?;
    c.input("v", &v, dt, d.kv_span())?;
    c.input("lse", &lse, DType::F32, d.batch_heads * d.seq_q)?;
    check_mask(&c, &d, mask.as_ref())?;
    c.output("dq", &dq, dt, d.q_elems())?;
    c.output("dk", &dk, dt, d.k_elems())?;
    c.output("dv", &dv, dt, d.k_elems())?;
    let dev = q.device().clone();
    c.same_device(&dev, [k.device(), v.device(), o.device(), lse.device(), dout.device(), dq.device()])?;
    if d.q_elems() == 0 && d.k_elems() == 0 {
        return Ok(());
    }
    let sfx = dt.kernel_suffix(c.op)?;
    let rows = d.batch_heads * d.seq_q;
    let delta = dev.alloc(DType::F32, rows)?;
    let dq_accum = dev.zeros(DType::F32, d.q_elems())?;
    let mut p = params(&d, mask.as_ref());
    (p.q, p.k, p.v, p.o, p.lse, p.dout) = (q.ptr(), k.ptr(), v.ptr(), o.ptr(), lse.ptr(), dout.ptr());
    (p.dq, p.dk, p.dv, p.dq_accum, p.delta) = (dq.ptr(), dk.ptr(), dv.ptr(), dq_accum.device_ptr(), delta.device_ptr());
    let hd = d.head_dim;
    // No queries: dk and dv are zero (the key blocks visit no query tile). No keys: dq
    // is its zeroed accumulator.
    if rows > 0 {
        let f = dev.function(kernels::FLASH_ATTENTION, &format!("flash_bwd_delta_{sfx}_d{hd}"))?;
        dev.launch(&f, super::cfg_1d(rows.div_ceil(4) as u32, 128), &[Arg::of(&p)])?;
    }
    if d.k_elems() > 0 {
        let f = dev.function(kernels::FLASH_ATTENTION, &format!("flash_bwd_{sfx}_d{hd}"))?;
        let (keys, threads) = bwd_keys_threads(dt.size());
        dev.launch(&f, tiles_cfg(&d, d.seq_k, keys, threads, bwd_smem(hd, dt.size())), &[Arg::of(&p)])?;
    }
    if d.q_elems() == 0 {
        return Ok(());
    }
    let f = dev.function(kernels::FLASH_ATTENTION, &format!("flash_bwd_dq_finish_{sfx}"))?;
    dev.launch(&f, super::cfg_1d(dev.grid_for(d.q_elems(), 256), 256), &[Arg::of(&p), Arg::I32(hd as i32)])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// About two blocks per multiprocessor in all, each split whole steps of keys, and
    /// every key in one split: a single head of 1024 keys takes 8 splits of 128 on 132
    /// multiprocessors; 96 heads take 3 of 384; many heads or few keys take one.
    #[test]
    fn decoding_splits_the_keys_to_fill_the_device() {
        assert_eq!(decode_split(1, 1024, 132), (8, 128));
        assert_eq!(decode_split(96, 1024, 132), (3, 384));
        assert_eq!(decode_split(12, 1000, 132), (8, 128));
        assert_eq!(decode_split(1000, 8192, 132), (1, 8192));
        assert_eq!(decode_split(4, 100, 132), (1, 128));
        assert_eq!(decode_split(4, 0, 132), (1, 128));
        for (bh, keys) in [(1, 1), (7, 129), (12, 1025), (300, 4097), (2, 65536)] {
            let (splits, per) = decode_split(bh, keys, 132);
            assert_eq!(per % DECODE_KEYS, 0);
            assert!(splits * per >= keys && (splits - 1) * per < keys.max(1), "{bh} {keys}: {splits} x {per}");
        }
    }

    #[test]
    fn params_match_the_kernel_struct_and_smem_fits_hopper_and_ampere() {
        // 12 pointers, 6 four-byte fields (bh, seq_q, seq_k, scale, causal, n_k_tiles), the
        // two dropout floats, the seed and the heads' stride.
        assert_eq!(std::mem::size_of::<FlashParams>(), 12 * 8 + 6 * 4 + 2 * 4 + 8 + 8);
        for d in [32, 64, 128] {
            for elem in [2, 4] {
                assert!(fwd_smem(d, elem) <= 163 * 1024 && bwd_smem(d, elem) <= 163 * 1024, "d {d} elem {elem}");
            }
        }
        assert_eq!(fwd_smem(64, 2), (4 * 64 + 128) * 72 * 2);
        assert_eq!(fwd_smem(128, 4), 4 * 64 * 136 * 4);
        assert_eq!(bwd_smem(128, 2), (4 * 64 * 136 + 2 * 128 * 136 + 128 * 72) * 2 + 1024);
        assert_eq!(bwd_smem(128, 4), 4 * 64 * 136 * 4 + 64 * 72 * 4 + 512);
    }
}
