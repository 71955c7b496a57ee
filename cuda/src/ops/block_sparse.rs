//! `kernels/block_sparse.cu`: block-sparse matmul for BlockSparseLinear / Pixelfly. The
//! weight is stored only as its nonzero blocks; nothing is densified.

use crate::buffer::Check;
use crate::device::Arg;
use crate::{CudaDevice, DType, DeviceBuffer, Result, View, ViewMut, kernels};
use cudarc::driver::LaunchConfig;
use std::sync::Arc;

/// The block pattern of an (out, in) weight on the device: CSR over block rows (the
/// order of the stored blocks), its CSC transpose for dx, and each block's row.
#[derive(Debug)]
pub struct BlockSparseLayout {
    /// Output features.
    pub out_features: usize,
    /// Input features.
    pub in_features: usize,
    /// Block size: 16, 32 or 64.
    pub block: usize,
    /// Stored blocks.
    pub nnz: usize,
    row_ptr: DeviceBuffer,
    col_idx: DeviceBuffer,
    col_ptr: DeviceBuffer,
    row_idx: DeviceBuffer,
    blk_idx: DeviceBuffer,
    row_of: DeviceBuffer,
}

/// The host-side CSC transpose of a CSR block pattern: (col_ptr, row_idx, blk_idx) and
/// each stored block's row, entries of each column in increasing row order.
pub fn csr_to_csc(row_ptr: &[i32], col_idx: &[i32], cols: usize) -> (Vec<i32>, Vec<i32>, Vec<i32>, Vec<i32>) {
    let mut col_ptr = vec![0i32; cols + 1];
    for &c in col_idx {
        col_ptr[c as usize + 1] += 1;
    }
    for c in 0..cols {
        col_ptr[c + 1] += col_ptr[c];
    }
    let mut next = col_ptr.clone();
    let (mut row_idx, mut blk_idx) = (vec![0i32; col_idx.len()], vec![0i32; col_idx.len()]);
    let mut row_of = vec![0i32; col_idx.len()];
    for r in 0..row_ptr.len().saturating_sub(1) {
        for e in row_ptr[r]..row_ptr[r + 1] {
            let c = col_idx[e as usize] as usize;
            let at = next[c] as usize;
            row_idx[at] = r as i32;
            blk_idx[at] = e;
            row_of[e as usize] = r as i32;
            next[c] += 1;
        }
    }
    (col_ptr, row_idx, blk_idx, row_of)
}

/// The batch as the kernels' i32, refused past its range rather than wrapped.
fn batch_arg(batch: usize) -> Result<i32> {
    match i32::try_from(batch) {
        Ok(b) => Ok(b),
        Err(_) => crate::error::bail!("block_sparse", "batch {batch} exceeds the kernels' i32 rows"),
    }
}

impl BlockSparseLayout {
    /// Uploads a CSR block pattern after checking it: `row_ptr` (out/bs + 1) non-decreasing
    /// from 0 to nnz, `col_idx` (nnz) in 0..in/bs, sizes divisible by `block` ∈ {16, 32, 64}.
    pub fn new(
        dev: &Arc<CudaDevice>,
        out_features: usize,
        in_features: usize,
        block: usize,
        row_ptr: &[i32],
        col_idx: &[i32],
    ) -> Result<Self> {
        let op = "block_sparse_layout";
        if ![16, 32, 64].contains(&block) || out_features % block != 0 || in_features % block != 0 {
            crate::error::bail!(op, "block {block} must be 16, 32 or 64 and divide {out_features}x{in_features}");
        }
        let (rows, cols) = (out_features / block, in_features / block);
        if rows.max(cols) > 65535 {
            crate::error::bail!(op, "{rows}x{cols} blocks exceed the launch grid's 65535 block rows/columns");
        }
        let nnz = col_idx.len();
        let monotone = row_ptr.windows(2).all(|w| w[0] <= w[1]);
        if row_ptr.len() != rows + 1 || row_ptr[0] != 0 || row_ptr[rows] as usize != nnz || !monotone {
            crate::error::bail!(op, "row_ptr must rise from 0 to nnz = {nnz} over {} entries", rows + 1);
        }
        if let Some(&bad) = col_idx.iter().find(|&&c| c < 0 || c as usize >= cols) {
            crate::error::bail!(op, "block column {bad} out of range 0..{cols}");
        }
        let (col_ptr, row_idx, blk_idx, row_of) = csr_to_csc(row_ptr, col_idx, cols);
        let up = |v: &[i32]| dev.htod(if v.is_empty() { &[0i32][..] } else { v });
        Ok(BlockSparseLayout {
            out_features,
            in_features,
            block,
            nnz,
            row_ptr: up(row_ptr)?,
            col_idx: up(col_idx)?,
            col_ptr: up(&col_ptr)?,
            row_idx: up(&row_idx)?,
            blk_idx: up(&blk_idx)?,
            row_of: up(&row_of)?,
        })
    }

    fn check(&self, c: &Check, blocks: &View<'_>, dt: DType) -> Result<()> {
        c.input("blocks", blocks, dt, self.nnz * self.block * self.block)
    }
}

/// `y (batch, out) (+)= x (batch, in) · Wᵀ` with W given by `blocks` (nnz, bs, bs) in
/// CSR order. Kernel `block_sparse_fwd_{f32,bf16}_{bs}(x, ldx, blocks, row_ptr, col_idx,
/// y, ldy, batch, accumulate)`, grid (ceil(batch/64), out/bs), 128 threads.
pub fn block_sparse_forward(
    l: &BlockSparseLayout,
    x: View<'_>,
    blocks: View<'_>,
    batch: usize,
    y: ViewMut<'_>,
    accumulate: bool,
) -> Result<()> {
    let c = Check { op: "block_sparse_forward" };
    let dt = x.dtype();
    c.input("x", &x, dt, batch * l.in_features)?;
    l.check(&c, &blocks, dt)?;
    c.output("y", &y, dt, batch * l.out_features)?;
    let dev = x.device().clone();
    c.same_device(&dev, [blocks.device(), y.device(), l.row_ptr.device()])?;
    if batch == 0 {
        return Ok(());
    }
    let f =
        dev.function(kernels::BLOCK_SPARSE, &format!("block_sparse_fwd_{}_{}", dt.kernel_suffix(c.op)?, l.block))?;
    let cfg = LaunchConfig {
        grid_dim: (batch.div_ceil(64) as u32, (l.out_features / l.block) as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let args = [
        Arg::U64(x.ptr()),
        Arg::len(l.in_features),
        Arg::U64(blocks.ptr()),
        Arg::U64(l.row_ptr.device_ptr()),
        Arg::U64(l.col_idx.device_ptr()),
        Arg::U64(y.ptr()),
        Arg::len(l.out_features),
        Arg::I32(batch_arg(batch)?),
        Arg::I32(accumulate as i32),
    ];
    dev.launch(&f, cfg, &args)
}

/// `dx (batch, in) (+)= dy (batch, out) · W` through the CSC index. Kernel
/// `block_sparse_dx_{f32,bf16}_{bs}(dy, ldy, blocks, col_ptr, row_idx, blk_idx, dx, ldx,
/// batch, accumulate)`, grid (ceil(batch/64), in/bs), 128 threads.
pub fn block_sparse_dx(
    l: &BlockSparseLayout,
    dy: View<'_>,
    blocks: View<'_>,
    batch: usize,
    dx: ViewMut<'_>,
    accumulate: bool,
) -> Result<()> {
    let c = Check { op: "block_sparse_dx" };
    let dt = dy.dtype();
    c.input("dy", &dy, dt, batch * l.out_features)?;
    l.check(&c, &blocks, dt)?;
    c.output("dx", &dx, dt, batch * l.in_features)?;
    let dev = dy.device().clone();
    c.same_device(&dev, [blocks.device(), dx.device(), l.row_ptr.device()])?;
    if batch == 0 {
        return Ok(());
    }
    let f = dev.function(kernels::BLOCK_SPARSE, &format!("block_sparse_dx_{}_{}", dt.kernel_suffix(c.op)?, l.block))?;
    let cfg = LaunchConfig {
        grid_dim: (batch.div_ceil(64) as u32, (l.in_features / l.block) as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let args = [
        Arg::U64(dy.ptr()),
        Arg::len(l.out_features),
        Arg::U64(blocks.ptr()),
        Arg::U64(l.col_ptr.device_ptr()),
        Arg::U64(l.row_idx.device_ptr()),
        Arg::U64(l.blk_idx.device_ptr()),
        Arg::U64(dx.ptr()),
        Arg::len(l.in_features),
        Arg::I32(batch_arg(batch)?),
        Arg::I32(accumulate as i32),
    ];
    dev.launch(&f, cfg, &args)
}

/// `dblocks[idx] (+)= dy_blockᵀ · x_block` summed over the batch, for stored blocks only.
/// Kernel `block_sparse_dw_{f32,bf16}_{bs}(x, ldx, dy, ldy, row_of, col_idx, dblocks,
/// batch, accumulate)`, grid (nnz), 128 threads (64 for bs = 16).
pub fn block_sparse_dw(
    l: &BlockSparseLayout,
    x: View<'_>,
    dy: View<'_>,
    batch: usize,
    dblocks: ViewMut<'_>,
    accumulate: bool,
) -> Result<()> {
    let c = Check { op: "block_sparse_dw" };
    let dt = x.dtype();
    c.input("x", &x, dt, batch * l.in_features)?;
    c.input("dy", &dy, dt, batch * l.out_features)?;
    c.output("dblocks", &dblocks, dt, l.nnz * l.block * l.block)?;
    let dev = x.device().clone();
    c.same_device(&dev, [dy.device(), dblocks.device(), l.row_ptr.device()])?;
    if l.nnz == 0 {
        return Ok(());
    }
    let f = dev.function(kernels::BLOCK_SPARSE, &format!("block_sparse_dw_{}_{}", dt.kernel_suffix(c.op)?, l.block))?;
    let threads = if l.block == 16 { 64 } else { 128 };
    let cfg = LaunchConfig { grid_dim: (l.nnz as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
    let args = [
        Arg::U64(x.ptr()),
        Arg::len(l.in_features),
        Arg::U64(dy.ptr()),
        Arg::len(l.out_features),
        Arg::U64(l.row_of.device_ptr()),
        Arg::U64(l.col_idx.device_ptr()),
        Arg::U64(dblocks.ptr()),
        Arg::I32(batch_arg(batch)?),
        Arg::I32(accumulate as i32),
    ];
    dev.launch(&f, cfg, &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csc_lists_each_column_in_row_order_with_its_csr_position() {
        // Block rows: 0 -> cols {0, 2}; 1 -> {}; 2 -> {1, 2}.
        let (row_ptr, col_idx) = ([0, 2, 2, 4], [0, 2, 1, 2]);
        let (col_ptr, row_idx, blk_idx, row_of) = csr_to_csc(&row_ptr, &col_idx, 3);
        assert_eq!(col_ptr, vec![0, 1, 2, 4]);
        assert_eq!(row_idx, vec![0, 2, 0, 2]);
        assert_eq!(blk_idx, vec![0, 2, 1, 3]);
        assert_eq!(row_of, vec![0, 0, 2, 2]);
    }
}
