//! The flags every training binary accepts, and how they override a configuration.

use crate::cli::LinearFlags;
use crate::trainer::TrainError;
use clap::Args;
use monarch_nn::{AttentionFlags, AttentionImpl, LinearKind, LinearOptions};
use std::path::PathBuf;

/// Flags shared by `train-gpt2`, `train-vit` and `train-mixer`. Flags override the
/// configuration file; `--resume` takes the configuration stored in the run's checkpoint.
#[derive(Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// Configuration: a TOML file, or the name of a built-in one (see --list-configs).
    #[arg(long)]
    pub config: Option<String>,
    /// Print the built-in configurations and exit.
    #[arg(long)]
    pub list_configs: bool,
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Output folder: metrics.jsonl, loss.png, checkpoints.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Continue the run in --out-dir from its newest checkpoint (same data position and
    /// schedule; the stored configuration is used).
    #[arg(long)]
    pub resume: bool,
    /// Total optimiser steps of the run (the schedule's length).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Stop this invocation after this step, with a checkpoint, as if interrupted;
    /// `--resume` continues it.
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Seed of initialisation, data order and dropout.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Training data (see the binary's help for the formats).
    #[arg(long)]
    pub data: Option<String>,
    /// Steps between evaluations (0: only at the end).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Validation batches per intermediate evaluation (0: the whole split); the final
    /// evaluation always covers the whole split once.
    #[arg(long)]
    pub eval_batches: Option<usize>,
    /// Steps between metric records.
    #[arg(long)]
    pub log_every: Option<u64>,
    /// Steps between checkpoints.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Sequences or images per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimiser step.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Linear warmup steps.
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Layer kind of every swappable layer: dense, monarch, blockdiag, lowrank,
    /// butterfly, blocksparse or pixelfly.
    #[arg(long)]
    pub linear: Option<String>,
    /// Layer kind of the attention projections only (GPT-2, ViT).
    #[arg(long)]
    pub attn_linear: Option<String>,
    /// Layer kind of the MLP layers only (GPT-2, ViT).
    #[arg(long)]
    pub mlp_linear: Option<String>,
    /// Layer kind of the token-mixing layers only (Mixer).
    #[arg(long)]
    pub token_linear: Option<String>,
    /// Layer kind of the channel-mixing layers only (Mixer).
    #[arg(long)]
    pub channel_linear: Option<String>,
    #[command(flatten)]
    pub layer: LinearFlags,
    /// Attention implementation: naive, flash, block_sparse or scatterbrain (GPT-2, ViT).
    #[arg(long)]
    pub attention: Option<String>,
    /// Attention block edge in tokens (block_sparse, scatterbrain).
    #[arg(long)]
    pub attn_block: Option<usize>,
    /// Block density of a butterfly layout (block_sparse).
    #[arg(long)]
    pub attn_density: Option<f64>,
    /// Blocks on each side of a local window (block_sparse, scatterbrain).
    #[arg(long)]
    pub attn_window: Option<usize>,
    /// Random features (scatterbrain).
    #[arg(long)]
    pub attn_features: Option<usize>,
    /// Reverse sparsification: at this fraction of the steps, replace every structured
    /// layer by its exact dense equivalent and continue dense.
    #[arg(long)]
    pub densify_at: Option<f64>,
    /// Start from the weights of a dense checkpoint (safetensors: a monarch checkpoint,
    /// a file of the model's parameter names, or for GPT-2 a Hugging Face model.safetensors).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// With --init-from: project the loaded dense layers onto this kind (same as --linear
    /// for the architecture; the projection is Frobenius-optimal).
    #[arg(long)]
    pub project_to: Option<String>,
    /// No progress bar or log lines.
    #[arg(long)]
    pub quiet: bool,
    /// Where to train: cpu, cuda or cuda:N (parameters, optimiser state and activations
    /// live there; batches are read on the host and copied).
    #[arg(long, default_value = "cpu")]
    pub device: monarch_tensor::Device,
    /// Arithmetic of the matrix products: f32, or bf16 mixed precision (f32 master weights).
    #[arg(long, value_enum)]
    pub precision: Option<crate::trainer::Precision>,
    /// f32 matrix products on the GPU with TF32 tensor cores (see `set_allow_tf32`).
    #[arg(long)]
    pub tf32: bool,
}

impl TrainArgs {
    /// The flags that change what is trained; refused with `--resume`, which continues
    /// the stored configuration.
    pub fn config_changes(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut flag = |on: bool, name: &'static str| {
            if on {
                v.push(name);
            }
        };
        flag(self.config.is_some(), "--config");
        flag(self.seed.is_some(), "--seed");
        flag(self.data.is_some(), "--data");
        flag(self.batch_size.is_some(), "--batch-size");
        flag(self.grad_accum.is_some(), "--grad-accum");
        flag(self.lr.is_some(), "--lr");
        flag(self.warmup.is_some(), "--warmup");
        flag(self.kind_flags().iter().any(|(_, k)| k.is_some()), "--linear (or a per-role kind)");
        flag(self.layer != LinearFlags::default(), "a layer option (--nblocks, --rank, ...)");
        flag(self.attention.is_some() || self.attention_params_given(), "--attention");
        flag(self.densify_at.is_some(), "--densify-at");
        flag(self.precision.is_some(), "--precision");
        flag(self.init_from.is_some(), "--init-from");
        flag(self.project_to.is_some(), "--project-to");
        v
    }

    fn kind_flags(&self) -> [(&'static str, &Option<String>); 5] {
        [
            ("--linear", &self.linear),
            ("--attn-linear", &self.attn_linear),
            ("--mlp-linear", &self.mlp_linear),
            ("--token-linear", &self.token_linear),
            ("--channel-linear", &self.channel_linear),
        ]
    }

    /// Whether any of `--attn-block`, `--attn-density`, `--attn-window`, `--attn-features` was given.
    pub fn attention_params_given(&self) -> bool {
        self.attn_block.is_some()
            || self.attn_density.is_some()
            || self.attn_window.is_some()
            || self.attn_features.is_some()
    }

    /// Applies the layer-kind flags to the two roles of a model (`roles` names the
    /// per-role flags this model takes, e.g. `["--attn-linear", "--mlp-linear"]`). A
    /// role's own flag beats `--linear` beats `--project-to`; options without a kind
    /// flag re-shape the configured kinds (`--nblocks 2` on a Monarch config).
    pub fn apply_kinds(&self, roles: [&'static str; 2], kinds: [&mut LinearKind; 2]) -> Result<(), TrainError> {
        for (flag, value) in self.kind_flags() {
            if value.is_some() && flag != "--linear" && !roles.contains(&flag) {
                return Err(TrainError::Config(format!("{flag} does not apply to this model (it takes {roles:?})")));
            }
        }
        let opts = self.layer.options();
        for (role, kind) in roles.into_iter().zip(kinds) {
            let own = self.kind_flags().into_iter().find(|(f, _)| *f == role).and_then(|(_, v)| v.clone());
            let name = own.or_else(|| self.linear.clone()).or_else(|| self.project_to.clone());
            *kind = match name {
                Some(name) => LinearKind::from_options(&name, &merged(&options_of(kind), &opts))?,
                None if opts != LinearOptions::default() => {
                    LinearKind::from_options(kind.name(), &merged(&options_of(kind), &opts))?
                }
                None => kind.clone(),
            };
        }
        Ok(())
    }

    /// Applies `--attention` and its parameters.
    pub fn apply_attention(&self, attention: &mut AttentionImpl) -> Result<(), TrainError> {
        match &self.attention {
            Some(name) => {
                let flags = AttentionFlags {
                    name: name.clone(),
                    block: self.attn_block,
                    density: self.attn_density,
                    window: self.attn_window,
                    features: self.attn_features,
                };
                *attention = AttentionImpl::from_flags(&flags)?;
            }
            None if self.attention_params_given() => {
                return Err(TrainError::Config(
                    "--attn-block/--attn-density/--attn-window/--attn-features need --attention".into(),
                ));
            }
            None => {}
        }
        Ok(())
    }
}

/// The options a configured kind was built with (so that flags change only what they name).
fn options_of(kind: &LinearKind) -> LinearOptions {
    let mut o = LinearOptions::default();
    match *kind {
        LinearKind::Dense | LinearKind::Butterfly => {}
        LinearKind::Monarch { nblocks } | LinearKind::BlockDiag { nblocks } => o.nblocks = Some(nblocks),
        LinearKind::LowRank { rank } => o.rank = Some(rank),
        LinearKind::BlockSparse { butterfly_size, n_factors, block } => {
            (o.butterfly_size, o.n_factors, o.block) = (Some(butterfly_size), Some(n_factors), Some(block));
        }
        LinearKind::Pixelfly { butterfly_size, n_factors, block, rank, gate } => {
            (o.butterfly_size, o.n_factors, o.block) = (Some(butterfly_size), Some(n_factors), Some(block));
            (o.rank, o.gate) = (Some(rank), Some(gate));
        }
    }
    o
}

/// `base` with every option that `over` gives replaced.
fn merged(base: &LinearOptions, over: &LinearOptions) -> LinearOptions {
    LinearOptions {
        nblocks: over.nblocks.or(base.nblocks),
        rank: over.rank.or(base.rank),
        butterfly_size: over.butterfly_size.or(base.butterfly_size),
        n_factors: over.n_factors.or(base.n_factors),
        block: over.block.or(base.block),
        gate: over.gate.or(base.gate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_flags_override_by_role_and_keep_configured_options() {
        let (mut a, mut m) = (LinearKind::Monarch { nblocks: 4 }, LinearKind::Dense);
        let args = TrainArgs { layer: LinearFlags { nblocks: Some(2), ..Default::default() }, ..Default::default() };
        args.apply_kinds(["--attn-linear", "--mlp-linear"], [&mut a, &mut m]).unwrap();
        assert_eq!((a.clone(), m.clone()), (LinearKind::Monarch { nblocks: 2 }, LinearKind::Dense));
        let args = TrainArgs { linear: Some("monarch".into()), mlp_linear: Some("dense".into()), ..Default::default() };
        args.apply_kinds(["--attn-linear", "--mlp-linear"], [&mut a, &mut m]).unwrap();
        assert_eq!((a.clone(), m.clone()), (LinearKind::Monarch { nblocks: 2 }, LinearKind::Dense));
        let args = TrainArgs { token_linear: Some("dense".into()), ..Default::default() };
        let e = args.apply_kinds(["--attn-linear", "--mlp-linear"], [&mut a, &mut m]).unwrap_err();
        assert!(e.to_string().contains("--token-linear does not apply"), "{e}");
        let args = TrainArgs { linear: Some("lowrank".into()), ..Default::default() };
        assert!(args.apply_kinds(["--attn-linear", "--mlp-linear"], [&mut a, &mut m]).is_err());
        assert_eq!(TrainArgs::default().config_changes(), Vec::<&str>::new());
        assert_eq!(
            TrainArgs { layer: LinearFlags { nblocks: Some(2), ..Default::default() }, ..Default::default() }
                .config_changes()
                .len(),
            1
        );
    }

    #[test]
    fn attention_flags_need_an_implementation() {
        let mut a = AttentionImpl::Flash;
        TrainArgs { attention: Some("naive".into()), ..Default::default() }.apply_attention(&mut a).unwrap();
        assert_eq!(a, AttentionImpl::Naive);
        assert!(TrainArgs { attn_density: Some(0.25), ..Default::default() }.apply_attention(&mut a).is_err());
        let bs = TrainArgs { attention: Some("block_sparse".into()), attn_window: Some(1), ..Default::default() };
        bs.apply_attention(&mut a).unwrap();
        assert!(matches!(a, AttentionImpl::BlockSparse { .. }));
    }
}
