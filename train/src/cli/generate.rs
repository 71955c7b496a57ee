//! `monarch generate`: sample text from a GPT-2 training run's checkpoint.

use super::CliError;
use crate::tasks::gpt2::model_from_checkpoint;
use crate::tasks::usable_device;
use clap::Args;
use monarch_autograd::{Var, no_grad};
use monarch_data::{END_OF_TEXT, Gpt2Tokenizer};
use monarch_nn::models::{Gpt2, Gpt2Cache};
use monarch_nn::{Ctx, Module, SeedableRng, StdRng, params_to_device};
use monarch_tensor::{Device, Tensor};
use rand::Rng;
use std::path::PathBuf;

/// Arguments of `monarch generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A run's output folder (its newest checkpoint is used) or one checkpoint file.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Text to continue; empty: start a new document.
    #[arg(long, default_value = "")]
    prompt: String,
    /// Tokens to generate per sample.
    #[arg(long, default_value_t = 200)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 picks the most likely token every time.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Sample among the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Number of samples.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the model runs: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
}

impl GenerateArgs {
    /// Loads the model and prints the samples.
    pub fn run(self) -> Result<(), CliError> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("--temperature must be a finite number >= 0, got {}", self.temperature).into());
        }
        if self.samples == 0 {
            return Err("--samples must be at least 1".into());
        }
        let path = super::input_file(&self.checkpoint)?;
        let (model, _) = model_from_checkpoint(&path)?;
        params_to_device(&model.named_params(), usable_device(self.device, "generating"))?;
        let tok = Gpt2Tokenizer::new();
        let prompt = if self.prompt.is_empty() { vec![END_OF_TEXT] } else { tok.encode(&self.prompt) };
        let mut rng = StdRng::seed_from_u64(self.seed);
        for i in 0..self.samples {
            let ids = generate(&model, &prompt, self.max_new_tokens, self.temperature, self.top_k, &mut rng)?;
            let text = tok.decode(&ids[prompt.len()..])?;
            if self.samples > 1 {
                println!("--- sample {} ---", i + 1);
            }
            println!("{}{text}", self.prompt);
        }
        Ok(())
    }
}

/// `prompt` followed by up to `new` sampled tokens; stops early after `<|endoftext|>`.
/// With naive or flash attention each token reuses the keys and values of the tokens
/// before it ([`Gpt2::hidden_cached`]); once the context fills `block_size`, decoding
/// starts again from its last half (positions are learned and absolute, so the cache
/// cannot slide). Other attention kinds recompute the last `block_size` tokens for
/// every new one.
pub fn generate(
    model: &Gpt2,
    prompt: &[u32],
    new: usize,
    temperature: f64,
    top_k: usize,
    rng: &mut impl Rng,
) -> Result<Vec<u32>, CliError> {
    let _guard = no_grad();
    let block = model.cfg.block_size;
    let mut cache = model.can_cache().then(Gpt2Cache::default);
    let mut ids = prompt.to_vec();
    // How many of the latest tokens an empty cache starts from.
    let mut window = block;
    for _ in 0..new {
        let logits = match &mut cache {
            Some(cache) => {
                if cache.len() == block {
                    *cache = Gpt2Cache::default();
                    window = (block / 2).max(1);
                }
                let fresh = if cache.is_empty() { ids.len().min(window) } else { 1 };
                let hidden = model.hidden_cached(&ids_tensor(&ids[ids.len() - fresh..])?, cache)?;
                last_logits(model, &hidden)?
            }
            None => {
                let ctx = &ids[ids.len().saturating_sub(block)..];
                last_logits(model, &model.hidden(&ids_tensor(ctx)?, &Ctx::eval())?)?
            }
        };
        let next = sample(&logits, temperature, top_k, rng);
        ids.push(next as u32);
        if next as u32 == END_OF_TEXT {
            break;
        }
    }
    Ok(ids)
}

/// Token ids as a (1, len) `I64` tensor.
fn ids_tensor(ids: &[u32]) -> Result<Tensor, CliError> {
    Ok(Tensor::from_vec(ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(), [1, ids.len()])?)
}

/// The next-token logits after the last position of `hidden` (batch, t, n_embd), through
/// the tied head, on the host: batch × vocab values.
pub(crate) fn last_logits(model: &Gpt2, hidden: &Var) -> Result<Vec<f32>, CliError> {
    let t = hidden.dims()[1];
    let last = hidden.narrow(1, t - 1, 1)?;
    Ok(last.linear(&model.wte.weight.var(), None)?.value().to_vec_f32()?)
}

/// Draws an index from `softmax(logits / temperature)` restricted to the `top_k` largest
/// logits (all when 0); temperature 0 is the argmax.
pub fn sample(logits: &[f32], temperature: f64, top_k: usize, rng: &mut impl Rng) -> usize {
    let desc = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]);
    if temperature == 0.0 || logits.len() <= 1 {
        return (0..logits.len()).min_by(desc).unwrap_or(0);
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let keep = if top_k == 0 { order.len() } else { top_k.min(order.len()) };
    // Only the kept ones need ordering: a selection, then a sort of those.
    if keep < order.len() {
        order.select_nth_unstable_by(keep - 1, desc);
    }
    order[..keep].sort_unstable_by(desc);
    let top = f64::from(logits[order[0]]);
    let weights: Vec<f64> = order[..keep].iter().map(|&i| ((f64::from(logits[i]) - top) / temperature).exp()).collect();
    let mut u = rng.random::<f64>() * weights.iter().sum::<f64>();
    for (w, &i) in weights.iter().zip(&order) {
        if u < *w {
            return i;
        }
        u -= w;
    }
    order[keep - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use monarch_nn::models::Gpt2Config;
    use monarch_nn::{AttentionImpl, LinearKind, SparseLayout};

    fn tiny(attention: AttentionImpl) -> Gpt2 {
        let cfg = Gpt2Config {
            vocab_size: 61,
            block_size: 12,
            n_layer: 2,
            n_head: 2,
            n_embd: 16,
            mlp_linear: LinearKind::Monarch { nblocks: 2 },
            attention,
            ..Gpt2Config::small()
        };
        Gpt2::new(&cfg, 3).unwrap()
    }

    /// Greedy decoding by recomputing the last `block_size` tokens every step.
    fn greedy_reference(model: &Gpt2, prompt: &[u32], new: usize) -> Vec<u32> {
        let mut ids = prompt.to_vec();
        for _ in 0..new {
            let ctx = &ids[ids.len().saturating_sub(model.cfg.block_size)..];
            let logits = model.forward(&ids_tensor(ctx).unwrap(), &Ctx::eval()).unwrap().value().to_vec_f32().unwrap();
            let last = &logits[logits.len() - 61..];
            ids.push((0..61).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap() as u32);
        }
        ids
    }

    #[test]
    fn cached_decoding_picks_what_recomputing_picks() {
        let mut rng = StdRng::seed_from_u64(0);
        let model = tiny(AttentionImpl::Flash);
        assert!(model.can_cache());
        let prompt = [5, 17, 33];
        // Within the window (3 + 9 = 12 positions) the cache changes nothing.
        assert_eq!(generate(&model, &prompt, 9, 0.0, 0, &mut rng).unwrap(), greedy_reference(&model, &prompt, 9));
        // Past it, decoding starts again from the last half and goes on.
        let long = generate(&model, &prompt, 30, 0.0, 0, &mut rng).unwrap();
        assert_eq!(long.len(), 33);
        assert_eq!(long[..12], greedy_reference(&model, &prompt, 9)[..]);
        // Block-sparse attention has no cache: every token recomputes the window.
        let sparse = tiny(AttentionImpl::BlockSparse { block: 4, layout: SparseLayout::Local { window: 1 } });
        assert!(!sparse.can_cache());
        assert_eq!(generate(&sparse, &prompt, 14, 0.0, 0, &mut rng).unwrap(), greedy_reference(&sparse, &prompt, 14));
    }

    #[test]
    fn sampling_respects_temperature_and_top_k() {
        let mut rng = StdRng::seed_from_u64(0);
        let logits = [0.0f32, 3.0, 1.0, 2.9];
        assert_eq!(sample(&logits, 0.0, 0, &mut rng), 1);
        // Top-2 only ever gives the two largest.
        let mut counts = [0usize; 4];
        for _ in 0..2000 {
            counts[sample(&logits, 1.0, 2, &mut rng)] += 1;
        }
        assert_eq!(counts[0] + counts[2], 0);
        // Their odds are e^3 : e^2.9, i.e. 52.5% : 47.5%.
        let share = counts[1] as f64 / 2000.0;
        assert!((share - 0.525).abs() < 0.04, "{share}");
        // No top-k: the smallest logit shows up at its rate e^0 / Σ ≈ 2.2%.
        let low = (0..5000).filter(|_| sample(&logits, 1.0, 0, &mut rng) == 0).count();
        assert!((20..200).contains(&low), "{low}");
    }
}
