//! The reference attention: the full score matrix of every head is materialised, turned
//! into probabilities in place and saved for backward.

use super::rowops::{self, AttnFloat};
use super::{AttentionGrads, AttentionOpts, Dims, Heads, by_dtype, check_dout, compute_all};
use crate::ops::matmul::{Mat, gemm_into};
use crate::{Result, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Output of [`Tensor::naive_attention`].
#[derive(Clone, Debug)]
pub struct NaiveAttention {
    /// The attention output (batch, heads, n_q, head_dim), in the inputs' dtype.
    pub out: Tensor,
    /// The probabilities before dropout (batch, heads, n_q, n_k), in the compute dtype.
    pub probs: Tensor,
}

const PAR: Parallelism = Parallelism::Rayon(0);

/// Head `bh` of a contiguous (bh × rows × cols) buffer as a GEMM operand.
fn head(bh: usize, rows: usize, cols: usize) -> Mat {
    Mat { offset: bh * rows * cols, rs: cols, cs: 1 }
}

/// The same head transposed.
fn head_t(bh: usize, rows: usize, cols: usize) -> Mat {
    Mat { offset: bh * rows * cols, rs: 1, cs: cols }
}

/// Applies `f(bh, i, row)` to every row of a (bh × n_q × n_k) buffer in parallel.
fn each_row<T: AttnFloat>(buf: &mut [T], dims: Dims, f: impl Fn(usize, usize, &mut [T]) + Sync) {
    if dims.nk == 0 {
        return;
    }
    buf.par_chunks_mut(dims.nk).with_min_len(64).enumerate().for_each(|(r, row)| f(r / dims.nq, r % dims.nq, row));
}

/// Multiplies a row of dropped-out-to-be values by its dropout factors.
fn drop_row<T: AttnFloat>(dims: Dims, opts: &AttentionOpts, bh: usize, i: usize, row: &mut [T]) {
    if let Some(drop) = dims.tile_dropout::<T>(opts, bh, i, 0) {
        rowops::dropout_in_place(row, dims.nk, drop);
    }
}

fn forward<T: AttnFloat>(q: Heads<T>, k: Heads<T>, v: Heads<T>, dims: Dims, opts: &AttentionOpts) -> (Vec<T>, Vec<T>) {
    let (nq, nk, d) = (dims.nq, dims.nk, dims.d);
    let mut probs = vec![T::zero(); dims.bh() * nq * nk];
    for bh in 0..dims.bh() {
        gemm_into((nq, nk, d), &mut probs, bh * nq * nk, q.data, q.mat(bh, 0), k.data, k.mat_t(bh, 0), false, PAR);
    }
    let scale: T = dims.scale();
    each_row(&mut probs, dims, |_, i, row| {
        let vis = dims.causal_limit(opts.causal, i);
        row.iter_mut().for_each(|x| *x *= scale);
        let (mut m, mut l, mut acc) = ([T::neg_infinity()], [T::zero()], [T::zero()]);
        rowops::softmax_step(row, nk, &mut m, &mut l, &mut acc, 1, Some(vis as isize), None);
        let inv = if l[0] == T::zero() { T::zero() } else { l[0].recip() };
        row.iter_mut().for_each(|x| *x *= inv);
    });
    let mut out = vec![T::zero(); dims.bh() * nq * d];
    let dropped = (opts.dropout > 0.0).then(|| {
        let mut pd = probs.clone();
        each_row(&mut pd, dims, |bh, i, row| drop_row(dims, opts, bh, i, row));
        pd
    });
    let pd = dropped.as_deref().unwrap_or(&probs);
    for bh in 0..dims.bh() {
        gemm_into((nq, d, nk), &mut out, bh * nq * d, pd, head(bh, nq, nk), v.data, v.mat(bh, 0), false, PAR);
    }
    (out, probs)
}

#[allow(clippy::too_many_arguments)]
fn backward<T: AttnFloat>(
    q: Heads<T>,
    k: Heads<T>,
    v: Heads<T>,
    probs: &[T],
    dout: Heads<T>,
    dims: Dims,
    opts: &AttentionOpts,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (nq, nk, d) = (dims.nq, dims.nk, dims.d);
    let mut dv = vec![T::zero(); dims.bh() * nk * d];
    {
        let dropped = (opts.dropout > 0.0).then(|| {
            let mut pd = probs.to_vec();
            each_row(&mut pd, dims, |bh, i, row| drop_row(dims, opts, bh, i, row));
            pd
        });
        let pd = dropped.as_deref().unwrap_or(probs);
        for bh in 0..dims.bh() {
            gemm_into(
                (nk, d, nq),
                &mut dv,
                bh * nk * d,
                pd,
                head_t(bh, nq, nk),
                dout.data,
                dout.mat(bh, 0),
                false,
                PAR,
            );
        }
    }
    let mut ds = vec![T::zero(); dims.bh() * nq * nk];
    for bh in 0..dims.bh() {
        gemm_into((nq, nk, d), &mut ds, bh * nq * nk, dout.data, dout.mat(bh, 0), v.data, v.mat_t(bh, 0), false, PAR);
    }
    each_row(&mut ds, dims, |bh, i, row| {
        drop_row(dims, opts, bh, i, row);
        let p = &probs[(bh * nq + i) * nk..][..nk];
        let dsum = p.iter().zip(row.iter()).fold(T::zero(), |a, (&p, &g)| a + p * g);
        rowops::score_grads(p, row, nk, &[dsum], None);
    });
    let scale: T = dims.scale();
    let mut dq = vec![T::zero(); dims.bh() * nq * d];
    let mut dk = vec![T::zero(); dims.bh() * nk * d];
    for bh in 0..dims.bh() {
        gemm_into((nq, d, nk), &mut dq, bh * nq * d, &ds, head(bh, nq, nk), k.data, k.mat(bh, 0), false, PAR);
        gemm_into((nk, d, nq), &mut dk, bh * nk * d, &ds, head_t(bh, nq, nk), q.data, q.mat(bh, 0), false, PAR);
    }
    dq.iter_mut().chain(dk.iter_mut()).for_each(|g| *g *= scale);
    (dq, dk, dv)
}

/// Keys visible to each query under `opts` as a (n_q, n_k) `U8` mask on `device`
/// (`None` when every key is visible).
fn visible(dims: Dims, opts: &AttentionOpts, device: crate::Device) -> Result<Option<Tensor>> {
    if !opts.causal {
        return Ok(None);
    }
    Tensor::tril_mask_on(dims.nq, dims.nk, dims.nk as i64 - dims.nq as i64, device).map(Some)
}

/// The forward composed of tensor ops (matmul, where, softmax, dropout), for devices
/// without the fused CPU loops: the output and the saved probabilities.
fn composed_forward(q: &Tensor, k: &Tensor, v: &Tensor, dims: Dims, opts: &AttentionOpts) -> Result<(Tensor, Tensor)> {
    let s = q.matmul(&k.transpose(2, 3)?)?.mul_scalar(dims.scale::<f64>())?;
    let probs = match visible(dims, opts, q.device())? {
        // Rows that see no key softmax to NaN; the second `where` makes them 0.
        Some(vis) => {
            let s = vis.where_cond(&s, &s.scalar_beside(f64::NEG_INFINITY, s.dtype())?)?;
            vis.where_cond(&s.softmax(3)?, &s.scalar_beside(0.0, s.dtype())?)?
        }
        None => s.softmax(3)?,
    };
    let out = probs.dropout(opts.dropout, opts.seed)?.matmul(v)?;
    Ok((out, probs))
}

/// The backward composed of tensor ops, from the probabilities [`composed_forward`] saved.
fn composed_backward([q, k, v, probs, dout]: [&Tensor; 5], dims: Dims, opts: &AttentionOpts) -> Result<[Tensor; 3]> {
    let dv = probs.dropout(opts.dropout, opts.seed)?.transpose(2, 3)?.matmul(dout)?;
    let dp = dout.matmul(&v.transpose(2, 3)?)?.dropout(opts.dropout, opts.seed)?;
    let ds = Tensor::softmax_backward(probs, &dp, 3, false)?.mul_scalar(dims.scale::<f64>())?;
    Ok([ds.matmul(k)?, ds.transpose(2, 3)?.matmul(q)?, dv])
}

/// [`crate::Error::OutOfMemory`] when the host cannot hold a (batch·heads × n_q × n_k)
/// score buffer in `dtype`: the size a long sequence makes quadratic.
fn check_scores_alloc(dims: Dims, dtype: crate::DType, op: &'static str) -> Result<()> {
    let elems = dims.bh().saturating_mul(dims.nq).saturating_mul(dims.nk);
    crate::storage::check_host_alloc(op, elems, dtype.size_in_bytes())
}

impl Tensor {
    /// The reference attention of queries `self` (batch, heads, n_q, d) over keys and
    /// values (batch, heads, n_k, d): materialises the scores and returns the output with
    /// the probabilities that [`naive_attention_backward`](Self::naive_attention_backward) needs.
    pub fn naive_attention(&self, k: &Tensor, v: &Tensor, opts: &AttentionOpts) -> Result<NaiveAttention> {
        let op = "naive_attention";
        let dims = Dims::check(self, k, v, opts, op)?;
        let dtype = self.dtype();
        let ([q, k, v], cdt) = compute_all([self, k, v], op)?;
        if q.device() != crate::Device::Cpu {
            let (out, probs) = composed_forward(&q, &k, &v, dims, opts)?;
            return Ok(NaiveAttention { out: out.to_dtype(dtype)?, probs });
        }
        check_scores_alloc(dims, cdt, op)?;
        let (out, probs) = by_dtype!(cdt, op, |T| {
            let (out, probs) = forward::<T>(Heads::new(&q, op)?, Heads::new(&k, op)?, Heads::new(&v, op)?, dims, opts);
            (
                Tensor::from_vec(out, dims.q_shape())?,
                Tensor::from_vec(probs, [dims.batch, dims.heads, dims.nq, dims.nk])?,
            )
        });
        Ok(NaiveAttention { out: out.to_dtype(dtype)?, probs })
    }

    /// Gradients of [`naive_attention`](Self::naive_attention) from its saved probabilities
    /// and the output gradient `dout`.
    pub fn naive_attention_backward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        probs: &Tensor,
        dout: &Tensor,
        opts: &AttentionOpts,
    ) -> Result<AttentionGrads> {
        let op = "naive_attention_backward";
        let dims = Dims::check(q, k, v, opts, op)?;
        check_dout(dout, dims, op)?;
        if probs.dims() != [dims.batch, dims.heads, dims.nq, dims.nk] {
            crate::bail!(op, "saved probabilities of shape {} do not match the inputs", probs.shape());
        }
        let dtype = q.dtype();
        let ([q, k, v, probs, dout], cdt) = compute_all([q, k, v, &probs.contiguous()?, dout], op)?;
        if q.device() != crate::Device::Cpu {
            let [dq, dk, dv] = composed_backward([&q, &k, &v, &probs, &dout], dims, opts)?;
            return Ok(AttentionGrads { dq: dq.to_dtype(dtype)?, dk: dk.to_dtype(dtype)?, dv: dv.to_dtype(dtype)? });
        }
        check_scores_alloc(dims, cdt, op)?;
        by_dtype!(cdt, op, |T| {
            let p = &probs.cpu_slice::<T>(op)?[probs.layout().offset()..];
            let (q, k, v, dout) =
                (Heads::new(&q, op)?, Heads::new(&k, op)?, Heads::new(&v, op)?, Heads::new(&dout, op)?);
            let (dq, dk, dv) = backward::<T>(q, k, v, p, dout, dims, opts);
            let wrap = |g: Vec<T>, shape: [usize; 4]| Tensor::from_vec(g, shape)?.to_dtype(dtype);
            Ok(AttentionGrads {
                dq: wrap(dq, dims.q_shape())?,
                dk: wrap(dk, dims.k_shape())?,
                dv: wrap(dv, dims.k_shape())?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn close(a: &Tensor, b: &Tensor, what: &str) {
        let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(a.len() == b.len() && worst < 1e-10, "{what}: worst difference {worst}");
    }

    /// The composition the GPU runs, computed on the CPU, equals the fused CPU loops:
    /// causal with more queries than keys (rows that see nothing), with dropout.
    #[test]
    fn scores_the_host_cannot_hold_are_an_error() {
        // 2^23 queries and keys of one element: 2^46 f32 scores (256 TiB, past the
        // address space, so no overcommit setting lets it through) from 32 MiB inputs.
        let q = Tensor::zeros([1, 1, 1 << 23, 1], DType::F32);
        let e = q.naive_attention(&q, &q, &AttentionOpts::default()).unwrap_err();
        assert!(matches!(e, crate::Error::OutOfMemory { op: "naive_attention", .. }), "{e}");
    }

    #[test]
    fn composed_ops_equal_the_fused_loops() {
        let r = |shape: [usize; 4], seed| Tensor::randn(shape, 0.0, 1.0, seed).unwrap().to_dtype(DType::F64).unwrap();
        let (q, k, v) = (r([2, 3, 7, 8], 1), r([2, 3, 5, 8], 2), r([2, 3, 5, 8], 3));
        let dout = r([2, 3, 7, 8], 4);
        for opts in [
            AttentionOpts::default(),
            AttentionOpts { causal: true, dropout: 0.3, seed: 9 },
            AttentionOpts { causal: true, ..Default::default() },
        ] {
            let dims = Dims::check(&q, &k, &v, &opts, "test").unwrap();
            let fused = q.naive_attention(&k, &v, &opts).unwrap();
            let (out, probs) = composed_forward(&q, &k, &v, dims, &opts).unwrap();
            close(&out, &fused.out, "out");
            close(&probs, &fused.probs, "probs");
            let g = Tensor::naive_attention_backward(&q, &k, &v, &fused.probs, &dout, &opts).unwrap();
            let [dq, dk, dv] = composed_backward([&q, &k, &v, &probs, &dout], dims, &opts).unwrap();
            close(&dq, &g.dq, "dq");
            close(&dk, &g.dk, "dk");
            close(&dv, &g.dv, "dv");
        }
    }
}
