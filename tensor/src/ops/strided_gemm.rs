//! A GEMM whose destination is strided too, for the structured kernels (Monarch,
//! block-sparse) that write products straight into permuted or interleaved places.

use super::matmul::{GemmElem, Mat};
use gemm::Parallelism;

/// `dst (m×n) (+)= lhs (m×k) · rhs (k×n)` where all three operands are strided views
/// into their slices; accumulates into `dst` when `accumulate`. Every access is
/// bounds-checked up front, so a wrong stride is a panic, never undefined behaviour.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided<T: GemmElem>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    d: Mat,
    lhs: &[T],
    a: Mat,
    rhs: &[T],
    b: Mat,
    accumulate: bool,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |x: Mat, rows: usize, cols: usize| x.offset + (rows - 1) * x.rs + (cols - 1) * x.cs;
    assert!(last(d, m, n) < dst.len(), "gemm_strided: destination out of bounds");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[d.offset + i * d.rs + j * d.cs] = T::ZERO;
                }
            }
        }
        return;
    }
    assert!(last(a, m, k) < lhs.len() && last(b, k, n) < rhs.len(), "gemm_strided: operand out of bounds");
    // SAFETY: the asserts above bound every element gemm reads or writes; `dst` is
    // borrowed mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(d.offset),
            d.cs as isize,
            d.rs as isize,
            accumulate,
            lhs.as_ptr().add(a.offset),
            a.cs as isize,
            a.rs as isize,
            rhs.as_ptr().add(b.offset),
            b.cs as isize,
            b.rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_through_destination_strides() {
        // dst = a·b written transposed and interleaved into a 2×6 buffer (every other column).
        let a = [1.0f64, 2.0, 3.0, 4.0]; // 2×2 row-major
        let b = [5.0f64, 6.0, 7.0, 8.0]; // 2×2 row-major
        let mut dst = vec![-1.0f64; 12];
        let row_major = |offset, rs| Mat { offset, rs, cs: 1 };
        // dstᵀ stored: element (i, j) at j*6 + 2*i.
        let d = Mat { offset: 0, rs: 2, cs: 6 };
        gemm_strided((2, 2, 2), &mut dst, d, &a, row_major(0, 2), &b, row_major(0, 2), false, Parallelism::None);
        // a·b = [[19, 22], [43, 50]]
        assert_eq!([dst[0], dst[2], dst[6], dst[8]], [19.0, 43.0, 22.0, 50.0]);
        assert_eq!(dst[1], -1.0);
        gemm_strided((2, 2, 0), &mut dst, d, &a, row_major(0, 2), &b, row_major(0, 2), true, Parallelism::None);
        assert_eq!(dst[0], 19.0);
        gemm_strided((2, 2, 0), &mut dst, d, &a, row_major(0, 2), &b, row_major(0, 2), false, Parallelism::None);
        assert_eq!([dst[0], dst[2], dst[6], dst[8], dst[1]], [0.0, 0.0, 0.0, 0.0, -1.0]);
    }
}
