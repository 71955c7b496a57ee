//! The training tasks behind the binaries (`train-gpt2`, `train-vit`, `train-mixer`):
//! configuration files with built-in defaults, command-line overrides, resume, and the
//! [`Task`](crate::trainer::Task) implementations that the shared trainer drives.

pub mod args;
pub mod configs;
pub mod gpt2;
pub mod image;

pub use args::TrainArgs;

use crate::trainer::{self, RunOptions, RunSummary, TrainConfig, TrainError, checkpoint};
use monarch_nn::LinearKind;
use monarch_nn::swap::{self, SwapLinears};
use monarch_tensor::{Device, Tensor, load_safetensors_where};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A whole run's configuration, as a TOML file holds it: `[model]`, `[train]`, `[data]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig<M> {
    /// The model's shape and layer kinds.
    pub model: M,
    /// Optimisation and bookkeeping.
    #[serde(default)]
    pub train: TrainConfig,
    /// Where the data comes from.
    #[serde(default)]
    pub data: DataConfig,
}

/// The `[data]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Text: `embedded:shakespeare` or a folder of token files (`train_*.bin` / `val_*.bin`,
    /// llm.c's or nanoGPT's names). Images: `embedded:digits`, an image folder, an
    /// ImageNet-style root with `train/` and `val/`, IDX (MNIST) or CIFAR-10 files.
    pub path: String,
    /// Tokens per training sequence (GPT-2; default the model's block size).
    pub seq_len: Option<usize>,
    /// For data without a validation split (an image set, the embedded Shakespeare): the
    /// fraction held out (images seeded; text the last tokens).
    pub val_fraction: f64,
    /// Training augmentation for images (random resized crop and flip); off: as stored.
    pub augment: bool,
    /// Image decoding threads.
    pub workers: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig { path: String::new(), seq_len: None, val_fraction: 0.1, augment: false, workers: 2 }
    }
}

/// What a task binary is: its name, built-in configurations and default output folder.
pub struct TaskInfo {
    /// `gpt2`, `vit` or `mixer`.
    pub name: &'static str,
    /// The configuration used when `--config` is not given.
    pub default_config: &'static str,
}

impl TaskInfo {
    /// The output folder: `--out-dir`, else `runs/<task>`.
    pub fn out_dir(&self, args: &TrainArgs) -> PathBuf {
        args.out_dir.clone().unwrap_or_else(|| PathBuf::from("runs").join(self.name))
    }
}

/// The configuration of a run: with `--resume`, the one stored in the newest checkpoint
/// of the output folder (only bookkeeping flags may change it); otherwise the built-in or
/// file configuration with the flags applied by `apply`.
pub fn resolve<M: DeserializeOwned>(
    info: &TaskInfo,
    args: &TrainArgs,
    apply: impl FnOnce(&mut RunConfig<M>, &TrainArgs) -> Result<(), TrainError>,
) -> Result<RunConfig<M>, TrainError> {
    let mut cfg: RunConfig<M> = if args.resume {
        let changes = args.config_changes();
        if !changes.is_empty() {
            return Err(TrainError::Config(format!(
                "--resume continues the stored configuration; drop {}",
                changes.join(", ")
            )));
        }
        let dir = info.out_dir(args);
        if !dir.is_dir() {
            return Err(TrainError::Config(format!("--resume: no checkpoint in {} (no such folder)", dir.display())));
        }
        let path = checkpoint::latest(&dir)?
            .ok_or_else(|| TrainError::Config(format!("--resume: no checkpoint in {}", dir.display())))?;
        let meta = checkpoint::load(&path)?.meta;
        serde_json::from_value(meta.config)
            .map_err(|e| TrainError::Config(format!("{}: stored configuration: {e}", path.display())))?
    } else {
        let name = args.config.as_deref().unwrap_or(info.default_config);
        let mut cfg: RunConfig<M> = parse_config(name)?;
        apply_train_flags(&mut cfg.train, &mut cfg.data, args);
        apply(&mut cfg, args)?;
        cfg
    };
    apply_bookkeeping_flags(&mut cfg.train, args);
    cfg.train.validate()?;
    Ok(cfg)
}

/// Reads a configuration: a TOML file at `name`, else the built-in configuration `name`.
pub fn parse_config<M: DeserializeOwned>(name: &str) -> Result<RunConfig<M>, TrainError> {
    let path = Path::new(name);
    let (text, origin) = if path.is_file() {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io { path: path.into(), source })?;
        (text, path.display().to_string())
    } else if let Some(text) = configs::builtin(name) {
        (text.to_string(), format!("built-in configuration {name}"))
    } else {
        return Err(TrainError::Config(format!(
            "{name}: no such file, and not a built-in configuration (built-ins: {})",
            configs::names().join(", ")
        )));
    };
    toml::from_str(&text).map_err(|e| TrainError::Config(format!("{origin}: {e}")))
}

fn apply_train_flags(t: &mut TrainConfig, d: &mut DataConfig, a: &TrainArgs) {
    if let Some(v) = a.seed {
        t.seed = v;
    }
    if let Some(v) = &a.data {
        d.path.clone_from(v);
    }
    if let Some(v) = a.batch_size {
        t.batch_size = v;
    }
    if let Some(v) = a.grad_accum {
        t.grad_accum = v;
    }
    if let Some(v) = a.lr {
        t.lr = v;
        t.min_lr = t.min_lr.min(v);
    }
    if let Some(v) = a.warmup {
        t.warmup = v;
    }
    if a.densify_at.is_some() {
        t.densify_at = a.densify_at;
    }
    if let Some(p) = a.precision {
        t.precision = p;
    }
}

fn apply_bookkeeping_flags(t: &mut TrainConfig, a: &TrainArgs) {
    if let Some(v) = a.max_steps {
        t.steps = v;
    }
    if let Some(v) = a.eval_every {
        t.eval_every = v;
    }
    if let Some(v) = a.eval_batches {
        t.eval_batches = v;
    }
    if let Some(v) = a.log_every {
        t.log_every = v;
    }
    if let Some(v) = a.checkpoint_every {
        t.checkpoint_every = v;
    }
}

/// Prints the built-in configurations when `--list-configs` asks; true when it did.
pub fn list_configs(args: &TrainArgs) -> bool {
    if args.list_configs {
        println!("{}", configs::names().join("\n"));
    }
    args.list_configs
}

/// Prints the resolved configuration as TOML when `--print-config` asks; true when it did.
pub fn print_config<M: Serialize>(args: &TrainArgs, cfg: &RunConfig<M>) -> Result<bool, TrainError> {
    if args.print_config {
        print!("{}", toml::to_string(cfg).map_err(|e| TrainError::Config(e.to_string()))?);
    }
    Ok(args.print_config)
}

/// Runs `task` under `cfg` with the output options of `args`.
pub fn train<M: Serialize>(
    info: &TaskInfo,
    task: &mut dyn trainer::Task,
    cfg: &RunConfig<M>,
    args: &TrainArgs,
) -> Result<RunSummary, TrainError> {
    let config = serde_json::to_value(cfg).map_err(|e| TrainError::Config(e.to_string()))?;
    let opts = RunOptions {
        out_dir: info.out_dir(args),
        resume: args.resume,
        config,
        quiet: args.quiet,
        stop_after: args.stop_after,
        device: usable_device(args.device, "training"),
    };
    monarch_tensor::set_allow_tf32(args.tf32);
    trainer::run(task, &cfg.train, &opts)
}

/// The device asked for, or the CPU with a warning when it cannot be opened (no driver,
/// no such GPU), so that work asked for on a GPU still runs; `doing` names the work in
/// the warning ("training").
pub(crate) fn usable_device(asked: Device, doing: &str) -> Device {
    match asked {
        Device::Cuda(i) => match monarch_tensor::cuda_device(i) {
            Ok(_) => asked,
            Err(e) => {
                eprintln!("warning: {e}; {doing} on the CPU instead");
                Device::Cpu
            }
        },
        Device::Cpu => Device::Cpu,
    }
}

/// Tensors of the dense checkpoint `--init-from` names (a monarch checkpoint's optimiser
/// state left out).
pub fn read_weights(path: &Path) -> Result<HashMap<String, Tensor>, TrainError> {
    let weights = |n: &str| !n.starts_with(checkpoint::OPTIMIZER_PREFIX);
    let file = load_safetensors_where(path, weights).map_err(|e| TrainError::Config(format!("--init-from: {e}")))?;
    Ok(file.tensors.into_iter().collect())
}

/// Projects the layers of each role (a name fragment such as `.mlp.`) onto its kind,
/// leaving dense roles dense (dense-to-structured fine-tuning).
pub fn project_roles(model: &mut dyn SwapLinears, roles: [(&str, &LinearKind); 2]) -> Result<usize, TrainError> {
    let mut n = 0;
    for (role, kind) in roles {
        if *kind != LinearKind::Dense {
            n += swap::project(model, &|name: &str| name.contains(role), kind)?.len();
        }
    }
    Ok(n)
}

/// The exit code of a binary: 0, or 1 after printing the error.
pub fn exit_code(r: Result<(), TrainError>) -> std::process::ExitCode {
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
