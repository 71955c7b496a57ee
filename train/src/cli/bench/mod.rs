//! `monarch bench ...`: warm up, time several runs, print the median. One module per
//! benchmarked op family.

mod attention;
mod data;
mod decode;
mod head;
mod linear;
mod matmul;

use super::CliError;
use clap::{Args, Subcommand};
use monarch_tensor::Device;
use std::time::Instant;

/// Arguments of `monarch bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    op: BenchOp,
}

#[derive(Subcommand, Debug)]
enum BenchOp {
    /// Dense matrix product C = A·B with A of M×K and B of K×N.
    Matmul(matmul::MatmulArgs),
    /// A dense or structured linear layer, forward or forward+backward.
    Linear(linear::LinearArgs),
    /// Attention (naive, flash, block-sparse, Scatterbrain): median time and peak memory.
    Attention(attention::AttentionArgs),
    /// One step of cached GPT-2 decoding: median time, tokens/s, read rate.
    Decode(decode::DecodeArgs),
    /// An output layer and its cross-entropy, fused over row chunks or separate: median
    /// time and peak memory.
    Head(head::HeadArgs),
    /// Token loader batches/s and tokens/s from a memory-mapped shard.
    Tokens(data::TokensArgs),
    /// GPT-2 tokenisation MB/s.
    Tokenize(data::TokenizeArgs),
    /// Decoded and augmented images/s per core.
    Images(data::ImagesArgs),
}

/// Options shared by every benchmark.
#[derive(Args, Debug)]
pub struct Timing {
    /// Untimed runs first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where a benchmark runs, shared by the ops that have GPU kernels.
#[derive(Args, Debug, Clone, Copy)]
pub struct Placement {
    /// Where to run: cpu, cuda or cuda:N (cuBLASLt for dense products on a GPU).
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// f32 products on the GPU with TF32 tensor cores.
    #[arg(long)]
    pub tf32: bool,
}

impl Placement {
    /// Applies the TF32 choice (process-wide) and returns the device.
    pub fn apply(self) -> Device {
        monarch_tensor::set_allow_tf32(self.tf32);
        self.device
    }
}

impl Timing {
    /// Runs `f` `warmup` times, then `runs` times timed; returns the median in ms.
    pub fn median_ms(&self, mut f: impl FnMut() -> Result<(), CliError>) -> Result<f64, CliError> {
        if self.runs == 0 {
            return Err("--runs must be at least 1".into());
        }
        for _ in 0..self.warmup {
            f()?;
        }
        let mut times = Vec::with_capacity(self.runs);
        for _ in 0..self.runs {
            let t = Instant::now();
            f()?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }
}

/// Prints the device time per kernel over all runs, warm-up included, to stderr when
/// `MONARCH_KERNEL_TIMES` turned the timer on (GPU runs only).
pub fn print_kernel_times(device: Device) -> Result<(), CliError> {
    if let Some(times) = device.kernel_times()? {
        eprint!("{}", monarch_tensor::format_kernel_times(&times));
    }
    Ok(())
}

impl BenchArgs {
    /// Runs the chosen benchmark.
    pub fn run(self) -> Result<(), CliError> {
        match self.op {
            BenchOp::Matmul(a) => a.run(),
            BenchOp::Linear(a) => a.run(),
            BenchOp::Attention(a) => a.run(),
            BenchOp::Decode(a) => a.run(),
            BenchOp::Head(a) => a.run(),
            BenchOp::Tokens(a) => a.run(),
            BenchOp::Tokenize(a) => a.run(),
            BenchOp::Images(a) => a.run(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn bad_flags_are_errors_not_panics() {
        assert!(crate::cli::Cli::try_parse_from(["monarch", "bench", "matmul", "--m", "x"]).is_err());
        assert!(crate::cli::Cli::try_parse_from(["monarch", "bench", "matmul", "--dtype", "f8"]).is_err());
        let t = Timing { warmup: 0, runs: 0, json: false };
        assert!(t.median_ms(|| Ok(())).is_err());
    }
}
