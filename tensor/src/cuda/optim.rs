//! The fused optimiser updates (AdamW, SGD) on CUDA tensors, in place.

use super::cuda_err;
use super::ops::same_device;
use crate::ops::AdamW;
use crate::{DType, Result, Tensor};
use monarch_cuda::ops::{adamw as ka, sgd as ks};

impl AdamW {
    /// [`AdamW::step`] on the device: f32 parameter and moments, gradient f32 or bf16.
    pub(crate) fn cuda_step(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        step: u64,
    ) -> Result<()> {
        let op = "adamw";
        same_device(op, param, &[grad, m, v])?;
        let g = kernel_grad(grad)?;
        let k = ka::AdamW {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        };
        let gv = g.cuda_elems(op)?;
        let (pv, mv, vv) = (param.cuda_in_place(op)?, m.cuda_in_place(op)?, v.cuda_in_place(op)?);
        k.step(pv, mv, vv, gv, step).map_err(cuda_err(op))
    }
}

/// The gradient as the update kernels read it: bf16 and f32 as they are (the kernels
/// widen bf16 as they load it, saving a cast pass), any other dtype cast to f32.
fn kernel_grad(grad: &Tensor) -> Result<Tensor> {
    match grad.dtype() {
        DType::F32 | DType::BF16 => grad.contiguous(),
        _ => grad.to_dtype(DType::F32)?.contiguous(),
    }
}

/// [`sgd_step`](crate::ops::sgd_step) on the device: f32 parameter and velocity, gradient
/// f32 or bf16.
pub(crate) fn sgd_step(
    param: &mut Tensor,
    grad: &Tensor,
    buf: Option<&mut Tensor>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
) -> Result<()> {
    let op = "sgd";
    same_device(op, param, &[grad])?;
    let g = kernel_grad(grad)?;
    let k = ks::Sgd { lr, momentum, weight_decay };
    let gv = g.cuda_elems(op)?;
    match buf {
        Some(b) => {
            crate::ops::same_shape(param, b, op)?;
            same_device(op, param, &[b])?;
            k.step(param.cuda_in_place(op)?, Some(b.cuda_in_place(op)?), gv)
        }
        None => k.step(param.cuda_in_place(op)?, None, gv),
    }
    .map_err(cuda_err(op))
}
