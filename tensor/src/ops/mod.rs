//! Tensor operations, one file per family. Each family has its CPU kernels beside its
//! `impl Tensor` API; backward kernels that autograd needs (fused where a composite
//! would make several passes) live beside their forward.

pub(crate) mod attention;
mod binary;
mod block_sparse;
mod butterfly;
mod dropout;
mod index;
mod init;
mod linear_cross_entropy;
mod loss;
mod matmul;
pub(crate) mod monarch;
mod norm;
mod optim;
mod reduce;
mod shape;
mod skinny_gemm;
mod softmax;
mod strided_gemm;
mod unary;

pub use attention::{
    AttentionGrads, AttentionOpts, AttentionOut, FLASH_TILE, NaiveAttention, Scatterbrain, visited_fraction,
};
pub use binary::{BinaryOp, CmpOp};
pub use block_sparse::BlockSparsePlan;
pub use dropout::counter_uniform;
pub use init::{Init, fans};
pub use linear_cross_entropy::{LinearCrossEntropy, linear_cross_entropy_chunk_rows};
pub use loss::CrossEntropy;
pub use monarch::{MONARCH_FUSED_ACTS, MonarchActOut, MonarchOut, MonarchShape};
pub use norm::LayerNormOut;
pub use optim::{AdamW, sgd_step};
pub use reduce::ReduceOp;
pub use unary::UnaryOp;

/// Runs `$body` on the f32 or f64 data of `$t` with `$v` bound to the elements and
/// `$l` to the layout, and wraps the returned vector as a contiguous tensor of shape
/// `$shape` in the same dtype. bf16 and f16 tensors are computed in f32 and rounded back.
macro_rules! float_map {
    ($t:expr, $op:expr, $shape:expr, |$v:ident, $l:ident| $body:expr) => {{
        let t: &$crate::Tensor = $t;
        let dtype = t.dtype();
        let t = $crate::ops::compute_dtype(t, $op)?;
        let $l = t.layout();
        let out = match t.cpu($op)? {
            $crate::CpuStorage::F32($v) => $crate::Tensor::from_cpu($crate::CpuStorage::F32($body), $shape),
            $crate::CpuStorage::F64($v) => $crate::Tensor::from_cpu($crate::CpuStorage::F64($body), $shape),
            s => return Err($crate::Error::UnsupportedDType { op: $op, dtype: s.dtype() }),
        };
        out.to_dtype(dtype)?
    }};
}

/// Like [`float_map!`] for two tensors that must share a dtype.
macro_rules! float_map2 {
    ($a:expr, $b:expr, $op:expr, $shape:expr, |$va:ident, $la:ident, $vb:ident, $lb:ident| $body:expr) => {{
        let (a, b): (&$crate::Tensor, &$crate::Tensor) = ($a, $b);
        $crate::ops::same_dtype(a, b, $op)?;
        let dtype = a.dtype();
        let (a, b) = ($crate::ops::compute_dtype(a, $op)?, $crate::ops::compute_dtype(b, $op)?);
        let ($la, $lb) = (a.layout(), b.layout());
        let out = match (a.cpu($op)?, b.cpu($op)?) {
            ($crate::CpuStorage::F32($va), $crate::CpuStorage::F32($vb)) => {
                $crate::Tensor::from_cpu($crate::CpuStorage::F32($body), $shape)
            }
            ($crate::CpuStorage::F64($va), $crate::CpuStorage::F64($vb)) => {
                $crate::Tensor::from_cpu($crate::CpuStorage::F64($body), $shape)
            }
            (s, _) => return Err($crate::Error::UnsupportedDType { op: $op, dtype: s.dtype() }),
        };
        out.to_dtype(dtype)?
    }};
}
pub(crate) use {float_map, float_map2};

use crate::{DType, Error, Result, Tensor};

/// The tensor in the dtype its float kernels run in: f32 and f64 as they are, bf16 and
/// f16 widened to f32; other dtypes are an error naming `op`.
pub(crate) fn compute_dtype(t: &Tensor, op: &'static str) -> Result<Tensor> {
    match t.dtype() {
        DType::F32 | DType::F64 => Ok(t.clone()),
        DType::BF16 | DType::F16 => t.to_dtype(DType::F32),
        dtype => Err(Error::UnsupportedDType { op, dtype }),
    }
}

/// Checks that two tensors have one dtype and one device.
pub(crate) fn same_dtype(a: &Tensor, b: &Tensor, op: &'static str) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::DTypeMismatch { op, lhs: a.dtype(), rhs: b.dtype() });
    }
    if a.device() != b.device() {
        return Err(Error::DeviceMismatch { op, lhs: a.device(), rhs: b.device() });
    }
    Ok(())
}

/// Checks that two tensors have one shape.
pub(crate) fn same_shape(a: &Tensor, b: &Tensor, op: &'static str) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::ShapeMismatch { op, lhs: a.shape().clone(), rhs: b.shape().clone() });
    }
    Ok(())
}
