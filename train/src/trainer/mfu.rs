//! Model FLOP utilisation: the model FLOPs a run does per second over the rate of a
//! square matrix product on the same device, in the dtype the run's matrix products
//! use, measured when the run starts (so the figure is against what this machine
//! reaches, not a datasheet).

use super::TrainError;
use monarch_tensor::{DType, Device, Tensor};
use std::time::Instant;

/// The FLOP/s of an n×n×n product (n = 4096 on a GPU, 1024 on the CPU, 128 on the
/// emulated GPU, whose rate means nothing) in `dtype` on `device`: its fastest run after
/// one warm-up, of at least five and as many more as fill a quarter second (at most 100).
/// Noise only slows a run, so the fastest is the steadiest estimate of the machine's
/// rate (on a shared 2-core host, the median of five differed 1.9× between identical runs).
pub(crate) fn matmul_rate(device: Device, dtype: DType) -> Result<f64, TrainError> {
    let n = match device {
        Device::Cpu => 1024,
        Device::Cuda(i) if monarch_tensor::cuda_device(i).is_ok_and(|d| d.is_emulated()) => 128,
        Device::Cuda(_) => 4096,
    };
    let operand = |seed| -> Result<Tensor, TrainError> {
        Ok(Tensor::randn([n, n], 0.0, 1.0, seed)?.to_dtype(dtype)?.to_device(device)?)
    };
    let (a, b) = (operand(1)?, operand(2)?);
    let time_one = || -> Result<f64, TrainError> {
        let t = Instant::now();
        a.matmul(&b)?;
        device.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    };
    time_one()?;
    let (mut fastest, mut spent) = (f64::INFINITY, 0.0);
    for run in 0..100 {
        if run >= 5 && spent >= 0.25 {
            break;
        }
        let secs = time_one()?;
        fastest = fastest.min(secs);
        spent += secs;
    }
    Ok(2.0 * (n as f64).powi(3) / fastest.max(1e-9))
}
