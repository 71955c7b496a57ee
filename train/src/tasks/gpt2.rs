//! `train-gpt2`: GPT-2 language modelling on token shards (default: the embedded
//! Shakespeare), with the layer kinds, attention, reverse sparsification and
//! dense-to-structured start of the configuration and flags.

use super::{
    DataConfig, RunConfig, TaskInfo, TrainArgs, list_configs, print_config, project_roles, read_weights, resolve, train,
};
use crate::trainer::{Eval, RunSummary, Task, TrainError};
use monarch_autograd::{Var, no_grad};
use monarch_data::{IGNORE_INDEX, TokenDataset, TokenLoader, TokenLoaderState, ValidationBatches};
use monarch_nn::models::{Gpt2, Gpt2Config, hf_gpt2};
use monarch_nn::swap;
use monarch_nn::{Ctx, LinearKind, Module, NamedParams, assign_params, param_count};
use serde_json::{Value, json};
use std::path::Path;

/// The task's name and default configuration.
pub const INFO: TaskInfo = TaskInfo { name: "gpt2", default_config: "gpt2-tiny" };

/// A configuration of this task.
pub type Gpt2RunConfig = RunConfig<Gpt2Config>;

/// GPT-2 with its training loader and validation split.
pub struct Gpt2Task {
    model: Gpt2,
    loader: TokenLoader,
    val: TokenDataset,
    batch_size: usize,
    seq_len: usize,
    eval_batches: usize,
}

impl Gpt2Task {
    /// The task of `cfg` around `model`, with the data of `cfg.data`.
    pub fn new(cfg: &Gpt2RunConfig, model: Gpt2) -> Result<Self, TrainError> {
        let seq_len = seq_len(&cfg.model, &cfg.data)?;
        let (train, val) = open_splits(&cfg.data)?;
        let loader = TokenLoader::new(train, cfg.train.batch_size, seq_len, cfg.train.seed, true)?;
        Ok(Gpt2Task {
            model,
            loader,
            val,
            batch_size: cfg.train.batch_size,
            seq_len,
            eval_batches: cfg.train.eval_batches,
        })
    }
}

/// Tokens per training sequence: `data.seq_len`, else the model's block size.
fn seq_len(model: &Gpt2Config, data: &DataConfig) -> Result<usize, TrainError> {
    let t = data.seq_len.unwrap_or(model.block_size);
    if t == 0 || t > model.block_size {
        return Err(TrainError::Config(format!("seq_len {t} is not in 1..={} (the block size)", model.block_size)));
    }
    Ok(t)
}

/// The train and validation splits of `data.path`.
fn open_splits(data: &DataConfig) -> Result<(TokenDataset, TokenDataset), TrainError> {
    if data.path.is_empty() {
        return Err(TrainError::Config(
            "this configuration needs --data: a folder of token shards written by `monarch tokenize`".into(),
        ));
    }
    Ok(TokenDataset::train_val(&data.path, data.val_fraction)?)
}

impl Task for Gpt2Task {
    fn name(&self) -> &str {
        "gpt2"
    }

    fn unit(&self) -> &'static str {
        "tokens"
    }

    fn params(&self) -> NamedParams {
        self.model.named_params()
    }

    fn train_flops_per_item(&self) -> Option<f64> {
        Some(self.model.train_flops_per_token(self.seq_len))
    }

    fn describe(&self) -> Value {
        let c = &self.model.cfg;
        json!({
            "params": param_count(&self.model),
            "train_flops_per_token": self.model.train_flops_per_token(self.seq_len),
            "attn_linear": c.attn_linear.name(),
            "mlp_linear": c.mlp_linear.name(),
            "seq_len": self.seq_len,
            "train_tokens": self.loader.data().total_tokens(),
            "val_tokens": self.val.total_tokens(),
        })
    }

    fn train_batch(&mut self, ctx: &Ctx) -> Result<(Var, usize), TrainError> {
        let b = self.loader.next_batch()?;
        // Ids and targets go to the parameters' device together, before the step's work is
        // queued (a copy over the staging limit waits for the stream, then empty).
        let device = self.model.wte.weight.value().device();
        let (inputs, targets) = (b.inputs.to_device(device)?, b.targets.to_device(device)?);
        let loss = self.model.loss(&inputs, &targets, IGNORE_INDEX, ctx)?;
        Ok((loss, b.num_targets))
    }

    fn evaluate(&mut self, full: bool) -> Result<Eval, TrainError> {
        let _guard = no_grad();
        let limit = if full || self.eval_batches == 0 { usize::MAX } else { self.eval_batches };
        let (mut sum, mut count) = (0.0, 0usize);
        for batch in ValidationBatches::new(self.val.clone(), self.batch_size, self.seq_len)?.take(limit) {
            let b = batch?;
            let loss = self.model.loss(&b.inputs, &b.targets, IGNORE_INDEX, &Ctx::eval())?;
            sum += loss.value().to_scalar_f64()? * b.num_targets as f64;
            count += b.num_targets;
        }
        let loss = sum / count.max(1) as f64;
        Ok(Eval { loss, metrics: vec![("perplexity", loss.exp()), ("val_tokens", count as f64)] })
    }

    fn data_state(&self) -> Value {
        serde_json::to_value(self.loader.state()).unwrap_or(Value::Null)
    }

    fn restore_data_state(&mut self, state: &Value) -> Result<(), TrainError> {
        let state: TokenLoaderState = serde_json::from_value(state.clone())
            .map_err(|e| TrainError::Other(format!("checkpoint's data position: {e}")))?;
        self.loader = TokenLoader::resume(self.loader.data().clone(), state)?;
        Ok(())
    }

    fn densify(&mut self) -> Result<usize, TrainError> {
        let n = swap::densify(&mut self.model)?;
        self.model.cfg.attn_linear = LinearKind::Dense;
        self.model.cfg.mlp_linear = LinearKind::Dense;
        Ok(n)
    }
}

/// Applies the model flags of `args` to a configuration.
pub fn apply_flags(cfg: &mut Gpt2RunConfig, args: &TrainArgs) -> Result<(), TrainError> {
    let m = &mut cfg.model;
    args.apply_kinds(["--attn-linear", "--mlp-linear"], [&mut m.attn_linear, &mut m.mlp_linear])?;
    args.apply_attention(&mut m.attention)?;
    m.validate()?;
    Ok(())
}

/// A model of `cfg` whose weights come from the dense checkpoint at `path`, each layer
/// then projected onto its configured kind. Accepts a monarch checkpoint
/// (`ckpt-*.safetensors`, optimiser state ignored), a safetensors file of [`Gpt2`]'s own
/// parameter names, or a Hugging Face GPT-2 `model.safetensors`.
pub fn init_from(cfg: &Gpt2Config, path: &Path) -> Result<Gpt2, TrainError> {
    let tensors = read_weights(path)?;
    let dense_cfg = Gpt2Config { attn_linear: LinearKind::Dense, mlp_linear: LinearKind::Dense, ..cfg.clone() };
    let hugging_face = tensors.keys().any(|n| n.starts_with("transformer."))
        || tensors.get("h.0.attn.c_attn.weight").is_some_and(|t| t.dims() == [cfg.n_embd, 3 * cfg.n_embd]);
    let mut model = if hugging_face {
        hf_gpt2::from_tensors(&dense_cfg, tensors)
    } else {
        let model = Gpt2::new(&dense_cfg, 0)?;
        assign_params(&model.named_params(), tensors, false, "init_from", "the file").map(|()| model)
    }
    .map_err(|e| TrainError::Config(format!("--init-from {}: {e}", path.display())))?;
    project_roles(&mut model, [(".attn.", &cfg.attn_linear), (".mlp.", &cfg.mlp_linear)])?;
    model.cfg = cfg.clone();
    Ok(model)
}

/// The model a run's checkpoint describes (densified if the run had been), with the
/// checkpoint's weights.
pub fn model_from_checkpoint(path: &Path) -> Result<(Gpt2, Gpt2RunConfig), TrainError> {
    let ck = crate::trainer::checkpoint::load_weights(path)?;
    let cfg: Gpt2RunConfig = serde_json::from_value(ck.meta.config.clone())
        .map_err(|e| TrainError::Config(format!("{}: not a GPT-2 run's checkpoint: {e}", path.display())))?;
    let mut model = Gpt2::new(&cfg.model, 0)?;
    if ck.meta.densified {
        swap::densify(&mut model)?;
    }
    assign_params(&model.named_params(), ck.weights, false, "checkpoint", &path.display().to_string())?;
    Ok((model, cfg))
}

/// Runs `train-gpt2` with `args`.
pub fn main(args: &TrainArgs) -> Result<Option<RunSummary>, TrainError> {
    if list_configs(args) {
        return Ok(None);
    }
    let cfg: Gpt2RunConfig = resolve(&INFO, args, apply_flags)?;
    if print_config(args, &cfg)? {
        return Ok(None);
    }
    let model = match &args.init_from {
        Some(path) if !args.resume => init_from(&cfg.model, path)?,
        _ => Gpt2::new(&cfg.model, cfg.train.seed)?,
    };
    let mut task = Gpt2Task::new(&cfg, model)?;
    train(&INFO, &mut task, &cfg, args).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use monarch_data::EMBEDDED_SHAKESPEARE;

    #[test]
    fn the_embedded_text_holds_out_the_configured_fraction() {
        let data = |val_fraction| DataConfig { path: EMBEDDED_SHAKESPEARE.into(), val_fraction, ..Default::default() };
        let (train, val) = open_splits(&data(0.05)).unwrap();
        let all = train.total_tokens() + val.total_tokens();
        assert_eq!(val.total_tokens(), all - (0.95 * all as f64).round() as usize);
        let (_, default_val) = open_splits(&data(0.1)).unwrap();
        assert!(default_val.total_tokens() > val.total_tokens() * 19 / 10);
        for bad in [0.0, 1.0, -0.5] {
            assert!(open_splits(&data(bad)).is_err(), "val_fraction {bad}");
        }
    }
}
