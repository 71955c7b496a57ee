//! Views (reshape, permute, transpose, narrow, squeeze) and copies that join or split
//! tensors (cat, stack, split).

use super::same_dtype;
use crate::shape::Dims6;
use crate::{CpuStorage, Dim, Error, Result, Shape, Tensor, with_cpu_vec};

impl Tensor {
    /// The same elements under a new shape: a view when the data is contiguous, else a copy.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        match self.layout().reshape(&shape)? {
            Some(l) => Ok(self.with_layout(l)),
            None => self.contiguous()?.reshape(shape),
        }
    }

    /// Reorders dimensions (a view): output dimension `i` is input dimension `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout().permute(perm)?))
    }

    /// Swaps two dimensions (a view).
    pub fn transpose(&self, d0: impl Dim, d1: impl Dim) -> Result<Tensor> {
        Ok(self.with_layout(self.layout().transpose(d0, d1)?))
    }

    /// Swaps the last two dimensions (a view).
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            crate::bail!("t", "needs at least 2 dimensions, got shape {}", self.shape());
        }
        self.transpose(-2, -1)
    }

    /// Restricts dimension `dim` to `start..start + len` (a view).
    pub fn narrow(&self, dim: impl Dim, start: usize, len: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout().narrow(dim, start, len)?))
    }

    /// Inserts a dimension of size 1 at `dim` (`0..=rank`; negative counts from the end
    /// of the result).
    pub fn unsqueeze(&self, dim: i64) -> Result<Tensor> {
        let rank = self.rank() as i64;
        let d = if dim < 0 { dim + rank + 1 } else { dim };
        if !(0..=rank).contains(&d) {
            return Err(Error::DimOutOfRange { op: "unsqueeze", dim, shape: self.shape().clone() });
        }
        Ok(self.with_layout(self.layout().unsqueeze(d as usize)?))
    }

    /// Removes dimension `dim`, which must have size 1 (a view).
    pub fn squeeze(&self, dim: impl Dim) -> Result<Tensor> {
        Ok(self.with_layout(self.layout().squeeze(dim)?))
    }

    /// Merges dimensions `from..` into one.
    pub fn flatten_from(&self, from: impl Dim) -> Result<Tensor> {
        let d = from.resolve(self.shape(), "flatten_from")?;
        let mut dims: Dims6 = self.dims()[..d].iter().copied().collect();
        dims.push(self.dims()[d..].iter().product());
        self.reshape(dims)
    }

    /// Joins tensors along `dim`; all other dimensions must agree.
    pub fn cat(tensors: &[&Tensor], dim: impl Dim) -> Result<Tensor> {
        let Some(first) = tensors.first() else { crate::bail!("cat", "needs at least one tensor") };
        let d = dim.resolve(first.shape(), "cat")?;
        let mut total = 0;
        for t in tensors {
            same_dtype(first, t, "cat")?;
            let same_rank = t.rank() == first.rank();
            if !same_rank || t.dims().iter().zip(first.dims()).enumerate().any(|(i, (a, b))| i != d && a != b) {
                return Err(Error::ShapeMismatch { op: "cat", lhs: first.shape().clone(), rhs: t.shape().clone() });
            }
            total += t.dims()[d];
        }
        let shape = first.shape().with_dim(d, total);
        if first.device() != crate::Device::Cpu {
            return Tensor::cuda_cat(tensors, d, &shape);
        }
        let outer: usize = first.dims()[..d].iter().product();
        let inner: usize = first.dims()[d + 1..].iter().product();
        let parts = tensors.iter().map(|t| t.contiguous()).collect::<Result<Vec<_>>>()?;
        let mut out = CpuStorage::zeros(first.dtype(), shape.elem_count());
        let row = total * inner;
        let mut col = 0;
        for p in &parts {
            let width = p.dims()[d] * inner;
            let start = p.layout().offset();
            with_cpu_vec!(&mut out, dst => {
                let src = crate::WithDType::slice(p.cpu("cat")?).expect("dtype checked above");
                for o in 0..outer {
                    dst[o * row + col..o * row + col + width].copy_from_slice(&src[start + o * width..start + (o + 1) * width]);
                }
            });
            col += width;
        }
        Ok(Tensor::from_cpu(out, shape))
    }

    /// Writes `src` over positions `start..start + n` of dimension `dim` in place, where
    /// `n` is `src`'s size there: `self.narrow(dim, start, n)` becomes `src`. `src` has
    /// this tensor's dtype, device and shape but along `dim`. Tensors that shared the
    /// buffer keep their values: this one is first copied into a buffer of its own when
    /// another shares it or it views only part of one, so an appended key cache writes
    /// in place only while nothing else holds it.
    pub fn slice_assign(&mut self, dim: impl Dim, start: usize, src: &Tensor) -> Result<()> {
        let op = "slice_assign";
        let d = dim.resolve(self.shape(), op)?;
        same_dtype(self, src, op)?;
        if src.device() != self.device() {
            return Err(Error::DeviceMismatch { op, lhs: self.device(), rhs: src.device() });
        }
        let same_rank = src.rank() == self.rank();
        if !same_rank || src.dims().iter().zip(self.dims()).enumerate().any(|(i, (a, b))| i != d && a != b) {
            return Err(Error::ShapeMismatch { op, lhs: self.shape().clone(), rhs: src.shape().clone() });
        }
        let (n, size) = (src.dims()[d], self.dims()[d]);
        if start.checked_add(n).is_none_or(|end| end > size) {
            crate::bail!(
                op,
                "positions {start}..{} do not fit dimension {d} of shape {}",
                start.saturating_add(n),
                self.shape()
            );
        }
        self.own_buffer()?;
        if src.elem_count() == 0 {
            return Ok(());
        }
        if self.device() != crate::Device::Cpu {
            return self.cuda_slice_assign(d, start, src);
        }
        let src = src.contiguous()?;
        let inner: usize = self.dims()[d + 1..].iter().product();
        let (width, row) = (n * inner, size * inner);
        let from = src.layout().offset();
        let Some(crate::Storage::Cpu(dst)) = self.storage_mut() else { unreachable!("own_buffer made it unique") };
        with_cpu_vec!(dst, dst => {
            let s = crate::WithDType::slice(src.cpu(op)?).expect("dtype checked above");
            for (o, part) in s[from..from + src.elem_count()].chunks_exact(width).enumerate() {
                dst[o * row + start * inner..][..width].copy_from_slice(part);
            }
        });
        Ok(())
    }

    /// Stacks tensors of one shape along a new dimension `dim` (`0..=rank`).
    pub fn stack(tensors: &[&Tensor], dim: i64) -> Result<Tensor> {
        let parts = tensors.iter().map(|t| t.unsqueeze(dim)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Tensor> = parts.iter().collect();
        Tensor::cat(&refs, dim)
    }

    /// Splits along `dim` into views of the given sizes, which must sum to the dimension.
    pub fn split(&self, sizes: &[usize], dim: impl Dim) -> Result<Vec<Tensor>> {
        let d = dim.resolve(self.shape(), "split")?;
        if sizes.iter().sum::<usize>() != self.dims()[d] {
            crate::bail!("split", "sizes {sizes:?} do not sum to dimension {d} of shape {}", self.shape());
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&s| {
                let v = self.narrow(d, start, s);
                start += s;
                v
            })
            .collect()
    }

    /// Splits along `dim` into `n` views of equal size (the dimension must divide).
    pub fn chunk(&self, n: usize, dim: impl Dim) -> Result<Vec<Tensor>> {
        let d = dim.resolve(self.shape(), "chunk")?;
        let size = self.dims()[d];
        if n == 0 || size % n != 0 {
            crate::bail!("chunk", "dimension {d} of shape {} does not split into {n} equal parts", self.shape());
        }
        self.split(&vec![size / n; n], d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn iota(shape: &[usize]) -> Tensor {
        let n = shape.iter().product::<usize>();
        Tensor::from_vec((0..n).map(|x| x as f32).collect(), shape).unwrap()
    }

    #[test]
    fn views_share_storage_and_copies_do_not() {
        let a = iota(&[2, 3, 4]);
        let p = a.permute(&[2, 0, 1]).unwrap();
        assert!(p.shares_storage(&a));
        assert_eq!(p.dims(), &[4, 2, 3]);
        assert_eq!(p.to_vec::<f32>().unwrap()[..4], [0., 4., 8., 12.]);
        let r = a.reshape([6, 4]).unwrap();
        assert!(r.shares_storage(&a));
        let rp = p.reshape([24]).unwrap();
        assert!(!rp.shares_storage(&a));
        assert_eq!(a.narrow(-1, 1, 2).unwrap().to_vec::<f32>().unwrap()[..4], [1., 2., 5., 6.]);
        assert_eq!(a.unsqueeze(-1).unwrap().dims(), &[2, 3, 4, 1]);
        assert_eq!(a.flatten_from(1).unwrap().dims(), &[2, 12]);
        assert!(a.squeeze(0).is_err());
    }

    #[test]
    fn cat_stack_split_round_trip() {
        let a = iota(&[2, 3]);
        let b = iota(&[2, 2]).affine(1.0, 100.0).unwrap();
        let c = Tensor::cat(&[&a, &b], 1).unwrap();
        assert_eq!(c.to_vec::<f32>().unwrap(), vec![0., 1., 2., 100., 101., 3., 4., 5., 102., 103.]);
        let parts = c.split(&[3, 2], 1).unwrap();
        assert_eq!(parts[0].to_vec::<f32>().unwrap(), a.to_vec::<f32>().unwrap());
        assert_eq!(parts[1].to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        let s = Tensor::stack(&[&a, &a], 0).unwrap();
        assert_eq!(s.dims(), &[2, 2, 3]);
        let err = Tensor::cat(&[&a, &iota(&[3, 3])], 1).unwrap_err();
        assert_eq!(err.to_string(), "cat: shape mismatch between [2, 3] and [3, 3]");
        assert!(Tensor::cat(&[&a, &Tensor::zeros([2, 3], DType::F64)], 0).is_err());
        assert!(c.chunk(3, 1).is_err());
        assert_eq!(c.chunk(5, 1).unwrap().len(), 5);
    }

    #[test]
    fn slice_assign_writes_in_place_and_leaves_earlier_views_alone() {
        // (2, 4, 2): positions 1..3 of the middle dimension take a transposed source.
        let mut t = Tensor::zeros([2, 4, 2], DType::F32);
        let src = iota(&[2, 2, 2]).affine(1.0, 1.0).unwrap().transpose(0, 2).unwrap();
        let want_src = src.to_vec::<f32>().unwrap();
        t.slice_assign(1, 1, &src).unwrap();
        let got = t.to_vec::<f32>().unwrap();
        for (i, &x) in got.iter().enumerate() {
            let (b, p, c) = (i / 8, i / 2 % 4, i % 2);
            let want = if (1..3).contains(&p) { want_src[(b * 2 + p - 1) * 2 + c] } else { 0.0 };
            assert_eq!(x, want, "[{b}, {p}, {c}]");
        }
        // Unshared: the same buffer is written. Shared: the writer copies first.
        let before = t.clone();
        let ptr = |t: &Tensor| t.cpu_slice::<f32>("test").unwrap().as_ptr();
        let mut owned = t.contiguous().unwrap().affine(1.0, 0.0).unwrap();
        let at = ptr(&owned);
        owned.slice_assign(1, 3, &Tensor::ones([2, 1, 2], DType::F32)).unwrap();
        assert_eq!(ptr(&owned), at, "an unshared buffer is written in place");
        t.slice_assign(-2, 0, &Tensor::ones([2, 1, 2], DType::F32)).unwrap();
        assert_eq!(before.to_vec::<f32>().unwrap(), got, "a clone taken before keeps its values");
        assert_eq!(t.to_vec::<f32>().unwrap()[..2], [1., 1.]);
        // A view of part of a buffer becomes a tensor of its own; the buffer keeps its values.
        let whole = iota(&[4, 3]);
        let mut part = whole.narrow(0, 1, 2).unwrap();
        part.slice_assign(1, 2, &Tensor::zeros([2, 1], DType::F32)).unwrap();
        assert_eq!(part.to_vec::<f32>().unwrap(), [3., 4., 0., 6., 7., 0.]);
        assert_eq!(whole.to_vec::<f32>().unwrap()[5], 5.0);
        // Clear errors: wrong shape, positions past the end, another dtype, no dimension.
        let e = t.slice_assign(1, 0, &Tensor::zeros([3, 1, 2], DType::F32)).unwrap_err().to_string();
        assert!(e.contains("shape mismatch"), "{e}");
        let e = t.slice_assign(1, 3, &Tensor::zeros([2, 2, 2], DType::F32)).unwrap_err().to_string();
        assert!(e.contains("positions 3..5 do not fit"), "{e}");
        assert!(t.slice_assign(1, usize::MAX, &Tensor::zeros([2, 2, 2], DType::F32)).is_err());
        assert!(t.slice_assign(1, 0, &Tensor::zeros([2, 1, 2], DType::F64)).is_err());
        assert!(t.slice_assign(3, 0, &Tensor::zeros([2, 4, 2], DType::F32)).is_err());
    }
}
