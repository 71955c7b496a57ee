//! Products of a few rows by a matrix whose columns are contiguous: `x · wᵀ` for a weight
//! stored (out, in), as every linear layer's and the tied head's. `gemm` packs its operands
//! for any product of more than one row, and for a few rows the packing costs more than the
//! product (decoding a batch of 8 through GPT-2 small spent most of its step there). Here
//! one pass over the matrix takes each column's dot products with all the rows at once,
//! the rows staying in cache. The matrix may be bf16 (a bf16 model decoding on the CPU),
//! widened to f32 as it is read: half the bytes of a pass that memory bandwidth bounds.

use crate::cpu::items_per_task;
use crate::{Float, simd_dispatch};
use half::bf16;
use num_traits::Zero;
use rayon::prelude::*;

/// An element of the matrix, with the float type its products are summed in.
pub(crate) trait Weight: Copy + Send + Sync {
    /// The type of the rows, the sums and the result.
    type Acc: Float;
    /// The value in `Acc`.
    fn widen(self) -> Self::Acc;
}

impl Weight for f32 {
    type Acc = f32;
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Weight for f64 {
    type Acc = f64;
    #[inline(always)]
    fn widen(self) -> f64 {
        self
    }
}

impl Weight for bf16 {
    type Acc = f32;
    /// bf16 is the top half of an f32: a shift (vectorised, unlike `bf16::to_f32`'s
    /// branch that only quiets NaNs).
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}

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
pub(crate) fn skinny_gemm<W: Weight>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [W::Acc],
    a: &[W::Acc],
    ars: usize,
    b: &[W],
    bcs: usize,
    accumulate: bool,
    parallel: bool,
) {
    // Each column's m results, columns after one another (nᵀ × m), then added into dst.
    let mut out = vec![W::Acc::zero(); n * m];
    let per_task = items_per_task(m * k);
    let run = |(c, chunk): (usize, &mut [W::Acc])| {
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
    fn column_dots<T: Weight> = column_dots_impl(out: &mut [T::Acc], a: &[T::Acc], ars: usize, b: &[T], k: usize)
}

/// [`column_dots`]' body, for callers that inline it into their own dispatched loops.
#[inline(always)]
pub(crate) fn column_dots_impl<W: Weight>(out: &mut [W::Acc], a: &[W::Acc], ars: usize, b: &[W], k: usize) {
    let whole = k / LANES * LANES;
    for (g, group) in out.chunks_mut(ROW_GROUP).enumerate() {
        let r0 = g * ROW_GROUP;
        if group.len() == 1 {
            group[0] = row_dot(&a[r0 * ars..][..k], b, k);
            continue;
        }
        let rows: [&[W::Acc]; ROW_GROUP] = std::array::from_fn(|i| {
            let r = r0 + i.min(group.len() - 1);
            &a[r * ars..][..k]
        });
        // Four named accumulators and one loop over the lanes: straight-line code the
        // compiler turns into one vector operation per row (an array of accumulators
        // indexed by row had stayed scalar).
        let [a0, a1, a2, a3] = rows;
        let lanes =
            |row: &[W::Acc], x: usize| -> [W::Acc; LANES] { row[x..x + LANES].try_into().expect("LANES elements") };
        let mut acc = [[W::Acc::zero(); LANES]; ROW_GROUP];
        let [s0, s1, s2, s3] = &mut acc;
        for x in (0..whole).step_by(LANES) {
            let bx = &b[x..x + LANES];
            let bv: [W::Acc; LANES] = std::array::from_fn(|l| bx[l].widen());
            let (v0, v1, v2, v3) = (lanes(a0, x), lanes(a1, x), lanes(a2, x), lanes(a3, x));
            for l in 0..LANES {
                s0[l] += v0[l] * bv[l];
                s1[l] += v1[l] * bv[l];
                s2[l] += v2[l] * bv[l];
                s3[l] += v3[l] * bv[l];
            }
        }
        for (i, o) in group.iter_mut().enumerate() {
            let tail = (whole..k).fold(W::Acc::zero(), |s, x| s + rows[i][x] * b[x].widen());
            *o = acc[i].iter().fold(tail, |s, &v| s + v);
        }
    }
}

/// One row's dot product with one column: four accumulators over consecutive runs of
/// lanes, independent sums as the four rows' above, not four copies of the one row.
#[inline(always)]
fn row_dot<W: Weight>(a: &[W::Acc], b: &[W], k: usize) -> W::Acc {
    const STEP: usize = ROW_GROUP * LANES;
    let whole = k / STEP * STEP;
    let mut acc = [[W::Acc::zero(); LANES]; ROW_GROUP];
    let [s0, s1, s2, s3] = &mut acc;
    for x in (0..whole).step_by(STEP) {
        let (ax, bx) = (&a[x..x + STEP], &b[x..x + STEP]);
        let bv: [W::Acc; STEP] = std::array::from_fn(|l| bx[l].widen());
        for l in 0..LANES {
            s0[l] += ax[l] * bv[l];
            s1[l] += ax[LANES + l] * bv[LANES + l];
            s2[l] += ax[2 * LANES + l] * bv[2 * LANES + l];
            s3[l] += ax[3 * LANES + l] * bv[3 * LANES + l];
        }
    }
    let tail = (whole..k).fold(W::Acc::zero(), |s, x| s + a[x] * b[x].widen());
    // The four accumulators lane by lane (vector adds), then one register's lanes: for
    // short rows (a head's 64 in attention) the sum across lanes costs as much as the
    // products, so the fewer scalar adds the better.
    let lanes: [W::Acc; LANES] = std::array::from_fn(|l| (s0[l] + s1[l]) + (s2[l] + s3[l]));
    lanes.iter().fold(tail, |s, &v| s + v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the definition in f64, for row counts around the row group (one row alone
    /// takes `row_dot`), lengths with and without a tail of lanes, padded strides and
    /// accumulation; the matrix in f64 and in bf16 (summed in f32, so looser).
    #[test]
    fn matches_the_definition_for_any_rows_length_strides_and_weight_type() {
        for (m, n, k) in [(1, 5, 3), (2, 7, 16), (3, 40, 37), (5, 33, 64), (16, 9, 100), (1, 6, 200)] {
            let (ars, bcs) = (k + 3, k + 1);
            let a: Vec<f64> = (0..m * ars).map(|i| ((i * 37 % 101) as f64 - 50.0) / 25.0).collect();
            // Multiples of 1/32 below 2: exact in bf16.
            let b: Vec<f64> = (0..n * bcs).map(|i| ((i * 53 % 97) as f64 - 48.0) / 32.0).collect();
            let b16: Vec<bf16> = b.iter().map(|&x| bf16::from_f64(x)).collect();
            let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
            for (accumulate, parallel) in [(false, true), (true, false)] {
                let start = |i: usize| i as f64;
                let mut dst: Vec<f64> = (0..m * n).map(start).collect();
                skinny_gemm((m, n, k), &mut dst, &a, ars, &b, bcs, accumulate, parallel);
                let mut dst16: Vec<f32> = (0..m * n).map(|i| start(i) as f32).collect();
                skinny_gemm((m, n, k), &mut dst16, &a32, ars, &b16, bcs, accumulate, parallel);
                for r in 0..m {
                    for j in 0..n {
                        let dot: f64 = (0..k).map(|x| f64::from(a32[r * ars + x]) * b[j * bcs + x]).sum();
                        let want = if accumulate { dot + start(r * n + j) } else { dot };
                        let (got, got16) = (dst[r * n + j], f64::from(dst16[r * n + j]));
                        let at = format!("{m}x{n}x{k} [{r}, {j}]");
                        let exact: f64 = (0..k).map(|x| a[r * ars + x] * b[j * bcs + x]).sum();
                        let exact = if accumulate { exact + start(r * n + j) } else { exact };
                        assert!((got - exact).abs() <= 1e-12 * (1.0 + exact.abs()), "f64 {at}: {got} vs {exact}");
                        // f32 sums of k products of size about 1.
                        assert!((got16 - want).abs() <= 1e-6 * (k as f64 + want.abs()), "bf16 {at}: {got16} vs {want}");
                    }
                }
            }
        }
    }

    /// Widening is exact for every bf16 bit pattern but NaNs, which stay NaN.
    #[test]
    fn widening_a_bf16_gives_its_value() {
        for bits in 0..=u16::MAX {
            let x = bf16::from_bits(bits);
            let (got, want) = (x.widen(), x.to_f32());
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{bits:#06x}");
        }
    }
}
