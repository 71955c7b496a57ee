//! `monarch bench head`: a language model's output layer and its cross-entropy, forward
//! and backward, either fused over row chunks (`Var::linear_cross_entropy`) or as the
//! separate `linear` and `cross_entropy`: median time and peak memory.

use super::{CliError, Placement, Timing};
use crate::alloc_stats;
use clap::Args;
use monarch_autograd::{Var, autocast};
use monarch_tensor::{CrossEntropy, DType, Tensor};

/// Arguments of `monarch bench head`.
#[derive(Args, Debug)]
pub struct HeadArgs {
    /// Rows (tokens).
    #[arg(long, default_value_t = 1024)]
    rows: usize,
    /// Width of the hidden state.
    #[arg(long, default_value_t = 256)]
    dim: usize,
    /// Classes (the vocabulary).
    #[arg(long, default_value_t = 50257)]
    vocab: usize,
    /// `fused` (over row chunks) or `separate` (all the logits at once).
    #[arg(long, value_parser = ["fused", "separate"], default_value = "fused")]
    kind: String,
    /// Rows per chunk when fused (default: `linear_cross_entropy_chunk_rows`).
    #[arg(long)]
    chunk: Option<usize>,
    /// Run the products under autocast in bf16 (f32 parameters).
    #[arg(long)]
    bf16: bool,
    #[command(flatten)]
    on: Placement,
    #[command(flatten)]
    timing: Timing,
}

impl HeadArgs {
    /// Runs the benchmark and prints the result.
    pub fn run(self) -> Result<(), CliError> {
        let device = self.on.apply();
        let x = Tensor::randn([self.rows, self.dim], 0.0, 1.0, 1)?.to_device(device)?;
        let w = Tensor::randn([self.vocab, self.dim], 0.0, 0.02, 2)?.to_device(device)?;
        let ids: Vec<i64> = (0..self.rows as i64).map(|i| i * 7919 % self.vocab.max(1) as i64).collect();
        let targets = Tensor::from_vec(ids, self.rows)?.to_device(device)?;
        let o = CrossEntropy::default();
        let fused = self.kind == "fused";
        let run = || -> Result<(), CliError> {
            let _low = autocast(self.bf16.then_some(DType::BF16));
            let (xv, wv) = (Var::leaf(x.clone()), Var::leaf(w.clone()));
            let loss = if fused {
                xv.linear_cross_entropy(&wv, &targets, o, self.chunk)?
            } else {
                xv.linear(&wv, None)?.cross_entropy(&targets, o)?
            };
            loss.backward()?;
            Ok(device.synchronize()?)
        };
        let ms = self.timing.median_ms(run)?;
        let (done, peak) = alloc_stats::peak_growth_on(device, run)?;
        done?;
        let tflops = 6.0 * (self.rows * self.dim * self.vocab) as f64 / (ms * 1e-3) / 1e12;
        let chunk = fused
            .then(|| self.chunk.unwrap_or_else(|| monarch_tensor::linear_cross_entropy_chunk_rows(self.vocab, device)));
        let dtype = if self.bf16 { "bf16" } else { "f32" };
        if self.timing.json {
            let j = serde_json::json!({
                "op": "head", "kind": self.kind, "rows": self.rows, "dim": self.dim, "vocab": self.vocab,
                "chunk": chunk, "dtype": dtype, "device": device.to_string(), "tf32": self.on.tf32,
                "median_ms": ms, "tflops": tflops, "peak_bytes": peak,
            });
            println!("{j}");
        } else {
            let chunk = chunk.map(|c| format!(" (chunks of {c} rows)")).unwrap_or_default();
            println!(
                "head {}{chunk} {}x{} · {}x{} {dtype} fwd+bwd on {device}: median {ms:.2} ms, {tflops:.2} TFLOP/s, peak {:.1} MiB",
                self.kind,
                self.rows,
                self.dim,
                self.dim,
                self.vocab,
                peak as f64 / (1 << 20) as f64,
            );
        }
        super::print_kernel_times(device)
    }
}
