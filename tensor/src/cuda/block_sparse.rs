//! The block-sparse linear layer on CUDA tensors. The kernels read the stored blocks in
//! CSR order, (nnz, block, block); a [`BlockSparsePlan`] keeps them as one row panel per
//! block row (the CPU's layout, and the checkpoints'), so each call gathers the values
//! into CSR order on the device (one row lookup) and scatters the gradient back. The
//! pattern and the row orders are uploaded once per plan and device ([`DevicePlans`]).

use super::ops::{alloc, out_mut, same_device};
use super::{cuda_device, cuda_err};
use crate::ops::BlockSparsePlan;
use crate::{Device, Result, Tensor};
use monarch_cuda::ops::block_sparse::{self as kb, BlockSparseLayout};
use std::sync::{Arc, Mutex};

/// The CSR pattern of a plan's mask: `row_ptr` (block rows + 1) and `col_idx` (nnz).
fn csr(plan: &BlockSparsePlan) -> (Vec<i32>, Vec<i32>) {
    let m = plan.mask();
    let mut row_ptr = vec![0i32];
    let mut col_idx = Vec::new();
    for r in 0..m.rows {
        col_idx.extend((0..m.cols).filter(|&c| m.get(r, c)).map(|c| c as i32));
        row_ptr.push(col_idx.len() as i32);
    }
    (row_ptr, col_idx)
}

/// For each row of `block` values in CSR order (block `e`, row `i`: `e·block + i`), the
/// row of the plan's panel layout holding it (block row `r`, its `t`-th stored block:
/// `panel_r/block + i·n_r + t`), both viewed as (nnz·block, block) matrices.
fn csr_rows(plan: &BlockSparsePlan, row_ptr: &[i32]) -> Vec<i64> {
    let b = plan.mask().block;
    let mut out = Vec::with_capacity(row_ptr.last().copied().unwrap_or(0) as usize * b);
    let mut panel_rows = 0i64;
    for w in row_ptr.windows(2) {
        let n = (w[1] - w[0]) as i64;
        for t in 0..n {
            out.extend((0..b as i64).map(|i| panel_rows + i * n + t));
        }
        panel_rows += n * b as i64;
    }
    out
}

/// The inverse of a permutation.
fn inverse(p: &[i64]) -> Vec<i64> {
    let mut inv = vec![0i64; p.len()];
    for (i, &j) in p.iter().enumerate() {
        inv[j as usize] = i as i64;
    }
    inv
}

/// A plan's pattern on one device, built at the first call there and kept with the plan:
/// the kernels' layout, and the CSR row order (and its inverse) as device index vectors.
#[derive(Debug)]
pub(crate) struct DevicePlan {
    layout: BlockSparseLayout,
    order: Tensor,
    inverse: Tensor,
}

/// The [`DevicePlan`]s of one [`BlockSparsePlan`], one per device used so far. A clone
/// starts empty (it is rebuilt on first use) and the cache takes no part in equality.
#[derive(Debug, Default)]
pub(crate) struct DevicePlans(Mutex<Vec<(usize, Arc<DevicePlan>)>>);

impl Clone for DevicePlans {
    fn clone(&self) -> Self {
        DevicePlans::default()
    }
}

impl PartialEq for DevicePlans {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for DevicePlans {}

impl DevicePlans {
    /// The pattern of `plan` on `like`'s device, uploaded once per device.
    fn get(&self, plan: &BlockSparsePlan, like: &Tensor, op: &'static str) -> Result<Arc<DevicePlan>> {
        let Device::Cuda(i) = like.device() else { unreachable!("called for device tensors only") };
        let mut plans = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, p)) = plans.iter().find(|(o, _)| *o == i) {
            return Ok(p.clone());
        }
        let (row_ptr, col_idx) = csr(plan);
        let m = plan.mask();
        let dev = cuda_device(i)?;
        let layout = BlockSparseLayout::new(&dev, plan.out_features(), plan.in_features(), m.block, &row_ptr, &col_idx)
            .map_err(cuda_err(op))?;
        let order = csr_rows(plan, &row_ptr);
        let ids = |v: Vec<i64>| Tensor::from_vec(v, order.len())?.upload(i);
        let p = Arc::new(DevicePlan { layout, inverse: ids(inverse(&order))?, order: ids(order.clone())? });
        plans.push((i, p.clone()));
        Ok(p)
    }
}

/// `t` (any shape holding nnz·block² values) with its block-rows reordered by the device
/// index vector `rows` (in range by construction, so not read back to be checked).
fn permute_rows(t: &Tensor, rows: &Tensor, block: usize) -> Result<Tensor> {
    let n = rows.elem_count();
    t.reshape([n, block])?.cuda_index_select(rows, (1, n, block))?.reshape([n, block])
}

impl Tensor {
    /// [`Tensor::block_sparse_linear`] on the device (bias added by the caller).
    pub(crate) fn cuda_block_sparse(&self, values: &Tensor, plan: &BlockSparsePlan, rows: usize) -> Result<Tensor> {
        let op = "block_sparse_linear";
        same_device(op, self, &[values])?;
        let dp = plan.on_device().get(plan, self, op)?;
        let blocks = permute_rows(values, &dp.order, plan.mask().block)?;
        let x = self.contiguous()?;
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("rank checked by the caller") = plan.out_features();
        let mut y = alloc(&x, x.dtype(), dims, op)?;
        kb::block_sparse_forward(
            &dp.layout,
            x.cuda_view(op)?,
            blocks.cuda_view(op)?,
            rows,
            out_mut(&mut y, op)?,
            false,
        )
        .map_err(cuda_err(op))?;
        Ok(y)
    }

    /// [`Tensor::block_sparse_backward`] on the device.
    pub(crate) fn cuda_block_sparse_backward(
        x: &Tensor,
        values: &Tensor,
        plan: &BlockSparsePlan,
        dy: &Tensor,
        rows: usize,
        want: [bool; 2],
    ) -> Result<[Option<Tensor>; 2]> {
        let op = "block_sparse_backward";
        same_device(op, x, &[values, dy])?;
        let dp = plan.on_device().get(plan, x, op)?;
        let b = plan.mask().block;
        let (xc, g) = (x.contiguous()?, dy.contiguous()?);
        let dx = if want[0] {
            let blocks = permute_rows(values, &dp.order, b)?;
            let mut dx = alloc(&xc, xc.dtype(), xc.shape().clone(), op)?;
            kb::block_sparse_dx(
                &dp.layout,
                g.cuda_view(op)?,
                blocks.cuda_view(op)?,
                rows,
                out_mut(&mut dx, op)?,
                false,
            )
            .map_err(cuda_err(op))?;
            Some(dx)
        } else {
            None
        };
        let dvalues = if want[1] {
            let mut dblocks = alloc(&xc, xc.dtype(), [dp.order.elem_count(), b], op)?;
            kb::block_sparse_dw(
                &dp.layout,
                xc.cuda_view(op)?,
                g.cuda_view(op)?,
                rows,
                out_mut(&mut dblocks, op)?,
                false,
            )
            .map_err(cuda_err(op))?;
            Some(permute_rows(&dblocks, &dp.inverse, b)?.reshape(values.shape().clone())?)
        } else {
            None
        };
        Ok([dx, dvalues])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BlockMask;

    #[test]
    fn csr_rows_gather_the_panels_into_block_order() {
        // Block rows with 2, 0 and 1 stored blocks of size 2.
        let mask = BlockMask::new(3, 3, 2, vec![true, false, true, false, false, false, false, true, false]).unwrap();
        let plan = BlockSparsePlan::new(mask);
        let (row_ptr, col_idx) = csr(&plan);
        assert_eq!((row_ptr.as_slice(), col_idx.as_slice()), (&[0, 2, 2, 3][..], &[0, 2, 1][..]));
        // Panel 0 is 2 rows of [blk0 | blk1]: panel rows 0, 1 (4 values each, viewed as
        // 2-value rows 0..4); block 0's rows are panel row-halves 0 and 2, block 1's 1 and 3.
        let order = csr_rows(&plan, &row_ptr);
        assert_eq!(order, vec![0, 2, 1, 3, 4, 5]);
        assert_eq!(inverse(&order), vec![0, 2, 1, 3, 4, 5]);
        assert_eq!(inverse(&[2, 0, 1]), vec![1, 2, 0]);
    }
}
