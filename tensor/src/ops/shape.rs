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
}
