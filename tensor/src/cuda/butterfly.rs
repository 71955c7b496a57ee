//! The butterfly product on CUDA tensors (`kernels/butterfly.cu`): bf16 rows and
//! twiddles run the bf16 kernels, any other pair of float dtypes the f32 ones; results
//! come back in the dtypes the CPU op returns (y and dx in the input's, the twiddle
//! gradient in the twiddle's).

use super::cuda_err;
use super::ops::{alloc, out_mut, same_device};
use crate::{DType, Result, Tensor};
use monarch_cuda::ops::butterfly::{self as kb, BUTTERFLY_MAX_N, ButterflyDims};

/// Whether the kernels take butterflies of size `n`.
pub(crate) fn fits(n: usize) -> bool {
    n <= BUTTERFLY_MAX_N
}

/// The kernels' dtype for rows `x` and twiddles `t`.
fn kernel_dtype(x: &Tensor, t: &Tensor) -> DType {
    if x.dtype() == DType::BF16 && t.dtype() == DType::BF16 { DType::BF16 } else { DType::F32 }
}

/// `t` contiguous in `dtype`.
fn operand(t: &Tensor, dtype: DType) -> Result<Tensor> {
    t.to_dtype(dtype)?.contiguous()
}

impl Tensor {
    /// [`Tensor::butterfly_mul`] on the device: `self` (.., inp) to (.., out) with the
    /// sizes `z` the caller checked (its `rows` the product of the leading dimensions).
    pub(crate) fn cuda_butterfly(&self, twiddle: &Tensor, z: ButterflyDims) -> Result<Tensor> {
        let op = "butterfly_mul";
        same_device(op, self, &[twiddle])?;
        let dt = kernel_dtype(self, twiddle);
        let (x, t) = (operand(self, dt)?, operand(twiddle, dt)?);
        let mut dims = self.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = z.out;
        }
        let mut y = alloc(&x, dt, dims, op)?;
        kb::butterfly_forward(z, x.cuda_elems(op)?, t.cuda_elems(op)?, out_mut(&mut y, op)?).map_err(cuda_err(op))?;
        y.to_dtype(self.dtype())
    }

    /// [`Tensor::butterfly_backward`] on the device: `(dx, dtwiddle)` from `dy` (.., out).
    pub(crate) fn cuda_butterfly_backward(
        x: &Tensor,
        twiddle: &Tensor,
        dy: &Tensor,
        z: ButterflyDims,
    ) -> Result<(Tensor, Tensor)> {
        let op = "butterfly_backward";
        same_device(op, x, &[twiddle, dy])?;
        let dt = kernel_dtype(x, twiddle);
        let (xc, t, g) = (operand(x, dt)?, operand(twiddle, dt)?, operand(dy, dt)?);
        let mut dx = alloc(&xc, dt, x.shape().clone(), op)?;
        let mut dtw = alloc(&xc, dt, twiddle.shape().clone(), op)?;
        let (dxv, dtv) = (out_mut(&mut dx, op)?, out_mut(&mut dtw, op)?);
        kb::butterfly_backward(z, xc.cuda_elems(op)?, t.cuda_elems(op)?, g.cuda_elems(op)?, dxv, dtv)
            .map_err(cuda_err(op))?;
        Ok((dx.to_dtype(x.dtype())?, dtw.to_dtype(twiddle.dtype())?))
    }
}
