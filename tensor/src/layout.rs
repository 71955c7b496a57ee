//! Strided views: a shape, strides in elements and an offset into the storage.
//! Transpose, permute, narrow, broadcast and reshape of contiguous data are all
//! layout changes that share the storage.

use crate::shape::{Dim, Dims6};
use crate::{Error, Result, Shape};
use smallvec::SmallVec;

/// How a tensor's logical elements map onto its storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Shape,
    strides: Dims6,
    offset: usize,
}

impl Layout {
    /// A row-major layout of `shape` starting at offset 0.
    pub fn contiguous(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let strides = shape.contiguous_strides();
        Layout { shape, strides, offset: 0 }
    }

    /// A layout from its parts (the caller guarantees it stays inside the storage).
    pub fn new(shape: Shape, strides: Dims6, offset: usize) -> Self {
        Layout { shape, strides, offset }
    }

    /// The logical shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Strides in elements, one per dimension (0 for broadcast dimensions).
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Offset of the first element in the storage.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Whether the elements are row-major and dense (dimensions of size 1 are ignored).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.dims().iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// The storage range holding the elements, when the layout is contiguous.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        self.is_contiguous().then(|| self.offset..self.offset + self.shape.elem_count())
    }

    /// Swaps two dimensions.
    pub fn transpose(&self, d0: impl Dim, d1: impl Dim) -> Result<Layout> {
        let a = d0.resolve(&self.shape, "transpose")?;
        let b = d1.resolve(&self.shape, "transpose")?;
        let mut l = self.clone();
        let mut dims: Dims6 = SmallVec::from_slice(self.shape.dims());
        dims.swap(a, b);
        l.strides.swap(a, b);
        l.shape = Shape::from(dims);
        Ok(l)
    }

    /// Reorders dimensions: output dimension `i` is input dimension `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Layout> {
        let rank = self.shape.rank();
        let mut seen = vec![false; rank];
        if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
            crate::bail!("permute", "{perm:?} is not a permutation of the {rank} dimensions of {}", self.shape);
        }
        let dims: Dims6 = perm.iter().map(|&p| self.shape.dims()[p]).collect();
        let strides: Dims6 = perm.iter().map(|&p| self.strides[p]).collect();
        Ok(Layout { shape: dims.into(), strides, offset: self.offset })
    }

    /// Restricts dimension `dim` to `start..start + len`.
    pub fn narrow(&self, dim: impl Dim, start: usize, len: usize) -> Result<Layout> {
        let d = dim.resolve(&self.shape, "narrow")?;
        let size = self.shape.dims()[d];
        if start.checked_add(len).is_none_or(|end| end > size) {
            crate::bail!(
                "narrow",
                "range {start}..{} out of bounds for dimension {d} of shape {}",
                start.saturating_add(len),
                self.shape
            );
        }
        let offset = if len == 0 { self.offset } else { self.offset + start * self.strides[d] };
        Ok(Layout { shape: self.shape.with_dim(d, len), strides: self.strides.clone(), offset })
    }

    /// Views the tensor as `shape` by repeating size-1 (or missing leading) dimensions with stride 0.
    pub fn broadcast_as(&self, shape: &Shape) -> Result<Layout> {
        let rank = shape.rank();
        let own = self.shape.rank();
        let err = || Error::Broadcast { op: "broadcast_as", lhs: self.shape.clone(), rhs: shape.clone() };
        if own > rank {
            return Err(err());
        }
        let mut strides = Dims6::from_elem(0, rank);
        for i in 0..own {
            let (src, dst) = (self.shape.dims()[i], shape.dims()[rank - own + i]);
            if src == dst {
                strides[rank - own + i] = self.strides[i];
            } else if src != 1 {
                return Err(err());
            }
        }
        Ok(Layout { shape: shape.clone(), strides, offset: self.offset })
    }

    /// The same elements under a new shape, when that needs no copy (the layout is
    /// contiguous); `None` means the data must be copied first.
    pub fn reshape(&self, shape: &Shape) -> Result<Option<Layout>> {
        if shape.elem_count() != self.shape.elem_count() {
            return Err(Error::ShapeMismatch { op: "reshape", lhs: self.shape.clone(), rhs: shape.clone() });
        }
        Ok(self.is_contiguous().then(|| Layout {
            shape: shape.clone(),
            strides: shape.contiguous_strides(),
            offset: self.offset,
        }))
    }

    /// Inserts a dimension of size 1 at `dim` (which may equal the rank).
    pub fn unsqueeze(&self, dim: usize) -> Result<Layout> {
        if dim > self.shape.rank() {
            return Err(Error::DimOutOfRange { op: "unsqueeze", dim: dim as i64, shape: self.shape.clone() });
        }
        let mut dims: Dims6 = SmallVec::from_slice(self.shape.dims());
        let mut strides = self.strides.clone();
        let stride = if dim < dims.len() { dims[dim] * strides[dim] } else { 1 };
        dims.insert(dim, 1);
        strides.insert(dim, stride);
        Ok(Layout { shape: dims.into(), strides, offset: self.offset })
    }

    /// Removes dimension `dim`, which must have size 1.
    pub fn squeeze(&self, dim: impl Dim) -> Result<Layout> {
        let d = dim.resolve(&self.shape, "squeeze")?;
        if self.shape.dims()[d] != 1 {
            crate::bail!("squeeze", "dimension {d} of shape {} is not of size 1", self.shape);
        }
        let mut dims: Dims6 = SmallVec::from_slice(self.shape.dims());
        let mut strides = self.strides.clone();
        dims.remove(d);
        strides.remove(d);
        Ok(Layout { shape: dims.into(), strides, offset: self.offset })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_compose() {
        let l = Layout::contiguous([2, 3, 4]);
        assert!(l.is_contiguous());
        let t = l.transpose(0, 2).unwrap();
        assert_eq!(t.shape().dims(), &[4, 3, 2]);
        assert_eq!(t.strides(), &[1, 4, 12]);
        assert!(!t.is_contiguous());
        let n = l.narrow(1, 1, 2).unwrap();
        assert_eq!((n.offset(), n.shape().dims()), (4, &[2, 2, 4][..]));
        assert!(l.narrow(1, 2, 2).is_err());
        let b = Layout::contiguous([3, 1]).broadcast_as(&Shape::from([2, 3, 5])).unwrap();
        assert_eq!(b.strides(), &[0, 1, 0]);
        assert!(Layout::contiguous([3, 2]).broadcast_as(&Shape::from([3, 4])).is_err());
        assert!(t.reshape(&Shape::from([24])).unwrap().is_none());
        assert!(l.reshape(&Shape::from([5, 5])).is_err());
        let u = l.unsqueeze(1).unwrap();
        assert_eq!(u.shape().dims(), &[2, 1, 3, 4]);
        assert!(u.is_contiguous());
        assert_eq!(u.squeeze(1).unwrap(), l);
        assert!(l.permute(&[0, 0, 1]).is_err());
    }
}
