//! `kernels/adamw.cu`: the fused AdamW step on f32 master weights.

use super::cfg_1d;
use crate::buffer::Check;
use crate::device::Arg;
use crate::{DType, Result, View, ViewMut, kernels};

/// Hyper-parameters of AdamW (the CPU's `AdamW`, `torch.optim.AdamW`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

/// The per-step constants, computed as the CPU computes them (`struct AdamWStep`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct AdamWStep {
    b1: f32,
    b2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    decay: f32,
    eps: f32,
}

impl AdamW {
    pub(crate) fn constants(&self, step: u64) -> AdamWStep {
        let bc1 = 1.0 - self.beta1.powi(step as i32);
        let bc2 = 1.0 - self.beta2.powi(step as i32);
        AdamWStep {
            b1: self.beta1 as f32,
            b2: self.beta2 as f32,
            step_size: (self.lr / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            decay: (1.0 - self.lr * self.weight_decay) as f32,
            eps: self.eps as f32,
        }
    }

    /// One in-place update of f32 `param` with moments `m`, `v` (f32) from `grad` (f32 or
    /// bf16), all of one length; `step` counts from 1. Kernel `adamw_{f32,bf16}(p, m, v, g,
    /// n, AdamWStep)` (suffix = the gradient's dtype), 256 threads, grid-stride.
    pub fn step(&self, param: ViewMut<'_>, m: ViewMut<'_>, v: ViewMut<'_>, grad: View<'_>, step: u64) -> Result<()> {
        let c = Check { op: "adamw" };
        if step == 0 {
            crate::error::bail!(c.op, "steps count from 1");
        }
        let n = param.len();
        c.output("param", &param, DType::F32, n)?;
        c.output("m", &m, DType::F32, n)?;
        c.output("v", &v, DType::F32, n)?;
        c.input("grad", &grad, grad.dtype(), n)?;
        let dev = param.device().clone();
        c.same_device(&dev, [m.device(), v.device(), grad.device()])?;
        if n == 0 {
            return Ok(());
        }
        let f = dev.function(kernels::ADAMW, &format!("adamw_{}", grad.dtype().kernel_suffix(c.op)?))?;
        let s = self.constants(step);
        let args = [
            Arg::U64(param.ptr()),
            Arg::U64(m.ptr()),
            Arg::U64(v.ptr()),
            Arg::U64(grad.ptr()),
            Arg::len(n),
            Arg::of(&s),
        ];
        dev.launch(&f, cfg_1d(dev.grid_for(n / 4 + 1, 256), 256), &args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_constants_follow_the_bias_corrections() {
        let o = AdamW { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let s = o.constants(1);
        assert!((s.step_size - 1.0).abs() < 1e-6, "lr / (1 - 0.9) = 1");
        assert!((s.bc2_sqrt - 0.001f64.sqrt() as f32).abs() < 1e-9);
        assert!((s.decay - 0.999).abs() < 1e-7);
        assert_eq!(std::mem::size_of::<AdamWStep>(), 24, "six floats, as the kernel's struct");
    }
}
