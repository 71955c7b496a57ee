//! Row-major traversal of `N` strided operands over one logical shape.
//!
//! Dimensions of size 1 are dropped and adjacent dimensions are merged wherever every
//! operand allows it, so that the common cases (contiguous, broadcast rows, transposed
//! matrices) become a few long runs along the innermost dimension.

use crate::shape::Dims6;

/// A traversal plan: `runs()` runs of `inner` elements each, where operand `k` of run
/// `r` starts at `start(r)[k]` and advances by `inner_strides[k]`.
pub(crate) struct Walk<const N: usize> {
    outer: Dims6,
    outer_strides: [Dims6; N],
    /// Length of each run.
    pub inner: usize,
    /// Stride of each operand along the run.
    pub inner_strides: [usize; N],
    offsets: [usize; N],
}

impl<const N: usize> Walk<N> {
    /// Plans a walk over `shape` for operands with the given strides and offsets.
    pub fn new(shape: &[usize], strides: [&[usize]; N], offsets: [usize; N]) -> Self {
        let mut dims: Dims6 = Dims6::new();
        let mut st: [Dims6; N] = std::array::from_fn(|_| Dims6::new());
        for (i, &d) in shape.iter().enumerate() {
            if d == 1 {
                continue;
            }
            let mergeable = !dims.is_empty() && (0..N).all(|k| st[k][st[k].len() - 1] == strides[k][i] * d);
            if mergeable {
                *dims.last_mut().unwrap() *= d;
                for k in 0..N {
                    *st[k].last_mut().unwrap() = strides[k][i];
                }
            } else {
                dims.push(d);
                for k in 0..N {
                    st[k].push(strides[k][i]);
                }
            }
        }
        let inner = dims.pop().unwrap_or(1);
        let inner_strides = std::array::from_fn(|k| st[k].pop().unwrap_or(0));
        Walk { outer: dims, outer_strides: st, inner, inner_strides, offsets }
    }

    /// Number of runs.
    #[cfg(test)]
    pub fn runs(&self) -> usize {
        self.outer.iter().product()
    }

    /// Start offsets of run `r`.
    pub fn start(&self, mut r: usize) -> [usize; N] {
        let mut off = self.offsets;
        for i in (0..self.outer.len()).rev() {
            let idx = r % self.outer[i];
            r /= self.outer[i];
            for (k, o) in off.iter_mut().enumerate() {
                *o += idx * self.outer_strides[k][i];
            }
        }
        off
    }

    /// Calls `f(run, starts)` for runs `range`, in order, stepping an odometer rather
    /// than recomputing each start.
    pub fn for_runs(&self, range: std::ops::Range<usize>, mut f: impl FnMut(usize, [usize; N])) {
        if range.is_empty() {
            return;
        }
        let mut idx: Dims6 = Dims6::from_elem(0, self.outer.len());
        let mut r = range.start;
        for i in (0..self.outer.len()).rev() {
            idx[i] = r % self.outer[i];
            r /= self.outer[i];
        }
        let mut off = self.start(range.start);
        for run in range {
            f(run, off);
            for i in (0..self.outer.len()).rev() {
                idx[i] += 1;
                for (k, o) in off.iter_mut().enumerate() {
                    *o += self.outer_strides[k][i];
                }
                if idx[i] < self.outer[i] {
                    break;
                }
                for (k, o) in off.iter_mut().enumerate() {
                    *o -= self.outer_strides[k][i] * self.outer[i];
                }
                idx[i] = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets<const N: usize>(w: &Walk<N>) -> Vec<[usize; N]> {
        let mut out = vec![];
        w.for_runs(0..w.runs(), |_, s| {
            for j in 0..w.inner {
                out.push(std::array::from_fn(|k| s[k] + j * w.inner_strides[k]));
            }
        });
        out
    }

    #[test]
    fn merges_contiguous_dims_into_one_run() {
        let w = Walk::new(&[2, 3, 4], [&[12, 4, 1]], [5]);
        assert_eq!((w.runs(), w.inner, w.inner_strides), (1, 24, [1]));
        assert_eq!(offsets(&w)[23], [28]);
    }

    #[test]
    fn transposed_and_broadcast_operands_visit_row_major() {
        // A 3x2 view of a 2x3 matrix, and a broadcast row.
        let w = Walk::new(&[3, 2], [&[1, 3], &[0, 1]], [0, 0]);
        let got = offsets(&w);
        assert_eq!(got, vec![[0, 0], [3, 1], [1, 0], [4, 1], [2, 0], [5, 1]]);
        // Starting mid-way gives the same offsets as the full walk.
        let mut tail = vec![];
        w.for_runs(1..3, |_, s| tail.push(s));
        assert_eq!(tail, vec![w.start(1), w.start(2)]);
    }
}
