//! `monarch bench attention`: time and peak memory (the heap on the CPU, the device's on
//! a GPU) of one attention implementation, forward or forward + backward, on random
//! queries (batch, heads, seq, head_dim) over keys and values (batch, heads, keys, head_dim).

use super::{CliError, Placement, Timing};
use crate::alloc_stats;
use clap::{Args, ValueEnum};
use monarch_autograd::{Gradients, Var, no_grad};
use monarch_nn::{AttentionFlags, AttentionImpl, AttentionKernel};
use monarch_tensor::ops::visited_fraction;
use monarch_tensor::{AttentionOpts, DType, Device, Tensor};

/// Which passes are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Pass {
    /// Forward only, recording nothing.
    Fwd,
    /// Forward and backward from a random output gradient.
    Fwdbwd,
}

/// Arguments of `monarch bench attention`.
#[derive(Args, Debug)]
pub struct AttentionArgs {
    /// Implementation.
    #[arg(long = "impl", value_parser = ["naive", "flash", "block_sparse", "scatterbrain"])]
    imp: String,
    /// Sequence length: queries, and keys unless --keys says otherwise.
    #[arg(long, default_value_t = 4096)]
    seq: usize,
    /// Keys (and values) per head, when not --seq: `--seq 1 --keys 4096 --causal` is one
    /// decoding step over a 4096-token key cache.
    #[arg(long)]
    keys: Option<usize>,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Head dimension.
    #[arg(long, default_value_t = 64)]
    head_dim: usize,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Causal masking.
    #[arg(long)]
    causal: bool,
    /// Block density of the butterfly layout (block_sparse).
    #[arg(long)]
    density: Option<f64>,
    /// Block edge in tokens (block_sparse, scatterbrain; default 128).
    #[arg(long)]
    block: Option<usize>,
    /// Blocks on each side of a local window (block_sparse, scatterbrain).
    #[arg(long)]
    window: Option<usize>,
    /// Random features (scatterbrain).
    #[arg(long)]
    features: Option<usize>,
    /// Standard deviation of the random inputs (entries N(0, std²)).
    #[arg(long, default_value_t = 1.0)]
    std: f64,
    /// Dropout on the probabilities.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Passes to time.
    #[arg(long, value_enum, default_value = "fwdbwd")]
    pass: Pass,
    /// Element type (f32, f64, bf16, f16).
    #[arg(long, default_value = "f32")]
    dtype: DType,
    /// Also report the output's relative error against naive attention (Frobenius norm).
    #[arg(long)]
    error: bool,
    /// Where to run (GPU paths: naive, flash, and block_sparse and scatterbrain with blocks
    /// of a multiple of 64).
    #[command(flatten)]
    on: Placement,
    #[command(flatten)]
    timing: Timing,
}

impl AttentionArgs {
    /// Runs the benchmark and prints the result.
    pub fn run(self) -> Result<(), CliError> {
        let flags = AttentionFlags {
            name: self.imp.clone(),
            block: self.block,
            density: self.density,
            window: self.window,
            features: self.features,
        };
        let nk = self.keys.unwrap_or(self.seq);
        let kernel = AttentionImpl::from_flags(&flags)?.kernel(self.seq, nk)?;
        let device = self.on.apply();
        let input = |rows, seed| -> Result<Tensor, CliError> {
            let shape = [self.batch, self.heads, rows, self.head_dim];
            Ok(Tensor::randn(shape, 0.0, self.std, seed)?.to_dtype(self.dtype)?.to_device(device)?)
        };
        let (q, k, v, dout) = (input(self.seq, 1)?, input(nk, 2)?, input(nk, 3)?, input(self.seq, 4)?);
        let opts = AttentionOpts { causal: self.causal, dropout: self.dropout, seed: 5 };
        let run = || -> Result<(), CliError> {
            match self.pass {
                Pass::Fwd => {
                    let _guard = no_grad();
                    let [q, k, v] = [&q, &k, &v].map(|t| Var::constant(t.clone()));
                    kernel.apply(&q, &k, &v, &opts)?;
                }
                Pass::Fwdbwd => {
                    let [q, k, v] = [&q, &k, &v].map(|t| Var::leaf(t.clone()));
                    let out = kernel.apply(&q, &k, &v, &opts)?;
                    out.backward_with(dout.clone(), &mut Gradients::new())?;
                }
            }
            Ok(device.synchronize()?)
        };
        let ms = self.timing.median_ms(run)?;
        // The memory the pass adds: the heap's on the CPU, the device allocator's on a GPU.
        let (done, peak) = alloc_stats::peak_growth_on(device, run)?;
        done?;
        let peak_of = if device == Device::Cpu { "host" } else { "device" };
        let (density, visited) = match &kernel {
            AttentionKernel::BlockSparse(m) => {
                (Some(m.density()), Some(visited_fraction(self.seq, nk, Some(m), self.causal)))
            }
            AttentionKernel::Flash => (None, Some(visited_fraction(self.seq, nk, None, self.causal))),
            _ => (None, None),
        };
        let error = if self.error { Some(relative_error(&kernel, [&q, &k, &v], &opts)?) } else { None };
        if self.timing.json {
            let j = serde_json::json!({
                "op": "attention", "impl": self.imp, "pass": format!("{:?}", self.pass).to_lowercase(),
                "batch": self.batch, "heads": self.heads, "seq": self.seq, "keys": nk, "head_dim": self.head_dim,
                "causal": self.causal, "dtype": self.dtype.as_str(), "std": self.std, "density": density, "visited_fraction": visited,
                "block": self.block, "window": self.window, "features": self.features,
                "median_ms": ms, "peak_bytes": peak, "peak_of": peak_of, "rel_error": error, "device": device.to_string(), "tf32": self.on.tf32,
            });
            println!("{j}");
        } else {
            let extra = density.map(|d| format!(", density {d:.3}")).unwrap_or_default();
            let err = error.map(|e| format!(", relative error {e:.3e}")).unwrap_or_default();
            let keys = if nk == self.seq { String::new() } else { format!(" keys {nk}") };
            println!(
                "attention {} {:?} b{} h{} n{}{keys} d{}{}{extra} on {}: median {ms:.2} ms, {peak_of} peak {:.1} MiB{err}",
                self.imp,
                self.pass,
                self.batch,
                self.heads,
                self.seq,
                self.head_dim,
                if self.causal { " causal" } else { "" },
                device,
                peak as f64 / (1 << 20) as f64,
            );
        }
        super::print_kernel_times(device)
    }
}

/// `‖O − O_naive‖ / ‖O_naive‖` of the kernel's forward output.
fn relative_error(kernel: &AttentionKernel, [q, k, v]: [&Tensor; 3], opts: &AttentionOpts) -> Result<f64, CliError> {
    let _guard = no_grad();
    let [q, k, v] = [q, k, v].map(|t| Var::constant(t.clone()));
    let got = kernel.apply(&q, &k, &v, opts)?.value().to_vec_f64()?;
    let want = AttentionKernel::Naive.apply(&q, &k, &v, opts)?.value().to_vec_f64()?;
    let diff: f64 = got.iter().zip(&want).map(|(a, b)| (a - b).powi(2)).sum();
    let norm: f64 = want.iter().map(|b| b * b).sum();
    Ok((diff / norm.max(f64::MIN_POSITIVE)).sqrt())
}

#[cfg(test)]
mod tests {
    use crate::cli::Cli;
    use clap::Parser;

    #[test]
    fn fewer_queries_than_keys_run_and_causal_scatterbrain_refuses_them() {
        let run = |extra: &[&str]| {
            let mut args = vec!["monarch", "bench", "attention", "--seq", "3", "--keys", "70", "--heads", "2"];
            args.extend(["--head-dim", "8", "--warmup", "0", "--runs", "1", "--json"]);
            args.extend(extra);
            Cli::try_parse_from(args).unwrap().run()
        };
        run(&["--impl", "flash", "--causal", "--error"]).unwrap();
        run(&["--impl", "naive", "--pass", "fwd"]).unwrap();
        run(&["--impl", "block_sparse", "--density", "0.5", "--block", "16"]).unwrap();
        // Causal Scatterbrain takes as many queries as keys only.
        let e = run(&["--impl", "scatterbrain", "--causal", "--block", "16"]).unwrap_err().to_string();
        assert!(e.contains("as many queries as keys"), "{e}");
    }
}
