//! `monarch generate`: sample text from a GPT-2 training run's checkpoint.

use super::CliError;
use crate::tasks::gpt2::model_from_checkpoint;
use crate::tasks::usable_device;
use clap::Args;
use monarch_autograd::{Var, no_grad};
use monarch_data::{END_OF_TEXT, Gpt2Tokenizer};
use monarch_nn::models::{Gpt2, Gpt2Cache};
use monarch_nn::{Ctx, Module, SeedableRng, StdRng, params_to_device, params_to_dtype};
use monarch_tensor::{DType, Device, Tensor};
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
    /// Samples decoded together, as one batch: each step reads the weights once for all
    /// of them (several times the tokens/s of one at a time), at one key cache each.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the model runs: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Element type of the weights and activations: f32, or bf16 (half the bytes a step
    /// reads, on a GPU and on the CPU alike). Logits are summed in f32.
    #[arg(long, default_value = "f32")]
    dtype: DType,
}

impl GenerateArgs {
    /// Loads the model and prints the samples.
    pub fn run(self) -> Result<(), CliError> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("--temperature must be a finite number >= 0, got {}", self.temperature).into());
        }
        if self.samples == 0 || self.batch == 0 {
            return Err("--samples and --batch must be at least 1".into());
        }
        let path = super::input_file(&self.checkpoint)?;
        let dtype = inference_dtype(self.dtype)?;
        let (model, _) = model_from_checkpoint(&path)?;
        params_to_dtype(&model.named_params(), dtype)?;
        params_to_device(&model.named_params(), usable_device(self.device, "generating"))?;
        let tok = Gpt2Tokenizer::new();
        let prompt = if self.prompt.is_empty() { vec![END_OF_TEXT] } else { tok.encode(&self.prompt) };
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut done = 0;
        while done < self.samples {
            let n = self.batch.min(self.samples - done);
            let prompts = vec![prompt.clone(); n];
            for ids in generate(&model, &prompts, self.max_new_tokens, self.temperature, self.top_k, &mut rng)? {
                done += 1;
                if self.samples > 1 {
                    println!("--- sample {done} ---");
                }
                println!("{}{}", self.prompt, tok.decode(&ids[prompt.len()..])?);
            }
        }
        Ok(())
    }
}

/// Each of `prompts` (all of one length) followed by up to `new` sampled tokens, decoded
/// together as one batch; a sequence stops after `<|endoftext|>`, and decoding once all
/// have. Each step draws the batch's tokens in order from `rng`, so one prompt draws as
/// it would alone. With naive or flash attention each token reuses the keys and values
/// of the tokens before it ([`Gpt2::hidden_cached`]); once the context fills
/// `block_size`, decoding starts again from its last half (positions are learned and
/// absolute, so the cache cannot slide). Other attention kinds recompute the last
/// `block_size` tokens for every new one.
pub fn generate(
    model: &Gpt2,
    prompts: &[Vec<u32>],
    new: usize,
    temperature: f64,
    top_k: usize,
    rng: &mut impl Rng,
) -> Result<Vec<Vec<u32>>, CliError> {
    let Some(first) = prompts.first() else { return Ok(Vec::new()) };
    if first.is_empty() || prompts.iter().any(|p| p.len() != first.len()) {
        return Err("generate: the prompts must be of one length, at least one token".into());
    }
    let _guard = no_grad();
    let block = model.cfg.block_size;
    let mut cache = model.can_cache().then(Gpt2Cache::default);
    let mut ids: Vec<Vec<u32>> = prompts.to_vec();
    let mut ended = vec![false; ids.len()];
    // How many of the latest tokens an empty cache starts from.
    let mut window = block;
    for _ in 0..new {
        let len = ids[0].len();
        let logits = match &mut cache {
            Some(cache) => {
                if cache.len() == block {
                    *cache = Gpt2Cache::default();
                    window = (block / 2).max(1);
                }
                let fresh = if cache.is_empty() { len.min(window) } else { 1 };
                let hidden = model.hidden_cached(&ids_tensor(&ids, fresh)?, cache)?;
                last_logits(model, &hidden)?
            }
            None => {
                let ctx = ids_tensor(&ids, len.min(block))?;
                last_logits(model, &model.hidden(&ctx, &Ctx::eval())?)?
            }
        };
        let vocab = logits.len() / ids.len();
        for ((seq, row), end) in ids.iter_mut().zip(logits.chunks_exact(vocab)).zip(&mut ended) {
            // An ended sequence keeps its place in the batch with a token nobody reads.
            let next = if *end { END_OF_TEXT } else { sample(row, temperature, top_k, rng) as u32 };
            seq.push(next);
            *end |= next == END_OF_TEXT;
        }
        if ended.iter().all(|&e| e) {
            break;
        }
    }
    for seq in &mut ids {
        if let Some(at) = seq[first.len()..].iter().position(|&t| t == END_OF_TEXT) {
            seq.truncate(first.len() + at + 1);
        }
    }
    Ok(ids)
}

/// The last `len` ids of each sequence as a (sequences, len) `I64` tensor.
fn ids_tensor(ids: &[Vec<u32>], len: usize) -> Result<Tensor, CliError> {
    let flat: Vec<i64> = ids.iter().flat_map(|s| s[s.len() - len..].iter().map(|&i| i64::from(i))).collect();
    Ok(Tensor::from_vec(flat, [ids.len(), len])?)
}

/// The next-token logits after the last position of `hidden` (batch, t, n_embd), through
/// the tied head, on the host: batch × vocab values. A bf16 model's products sum into f32
/// logits (one GEMM), not rounded to bf16's 8 significant bits, which would tie logits
/// closer than 1/128 of their size.
pub(crate) fn last_logits(model: &Gpt2, hidden: &Var) -> Result<Vec<f32>, CliError> {
    let &[batch, t, width] = hidden.dims() else {
        return Err(format!("hidden states must be (batch, seq, n_embd), got shape {}", hidden.value().shape()).into());
    };
    let last = hidden.value().narrow(1, t - 1, 1)?.reshape([batch, width])?;
    let wte = model.wte.weight.value();
    let mut logits = Tensor::zeros_on([batch, wte.dims()[0]], DType::F32, last.device())?;
    logits.add_matmul(&last, &wte.t()?)?;
    Ok(logits.to_vec_f32()?)
}

/// `--dtype` of the inference tools: f32 or bf16; other dtypes are refused.
pub(crate) fn inference_dtype(dtype: DType) -> Result<DType, CliError> {
    match dtype {
        DType::F32 | DType::BF16 => Ok(dtype),
        _ => Err(format!("--dtype must be f32 or bf16, got {}", dtype.as_str()).into()),
    }
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

    /// Greedy decoding of one prompt by recomputing the last `block_size` tokens every step.
    fn greedy_reference(model: &Gpt2, prompt: &[u32], new: usize) -> Vec<u32> {
        let mut ids = vec![prompt.to_vec()];
        for _ in 0..new {
            let ctx = ids_tensor(&ids, ids[0].len().min(model.cfg.block_size)).unwrap();
            let logits = model.forward(&ctx, &Ctx::eval()).unwrap().value().to_vec_f32().unwrap();
            let last = &logits[logits.len() - 61..];
            ids[0].push((0..61).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap() as u32);
        }
        ids.remove(0)
    }

    /// Three different prompts decoded as one batch, each against its own greedy
    /// decoding: rows that mixed up in the batch would not match.
    #[test]
    fn cached_decoding_of_a_batch_picks_what_recomputing_each_prompt_picks() {
        let mut rng = StdRng::seed_from_u64(0);
        let model = tiny(AttentionImpl::Flash);
        assert!(model.can_cache());
        let prompts = vec![vec![5, 17, 33], vec![40, 2, 9], vec![0, 60, 31]];
        let want: Vec<Vec<u32>> = prompts.iter().map(|p| greedy_reference(&model, p, 9)).collect();
        assert_ne!(want[0][3..], want[1][3..], "the prompts lead different ways");
        // Within the window (3 + 9 = 12 positions) the cache changes nothing.
        assert_eq!(generate(&model, &prompts, 9, 0.0, 0, &mut rng).unwrap(), want);
        // Past it, decoding starts again from the last half and goes on.
        let long = generate(&model, &prompts, 30, 0.0, 0, &mut rng).unwrap();
        for (seq, want) in long.iter().zip(&want) {
            assert_eq!((seq.len(), &seq[..12]), (33, &want[..]));
        }
        assert_eq!(generate(&model, &prompts[1..2], 30, 0.0, 0, &mut rng).unwrap()[0], long[1], "alone as in a batch");
        // Block-sparse attention has no cache: every token recomputes the window.
        let sparse = tiny(AttentionImpl::BlockSparse { block: 4, layout: SparseLayout::Local { window: 1 } });
        assert!(!sparse.can_cache());
        let want: Vec<Vec<u32>> = prompts.iter().map(|p| greedy_reference(&sparse, p, 14)).collect();
        assert_eq!(generate(&sparse, &prompts, 14, 0.0, 0, &mut rng).unwrap(), want);
    }

    /// A bf16 copy of a model, decoding through its cache, gives the f32 model's logits
    /// of the whole context within bf16's rounding (8 significant bits, a few products deep).
    #[test]
    fn a_bf16_model_decodes_to_the_f32_logits_within_bf16_rounding() {
        let model = tiny(AttentionImpl::Flash);
        let ids = vec![vec![5, 17, 33, 40, 2], vec![0, 60, 31, 9, 44]];
        let want = last_logits(&model, &model.hidden(&ids_tensor(&ids, 5).unwrap(), &Ctx::eval()).unwrap()).unwrap();
        params_to_dtype(&model.named_params(), DType::BF16).unwrap();
        let mut cache = Gpt2Cache::default();
        let prefix: Vec<Vec<u32>> = ids.iter().map(|s| s[..4].to_vec()).collect();
        model.hidden_cached(&ids_tensor(&prefix, 4).unwrap(), &mut cache).unwrap();
        let got =
            last_logits(&model, &model.hidden_cached(&ids_tensor(&ids, 1).unwrap(), &mut cache).unwrap()).unwrap();
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = got.iter().zip(&want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        assert!(worst <= 0.02 * scale, "worst {worst} of {scale}");
        assert!(worst > 0.0, "the bf16 model computed in bf16");
    }

    #[test]
    fn prompts_of_different_lengths_are_refused() {
        let mut rng = StdRng::seed_from_u64(0);
        let model = tiny(AttentionImpl::Flash);
        assert!(generate(&model, &[vec![1, 2], vec![3]], 4, 0.0, 0, &mut rng).is_err());
        assert!(generate(&model, &[vec![]], 4, 0.0, 0, &mut rng).is_err());
        assert_eq!(generate(&model, &[], 4, 0.0, 0, &mut rng).unwrap(), Vec::<Vec<u32>>::new());
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
