//! Scaled dot-product attention `softmax(Q·Kᵀ/√d) · V` over tensors of shape
//! (batch, heads, seq, head_dim), in four implementations that share one convention:
//!
//! - [`naive`](Tensor::naive_attention): the reference; materialises the scores and
//!   saves the (batch, heads, n_q, n_k) probabilities for backward.
//! - [`flash`](Tensor::flash_attention): FlashAttention (Dao et al. 2022). Tiles of queries
//!   and keys with an online softmax; saves only the output and each row's log-sum-exp,
//!   and backward recomputes the tiles, so no pass allocates anything of size n_q × n_k.
//! - [`block_sparse`](Tensor::block_sparse_attention): the same tiled algorithm visiting only
//!   the (query tile, key tile) pairs set in a [`BlockMask`](crate::BlockMask).
//! - [`scatterbrain`](Tensor::scatterbrain_attention): Scatterbrain (Chen et al. 2021), an
//!   exact local block-sparse part plus a Performer random-feature low-rank part.
//!
//! Causal masking hides key `j` from query `i` when `j > i + n_k − n_q` (aligned to the
//! bottom right, the lower triangle when `n_q = n_k`). Rows that see no key give output 0
//! and gradient 0. Dropout acts on the probabilities with the counter-based mask of
//! [`counter_uniform`](crate::ops::counter_uniform), so every implementation and every
//! backward draws the same mask without storing it. Kernels compute in f32 or f64 (bf16
//! and f16 inputs in f32) and run in parallel over batch × heads × tiles with rayon;
//! flash attention of a few bf16 queries a head (cached decoding) reads the bf16 keys
//! and values in place (`decode`) rather than converting them.

mod block_sparse;
mod decode;
mod flash;
mod naive;
mod rowops;
mod scatterbrain;
mod tiling;

pub use flash::FLASH_TILE;
pub use naive::NaiveAttention;
pub use scatterbrain::Scatterbrain;

use super::matmul::Mat;
use crate::{BlockMask, DType, Error, Result, Tensor, WithDType};
use rowops::{AttnFloat, TileDropout};

/// Options every attention implementation takes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AttentionOpts {
    /// Hide key `j` from query `i` when `j > i + n_k − n_q`.
    pub causal: bool,
    /// Probability of dropping an attention probability, in [0, 1); kept ones are scaled
    /// by `1/(1 − p)`.
    pub dropout: f64,
    /// Seed of the dropout mask: probability `(b, h, i, j)` is dropped iff
    /// `counter_uniform(seed, ((b·heads + h)·n_q + i)·n_k + j) < p`.
    pub seed: u64,
}

/// What a tiled forward returns: the output and what its backward needs besides the inputs.
#[derive(Clone, Debug)]
pub struct AttentionOut {
    /// The attention output (batch, heads, n_q, head_dim), in the inputs' dtype.
    pub out: Tensor,
    /// Each row's `log Σ_j exp(score)` over the keys it sees (batch, heads, n_q), in the
    /// compute dtype; `−∞` for rows that see no key.
    pub lse: Tensor,
}

/// Gradients of an attention with respect to its three inputs, each in its input's shape.
#[derive(Clone, Debug)]
pub struct AttentionGrads {
    /// Gradient of the queries.
    pub dq: Tensor,
    /// Gradient of the keys.
    pub dk: Tensor,
    /// Gradient of the values.
    pub dv: Tensor,
}

/// Fraction of the (query tile, key tile) pairs that flash attention (`mask: None`, tiles
/// of [`FLASH_TILE`]) or block-sparse attention (`mask`, tiles of its block) visits for
/// `n_q` queries and `n_k` keys: the share of the dense work it does.
pub fn visited_fraction(n_q: usize, n_k: usize, mask: Option<&BlockMask>, causal: bool) -> f64 {
    let dims = Dims { batch: 1, heads: 1, nq: n_q, nk: n_k, d: 1 };
    let plan = tiling::TilePlan { tile: mask.map_or(FLASH_TILE, |m| m.block), mask };
    plan.visited_fraction(dims, &AttentionOpts { causal, ..Default::default() })
}

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub nq: usize,
    pub nk: usize,
    pub d: usize,
}

impl Dims {
    /// Checks q (B, H, n_q, d), k and v (B, H, n_k, d), their dtypes and the options.
    pub fn check(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOpts, op: &'static str) -> Result<Dims> {
        for t in [q, k, v] {
            if t.rank() != 4 {
                crate::bail!(op, "expected (batch, heads, seq, head_dim) tensors, got shape {}", t.shape());
            }
            if !t.dtype().is_float() {
                return Err(Error::UnsupportedDType { op, dtype: t.dtype() });
            }
        }
        super::same_dtype(q, k, op)?;
        super::same_dtype(q, v, op)?;
        let (qd, kd) = (q.dims(), k.dims());
        if qd[0] != kd[0] || qd[1] != kd[1] || qd[3] != kd[3] {
            return Err(Error::ShapeMismatch { op, lhs: q.shape().clone(), rhs: k.shape().clone() });
        }
        if k.shape() != v.shape() {
            return Err(Error::ShapeMismatch { op, lhs: k.shape().clone(), rhs: v.shape().clone() });
        }
        if qd[3] == 0 {
            crate::bail!(op, "head_dim must be at least 1");
        }
        if !(0.0..1.0).contains(&opts.dropout) {
            crate::bail!(op, "dropout must lie in [0, 1), got {}", opts.dropout);
        }
        Ok(Dims { batch: qd[0], heads: qd[1], nq: qd[2], nk: kd[2], d: qd[3] })
    }

    /// Number of (batch, head) pairs.
    pub fn bh(&self) -> usize {
        self.batch * self.heads
    }

    /// The softmax scale `1/√d`.
    pub fn scale<T: AttnFloat>(&self) -> T {
        T::from_f64(1.0 / (self.d as f64).sqrt())
    }

    /// Shape of an output like q.
    pub fn q_shape(&self) -> [usize; 4] {
        [self.batch, self.heads, self.nq, self.d]
    }

    /// Shape of an output like k and v.
    pub fn k_shape(&self) -> [usize; 4] {
        [self.batch, self.heads, self.nk, self.d]
    }

    /// Shape of a per-row statistic.
    pub fn row_shape(&self) -> [usize; 3] {
        [self.batch, self.heads, self.nq]
    }

    /// Number of visible keys of query `i`: `min(n_k, i + n_k − n_q + 1)` when causal.
    pub fn causal_limit(&self, causal: bool, i: usize) -> usize {
        if causal {
            (i as isize + self.nk as isize - self.nq as isize + 1).clamp(0, self.nk as isize) as usize
        } else {
            self.nk
        }
    }

    /// The dropout of the tile whose element (0, 0) is (head `bh`, query `i0`, key `j0`).
    pub fn tile_dropout<T: AttnFloat>(
        &self,
        opts: &AttentionOpts,
        bh: usize,
        i0: usize,
        j0: usize,
    ) -> Option<TileDropout<T>> {
        (opts.dropout > 0.0).then(|| TileDropout {
            p: opts.dropout as f32,
            scale: T::from_f64(1.0 / (1.0 - opts.dropout)),
            seed: opts.seed,
            first: ((bh * self.nq + i0) * self.nk + j0) as u64,
            row_stride: self.nk as u64,
        })
    }
}

/// A strided (batch, heads, seq, head_dim) tensor read in place, head by head.
#[derive(Clone, Copy)]
pub(crate) struct Heads<'a, T> {
    pub data: &'a [T],
    offset: usize,
    strides: [usize; 4],
    heads: usize,
}

impl<'a, T: WithDType> Heads<'a, T> {
    /// The view of a rank-4 tensor whose dtype is `T`.
    pub fn new(t: &'a Tensor, op: &'static str) -> Result<Self> {
        let l = t.layout();
        let s = l.strides();
        Ok(Heads { data: t.cpu_slice(op)?, offset: l.offset(), strides: [s[0], s[1], s[2], s[3]], heads: t.dims()[1] })
    }

    fn base(&self, bh: usize) -> usize {
        self.offset + (bh / self.heads) * self.strides[0] + (bh % self.heads) * self.strides[1]
    }

    /// Rows `row0..` of head `bh` as a (rows × head_dim) GEMM operand.
    pub fn mat(&self, bh: usize, row0: usize) -> Mat {
        Mat { offset: self.base(bh) + row0 * self.strides[2], rs: self.strides[2], cs: self.strides[3] }
    }

    /// Rows `row0..` of head `bh` transposed, a (head_dim × rows) GEMM operand.
    pub fn mat_t(&self, bh: usize, row0: usize) -> Mat {
        Mat { offset: self.base(bh) + row0 * self.strides[2], rs: self.strides[3], cs: self.strides[2] }
    }

    /// Element `c` of row `i` of head `bh`.
    pub fn at(&self, bh: usize, i: usize, c: usize) -> T {
        self.data[self.base(bh) + i * self.strides[2] + c * self.strides[3]]
    }

    /// Copies `rows` rows from `row0` of head `bh`, times `scale`, into `dst` (rows × d).
    pub fn copy_rows(&self, bh: usize, row0: usize, dst: &mut [T], d: usize, scale: T)
    where
        T: AttnFloat,
    {
        for (r, out) in dst.chunks_exact_mut(d).enumerate() {
            out.iter_mut().enumerate().for_each(|(c, x)| *x = self.at(bh, row0 + r, c) * scale);
        }
    }
}

/// `D_i = dO_i · O_i` for every row, the correction term of the softmax gradient.
pub(crate) fn row_dots<T: AttnFloat>(dout: &Heads<T>, out: &Heads<T>, dims: Dims) -> Vec<T> {
    use rayon::prelude::*;
    let mut dsum = vec![T::zero(); dims.bh() * dims.nq];
    dsum.par_chunks_mut(dims.nq.max(1)).enumerate().for_each(|(bh, rows)| {
        for (i, x) in rows.iter_mut().enumerate() {
            *x = (0..dims.d).fold(T::zero(), |a, c| a + dout.at(bh, i, c) * out.at(bh, i, c));
        }
    });
    dsum
}

/// Converts every tensor to its compute dtype (f32 for halves) and returns that dtype.
pub(crate) fn compute_all<const N: usize>(ts: [&Tensor; N], op: &'static str) -> Result<([Tensor; N], DType)> {
    let mut out: [Tensor; N] = std::array::from_fn(|i| ts[i].clone());
    for t in out.iter_mut() {
        *t = super::compute_dtype(t, op)?;
    }
    let dtype = out.first().map_or(DType::F32, |t| t.dtype());
    Ok((out, dtype))
}

/// Runs `$body` with `$T` bound to f32 or f64 as `$dtype` says.
macro_rules! by_dtype {
    ($dtype:expr, $op:expr, |$T:ident| $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            dtype => return Err($crate::Error::UnsupportedDType { op: $op, dtype }),
        }
    };
}
pub(crate) use by_dtype;

/// Checks that an output gradient has the output's shape.
pub(crate) fn check_dout(dout: &Tensor, dims: Dims, op: &'static str) -> Result<()> {
    if dout.dims() != dims.q_shape() {
        return Err(Error::ShapeMismatch { op, lhs: dims.q_shape().into(), rhs: dout.shape().clone() });
    }
    Ok(())
}

/// Checks the output gradient and a tiled forward's saved output and log-sum-exp
/// against the inputs' sizes.
pub(crate) fn check_saved(fwd: &AttentionOut, dout: &Tensor, dims: Dims, op: &'static str) -> Result<()> {
    check_dout(dout, dims, op)?;
    check_dout(&fwd.out, dims, op)?;
    if fwd.lse.dims() != dims.row_shape() {
        crate::bail!(op, "saved log-sum-exp of shape {} does not match the inputs", fwd.lse.shape());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
