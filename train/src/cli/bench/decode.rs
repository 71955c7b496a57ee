//! `monarch bench decode`: one step of cached GPT-2 decoding, as `monarch generate` takes
//! it: one new token per sequence over a key/value cache of `--context` positions, then
//! the tied head's logits of that token, copied to the host for sampling. Random weights
//! (speed does not depend on them): median time per step, tokens/s and the rate at which
//! the step reads the weights and the cache.

use super::{CliError, Placement, Timing};
use crate::alloc_stats;
use crate::cli::LinearFlags;
use crate::cli::generate::{inference_dtype, last_logits};
use clap::Args;
use monarch_autograd::no_grad;
use monarch_nn::models::{Gpt2, Gpt2Cache, Gpt2Config};
use monarch_nn::{AttentionImpl, LinearKind, Module, param_count, params_to_device, params_to_dtype};
use monarch_tensor::{DType, Device, Tensor};

/// Arguments of `monarch bench decode`.
#[derive(Args, Debug)]
pub struct DecodeArgs {
    /// Decoder blocks (GPT-2 small: 12).
    #[arg(long, default_value_t = 12)]
    layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 12)]
    heads: usize,
    /// Model width.
    #[arg(long, default_value_t = 768)]
    embd: usize,
    /// Vocabulary size.
    #[arg(long, default_value_t = 50257)]
    vocab: usize,
    /// Positions already in the cache when the timed token comes.
    #[arg(long, default_value_t = 1024)]
    context: usize,
    /// Sequences decoded side by side.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Kind of every projection: dense, monarch, blockdiag, lowrank, butterfly,
    /// blocksparse or pixelfly.
    #[arg(long, default_value = "dense")]
    kind: String,
    #[command(flatten)]
    layer: LinearFlags,
    /// Attention kernel: flash or naive (the kinds with a cache).
    #[arg(long = "attention", value_parser = ["flash", "naive"], default_value = "flash")]
    attention: String,
    #[command(flatten)]
    on: Placement,
    /// Element type of the weights, activations and cache: f32, or bf16 (as
    /// `monarch generate --dtype`).
    #[arg(long, default_value = "f32")]
    dtype: DType,
    #[command(flatten)]
    timing: Timing,
}

impl DecodeArgs {
    /// The model to time: GPT-2 of these sizes, its context one past `--context`.
    fn model(&self) -> Result<Gpt2, CliError> {
        if self.context == 0 || self.batch == 0 {
            return Err("--context and --batch must be at least 1".into());
        }
        let linear = LinearKind::from_options(&self.kind, &self.layer.options())?;
        let attention = if self.attention == "flash" { AttentionImpl::Flash } else { AttentionImpl::Naive };
        let cfg = Gpt2Config {
            vocab_size: self.vocab,
            block_size: self.context + 1,
            n_layer: self.layers,
            n_head: self.heads,
            n_embd: self.embd,
            attn_linear: linear.clone(),
            mlp_linear: linear,
            attention,
            ..Gpt2Config::small()
        };
        Ok(Gpt2::new(&cfg, 0)?)
    }

    /// Runs the benchmark and prints the result.
    pub fn run(self) -> Result<(), CliError> {
        let model = self.model()?;
        let device = self.on.apply();
        params_to_dtype(&model.named_params(), inference_dtype(self.dtype)?)?;
        params_to_device(&model.named_params(), device)?;
        let _guard = no_grad();
        let ids = |n: usize, seed: u64| -> Result<Tensor, CliError> {
            let v = (0..self.batch * n).map(|i| ((i as u64 * 7919 + seed) % self.vocab as u64) as i64).collect();
            Ok(Tensor::from_vec(v, [self.batch, n])?)
        };
        let mut cache = Gpt2Cache::default();
        model.hidden_cached(&ids(self.context, 1)?, &mut cache)?;
        let next = ids(1, 2)?;
        let mut step = || -> Result<(), CliError> {
            let hidden = model.hidden_cached(&next, &mut cache)?;
            last_logits(&model, &hidden)?;
            cache.truncate(self.context);
            Ok(device.synchronize()?)
        };
        let ms = self.timing.median_ms(&mut step)?;
        let (done, peak) = alloc_stats::peak_growth_on(device, &mut step)?;
        done?;
        self.report(&model, device, ms, peak);
        super::print_kernel_times(device)
    }

    /// Prints the median step and the rates it gives.
    fn report(&self, model: &Gpt2, device: Device, ms: f64, peak: usize) {
        let tokens_per_s = self.batch as f64 / (ms * 1e-3);
        // Each step reads every weight once and each layer's keys and values.
        let size = self.dtype.size_in_bytes();
        let cache_bytes = 2 * self.layers * self.batch * self.context * self.embd * size;
        let read = (param_count(model) * size + cache_bytes) as f64;
        let gb_per_s = read / (ms * 1e-3) / 1e9;
        let peak_of = if device == Device::Cpu { "host" } else { "device" };
        if self.timing.json {
            let j = serde_json::json!({
                "bench": "decode", "kind": self.kind, "attention": self.attention, "layers": self.layers,
                "heads": self.heads, "embd": self.embd, "vocab": self.vocab, "context": self.context,
                "batch": self.batch, "dtype": self.dtype.as_str(), "device": device.to_string(), "median_ms": ms, "tokens_per_s": tokens_per_s,
                "read_gb_per_s": gb_per_s, "cache_bytes": cache_bytes, "peak_bytes": peak, "peak_of": peak_of,
            });
            println!("{j}");
        } else {
            println!(
                "decode {} {} {} L{} h{} d{} context {} batch {} on {device}: median {ms:.2} ms/step, {tokens_per_s:.1} tokens/s, reads {gb_per_s:.1} GB/s (cache {:.1} MiB), {peak_of} peak {:.1} MiB",
                self.kind,
                self.attention,
                self.dtype,
                self.layers,
                self.heads,
                self.embd,
                self.context,
                self.batch,
                cache_bytes as f64 / (1 << 20) as f64,
                peak as f64 / (1 << 20) as f64,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::Cli;
    use clap::Parser;

    fn run(extra: &[&str]) -> Result<(), crate::cli::CliError> {
        let mut args = vec!["monarch", "bench", "decode", "--layers", "2", "--heads", "2", "--embd", "16"];
        args.extend(["--vocab", "50", "--warmup", "0", "--runs", "2", "--json"]);
        args.extend(extra);
        Cli::try_parse_from(args).unwrap().run()
    }

    #[test]
    fn decodes_dense_monarch_and_bf16_models_and_refuses_an_empty_context_or_an_integer_dtype() {
        run(&["--context", "5"]).unwrap();
        run(&["--context", "5", "--kind", "monarch", "--nblocks", "2", "--attention", "naive", "--batch", "3"])
            .unwrap();
        run(&["--context", "5", "--dtype", "bf16", "--batch", "2"]).unwrap();
        let e = run(&["--context", "0"]).unwrap_err().to_string();
        assert!(e.contains("--context"), "{e}");
        let e = run(&["--context", "5", "--dtype", "i64"]).unwrap_err().to_string();
        assert!(e.contains("--dtype"), "{e}");
    }
}
