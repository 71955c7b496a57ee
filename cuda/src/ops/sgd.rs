//! `kernels/sgd.cu`: the SGD step (optional momentum, L2 weight decay) on f32 weights.

use super::cfg_1d;
use crate::buffer::Check;
use crate::device::Arg;
use crate::{DType, Result, View, ViewMut, kernels};

/// Hyper-parameters of SGD (the CPU's `sgd_step`, `torch.optim.SGD`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f64,
    /// Momentum; the buffer is used only when one is given.
    pub momentum: f64,
    /// L2 weight decay, added to the gradient.
    pub weight_decay: f64,
}

/// The kernel's `struct SgdStep`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
struct SgdStep {
    lr: f32,
    mu: f32,
    wd: f32,
}

impl Sgd {
    /// One in-place update of f32 `param` from `grad` (f32 or bf16), with the f32
    /// velocity `buf` when given, all of one length. Kernel `sgd_{f32,bf16}(p, buf, g, n,
    /// SgdStep)` (suffix = the gradient's dtype; `buf` null without momentum), 256
    /// threads, grid-stride.
    pub fn step(&self, param: ViewMut<'_>, buf: Option<ViewMut<'_>>, grad: View<'_>) -> Result<()> {
        let c = Check { op: "sgd" };
        let n = param.len();
        c.output("param", &param, DType::F32, n)?;
        if let Some(b) = &buf {
            c.output("buf", b, DType::F32, n)?;
            c.same_device(param.device(), [b.device()])?;
        }
        c.input("grad", &grad, grad.dtype(), n)?;
        let dev = param.device().clone();
        c.same_device(&dev, [grad.device()])?;
        if n == 0 {
            return Ok(());
        }
        let f = dev.function(kernels::SGD, &format!("sgd_{}", grad.dtype().kernel_suffix(c.op)?))?;
        let s = SgdStep { lr: self.lr as f32, mu: self.momentum as f32, wd: self.weight_decay as f32 };
        let args = [
            Arg::U64(param.ptr()),
            Arg::U64(buf.map_or(0, |b| b.ptr())),
            Arg::U64(grad.ptr()),
            Arg::len(n),
            Arg::of(&s),
        ];
        dev.launch(&f, cfg_1d(dev.grid_for(n, 256), 256), &args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_struct_is_three_floats_as_the_kernel_reads_it() {
        assert_eq!(std::mem::size_of::<SgdStep>(), 12);
    }
}
