//! Block-sparse dense layers `y = x·Wᵀ + b` where `W` (out × in) stores only the
//! blocks a [`BlockMask`] sets. The kernels never form the dense matrix: they run GEMMs
//! over the stored blocks only, grouped so that the GEMMs are as large as the mask
//! allows (consecutive block rows with the same column set form one group; consecutive
//! set columns form one run).
//!
//! Storage ("row panels"): block row `r` keeps its set blocks side by side as a
//! row-major `block × (nnz_r·block)` panel, panels one after another. So value
//! `(i, j)` of stored block `t` of row `r` lives at `panel(r) + i·nnz_r·block + t·block + j`,
//! and a group of rows with the same columns is one row-major matrix.

use super::matmul::{GemmElem, Mat};
use super::strided_gemm::gemm_strided;
use super::{compute_dtype, same_dtype};
use crate::{BlockMask, CpuStorage, Error, Result, Tensor, WithDType};
use gemm::Parallelism;

/// A run of consecutive set column blocks within a group.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Run {
    /// First column block.
    col: usize,
    /// Number of column blocks.
    len: usize,
    /// Element offset of the run inside each panel row.
    k_off: usize,
}

/// Consecutive block rows with the same set columns.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Group {
    /// First block row.
    row: usize,
    /// Number of block rows.
    rows: usize,
    /// Element offset of the first row's panel.
    offset: usize,
    /// Panel width in elements (`nnz_r · block`).
    width: usize,
    runs: Vec<Run>,
}

/// A [`BlockMask`] planned for the block-sparse kernels: where each stored block lives
/// and how block rows group into GEMMs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSparsePlan {
    mask: BlockMask,
    /// Element offset of each block row's panel, plus the total at the end.
    panel: Vec<usize>,
    groups: Vec<Group>,
    on_device: crate::cuda::DevicePlans,
}

impl BlockSparsePlan {
    /// Plans the kernels for `mask`.
    pub fn new(mask: BlockMask) -> Self {
        let (b, cols) = (mask.block, mask.cols);
        let set_cols = |r: usize| (0..cols).filter(|&c| mask.get(r, c)).collect::<Vec<usize>>();
        let mut panel = vec![0];
        for r in 0..mask.rows {
            panel.push(panel[r] + set_cols(r).len() * b * b);
        }
        let mut groups: Vec<Group> = Vec::new();
        for (r, &offset) in panel.iter().enumerate().take(mask.rows) {
            let cs = set_cols(r);
            if let Some(g) = groups.last_mut()
                && g.row + g.rows == r
                && (0..cols).all(|c| mask.get(g.row, c) == mask.get(r, c))
            {
                g.rows += 1;
                continue;
            }
            let mut runs: Vec<Run> = Vec::new();
            for (t, &c) in cs.iter().enumerate() {
                match runs.last_mut() {
                    Some(run) if run.col + run.len == c => run.len += 1,
                    _ => runs.push(Run { col: c, len: 1, k_off: t * b }),
                }
            }
            groups.push(Group { row: r, rows: 1, offset, width: cs.len() * b, runs });
        }
        BlockSparsePlan { mask, panel, groups, on_device: Default::default() }
    }

    /// The pattern's uploads to the devices it has run on.
    pub(crate) fn on_device(&self) -> &crate::cuda::DevicePlans {
        &self.on_device
    }

    /// The block layout.
    pub fn mask(&self) -> &BlockMask {
        &self.mask
    }

    /// Output features (rows of `W`).
    pub fn out_features(&self) -> usize {
        self.mask.rows * self.mask.block
    }

    /// Input features (columns of `W`).
    pub fn in_features(&self) -> usize {
        self.mask.cols * self.mask.block
    }

    /// Number of stored values (`nnz · block²`).
    pub fn values_len(&self) -> usize {
        self.panel[self.mask.rows]
    }

    /// Calls `f(dense_index, stored_index)` for every stored value.
    fn for_each_value(&self, mut f: impl FnMut(usize, usize)) {
        let (b, inp) = (self.mask.block, self.in_features());
        for r in 0..self.mask.rows {
            let width = (self.panel[r + 1] - self.panel[r]) / b;
            let set = (0..self.mask.cols).filter(|&c| self.mask.get(r, c));
            for (t, c) in set.enumerate() {
                for i in 0..b {
                    for j in 0..b {
                        f((r * b + i) * inp + c * b + j, self.panel[r] + i * width + t * b + j);
                    }
                }
            }
        }
    }

    /// The dense (out, in) matrix of stored `values` (zeros outside the mask).
    pub fn densify(&self, values: &Tensor) -> Result<Tensor> {
        self.check_values(values, "block_sparse_densify")?;
        let v = values.to_vec_f64()?;
        let mut dense = vec![0.0; self.out_features() * self.in_features()];
        self.for_each_value(|d, s| dense[d] = v[s]);
        Tensor::from_vec(dense, [self.out_features(), self.in_features()])?.to_dtype(values.dtype())
    }

    /// The stored values of a dense (out, in) matrix restricted to the mask: the
    /// Frobenius-nearest block-sparse matrix.
    pub fn sparsify(&self, dense: &Tensor) -> Result<Tensor> {
        let (o, i) = (self.out_features(), self.in_features());
        if dense.dims() != [o, i] {
            crate::bail!("block_sparse_sparsify", "expected a {o}x{i} matrix, got shape {}", dense.shape());
        }
        let d = dense.to_vec_f64()?;
        let mut v = vec![0.0; self.values_len()];
        self.for_each_value(|di, s| v[s] = d[di]);
        Tensor::from_vec(v, self.values_len())?.to_dtype(dense.dtype())
    }

    fn check_values(&self, values: &Tensor, op: &'static str) -> Result<()> {
        if values.dims() != [self.values_len()] {
            crate::bail!(op, "expected {} stored values, got shape {}", self.values_len(), values.shape());
        }
        Ok(())
    }
}

/// Whether a product is big enough to spread over threads.
fn par(work: usize) -> Parallelism {
    if work >= 1 << 18 { Parallelism::Rayon(0) } else { Parallelism::None }
}

fn row_major(offset: usize, rs: usize) -> Mat {
    Mat { offset, rs, cs: 1 }
}

/// A zero-filled buffer whose pages are written (not merely mapped to the shared zero
/// page as a fresh `vec![0; n]` is): the accumulating GEMMs read before they write, and
/// a first write to a zero-page mapping costs a copy-on-write fault with a TLB shootdown
/// across threads, which at these sizes took half the layer's time.
fn written_zeros<T: GemmElem>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, T::ZERO);
    v
}

fn forward<T: GemmElem>(x: &[T], w: &[T], bias: Option<&[T]>, plan: &BlockSparsePlan, rows: usize) -> Vec<T> {
    let (b, inp, out) = (plan.mask.block, plan.in_features(), plan.out_features());
    let mut y = written_zeros(rows * out);
    if let Some(bias) = bias {
        y.chunks_mut(out.max(1)).for_each(|r| r.copy_from_slice(bias));
    }
    for g in &plan.groups {
        let n = g.rows * b;
        for run in &g.runs {
            let k = run.len * b;
            // y[:, group rows] += x[:, run cols] · W[group rows, run cols]ᵀ
            let wt = Mat { offset: g.offset + run.k_off, rs: 1, cs: g.width };
            let (d, a) = (row_major(g.row * b, out), row_major(run.col * b, inp));
            gemm_strided((rows, n, k), &mut y, d, x, a, w, wt, true, par(rows * n * k));
        }
    }
    y
}

/// Gradients `[dx, dw]`, each only when wanted.
fn backward<T: GemmElem>(
    x: &[T],
    w: &[T],
    dy: &[T],
    plan: &BlockSparsePlan,
    rows: usize,
    want: [bool; 2],
) -> [Option<Vec<T>>; 2] {
    let (b, inp, out) = (plan.mask.block, plan.in_features(), plan.out_features());
    let mut dx = want[0].then(|| written_zeros(rows * inp));
    let mut dw = want[1].then(|| vec![T::ZERO; plan.values_len()]);
    for g in &plan.groups {
        let m = g.rows * b;
        for run in &g.runs {
            let n = run.len * b;
            let w_run = row_major(g.offset + run.k_off, g.width);
            if let Some(dx) = dx.as_mut() {
                // dx[:, run cols] += dy[:, group rows] · W[group rows, run cols]
                let (d, a) = (row_major(run.col * b, inp), row_major(g.row * b, out));
                gemm_strided((rows, n, m), dx, d, dy, a, w, w_run, true, par(rows * n * m));
            }
            if let Some(dw) = dw.as_mut() {
                // W[group rows, run cols] = dy[:, group rows]ᵀ · x[:, run cols]
                let dyt = Mat { offset: g.row * b, rs: 1, cs: out };
                gemm_strided(
                    (m, n, rows),
                    dw,
                    w_run,
                    dy,
                    dyt,
                    x,
                    row_major(run.col * b, inp),
                    false,
                    par(m * n * rows),
                );
            }
        }
    }
    [dx, dw]
}

/// A tensor's data in its compute dtype, contiguous, and the offset of its first element.
fn data(t: &Tensor, op: &'static str) -> Result<(Tensor, usize)> {
    let c = compute_dtype(t, op)?.contiguous()?;
    let off = c.layout().offset();
    Ok((c, off))
}

fn slice<'a, T: WithDType>((t, off): &'a (Tensor, usize), op: &'static str) -> Result<&'a [T]> {
    Ok(&t.cpu_slice::<T>(op)?[*off..])
}

impl Tensor {
    /// Checks the operands of a block-sparse product and returns the number of rows.
    fn block_sparse_rows(&self, values: &Tensor, plan: &BlockSparsePlan, op: &'static str) -> Result<usize> {
        same_dtype(self, values, op)?;
        plan.check_values(values, op)?;
        let inp = plan.in_features();
        if self.rank() == 0 || self.dims()[self.rank() - 1] != inp {
            crate::bail!(op, "input of shape {} does not end in the layout's {inp} features", self.shape());
        }
        Ok(self.elem_count() / inp.max(1))
    }

    /// The block-sparse layer `x (.., in) → (.., out)`: `x·Wᵀ + bias` where `W` is
    /// given by its stored `values` under `plan` (see the module documentation).
    pub fn block_sparse_linear(
        &self,
        values: &Tensor,
        plan: &BlockSparsePlan,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let op = "block_sparse_linear";
        let rows = self.block_sparse_rows(values, plan, op)?;
        if let Some(b) = bias {
            same_dtype(self, b, op)?;
            if b.dims() != [plan.out_features()] {
                crate::bail!(op, "bias of shape {} does not match {} outputs", b.shape(), plan.out_features());
            }
        }
        if self.device() != crate::Device::Cpu {
            let y = self.cuda_block_sparse(values, plan, rows)?;
            return match bias {
                Some(b) => y.add(b),
                None => Ok(y),
            };
        }
        let mut dims = self.dims().to_vec();
        *dims.last_mut().expect("rank checked") = plan.out_features();
        let (xd, wd) = (data(self, op)?, data(values, op)?);
        let bd = bias.map(|b| data(b, op)).transpose()?;
        let y = match xd.0.dtype() {
            crate::DType::F32 => {
                let bias = bd.as_ref().map(|b| slice::<f32>(b, op)).transpose()?;
                CpuStorage::from(forward(slice::<f32>(&xd, op)?, slice(&wd, op)?, bias, plan, rows))
            }
            _ => {
                let bias = bd.as_ref().map(|b| slice::<f64>(b, op)).transpose()?;
                CpuStorage::from(forward(slice::<f64>(&xd, op)?, slice(&wd, op)?, bias, plan, rows))
            }
        };
        Tensor::from_cpu(y, dims).to_dtype(self.dtype())
    }

    /// Gradients `[dx, dvalues]` of [`block_sparse_linear`](Self::block_sparse_linear),
    /// each only when `want`ed; `dvalues` holds gradients for the stored blocks only.
    pub fn block_sparse_backward(
        x: &Tensor,
        values: &Tensor,
        plan: &BlockSparsePlan,
        dy: &Tensor,
        want: [bool; 2],
    ) -> Result<[Option<Tensor>; 2]> {
        let op = "block_sparse_backward";
        let rows = x.block_sparse_rows(values, plan, op)?;
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("rank checked") = plan.out_features();
        if dy.dims() != dims {
            return Err(Error::ShapeMismatch { op, lhs: x.shape().clone(), rhs: dy.shape().clone() });
        }
        if x.device() != crate::Device::Cpu {
            return Tensor::cuda_block_sparse_backward(x, values, plan, dy, rows, want);
        }
        let (xd, wd, gd) = (data(x, op)?, data(values, op)?, data(dy, op)?);
        let [dx, dw] = match xd.0.dtype() {
            crate::DType::F32 => backward::<f32>(slice(&xd, op)?, slice(&wd, op)?, slice(&gd, op)?, plan, rows, want)
                .map(|v| v.map(CpuStorage::from)),
            _ => backward::<f64>(slice(&xd, op)?, slice(&wd, op)?, slice(&gd, op)?, plan, rows, want)
                .map(|v| v.map(CpuStorage::from)),
        };
        let wrap = |s: Option<CpuStorage>, t: &Tensor| {
            s.map(|s| Tensor::from_cpu(s, t.shape()).to_dtype(t.dtype())).transpose()
        };
        Ok([wrap(dx, x)?, wrap(dw, values)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, FlatButterfly};

    fn rnd(shape: &[usize], seed: u64) -> Tensor {
        Tensor::randn(shape, 0.0, 1.0, seed).unwrap().to_dtype(DType::F64).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor) {
        assert_eq!(a.dims(), b.dims());
        for (x, y) in a.to_vec_f64().unwrap().iter().zip(b.to_vec_f64().unwrap()) {
            assert!((x - y).abs() < 1e-10, "{x} vs {y}");
        }
    }

    /// A mask exercising groups of several rows, split runs, an empty row and a full row.
    fn irregular() -> BlockMask {
        let set = [[1, 1, 0, 1], [1, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0]];
        BlockMask::new(5, 4, 2, set.iter().flatten().map(|&s| s == 1).collect()).unwrap()
    }

    #[test]
    fn plan_groups_rows_and_runs() {
        let p = BlockSparsePlan::new(irregular());
        assert_eq!(p.values_len(), 11 * 4);
        let shape: Vec<(usize, usize, usize)> = p.groups.iter().map(|g| (g.row, g.rows, g.runs.len())).collect();
        assert_eq!(shape, [(0, 2, 2), (2, 1, 0), (3, 1, 1), (4, 1, 1)]);
        assert_eq!(p.groups[0].runs[1], Run { col: 3, len: 1, k_off: 4 });
    }

    #[test]
    fn forward_and_backward_match_the_dense_product() {
        let masks = [
            irregular(),
            BlockMask::flat_butterfly(
                64,
                32,
                FlatButterfly { butterfly_size: 4, n_factors: 1, block: 8, global_size: 8, shuffle: false },
            )
            .unwrap(),
        ];
        for (i, mask) in masks.into_iter().enumerate() {
            let plan = BlockSparsePlan::new(mask);
            let v = rnd(&[plan.values_len()], i as u64);
            let dense = plan.densify(&v).unwrap();
            close(&plan.sparsify(&dense).unwrap(), &v);
            let x = rnd(&[2, 3, plan.in_features()], 10 + i as u64);
            let b = rnd(&[plan.out_features()], 20 + i as u64);
            let y = x.block_sparse_linear(&v, &plan, Some(&b)).unwrap();
            close(&y, &x.matmul(&dense.t().unwrap()).unwrap().add(&b).unwrap());
            let dy = rnd(y.dims(), 30 + i as u64);
            let [dx, dv] = Tensor::block_sparse_backward(&x, &v, &plan, &dy, [true, true]).unwrap();
            close(&dx.unwrap(), &dy.matmul(&dense).unwrap());
            let rows = |t: &Tensor| t.reshape([6, t.dims()[2]]).unwrap();
            let dw_dense = rows(&dy).t().unwrap().matmul(&rows(&x)).unwrap();
            close(&dv.unwrap(), &plan.sparsify(&dw_dense).unwrap());
        }
    }

    #[test]
    fn bad_operands_are_errors() {
        let plan = BlockSparsePlan::new(irregular());
        let v = rnd(&[plan.values_len()], 0);
        assert!(rnd(&[3, 7], 0).block_sparse_linear(&v, &plan, None).is_err());
        assert!(rnd(&[3, 8], 0).block_sparse_linear(&rnd(&[5], 0), &plan, None).is_err());
        assert!(rnd(&[3, 8], 0).block_sparse_linear(&v, &plan, Some(&rnd(&[9], 0))).is_err());
        assert!(plan.sparsify(&rnd(&[10, 7], 0)).is_err());
        assert!(Tensor::block_sparse_backward(&rnd(&[3, 8], 0), &v, &plan, &rnd(&[3, 9], 0), [true; 2]).is_err());
    }
}
