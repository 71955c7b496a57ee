//! Projections of dense weights onto structured ones, through `faer`'s SVD.
//!
//! Monarch (any shape, rectangular and non-divisible included): output block `ll` and
//! input block `kk` of the dense matrix, `M[ss·l+ll, kk·p+pp]`, is produced only by the
//! parameters `w2[ll, :, rr]` and `w1[kk, qq, :]` with `kk·q+qq = rr·l+ll`, and those
//! parameters touch no other block. So the Frobenius-optimal factors are, block by block,
//! the truncated SVD of the block at rank `#{qq : (kk·q+qq) mod l = ll}`, taken over the
//! entries that exist (padding rows and columns are don't-care and get zeros), with
//! `√σ` given to each factor.

use faer::Mat;
use monarch_tensor::{DType, MonarchShape, Result, Tensor};

/// The best rank-`rank` factors `(U, V)` of a row-major `rows × cols` matrix, with `√σ`
/// on each side: `U` is rows × rank and `V` is rank × cols, both row-major.
/// Ranks beyond `min(rows, cols)` get zero columns/rows.
pub fn low_rank_factors(a: &[f64], rows: usize, cols: usize, rank: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut u, mut v) = (vec![0.0; rows * rank], vec![0.0; rank * cols]);
    if rows == 0 || cols == 0 || rank == 0 {
        return Ok((u, v));
    }
    let m = Mat::<f64>::from_fn(rows, cols, |i, j| a[i * cols + j]);
    let svd = m.thin_svd().map_err(|e| monarch_tensor::Error::invalid("svd", format!("{e:?}")))?;
    let (su, sv, s) = (svd.U(), svd.V(), svd.S().column_vector());
    for t in 0..rank.min(rows.min(cols)) {
        let root = s[t].max(0.0).sqrt();
        for i in 0..rows {
            u[i * rank + t] = su[(i, t)] * root;
        }
        for j in 0..cols {
            v[t * cols + j] = sv[(j, t)] * root;
        }
    }
    Ok((u, v))
}

/// The singular values of a row-major `rows × cols` matrix, largest first.
pub fn singular_values(a: &[f64], rows: usize, cols: usize) -> Result<Vec<f64>> {
    if rows == 0 || cols == 0 {
        return Ok(vec![]);
    }
    let m = Mat::<f64>::from_fn(rows, cols, |i, j| a[i * cols + j]);
    m.singular_values().map_err(|e| monarch_tensor::Error::invalid("svd", format!("{e:?}")))
}

/// The Frobenius-optimal Monarch factors `(w1 (k, q, p), w2 (l, s, r))`, in f64, of a
/// dense weight `w` (out, in) with `in ≤ k·p` and `out ≤ l·s`.
pub fn monarch_factors(w: &Tensor, sh: MonarchShape) -> Result<(Tensor, Tensor)> {
    let (out, inp) = w.shape().matrix_dims("project")?;
    if w.rank() != 2 || inp > sh.n() || out > sh.m() {
        monarch_tensor::bail!(
            "project",
            "a weight of shape {} does not fit factors with n = {} and m = {}",
            w.shape(),
            sh.n(),
            sh.m()
        );
    }
    let MonarchShape { k, q, p, l, s, r } = sh;
    let wv = w.to_dtype(DType::F64)?.to_vec::<f64>()?;
    let (mut w1, mut w2) = (vec![0.0; k * q * p], vec![0.0; l * s * r]);
    for kk in 0..k {
        let cols = inp.saturating_sub(kk * p).min(p);
        for ll in 0..l {
            // The qq of block (kk, ll), and the rows ss of the block that exist.
            let owned: Vec<usize> = (0..q).filter(|qq| (kk * q + qq) % l == ll).collect();
            let rows = out.saturating_sub(ll).div_ceil(l).min(s);
            if owned.is_empty() || rows == 0 || cols == 0 {
                continue;
            }
            let block: Vec<f64> =
                (0..rows * cols).map(|e| wv[((e / cols) * l + ll) * inp + kk * p + e % cols]).collect();
            let (u, v) = low_rank_factors(&block, rows, cols, owned.len())?;
            for (t, &qq) in owned.iter().enumerate() {
                let rr = (kk * q + qq) / l;
                for ss in 0..rows {
                    w2[(ll * s + ss) * r + rr] = u[ss * owned.len() + t];
                }
                w1[(kk * q + qq) * p..(kk * q + qq) * p + cols].copy_from_slice(&v[t * cols..(t + 1) * cols]);
            }
        }
    }
    Ok((Tensor::from_vec(w1, [k, q, p])?, Tensor::from_vec(w2, [l, s, r])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_rank_factors_reconstruct_and_truncate() {
        // A rank-2 3×4 matrix is reproduced at rank 2 and 3.
        let (a, b) = ([1.0, 2.0, 0.0], [0.5, -1.0, 2.0, 1.0]);
        let (c, d) = ([0.0, 1.0, 1.0], [1.0, 1.0, 0.0, -2.0]);
        let m: Vec<f64> = (0..12).map(|e| a[e / 4] * b[e % 4] + c[e / 4] * d[e % 4]).collect();
        for rank in [2, 3, 5] {
            let (u, v) = low_rank_factors(&m, 3, 4, rank).unwrap();
            for e in 0..12 {
                let got: f64 = (0..rank).map(|t| u[(e / 4) * rank + t] * v[t * 4 + e % 4]).sum();
                assert!((got - m[e]).abs() < 1e-12);
            }
        }
        let sv = singular_values(&m, 3, 4).unwrap();
        assert!(sv[2].abs() < 1e-12 && sv[0] >= sv[1]);
    }
}
