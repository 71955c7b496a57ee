//! Indexing: select rows by index (embeddings), gather/scatter-add along a dimension,
//! index-add (embedding backward), and triangular masks.

use super::{compute_dtype, float_map, same_dtype};
use crate::cpu::{PAR_MIN, items_per_task};
use crate::{CpuStorage, DType, Dim, Error, Float, Result, Shape, Tensor, WithDType, with_cpu_vec};
use rayon::prelude::*;

/// Splits a shape at `dim` into (outer, size, inner) element counts.
fn split_at(shape: &Shape, dim: usize) -> (usize, usize, usize) {
    let d = shape.dims();
    (d[..dim].iter().product(), d[dim], d[dim + 1..].iter().product())
}

/// Bounds-checks an `I64` index tensor (entries equal to `ignore` are allowed too) and
/// returns its values when it had to read them: always for a host tensor. A device
/// tensor whose upload bounds settle the check is not read (reading it would make the
/// host wait for the GPU) and gives `None`.
pub(crate) fn checked_indices(
    ids: &Tensor,
    size: usize,
    ignore: Option<i64>,
    op: &'static str,
) -> Result<Option<Vec<i64>>> {
    if ids.dtype() != DType::I64 {
        return Err(Error::DTypeMismatch { op, lhs: ids.dtype(), rhs: DType::I64 });
    }
    if ids.cuda_indices_admitted(size, ignore) {
        return Ok(None);
    }
    let v = ids.to_vec::<i64>()?;
    if let Some(&bad) = v.iter().find(|&&i| Some(i) != ignore && !(0..size as i64).contains(&i)) {
        return Err(Error::IndexOutOfRange { op, index: bad, size });
    }
    Ok(Some(v))
}

/// The bounds-checked values of a host index tensor as `usize`s.
fn indices(ids: &Tensor, size: usize, op: &'static str) -> Result<Vec<usize>> {
    let v = match checked_indices(ids, size, None, op)? {
        Some(v) => v,
        None => ids.to_vec::<i64>()?,
    };
    Ok(v.into_iter().map(|i| i as usize).collect())
}

/// Requires `index` to match `x` in every dimension but `dim`.
fn check_along(x: &Tensor, index: &Tensor, dim: usize, op: &'static str) -> Result<()> {
    let ok =
        index.rank() == x.rank() && x.dims().iter().zip(index.dims()).enumerate().all(|(i, (a, b))| i == dim || a == b);
    if !ok {
        return Err(Error::ShapeMismatch { op, lhs: x.shape().clone(), rhs: index.shape().clone() });
    }
    Ok(())
}

fn select_rows<T: WithDType>(src: &[T], ids: &[usize], (outer, size, inner): (usize, usize, usize)) -> Vec<T> {
    let mut out = vec![T::default(); outer * ids.len() * inner];
    let fill = |(r, row): (usize, &mut [T])| {
        let (o, i) = (r / ids.len(), r % ids.len());
        let s = (o * size + ids[i]) * inner;
        row.copy_from_slice(&src[s..s + inner]);
    };
    if inner == 0 {
        return out;
    }
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(inner).with_min_len(items_per_task(inner)).enumerate().for_each(fill);
    } else {
        out.chunks_mut(inner).enumerate().for_each(fill);
    }
    out
}

/// `dst[o, ids[i], :] += src[o, i, :]`, parallel over column slabs so no two tasks
/// touch one element.
fn add_rows<T: Float>(dst: &mut [T], src: &[T], ids: &[usize], (outer, size, inner): (usize, usize, usize)) {
    let n = ids.len();
    for o in 0..outer {
        let d = &mut dst[o * size * inner..(o + 1) * size * inner];
        let s = &src[o * n * inner..(o + 1) * n * inner];
        let slab = items_per_task(n).max(16);
        if n * inner >= PAR_MIN && inner > slab {
            // Each task owns columns c0..c0+slab of every row.
            let cols: Vec<usize> = (0..inner).step_by(slab).collect();
            let ptr = d.as_mut_ptr() as usize;
            cols.par_iter().for_each(|&c0| {
                let c1 = (c0 + slab).min(inner);
                for (i, &id) in ids.iter().enumerate() {
                    for c in c0..c1 {
                        // SAFETY: tasks write disjoint column ranges of `d`, which outlives the loop.
                        unsafe { *(ptr as *mut T).add(id * inner + c) += s[i * inner + c] };
                    }
                }
            });
        } else {
            for (i, &id) in ids.iter().enumerate() {
                for (a, &b) in d[id * inner..(id + 1) * inner].iter_mut().zip(&s[i * inner..(i + 1) * inner]) {
                    *a += b;
                }
            }
        }
    }
}

/// `out[o, ids[p], i] += src[s0 + p]` for each position `p = (o, j, i)` of the index.
fn scatter_rows<T: Float>(out: &mut [T], src: &[T], s0: usize, ids: &[usize], n: usize, size: usize, inner: usize) {
    for (p, &id) in ids.iter().enumerate() {
        let (o, i) = (p / (n * inner), p % inner);
        out[(o * size + id) * inner + i] += src[s0 + p];
    }
}

impl Tensor {
    /// Selects entries `ids` (an `I64` vector) along `dim`; an embedding lookup is
    /// `table.index_select(&ids, 0)`.
    pub fn index_select(&self, ids: &Tensor, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.shape(), "index_select")?;
        if ids.rank() != 1 {
            crate::bail!("index_select", "indices must be 1-D, got shape {}", ids.shape());
        }
        let parts = split_at(self.shape(), d);
        if self.device() != crate::Device::Cpu {
            checked_indices(ids, parts.1, None, "index_select")?;
            return self.cuda_index_select(ids, parts)?.reshape(self.shape().with_dim(d, ids.elem_count()));
        }
        let ids = indices(ids, parts.1, "index_select")?;
        let x = self.contiguous()?;
        let start = x.layout().offset();
        let out = with_cpu_vec!(x.cpu("index_select")?, v => CpuStorage::from(select_rows(&v[start..], &ids, parts)));
        Ok(Tensor::from_cpu(out, self.shape().with_dim(d, ids.len())))
    }

    /// A copy with `src` rows added at `ids` along `dim`: `out[.., ids[i], ..] += src[.., i, ..]`
    /// (repeated ids accumulate). The backward of [`index_select`](Self::index_select).
    pub fn index_add(&self, ids: &Tensor, src: &Tensor, dim: impl Dim) -> Result<Tensor> {
        let op = "index_add";
        let d = dim.resolve(self.shape(), op)?;
        same_dtype(self, src, op)?;
        if ids.rank() != 1 || src.shape() != &self.shape().with_dim(d, ids.elem_count()) {
            return Err(Error::ShapeMismatch { op, lhs: self.shape().clone(), rhs: src.shape().clone() });
        }
        let parts = split_at(self.shape(), d);
        if self.device() != crate::Device::Cpu {
            checked_indices(ids, parts.1, None, op)?;
            return self.cuda_index_add(ids, src, parts);
        }
        let ids = indices(ids, parts.1, op)?;
        let src = compute_dtype(&src.contiguous()?, op)?;
        let s0 = src.layout().offset();
        Ok(float_map!(self, op, self.shape(), |v, l| {
            let mut out = crate::cpu::map::map1(v, l, |x| x);
            add_rows(&mut out, &src.cpu_slice(op)?[s0..], &ids, parts);
            out
        }))
    }

    /// `out[.., j, ..] = self[.., index[.., j, ..], ..]` along `dim`; `index` (`I64`) has
    /// this tensor's shape except along `dim`.
    pub fn gather(&self, index: &Tensor, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.shape(), "gather")?;
        check_along(self, index, d, "gather")?;
        let (outer, size, inner) = split_at(self.shape(), d);
        if self.device() != crate::Device::Cpu {
            checked_indices(index, size, None, "gather")?;
            return self.cuda_gather(index, (outer, size, inner));
        }
        let ids = indices(index, size, "gather")?;
        let n = index.dims()[d];
        let x = self.contiguous()?;
        let start = x.layout().offset();
        let out = with_cpu_vec!(x.cpu("gather")?, v => {
            let v = &v[start..];
            CpuStorage::from((0..outer * n * inner).map(|p| {
                let (o, i) = (p / (n * inner), p % inner);
                v[(o * size + ids[p]) * inner + i]
            }).collect::<Vec<_>>())
        });
        Ok(Tensor::from_cpu(out, index.shape()))
    }

    /// A copy with `src` added at the positions `index` names along `dim`:
    /// `out[.., index[.., j, ..], ..] += src[.., j, ..]`. The backward of [`gather`](Self::gather).
    pub fn scatter_add(&self, index: &Tensor, src: &Tensor, dim: impl Dim) -> Result<Tensor> {
        let op = "scatter_add";
        let d = dim.resolve(self.shape(), op)?;
        same_dtype(self, src, op)?;
        check_along(self, index, d, op)?;
        if index.shape() != src.shape() {
            return Err(Error::ShapeMismatch { op, lhs: index.shape().clone(), rhs: src.shape().clone() });
        }
        let (outer, size, inner) = split_at(self.shape(), d);
        if self.device() != crate::Device::Cpu {
            checked_indices(index, size, None, op)?;
            return self.cuda_scatter_add(index, src, (outer, size, inner));
        }
        let ids = indices(index, size, op)?;
        let n = index.dims()[d];
        // The offset of the converted copy (a bf16 view's own offset is not the f32 copy's).
        let src = compute_dtype(&src.contiguous()?, op)?;
        let s0 = src.layout().offset();
        Ok(float_map!(self, op, self.shape(), |v, l| {
            let mut out = crate::cpu::map::map1(v, l, |x| x);
            scatter_rows(&mut out, src.cpu_slice(op)?, s0, &ids, n, size, inner);
            out
        }))
    }

    /// A `U8` mask of shape (rows, cols) that is 1 where `col - row <= diagonal`
    /// (lower triangle; `diagonal = 0` is the causal mask's complement of the future).
    pub fn tril_mask(rows: usize, cols: usize, diagonal: i64) -> Tensor {
        let v = (0..rows * cols).map(|p| ((p % cols) as i64 - (p / cols) as i64 <= diagonal) as u8).collect();
        Tensor::from_cpu(CpuStorage::U8(v), [rows, cols])
    }

    /// [`tril_mask`](Self::tril_mask) made on `device` (on a GPU by a kernel: nothing
    /// is built on the host or copied).
    pub fn tril_mask_on(rows: usize, cols: usize, diagonal: i64, device: crate::Device) -> Result<Tensor> {
        match device {
            crate::Device::Cpu => Ok(Tensor::tril_mask(rows, cols, diagonal)),
            crate::Device::Cuda(i) => Tensor::cuda_tril_mask(rows, cols, diagonal, i),
        }
    }

    /// Zeroes the elements above diagonal `diagonal` of the last two dimensions.
    pub fn tril(&self, diagonal: i64) -> Result<Tensor> {
        let (r, c) = self.shape().matrix_dims("tril")?;
        let mask = Tensor::tril_mask_on(r, c, diagonal, self.device())?;
        mask.where_cond(self, &self.scalar_beside(0.0, self.dtype())?)
    }

    /// Zeroes the elements below diagonal `diagonal` of the last two dimensions.
    pub fn triu(&self, diagonal: i64) -> Result<Tensor> {
        let (r, c) = self.shape().matrix_dims("triu")?;
        let mask = Tensor::tril_mask_on(r, c, diagonal - 1, self.device())?;
        mask.where_cond(&self.scalar_beside(0.0, self.dtype())?, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iota(shape: &[usize]) -> Tensor {
        let n = shape.iter().product::<usize>();
        Tensor::from_vec((0..n).map(|x| x as f32).collect(), shape).unwrap()
    }
    fn ids(v: &[i64]) -> Tensor {
        Tensor::from_vec(v.to_vec(), v.len()).unwrap()
    }

    #[test]
    fn embedding_lookup_and_its_backward() {
        let table = iota(&[4, 3]);
        let e = table.index_select(&ids(&[2, 0, 2]), 0).unwrap();
        assert_eq!(e.to_vec::<f32>().unwrap(), vec![6., 7., 8., 0., 1., 2., 6., 7., 8.]);
        let g = Tensor::zeros([4, 3], DType::F32)
            .index_add(&ids(&[2, 0, 2]), &Tensor::ones([3, 3], DType::F32), 0)
            .unwrap();
        assert_eq!(g.to_vec::<f32>().unwrap(), vec![1., 1., 1., 0., 0., 0., 2., 2., 2., 0., 0., 0.]);
        let err = table.index_select(&ids(&[4]), 0).unwrap_err();
        assert_eq!(err.to_string(), "index_select: index 4 out of range for size 4");
        assert!(table.index_select(&Tensor::zeros(1, DType::F32), 0).is_err());
        // Along a middle dimension.
        let x = iota(&[2, 3, 2]);
        let s = x.index_select(&ids(&[1]), 1).unwrap();
        assert_eq!(s.to_vec::<f32>().unwrap(), vec![2., 3., 8., 9.]);
    }

    #[test]
    fn gather_and_scatter_add_are_adjoint() {
        let x = iota(&[2, 3]);
        let idx = Tensor::from_vec(vec![2i64, 0], [2, 1]).unwrap();
        assert_eq!(x.gather(&idx, 1).unwrap().to_vec::<f32>().unwrap(), vec![2., 3.]);
        let back = Tensor::zeros([2, 3], DType::F32).scatter_add(&idx, &Tensor::ones([2, 1], DType::F32), 1).unwrap();
        assert_eq!(back.to_vec::<f32>().unwrap(), vec![0., 0., 1., 1., 0., 0.]);
        let idx0 = Tensor::from_vec(vec![1i64, 0, 1], [1, 3]).unwrap();
        assert_eq!(x.gather(&idx0, 0).unwrap().to_vec::<f32>().unwrap(), vec![3., 1., 5.]);
        let back0 = Tensor::zeros([2, 3], DType::F32).scatter_add(&idx0, &Tensor::ones([1, 3], DType::F32), 0).unwrap();
        assert_eq!(back0.to_vec::<f32>().unwrap(), vec![0., 1., 0., 1., 0., 1.]);
        assert!(x.gather(&Tensor::zeros([3, 1], DType::I64), 1).is_err());
    }

    #[test]
    fn triangles() {
        let x = iota(&[3, 3]).add_scalar(1.0).unwrap();
        assert_eq!(x.tril(0).unwrap().to_vec::<f32>().unwrap(), vec![1., 0., 0., 4., 5., 0., 7., 8., 9.]);
        assert_eq!(x.triu(1).unwrap().to_vec::<f32>().unwrap(), vec![0., 2., 3., 0., 0., 6., 0., 0., 0.]);
    }

    #[test]
    fn scatter_add_of_a_bf16_view_reads_the_view() {
        let big = Tensor::from_vec((0..12).map(|v| v as f32).collect(), [4, 3]).unwrap().to_dtype(DType::BF16).unwrap();
        let src = big.narrow(0, 2, 2).unwrap(); // rows [6, 7, 8], [9, 10, 11], offset 6
        let idx = Tensor::from_vec(vec![0i64, 1, 0, 1, 0, 1], [2, 3]).unwrap();
        let got = Tensor::zeros([2, 3], DType::BF16).scatter_add(&idx, &src, 0).unwrap();
        assert_eq!(got.to_vec_f64().unwrap(), vec![6.0, 10.0, 8.0, 9.0, 7.0, 11.0]);
    }
}
