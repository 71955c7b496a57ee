//! Row kernels of the attention tiles: the online-softmax step, probabilities from the
//! saved log-sum-exp, dropout on probabilities and score gradients. They run on score
//! tiles between the tile products and are compiled a second time for AVX-512 (and
//! AVX2), chosen at run time ([`crate::simd_dispatch`]), so that their loops and the
//! exponential vectorise.

use crate::ops::counter_uniform;
use crate::ops::matmul::GemmElem;
use crate::{Float, simd_dispatch};

/// The element types the attention kernels compute in (f32 and f64); the exponential
/// is [`Float::fast_exp`].
pub(crate) trait AttnFloat: Float + GemmElem {}

impl AttnFloat for f32 {}

impl AttnFloat for f64 {}

/// Dropout on a tile of probabilities: element `(r, c)` of the tile is dropped iff
/// `counter_uniform(seed, first + r · row_stride + c) < p`; kept ones are scaled.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TileDropout<T> {
    pub p: f32,
    pub scale: T,
    pub seed: u64,
    /// Counter of the tile's element (0, 0).
    pub first: u64,
    /// Counter distance between rows (the number of keys).
    pub row_stride: u64,
}

impl<T: AttnFloat> TileDropout<T> {
    #[inline(always)]
    fn factor(&self, r: usize, c: usize) -> T {
        let keep = counter_uniform(self.seed, self.first + r as u64 * self.row_stride + c as u64) >= self.p;
        if keep { self.scale } else { T::zero() }
    }
}

/// Number of visible columns of tile row `r` when the first row sees `first` columns
/// (`None`: all `cols`).
#[inline(always)]
fn visible(causal_first: Option<isize>, r: usize, cols: usize) -> usize {
    causal_first.map_or(cols, |f| (f + r as isize).clamp(0, cols as isize) as usize)
}

const LANES: usize = 16;

#[inline(always)]
fn row_max<T: AttnFloat>(row: &[T]) -> T {
    let mut acc = [T::neg_infinity(); LANES];
    let mut chunks = row.chunks_exact(LANES);
    for ch in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(ch) {
            *a = if x > *a { x } else { *a };
        }
    }
    let tail = chunks.remainder().iter().fold(T::neg_infinity(), |a, &x| if x > a { x } else { a });
    acc.iter().fold(tail, |a, &x| if x > a { x } else { a })
}

/// `row ← e^(row − m)`; returns the sum.
#[inline(always)]
fn exp_sub_sum<T: AttnFloat>(row: &mut [T], m: T) -> T {
    let mut acc = [T::zero(); LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for ch in &mut chunks {
        for (a, x) in acc.iter_mut().zip(ch.iter_mut()) {
            *x = (*x - m).fast_exp();
            *a += *x;
        }
    }
    let mut tail = T::zero();
    for x in chunks.into_remainder() {
        *x = (*x - m).fast_exp();
        tail += *x;
    }
    acc.iter().fold(tail, |a, &x| a + x)
}

simd_dispatch! {
    /// One online-softmax step over a score tile `s` (rows of `cols`): masks columns past
    /// the causal limit, updates the running max `m` and sum `l`, rescales the output
    /// accumulator `acc` (rows of `d`) and leaves `e^(s − m)` (after dropout) in `s`.
    fn softmax_step<T: AttnFloat> = softmax_step_impl(
        s: &mut [T],
        cols: usize,
        m: &mut [T],
        l: &mut [T],
        acc: &mut [T],
        d: usize,
        causal_first: Option<isize>,
        drop: Option<TileDropout<T>>,
    )
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn softmax_step_impl<T: AttnFloat>(
    s: &mut [T],
    cols: usize,
    m: &mut [T],
    l: &mut [T],
    acc: &mut [T],
    d: usize,
    causal_first: Option<isize>,
    drop: Option<TileDropout<T>>,
) {
    for (r, row) in s.chunks_exact_mut(cols).enumerate() {
        let vis = visible(causal_first, r, cols);
        row[vis..].fill(T::zero());
        let row = &mut row[..vis];
        let m_new = row_max(row).max(m[r]);
        if m_new == T::neg_infinity() {
            row.fill(T::zero());
            continue;
        }
        let alpha = (m[r] - m_new).fast_exp();
        let sum = exp_sub_sum(row, m_new);
        l[r] = l[r] * alpha + sum;
        m[r] = m_new;
        if alpha != T::one() {
            acc[r * d..(r + 1) * d].iter_mut().for_each(|a| *a *= alpha);
        }
        if let Some(dr) = drop {
            row.iter_mut().enumerate().for_each(|(c, x)| *x *= dr.factor(r, c));
        }
    }
}

simd_dispatch! {
    /// Probabilities `s ← e^(s − lse)` of a score tile from each row's saved log-sum-exp;
    /// columns past the causal limit and rows with `lse = −∞` (nothing visible) are 0.
    fn probs<T: AttnFloat> = probs_impl(s: &mut [T], cols: usize, lse: &[T], causal_first: Option<isize>)
}

#[inline(always)]
fn probs_impl<T: AttnFloat>(s: &mut [T], cols: usize, lse: &[T], causal_first: Option<isize>) {
    for (r, row) in s.chunks_exact_mut(cols).enumerate() {
        let vis = if lse[r] == T::neg_infinity() { 0 } else { visible(causal_first, r, cols) };
        row[vis..].fill(T::zero());
        exp_sub_sum(&mut row[..vis], lse[r]);
    }
}

simd_dispatch! {
    /// `x ← x ∘ dropout factors` on a tile (rows of `cols`).
    fn dropout_in_place<T: AttnFloat> = dropout_in_place_impl(x: &mut [T], cols: usize, drop: TileDropout<T>)
}

#[inline(always)]
fn dropout_in_place_impl<T: AttnFloat>(x: &mut [T], cols: usize, drop: TileDropout<T>) {
    for (r, row) in x.chunks_exact_mut(cols).enumerate() {
        row.iter_mut().enumerate().for_each(|(c, x)| *x *= drop.factor(r, c));
    }
}

simd_dispatch! {
    /// Score gradients `dp ← p ∘ (dp ∘ dropout factors − D)` where `dp = dO·Vᵀ` and `D`
    /// is each row's `dO·O`.
    fn score_grads<T: AttnFloat> = score_grads_impl(p: &[T], dp: &mut [T], cols: usize, dsum: &[T], drop: Option<TileDropout<T>>)
}

#[inline(always)]
fn score_grads_impl<T: AttnFloat>(p: &[T], dp: &mut [T], cols: usize, dsum: &[T], drop: Option<TileDropout<T>>) {
    for (r, (p, dp)) in p.chunks_exact(cols).zip(dp.chunks_exact_mut(cols)).enumerate() {
        let dr = dsum[r];
        match drop {
            None => p.iter().zip(dp).for_each(|(&p, g)| *g = p * (*g - dr)),
            Some(drop) => p.iter().zip(dp).enumerate().for_each(|(c, (&p, g))| *g = p * (*g * drop.factor(r, c) - dr)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_step_masks_and_rescales() {
        // Two rows, three columns; row 0 sees one column, row 1 two (causal_first = 1).
        let mut s = vec![1.0f64, 5.0, 5.0, 2.0, 3.0, 9.0];
        let (mut m, mut l) = (vec![0.0, f64::NEG_INFINITY], vec![2.0, 0.0]);
        let mut acc = vec![4.0, 0.0];
        softmax_step(&mut s, 3, &mut m, &mut l, &mut acc, 1, Some(1), None);
        assert_eq!(m, [1.0, 3.0]);
        assert!((l[0] - (2.0 * (-1f64).exp() + 1.0)).abs() < 1e-15);
        assert!((l[1] - ((-1f64).exp() + 1.0)).abs() < 1e-15);
        assert!((acc[0] - 4.0 * (-1f64).exp()).abs() < 1e-15 && acc[1] == 0.0);
        assert_eq!(&s[1..3], &[0.0, 0.0]);
        assert_eq!(s[5], 0.0);
    }
}
