//! Attention of a few queries over many keys on the CPU: cached decoding, one new token
//! a sequence over the keys and values before it. The keys and values are read in their
//! own dtype, a bf16 cache widened to f32 as it is read, where the tiled path would copy
//! the whole cache to f32 every step (for a batch of 8 over 1024 positions of GPT-2
//! small, 600 MB a step). Each head's scores are a column of dot products per key
//! ([`column_dots_impl`]), then the tiles' softmax step over all of them at once and a
//! weighted sum of value rows.

use super::rowops::{self, AttnFloat};
use super::{AttentionOpts, AttentionOut, Dims, Heads};
use crate::ops::skinny_gemm::{Weight, column_dots_impl};
use crate::{DType, Result, Tensor, WithDType, simd_dispatch};
use half::bf16;
use num_traits::{Float as _, Zero};
use rayon::prelude::*;

/// The most queries a head may have for this path (the GPU's split-key decoding takes
/// as many); more are a prefill, which the tiled path's GEMMs suit.
const DECODE_QUERIES: usize = 4;

/// Whether `flash_attention` takes this path: a few queries a head, no dropout, bf16 with
/// the head dimension contiguous in keys and values. f32 and f64 keep the tiled path,
/// which reads them in place already and was faster for them (GEMM-vector products
/// against dot products per key: `monarch bench decode`, 5–10% a step).
pub(crate) fn applies(dims: &Dims, opts: &AttentionOpts, k: &Tensor, v: &Tensor) -> bool {
    let contiguous_rows = |t: &Tensor| t.layout().strides()[3] == 1 || dims.d == 1;
    (1..=DECODE_QUERIES).contains(&dims.nq)
        && opts.dropout == 0.0
        && k.dtype() == DType::BF16
        && contiguous_rows(k)
        && contiguous_rows(v)
}

/// The output (in the inputs' dtype) and log-sum-exp (in their compute dtype) of
/// attention of at most [`DECODE_QUERIES`] queries a head with contiguous key and value
/// rows, without dropout (what [`applies`] checks), in bf16, f32 or f64.
pub(crate) fn forward_tensors(
    op: &'static str,
    [q, k, v]: [&Tensor; 3],
    dims: Dims,
    causal: bool,
) -> Result<AttentionOut> {
    match k.dtype() {
        DType::BF16 => forward::<bf16>(op, [q, k, v], dims, causal),
        DType::F64 => forward::<f64>(op, [q, k, v], dims, causal),
        _ => forward::<f32>(op, [q, k, v], dims, causal),
    }
}

fn forward<W: Weight + WithDType>(
    op: &'static str,
    [q, k, v]: [&Tensor; 3],
    dims: Dims,
    causal: bool,
) -> Result<AttentionOut>
where
    W::Acc: AttnFloat,
{
    let (q, k, v) = (Heads::<W>::new(q, op)?, Heads::<W>::new(k, op)?, Heads::<W>::new(v, op)?);
    let (nq, nk, d) = (dims.nq, dims.nk, dims.d);
    let mut out = vec![W::Acc::zero(); dims.bh() * nq * d];
    let mut lse = vec![W::Acc::neg_infinity(); dims.bh() * nq];
    let scale: W::Acc = dims.scale();
    // The first query sees this many keys (bottom-right aligned), each next one one more.
    let causal_first = causal.then(|| nk as isize - nq as isize + 1);
    if nk > 0 {
        out.par_chunks_mut(nq * d).zip(lse.par_chunks_mut(nq)).enumerate().for_each(|(bh, (out, lse))| {
            let mut qs = vec![W::Acc::zero(); nq * d];
            for (i, row) in qs.chunks_exact_mut(d).enumerate() {
                row.iter_mut().enumerate().for_each(|(c, x)| *x = q.at(bh, i, c).widen() * scale);
            }
            // Each query's scores (nq × nk), then its probabilities before normalising.
            let mut p = vec![W::Acc::zero(); nq * nk];
            let (kb, vb) = (k.mat(bh, 0), v.mat(bh, 0));
            head_scores(&mut p, &qs, &k.data[kb.offset..], kb.rs, nk, d);
            let (mut m, mut l) = (vec![W::Acc::neg_infinity(); nq], vec![W::Acc::zero(); nq]);
            rowops::softmax_step(&mut p, nk, &mut m, &mut l, out, d, causal_first, None);
            weighted_values(out, &p, &v.data[vb.offset..], vb.rs, nk, d);
            for (((row, lse), &m), &l) in out.chunks_exact_mut(d).zip(lse).zip(&m).zip(&l) {
                if l > W::Acc::zero() {
                    let inv = l.recip();
                    row.iter_mut().for_each(|x| *x *= inv);
                    *lse = m + l.ln();
                }
            }
        });
    }
    let out = Tensor::from_vec(out, dims.q_shape())?.to_dtype(W::DTYPE)?;
    Ok(AttentionOut { out, lse: Tensor::from_vec(lse, dims.row_shape())? })
}

simd_dispatch! {
    /// `p[i·nk + j] = q_i · k_j` for the `nq` scaled query rows `q` (nq × d) and the `nk`
    /// key rows at `k[j · krs..]`.
    fn head_scores<T: Weight> = head_scores_impl(p: &mut [T::Acc], q: &[T::Acc], k: &[T], krs: usize, nk: usize, d: usize)
}

#[inline(always)]
fn head_scores_impl<W: Weight>(p: &mut [W::Acc], q: &[W::Acc], k: &[W], krs: usize, nk: usize, d: usize) {
    let nq = q.len() / d;
    let mut col = [W::Acc::zero(); DECODE_QUERIES];
    for j in 0..nk {
        column_dots_impl(&mut col[..nq], q, d, &k[j * krs..][..d], d);
        for (i, &s) in col[..nq].iter().enumerate() {
            p[i * nk + j] = s;
        }
    }
}

simd_dispatch! {
    /// `out_i += Σ_j p[i·nk + j] · v_j` for the `nk` value rows at `v[j · vrs..]`.
    fn weighted_values<T: Weight> = weighted_values_impl(out: &mut [T::Acc], p: &[T::Acc], v: &[T], vrs: usize, nk: usize, d: usize)
}

#[inline(always)]
fn weighted_values_impl<W: Weight>(out: &mut [W::Acc], p: &[W::Acc], v: &[W], vrs: usize, nk: usize, d: usize) {
    for j in 0..nk {
        let vj = &v[j * vrs..][..d];
        for (i, row) in out.chunks_exact_mut(d).enumerate() {
            let w = p[i * nk + j];
            row.iter_mut().zip(vj).for_each(|(o, x)| *o += w * x.widen());
        }
    }
}
