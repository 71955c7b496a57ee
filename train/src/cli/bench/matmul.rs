//! `monarch bench matmul`: dense matrix product throughput.

use super::{CliError, Placement, Timing};
use clap::Args;
use monarch_tensor::{DType, Tensor};

/// Arguments of `monarch bench matmul`.
#[derive(Args, Debug)]
pub struct MatmulArgs {
    /// Rows of A and C.
    #[arg(long, default_value_t = 2048)]
    m: usize,
    /// Columns of B and C.
    #[arg(long, default_value_t = 2048)]
    n: usize,
    /// Columns of A, rows of B.
    #[arg(long, default_value_t = 2048)]
    k: usize,
    /// Element type (f32, f64, f16, bf16).
    #[arg(long, default_value = "f32")]
    dtype: DType,
    #[command(flatten)]
    on: Placement,
    #[command(flatten)]
    timing: Timing,
}

impl MatmulArgs {
    /// Runs the benchmark and prints the result.
    pub fn run(self) -> Result<(), CliError> {
        let (m, n, k) = (self.m, self.n, self.k);
        let device = self.on.apply();
        let a = Tensor::randn([m, k], 0.0, 1.0, 1)?.to_dtype(self.dtype)?.to_device(device)?;
        let b = Tensor::randn([k, n], 0.0, 1.0, 2)?.to_dtype(self.dtype)?.to_device(device)?;
        let ms = self.timing.median_ms(|| {
            a.matmul(&b)?;
            Ok(device.synchronize()?)
        })?;
        let gflops = 2.0 * (m * n * k) as f64 / (ms * 1e-3) / 1e9;
        if self.timing.json {
            let j = serde_json::json!({"op": "matmul", "m": m, "n": n, "k": k, "dtype": self.dtype.as_str(), "device": device.to_string(), "tf32": self.on.tf32, "median_ms": ms, "gflops": gflops});
            println!("{j}");
        } else {
            println!("matmul {m}x{k} · {k}x{n} {} on {}: median {ms:.3} ms, {gflops:.1} GFLOP/s", self.dtype, device);
        }
        super::print_kernel_times(device)
    }
}
