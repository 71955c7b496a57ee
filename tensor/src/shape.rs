//! Shapes, dimension indices (negative counts from the end) and broadcasting.

use crate::{Error, Result};
use smallvec::SmallVec;

/// Inline storage for the dimensions of a shape or the strides of a layout.
pub type Dims6 = SmallVec<[usize; 6]>;

/// The extent of each dimension of a tensor, outermost first.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Dims6);

impl Shape {
    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements (1 for a scalar).
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }

    /// Row-major (C-contiguous) strides in elements.
    pub fn contiguous_strides(&self) -> Dims6 {
        let mut strides: Dims6 = SmallVec::from_elem(1, self.rank());
        for i in (0..self.rank().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * self.0[i + 1];
        }
        strides
    }

    /// Resolves `dim` (possibly negative) against this shape.
    pub fn dim(&self, dim: impl Dim, op: &'static str) -> Result<usize> {
        dim.resolve(self, op)
    }

    /// The extent of dimension `dim`.
    pub fn size(&self, dim: impl Dim, op: &'static str) -> Result<usize> {
        Ok(self.0[dim.resolve(self, op)?])
    }

    /// The last two dimensions as (rows, cols), for matrix ops.
    pub fn matrix_dims(&self, op: &'static str) -> Result<(usize, usize)> {
        match self.0.as_slice() {
            [.., r, c] => Ok((*r, *c)),
            _ => crate::bail!(op, "needs at least 2 dimensions, got shape {self}"),
        }
    }

    /// The shape both `self` and `rhs` broadcast to, NumPy style.
    pub fn broadcast_with(&self, rhs: &Shape, op: &'static str) -> Result<Shape> {
        let rank = self.rank().max(rhs.rank());
        let mut dims = Dims6::with_capacity(rank);
        for i in 0..rank {
            let a = dim_from_end(self, rank - i);
            let b = dim_from_end(rhs, rank - i);
            dims.push(match (a, b) {
                (a, b) if a == b => a,
                (1, b) => b,
                (a, 1) => a,
                _ => {
                    return Err(Error::Broadcast { op, lhs: self.clone(), rhs: rhs.clone() });
                }
            });
        }
        Ok(Shape(dims))
    }

    /// A copy with dimension `dim` replaced by `size`.
    pub fn with_dim(&self, dim: usize, size: usize) -> Shape {
        let mut s = self.clone();
        s.0[dim] = size;
        s
    }
}

/// The `k`-th dimension from the end (1-based), or 1 if the shape is shorter.
fn dim_from_end(s: &Shape, k: usize) -> usize {
    if k <= s.rank() { s.0[s.rank() - k] } else { 1 }
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0.as_slice())
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0.as_slice())
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(SmallVec::from_slice(d))
    }
}
impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(SmallVec::from_vec(d))
    }
}
impl From<Dims6> for Shape {
    fn from(d: Dims6) -> Self {
        Shape(d)
    }
}
impl From<&Vec<usize>> for Shape {
    fn from(d: &Vec<usize>) -> Self {
        Shape(SmallVec::from_slice(d))
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(SmallVec::from_slice(&d))
    }
}
impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}
impl From<usize> for Shape {
    fn from(d: usize) -> Self {
        Shape(SmallVec::from_slice(&[d]))
    }
}
impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(SmallVec::new())
    }
}

/// A dimension index: `usize` from the front, or a signed integer where negative
/// values count from the end (`-1` is the last dimension).
pub trait Dim: Copy {
    /// The dimension as an index into `shape`, or an error naming `op`.
    fn resolve(self, shape: &Shape, op: &'static str) -> Result<usize>;
}

fn resolve_signed(dim: i64, shape: &Shape, op: &'static str) -> Result<usize> {
    let rank = shape.rank() as i64;
    let d = if dim < 0 { dim + rank } else { dim };
    if d < 0 || d >= rank {
        return Err(Error::DimOutOfRange { op, dim, shape: shape.clone() });
    }
    Ok(d as usize)
}

impl Dim for usize {
    fn resolve(self, shape: &Shape, op: &'static str) -> Result<usize> {
        resolve_signed(self as i64, shape, op)
    }
}
impl Dim for i32 {
    fn resolve(self, shape: &Shape, op: &'static str) -> Result<usize> {
        resolve_signed(self as i64, shape, op)
    }
}
impl Dim for i64 {
    fn resolve(self, shape: &Shape, op: &'static str) -> Result<usize> {
        resolve_signed(self, shape, op)
    }
}
impl Dim for isize {
    fn resolve(self, shape: &Shape, op: &'static str) -> Result<usize> {
        resolve_signed(self as i64, shape, op)
    }
}

/// A set of dimensions for reductions: one [`Dim`], an array, a slice or a vector.
/// The resolved dimensions are sorted and must be distinct.
pub trait Dims {
    /// The dimensions as sorted distinct indices into `shape`.
    fn resolve_all(&self, shape: &Shape, op: &'static str) -> Result<Dims6>;
}

fn sorted_distinct<D: Dim>(ds: &[D], shape: &Shape, op: &'static str) -> Result<Dims6> {
    let mut out = Dims6::new();
    for &d in ds {
        out.push(d.resolve(shape, op)?);
    }
    out.sort_unstable();
    if out.windows(2).any(|w| w[0] == w[1]) {
        crate::bail!(op, "repeated dimension in reduction over shape {shape}");
    }
    Ok(out)
}

impl<D: Dim> Dims for D {
    fn resolve_all(&self, shape: &Shape, op: &'static str) -> Result<Dims6> {
        sorted_distinct(&[*self], shape, op)
    }
}
impl<D: Dim, const N: usize> Dims for [D; N] {
    fn resolve_all(&self, shape: &Shape, op: &'static str) -> Result<Dims6> {
        sorted_distinct(self, shape, op)
    }
}
impl<D: Dim> Dims for &[D] {
    fn resolve_all(&self, shape: &Shape, op: &'static str) -> Result<Dims6> {
        sorted_distinct(self, shape, op)
    }
}
impl<D: Dim> Dims for Vec<D> {
    fn resolve_all(&self, shape: &Shape, op: &'static str) -> Result<Dims6> {
        sorted_distinct(self, shape, op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        let a = Shape::from([4, 1, 3]);
        let b = Shape::from([5, 1]);
        assert_eq!(a.broadcast_with(&b, "t").unwrap().dims(), &[4, 5, 3]);
        let err = Shape::from([2, 3]).broadcast_with(&Shape::from([4]), "add").unwrap_err();
        assert_eq!(err.to_string(), "add: shapes [2, 3] and [4] cannot be broadcast together");
    }

    #[test]
    fn negative_dims_count_from_the_end() {
        let s = Shape::from([2, 3, 4]);
        assert_eq!(s.dim(-1, "t").unwrap(), 2);
        assert_eq!(s.dim(0usize, "t").unwrap(), 0);
        assert!(s.dim(3, "t").is_err());
        assert!(s.dim(-4, "t").is_err());
        assert_eq!([-1, 0].resolve_all(&s, "t").unwrap().as_slice(), &[0, 2]);
        assert!([1, -2].resolve_all(&s, "t").is_err());
    }

    #[test]
    fn contiguous_strides_are_row_major() {
        assert_eq!(Shape::from([2, 3, 4]).contiguous_strides().as_slice(), &[12, 4, 1]);
        assert_eq!(Shape::from(()).elem_count(), 1);
    }
}
