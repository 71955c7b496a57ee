//! The fused AdamW update on CUDA tensors, in place.

use super::cuda_err;
use super::ops::same_device;
use crate::ops::AdamW;
use crate::{DType, Result, Tensor};
use monarch_cuda::ops::adamw as ka;

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
        let g = grad.to_dtype(DType::F32)?.contiguous()?;
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
