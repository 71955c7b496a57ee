//! Products of a few rows by a matrix whose columns are contiguous: `x · wᵀ` for a weight
//! stored (out, in), as every linear layer's and the tied head's. `gemm` packs its operands
//! for any product of more than one row, and for a few rows the packing costs more than the
//! product (decoding a batch of 8 through GPT-2 small spent most of its step there). Here
//! one pass over the matrix takes each column's dot products with all the rows at once,
//! the rows staying in cache.

use crate::cpu::items_per_task;
use crate::{Float, simd_dispatch};
use rayon::prelude::*;

/// The most rows a product takes this path for; more go to `gemm`, whose packing pays
/// off from about there (`monarch bench linear --kind dense --batch N --pass fwd`).
pub(crate) const SKINNY_ROWS: usize = 16;

/// Lanes of one accumulator: a 512-bit register of f32.
const LANES: usize = 16;

/// Rows whose dot products with one column run together.
const ROW_GROUP: usize = 4;

/// `dst (m×n, row-major) (+)= a (m×k, rows `ars` apart, each contiguous) · b (k×n, columns
/// `bcs` apart, each contiguous)`, accumulating when `accumulate`; the columns are split
/// over rayon when `parallel`. The caller checks that `m ≤ SKINNY_ROWS` and that every
/// access stays inside the slices.
#[allow(clippy::too_many_arguments)]
pub(crate) fn skinny_gemm<T: Float>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    a: &[T],
    ars: usize,
    b: &[T],
    bcs: usize,
    accumulate: bool,
    parallel: bool,
) {
    // Each column's m results, columns after one another (nᵀ × m), then added into dst.
    let mut out = vec![T::zero(); n * m];
    let per_task = items_per_task(m * k);
    let run = |(c, chunk): (usize, &mut [T])| {
        let first = c * per_task;
        for (j, col) in chunk.chunks_exact_mut(m).enumerate() {
            let bj = &b[(first + j) * bcs..][..k];
            column_dots(col, a, ars, bj, k);
        }
    };
    if parallel {
        out.par_chunks_mut(per_task * m).enumerate().for_each(run);
    } else {
        out.chunks_mut(per_task * m).enumerate().for_each(run);
    }
    for (r, row) in dst.chunks_exact_mut(n).take(m).enumerate() {
        for (j, d) in row.iter_mut().enumerate() {
            let v = out[j * m + r];
            *d = if accumulate { *d + v } else { v };
        }
    }
}

simd_dispatch! {
    /// `out[r] = a_r · b` for the rows `a_r` (k elements at `r · ars`) and one column `b`.
    fn column_dots<T: Float> = column_dots_impl(out: &mut [T], a: &[T], ars: usize, b: &[T], k: usize)
}

#[inline(always)]
fn column_dots_impl<T: Float>(out: &mut [T], a: &[T], ars: usize, b: &[T], k: usize) {
    let whole = k / LANES * LANES;
    for (g, group) in out.chunks_mut(ROW_GROUP).enumerate() {
        let r0 = g * ROW_GROUP;
        let rows: [&[T]; ROW_GROUP] = std::array::from_fn(|i| {
            let r = r0 + i.min(group.len() - 1);
            &a[r * ars..][..k]
        });
        // Four named accumulators and one loop over the lanes: straight-line code the
        // compiler turns into one vector operation per row (an array of accumulators
        // indexed by row had stayed scalar).
        let [a0, a1, a2, a3] = rows;
        let lanes = |row: &[T], x: usize| -> [T; LANES] { row[x..x + LANES].try_into().expect("LANES elements") };
        let mut acc = [[T::zero(); LANES]; ROW_GROUP];
        let [s0, s1, s2, s3] = &mut acc;
        for x in (0..whole).step_by(LANES) {
            let (bv, v0, v1, v2, v3) = (lanes(b, x), lanes(a0, x), lanes(a1, x), lanes(a2, x), lanes(a3, x));
            for l in 0..LANES {
                s0[l] += v0[l] * bv[l];
                s1[l] += v1[l] * bv[l];
                s2[l] += v2[l] * bv[l];
                s3[l] += v3[l] * bv[l];
            }
        }
        for (i, o) in group.iter_mut().enumerate() {
            let tail = (whole..k).fold(T::zero(), |s, x| s + rows[i][x] * b[x]);
            *o = acc[i].iter().fold(tail, |s, &v| s + v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the definition in f64, for row counts around the row group, lengths with
    /// and without a tail of lanes, padded strides, and accumulation.
    #[test]
    fn matches_the_definition_for_any_rows_length_and_strides() {
        for (m, n, k) in [(1, 5, 3), (2, 7, 16), (3, 40, 37), (5, 33, 64), (16, 9, 100)] {
            let (ars, bcs) = (k + 3, k + 1);
            let a: Vec<f64> = (0..m * ars).map(|i| ((i * 37 % 101) as f64 - 50.0) / 25.0).collect();
            let b: Vec<f64> = (0..n * bcs).map(|i| ((i * 53 % 97) as f64 - 48.0) / 30.0).collect();
            for (accumulate, parallel) in [(false, true), (true, false)] {
                let mut dst: Vec<f64> = (0..m * n).map(|i| i as f64).collect();
                skinny_gemm((m, n, k), &mut dst, &a, ars, &b, bcs, accumulate, parallel);
                for r in 0..m {
                    for j in 0..n {
                        let dot: f64 = (0..k).map(|x| a[r * ars + x] * b[j * bcs + x]).sum();
                        let want = if accumulate { dot + (r * n + j) as f64 } else { dot };
                        let got = dst[r * n + j];
                        assert!(
                            (got - want).abs() <= 1e-12 * (1.0 + want.abs()),
                            "{m}x{n}x{k} [{r}, {j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
