//! The training section of every task's configuration.

use super::TrainError;
use monarch_nn::optim::{AdamW, Optimizer, Sgd};
use serde::{Deserialize, Serialize};

/// Which optimiser a run uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW with decoupled weight decay (not on biases, norms, embeddings).
    #[default]
    AdamW,
    /// SGD with momentum (`momentum`) and L2 weight decay.
    Sgd,
}

/// The arithmetic of the matrix products while training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Matrix products in bf16 (autocast), everything else and the master weights in f32.
    Bf16,
}

impl Precision {
    /// The autocast dtype of this precision.
    pub fn autocast(self) -> Option<monarch_tensor::DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(monarch_tensor::DType::BF16),
        }
    }
}

/// Optimisation and bookkeeping settings shared by all tasks (`[train]` in TOML).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimiser steps in the whole run.
    pub steps: u64,
    /// Sequences or images per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// `adamw` or `sgd`.
    pub optimizer: OptimizerKind,
    /// SGD momentum.
    pub momentum: f64,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine decay.
    pub min_lr: f64,
    /// Linear warmup steps.
    pub warmup: u64,
    /// AdamW decoupled weight decay (not applied to biases, norms, embeddings).
    pub weight_decay: f64,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// Global gradient-norm clip (0 = off).
    pub clip: f64,
    /// Steps between evaluations (0: only the final one, which always covers the whole
    /// validation split once).
    pub eval_every: u64,
    /// Validation batches per intermediate evaluation (0 = the whole validation split once).
    pub eval_batches: usize,
    /// Steps between metric records.
    pub log_every: u64,
    /// Steps between checkpoints (a final one is always written).
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk.
    pub keep_checkpoints: usize,
    /// Seed of initialisation, data order and dropout.
    pub seed: u64,
    /// Fraction of the steps after which structured layers become dense (reverse sparsification).
    pub densify_at: Option<f64>,
    /// Arithmetic of the matrix products (`f32`, or `bf16` mixed precision).
    pub precision: Precision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            batch_size: 16,
            grad_accum: 1,
            optimizer: OptimizerKind::AdamW,
            momentum: 0.9,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup: 50,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            clip: 1.0,
            eval_every: 100,
            eval_batches: 20,
            log_every: 10,
            checkpoint_every: 250,
            keep_checkpoints: 3,
            seed: 1337,
            densify_at: None,
            precision: Precision::F32,
        }
    }
}

impl TrainConfig {
    /// A fresh optimiser of this configuration (the schedule sets its learning rate).
    pub fn optimizer(&self) -> Result<Box<dyn Optimizer>, TrainError> {
        Ok(match self.optimizer {
            OptimizerKind::AdamW => Box::new(AdamW::new(monarch_tensor::AdamW {
                lr: self.lr,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: self.weight_decay,
            })),
            OptimizerKind::Sgd => Box::new(Sgd::new(self.lr, self.momentum, self.weight_decay)),
        })
    }

    /// Checks ranges that would otherwise fail deep inside a run.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.batch_size == 0 || self.grad_accum == 0 || self.log_every == 0 {
            return bad("batch_size, grad_accum and log_every must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) || self.min_lr < 0.0 || self.min_lr > self.lr {
            return bad(format!("need 0 <= min_lr <= lr and lr > 0, got lr {} min_lr {}", self.lr, self.min_lr));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) || self.eps <= 0.0 {
            return bad("need 0 <= beta1, beta2 < 1 and eps > 0".into());
        }
        if !(0.0..1.0).contains(&self.momentum) || !(0.0..=f64::MAX).contains(&self.weight_decay) {
            return bad(format!(
                "need 0 <= momentum < 1 and weight_decay >= 0, got {} and {}",
                self.momentum, self.weight_decay
            ));
        }
        if let Some(f) = self.densify_at
            && !(0.0..=1.0).contains(&f)
        {
            return bad(format!("densify_at must lie in [0, 1], got {f}"));
        }
        Ok(())
    }
}
