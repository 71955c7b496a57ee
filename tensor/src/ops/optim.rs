//! Fused optimiser updates applied in place to parameter tensors.

use crate::{DType, Error, Result, Tensor};
use rayon::prelude::*;

/// Hyper-parameters of AdamW (Loshchilov & Hutter), matching `torch.optim.AdamW`.
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

impl Default for AdamW {
    fn default() -> Self {
        AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

fn check(op: &'static str, p: &Tensor, others: &[&Tensor]) -> Result<()> {
    if p.dtype() != DType::F32 {
        return Err(Error::UnsupportedDType { op, dtype: p.dtype() });
    }
    for o in others {
        super::same_shape(p, o, op)?;
    }
    Ok(())
}

const CHUNK: usize = 1 << 14;

impl AdamW {
    /// One update of f32 `param` from `grad` (any float dtype) with moment buffers `m`
    /// and `v`; `step` counts from 1 and sets the bias corrections.
    pub fn step(&self, param: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, step: u64) -> Result<()> {
        check("adamw", param, &[grad, m, v])?;
        if param.device() != crate::Device::Cpu {
            return self.cuda_step(param, grad, m, v, step);
        }
        let g = grad.to_vec_f32()?;
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let bc1 = 1.0 - self.beta1.powi(step as i32);
        let bc2 = 1.0 - self.beta2.powi(step as i32);
        let step_size = (self.lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let decay = (1.0 - self.lr * self.weight_decay) as f32;
        let eps = self.eps as f32;
        let (p, m, v) = (param.as_mut_slice::<f32>()?, m.as_mut_slice::<f32>()?, v.as_mut_slice::<f32>()?);
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| {
                for i in 0..p.len() {
                    m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                    v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                    p[i] = p[i] * decay - step_size * m[i] / (v[i].sqrt() / bc2_sqrt + eps);
                }
            });
        Ok(())
    }
}

/// One SGD update of f32 `param` in place: with `momentum > 0` the buffer `buf` holds
/// the velocity (`buf = momentum·buf + g`, PyTorch convention); weight decay is L2.
pub fn sgd_step(
    param: &mut Tensor,
    grad: &Tensor,
    buf: Option<&mut Tensor>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
) -> Result<()> {
    check("sgd", param, &[grad])?;
    if param.device() != crate::Device::Cpu {
        return crate::cuda::sgd_step(param, grad, buf, lr, momentum, weight_decay);
    }
    let g = grad.to_vec_f32()?;
    let (lr, mu, wd) = (lr as f32, momentum as f32, weight_decay as f32);
    match buf {
        Some(b) => {
            check("sgd", param, &[b])?;
            let (p, b) = (param.as_mut_slice::<f32>()?, b.as_mut_slice::<f32>()?);
            p.par_chunks_mut(CHUNK).zip(b.par_chunks_mut(CHUNK)).zip(g.par_chunks(CHUNK)).for_each(|((p, b), g)| {
                for i in 0..p.len() {
                    b[i] = mu * b[i] + g[i] + wd * p[i];
                    p[i] -= lr * b[i];
                }
            });
        }
        None => {
            let p = param.as_mut_slice::<f32>()?;
            p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(p, g)| {
                for i in 0..p.len() {
                    p[i] -= lr * (g[i] + wd * p[i]);
                }
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr() {
        // At step 1 the bias-corrected update is g/|g| = ±1 per element (eps aside).
        let mut p = Tensor::from_vec(vec![1f32, -2.0, 3.0], 3).unwrap();
        let g = Tensor::from_vec(vec![0.5f32, -4.0, 0.0], 3).unwrap();
        let (mut m, mut v) = (Tensor::zeros(3, DType::F32), Tensor::zeros(3, DType::F32));
        let opt = AdamW { lr: 0.1, weight_decay: 0.0, ..AdamW::default() };
        opt.step(&mut p, &g, &mut m, &mut v, 1).unwrap();
        let got = p.to_vec::<f32>().unwrap();
        assert!((got[0] - 0.9).abs() < 1e-6 && (got[1] + 1.9).abs() < 1e-6 && got[2] == 3.0, "{got:?}");
        let shared = p.clone();
        opt.step(&mut p, &g, &mut m, &mut v, 2).unwrap();
        assert_eq!(shared.to_vec::<f32>().unwrap(), got, "an update never writes through a shared buffer");
    }

    #[test]
    fn sgd_with_momentum_accumulates_velocity() {
        let mut p = Tensor::from_vec(vec![1f32], 1).unwrap();
        let g = Tensor::from_vec(vec![1f32], 1).unwrap();
        let mut b = Tensor::zeros(1, DType::F32);
        sgd_step(&mut p, &g, Some(&mut b), 0.1, 0.9, 0.0).unwrap();
        sgd_step(&mut p, &g, Some(&mut b), 0.1, 0.9, 0.0).unwrap();
        assert!((p.to_vec::<f32>().unwrap()[0] - (1.0 - 0.1 - 0.19)).abs() < 1e-6);
        assert!(sgd_step(&mut p, &Tensor::zeros(2, DType::F32), None, 0.1, 0.0, 0.0).is_err());
    }
}
