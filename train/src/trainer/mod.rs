//! The trainer all task binaries share: schedule, gradient accumulation and clipping,
//! AdamW or SGD with momentum, evaluation, `metrics.jsonl`, checkpoints (resumable at the same data position
//! and schedule), the loss plot, reverse sparsification, and a clean stop on a
//! non-finite loss.

pub mod checkpoint;
mod config;
mod metrics;
mod mfu;
pub mod plot;
mod progress;

pub use config::{OptimizerKind, Precision, TrainConfig};
pub use metrics::MetricsLog;

use monarch_autograd::{Gradients, Var, autocast};
use monarch_nn::optim::{Optimizer, WarmupCosine};
use monarch_nn::{Ctx, NamedParams, assign_params, params_to_device};
use monarch_tensor::Device;
use progress::Progress;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Errors of a training run.
#[derive(thiserror::Error, Debug)]
pub enum TrainError {
    /// A tensor, shape or checkpoint-format error.
    #[error(transparent)]
    Tensor(#[from] monarch_tensor::Error),
    /// A data-loading error.
    #[error(transparent)]
    Data(#[from] monarch_data::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A configuration file or flag is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The loss or the gradient norm became NaN or infinite; the run stopped before
    /// the update, without saving.
    #[error("{what} is {value} at step {step}; the run stopped. Last good checkpoint: {last}")]
    NonFinite {
        /// What was not finite: "loss" or "gradient norm".
        what: &'static str,
        /// The step it happened at.
        step: u64,
        /// Its value.
        value: f64,
        /// The newest checkpoint on disk, or "none".
        last: String,
    },
    /// Anything else, explained.
    #[error("{0}")]
    Other(String),
}

/// Validation results.
#[derive(Clone, Debug, PartialEq)]
pub struct Eval {
    /// Mean validation loss.
    pub loss: f64,
    /// Task metrics, e.g. `("perplexity", 42.0)` or `("accuracy", 0.93)`.
    pub metrics: Vec<(&'static str, f64)>,
}

/// A model plus its data, as the trainer drives it.
pub trait Task {
    /// A short name for plots and logs (`gpt2`, `vit`, ...).
    fn name(&self) -> &str;
    /// What one training item is, for throughput (`tokens` or `images`).
    fn unit(&self) -> &'static str;
    /// The trainable parameters with their names (they change after densification).
    fn params(&self) -> NamedParams;
    /// Facts recorded at the start of a run: parameters, FLOPs per item, data sizes.
    fn describe(&self) -> Value;
    /// Model FLOPs of one item's forward and backward, for the utilisation figure
    /// (`None`: not counted, no figure).
    fn train_flops_per_item(&self) -> Option<f64> {
        None
    }
    /// The loss of the next training micro-batch and how many items it covered.
    fn train_batch(&mut self, ctx: &Ctx) -> Result<(Var, usize), TrainError>;
    /// A validation pass (under `no_grad`): the configured number of batches, or with
    /// `full` the whole validation split exactly once.
    fn evaluate(&mut self, full: bool) -> Result<Eval, TrainError>;
    /// The training loader's position, saved in checkpoints.
    fn data_state(&self) -> Value;
    /// Continues the training loader from a saved position.
    fn restore_data_state(&mut self, state: &Value) -> Result<(), TrainError>;
    /// Replaces every structured layer by its exact dense equivalent; returns how many.
    fn densify(&mut self) -> Result<usize, TrainError>;
}

/// Where and how a run writes.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Output folder: metrics, plot, checkpoints.
    pub out_dir: PathBuf,
    /// Continue from the newest checkpoint in `out_dir`.
    pub resume: bool,
    /// The full configuration, stored in checkpoints.
    pub config: Value,
    /// No progress output (tests).
    pub quiet: bool,
    /// Stop after this step (with a checkpoint) as if interrupted; `resume` continues.
    pub stop_after: Option<u64>,
    /// Where the parameters and the optimiser state live while training.
    pub device: Device,
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Steps completed in total.
    pub step: u64,
    /// Training loss of every step run in this invocation, in order.
    pub losses: Vec<f64>,
    /// The last evaluation.
    pub eval: Option<Eval>,
    /// Items per second of training steps over this invocation (evaluations and
    /// checkpoints not counted).
    pub throughput: f64,
}

/// Compiles the CUDA kernels that the disk cache lacks for GPU `ordinal`, one per core at
/// once, before the first step (which would otherwise compile each family in turn as it
/// first launches it), and says so when it compiled any. A failure here is only a
/// warning: a kernel this run never launches must not stop it, and one it does launch
/// reports the same error then.
fn warm_kernels(ordinal: usize) {
    let start = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let warmed = monarch_tensor::cuda_device(ordinal)
        .and_then(|dev| monarch_tensor::warm_kernel_cache(dev.arch(), threads).map(|w| (dev.arch().to_string(), w)));
    match warmed {
        Ok((arch, (dir, w))) => {
            let compiled = w.iter().filter(|k| !k.cached).count();
            if compiled > 0 {
                eprintln!(
                    "compiled {compiled} CUDA kernel families for {arch} in {:.1} s (kept in {} for later runs)",
                    start.elapsed().as_secs_f64(),
                    dir.display()
                );
            }
        }
        Err(e) => eprintln!("warning: compiling the CUDA kernels ahead failed ({e}); each compiles at first use"),
    }
}

fn finite_or_stop(what: &'static str, step: u64, value: f64, dir: &Path) -> Result<(), TrainError> {
    if value.is_finite() {
        return Ok(());
    }
    let last = checkpoint::latest(dir)?.map_or("none".into(), |p| p.display().to_string());
    Err(TrainError::NonFinite { what, step, value, last })
}

/// A step's summed loss (0 without micro-batches) and its global gradient norm, read
/// together: on a GPU, one wait for the device per step.
fn loss_and_grad_norm(loss_sum: Option<&monarch_tensor::Tensor>, grads: &Gradients) -> Result<(f64, f64), TrainError> {
    let (host_sq, parts) = grads.squared_norm_parts()?;
    let reads: Vec<&monarch_tensor::Tensor> = loss_sum.into_iter().chain(&parts).collect();
    let values = monarch_tensor::Tensor::read_scalars(&reads)?;
    let (loss, sq) = match loss_sum {
        Some(_) => (values[0], &values[1..]),
        None => (0.0, &values[..]),
    };
    Ok((loss, (host_sq + sq.iter().sum::<f64>()).sqrt()))
}

/// Runs (or resumes) training of `task` under `cfg`.
pub fn run(task: &mut dyn Task, cfg: &TrainConfig, opts: &RunOptions) -> Result<RunSummary, TrainError> {
    cfg.validate()?;
    let dir = &opts.out_dir;
    std::fs::create_dir_all(dir).map_err(|source| TrainError::Io { path: dir.clone(), source })?;
    let mut opt = cfg.optimizer()?;
    let schedule = WarmupCosine { peak: cfg.lr, min: cfg.min_lr, warmup: cfg.warmup, total: cfg.steps };
    let densify_step = cfg.densify_at.map(|f| (f * cfg.steps as f64).round() as u64);
    let (mut step, mut densified) = (0u64, false);
    if !opts.resume && !checkpoint::list(dir)?.is_empty() {
        return Err(TrainError::Config(format!(
            "{} holds checkpoints of an earlier run: continue it with --resume, or give another --out-dir",
            dir.display()
        )));
    }
    if opts.resume {
        let path = checkpoint::latest(dir)?
            .ok_or_else(|| TrainError::Other(format!("--resume: no checkpoint in {}", dir.display())))?;
        let ck = checkpoint::load(&path)?;
        if ck.meta.densified {
            task.densify()?;
            densified = true;
        }
        let params = task.params();
        assign_params(&params, ck.weights, false, "checkpoint", &path.display().to_string())?;
        opt.load_state(&params, &ck.optimizer)?;
        task.restore_data_state(&ck.meta.data)?;
        step = ck.meta.step;
    }
    if let Device::Cuda(i) = opts.device {
        warm_kernels(i);
    }
    params_to_device(&task.params(), opts.device)?;
    let mut metrics = MetricsLog::open(dir, opts.resume.then_some(step))?;
    // The matrix-product rate the utilisation figure is against, in the run's dtype.
    let matmul_dtype = cfg.precision.autocast().unwrap_or(monarch_tensor::DType::F32);
    let flops_per_item = task.train_flops_per_item();
    let matmul_rate = flops_per_item.map(|_| mfu::matmul_rate(opts.device, matmul_dtype)).transpose()?;
    // The probe's operands are freed; the run's peak memory (and kernel times) start after them.
    opts.device.reset_peak_memory()?;
    opts.device.reset_kernel_times()?;
    if !opts.resume {
        let mut start = json!({
            "step": 0, "event": "start", "task": task.name(), "steps": cfg.steps, "device": opts.device.to_string(),
            "matmul_gflops": matmul_rate.map(|r| r / 1e9), "matmul_dtype": matmul_dtype.as_str(),
        });
        if let (Value::Object(rec), Value::Object(facts)) = (&mut start, task.describe()) {
            rec.extend(facts);
        }
        metrics.write(start)?;
    } else {
        // A resumed run's utilisation is against the rate measured now, on this machine.
        metrics.write(json!({
            "step": step, "event": "resume", "device": opts.device.to_string(),
            "matmul_gflops": matmul_rate.map(|r| r / 1e9), "matmul_dtype": matmul_dtype.as_str(),
        }))?;
    }
    let stop = opts.stop_after.unwrap_or(cfg.steps).min(cfg.steps);
    let progress = Progress::new(step, cfg.steps, opts.quiet);
    let (mut losses, mut last_eval) = (Vec::new(), None);
    let start = Instant::now();
    // Throughput counts the training steps' own time, not evaluations, checkpoints or plots.
    let (mut window_items, mut window_secs, mut total_items, mut train_secs) = (0usize, 0.0f64, 0usize, 0.0f64);
    let (mut window_loss, mut window_steps) = (0.0, 0u64);
    let save = |task: &dyn Task, opt: &dyn Optimizer, step: u64, densified: bool| -> Result<PathBuf, TrainError> {
        let params = task.params();
        let meta = checkpoint::CheckpointMeta { step, densified, config: opts.config.clone(), data: task.data_state() };
        checkpoint::save(dir, &params, opt.state(&params), &meta, cfg.keep_checkpoints)
    };
    while step < stop {
        if densify_step == Some(step) && !densified {
            // Carry optimiser state over by name where a parameter survives (biases, norms, embeddings).
            let saved = opt.state(&task.params()).into_iter().collect();
            // Densification builds the dense weights on the host.
            params_to_device(&task.params(), Device::Cpu)?;
            let n = task.densify()?;
            params_to_device(&task.params(), opts.device)?;
            densified = true;
            let mut fresh = cfg.optimizer()?;
            fresh.load_state(&task.params(), &saved)?;
            opt = fresh;
            progress.note(&format!("step {step}: densified {n} structured layers"));
            metrics.write(json!({"step": step, "event": "densify", "layers": n}))?;
        }
        let step_start = Instant::now();
        let lr = schedule.lr(step);
        opt.set_lr(lr);
        let mut grads = Gradients::new();
        // Summed where the losses are (on a GPU, without waiting for each micro-batch) and
        // read once per step with the gradient norm; a non-finite loss or norm stops the
        // run before the update.
        let mut loss_sum: Option<monarch_tensor::Tensor> = None;
        for micro in 0..cfg.grad_accum {
            let ctx = Ctx::train(
                cfg.seed ^ (step * cfg.grad_accum as u64 + micro as u64).wrapping_mul(0x2545_F491_4F6C_DD1D),
            );
            let _precision = autocast(cfg.precision.autocast());
            let (loss, items) = task.train_batch(&ctx)?;
            loss_sum = Some(match loss_sum {
                Some(sum) => sum.add(loss.value())?,
                None => loss.value().clone(),
            });
            window_items += items;
            total_items += items;
            loss.mul_scalar(1.0 / cfg.grad_accum as f64)?.backward_into(&mut grads)?;
        }
        let (loss_sum, grad_norm) = loss_and_grad_norm(loss_sum.as_ref(), &grads)?;
        let loss = loss_sum / cfg.grad_accum as f64;
        finite_or_stop("loss", step, loss, dir)?;
        finite_or_stop("gradient norm", step, grad_norm, dir)?;
        if cfg.clip > 0.0 {
            grads.clip_to_norm(cfg.clip, grad_norm)?;
        }
        opt.step(&task.params(), &grads)?;
        drop(grads);
        let secs = step_start.elapsed().as_secs_f64();
        (window_secs, train_secs) = (window_secs + secs, train_secs + secs);
        step += 1;
        losses.push(loss);
        (window_loss, window_steps) = (window_loss + loss, window_steps + 1);
        if step % cfg.log_every == 0 || step == stop {
            let rate = window_items as f64 / window_secs.max(1e-9);
            // The mean training loss of the steps since the last record.
            let mean = window_loss / window_steps as f64;
            // Model FLOPs per second over the measured matrix-product rate.
            let mfu = flops_per_item.zip(matmul_rate).map(|(f, peak)| rate * f / peak);
            let mut rec = json!({
                "step": step, "loss": mean, "lr": lr, "grad_norm": grad_norm,
                format!("{}_per_s", task.unit()): rate, "mfu": mfu, "elapsed_s": start.elapsed().as_secs_f64(),
            });
            // On a GPU, the most memory its tensors have held so far in the run.
            if let Some(m) = opts.device.memory_stats()? {
                rec["device_peak_bytes"] = json!(m.peak);
            }
            metrics.write(rec)?;
            let mfu_note = mfu.map(|m| format!(" MFU {:.1}%", 100.0 * m)).unwrap_or_default();
            progress.step(step, &format!("loss {mean:.4} lr {lr:.2e} {:.0} {}/s{mfu_note}", rate, task.unit()));
            (window_items, window_secs, window_loss, window_steps) = (0, 0.0, 0.0, 0);
        }
        let last = step == cfg.steps;
        let eval_now = last || (cfg.eval_every > 0 && step % cfg.eval_every == 0);
        if eval_now {
            let e = {
                let _precision = autocast(cfg.precision.autocast());
                task.evaluate(last)?
            };
            let mut rec = json!({"step": step, "val_loss": e.loss, "full": last});
            for (k, v) in &e.metrics {
                rec[*k] = json!(v);
            }
            let summary: Vec<String> = e.metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            progress.note(&format!("step {step}: val_loss {:.4} {}", e.loss, summary.join(" ")));
            metrics.write(rec)?;
            last_eval = Some(e);
        }
        // Refreshed during the run; the final plot is drawn once after the loop.
        if step < stop && (eval_now || step % (cfg.log_every * 10) == 0) {
            plot::plot_losses(
                &dir.join("loss.png"),
                task.name(),
                &metrics.series("loss"),
                &metrics.series("val_loss"),
            )?;
        }
        if (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0) || step == stop {
            let path = save(task, opt.as_ref(), step, densified)?;
            progress.note(&format!("step {step}: saved {}", path.display()));
        }
    }
    plot::plot_losses(&dir.join("loss.png"), task.name(), &metrics.series("loss"), &metrics.series("val_loss"))?;
    progress.finish();
    // With MONARCH_KERNEL_TIMES: where the run's device time went, kernel by kernel.
    if let Some(times) = opts.device.kernel_times()? {
        eprint!("{}", monarch_tensor::format_kernel_times(&times));
    }
    Ok(RunSummary { step, losses, eval: last_eval, throughput: total_items as f64 / train_secs.max(1e-9) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use monarch_autograd::Param;
    use monarch_tensor::Tensor;

    /// Fits w to 3 by least squares, the targets alternating 3 ± `spread` from batch to
    /// batch; its loss turns NaN from batch `nan_from` on.
    struct Toy {
        w: Param,
        step: u64,
        nan_from: u64,
        spread: f32,
    }

    impl Task for Toy {
        fn name(&self) -> &str {
            "toy"
        }
        fn unit(&self) -> &'static str {
            "items"
        }
        fn params(&self) -> NamedParams {
            vec![("w".into(), self.w.clone())]
        }
        fn describe(&self) -> Value {
            json!({"params": 1})
        }
        fn train_batch(&mut self, _: &Ctx) -> Result<(Var, usize), TrainError> {
            self.step += 1;
            let side = if self.step % 2 == 1 { -1.0 } else { 1.0 };
            let target = if self.step >= self.nan_from { f32::NAN } else { 3.0 + side * self.spread };
            let d = self.w.var().sub(&Var::constant(Tensor::from_vec(vec![target], 1)?))?;
            Ok((d.sqr()?.sum_all()?, 1))
        }
        fn evaluate(&mut self, _: bool) -> Result<Eval, TrainError> {
            let w = f64::from(self.w.value().to_vec::<f32>()?[0]);
            Ok(Eval { loss: (w - 3.0).powi(2), metrics: vec![] })
        }
        fn data_state(&self) -> Value {
            json!(self.step)
        }
        fn restore_data_state(&mut self, state: &Value) -> Result<(), TrainError> {
            self.step = state.as_u64().unwrap_or(0);
            Ok(())
        }
        fn densify(&mut self) -> Result<usize, TrainError> {
            Ok(0)
        }
    }

    fn opts(dir: &Path) -> RunOptions {
        RunOptions {
            out_dir: dir.into(),
            resume: false,
            config: json!({}),
            quiet: true,
            stop_after: None,
            device: Device::Cpu,
        }
    }

    #[test]
    fn trains_and_stops_cleanly_on_a_non_finite_loss() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            steps: 40,
            lr: 0.3,
            min_lr: 0.003,
            warmup: 0,
            weight_decay: 0.0,
            eval_every: 0,
            checkpoint_every: 5,
            log_every: 5,
            ..Default::default()
        };
        let mut toy = Toy {
            w: Param::new(Tensor::zeros(1, monarch_tensor::DType::F32)),
            step: 0,
            nan_from: u64::MAX,
            spread: 0.0,
        };
        let done = run(&mut toy, &cfg, &opts(dir.path())).unwrap();
        assert_eq!(done.step, 40);
        assert!(done.eval.unwrap().loss < 0.1, "w did not approach 3");
        assert!(done.losses[39] < done.losses[0]);
        let sgd = TrainConfig { optimizer: OptimizerKind::Sgd, lr: 0.05, min_lr: 0.001, ..cfg.clone() };
        let dir_sgd = tempfile::tempdir().unwrap();
        let mut toy = Toy {
            w: Param::new(Tensor::zeros(1, monarch_tensor::DType::F32)),
            step: 0,
            nan_from: u64::MAX,
            spread: 0.0,
        };
        assert!(run(&mut toy, &sgd, &opts(dir_sgd.path())).unwrap().eval.unwrap().loss < 0.1, "SGD did not fit");
        let ck = checkpoint::load(&checkpoint::latest(dir_sgd.path()).unwrap().unwrap()).unwrap();
        assert!(ck.optimizer.contains_key("w.momentum_buffer"));

        let dir = tempfile::tempdir().unwrap();
        let mut toy =
            Toy { w: Param::new(Tensor::zeros(1, monarch_tensor::DType::F32)), step: 0, nan_from: 13, spread: 0.0 };
        let err = run(&mut toy, &cfg, &opts(dir.path())).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TrainError::NonFinite { what: "loss", step: 12, .. }), "{msg}");
        assert!(msg.contains("ckpt-00000010.safetensors"), "{msg}");
        // Nothing after the last good checkpoint was written.
        assert_eq!(checkpoint::list(dir.path()).unwrap().last().unwrap().0, 10);
    }

    #[test]
    fn accumulated_steps_report_the_mean_loss_and_take_the_mean_gradient() {
        // From w = 0, micro-batches with targets 2 and 4: losses 4 and 16, gradients −4
        // and −8. One SGD step of lr 0.1 on their mean: loss 10, w = 0.6.
        let cfg = TrainConfig {
            steps: 1,
            grad_accum: 2,
            clip: 0.0,
            optimizer: OptimizerKind::Sgd,
            lr: 0.1,
            min_lr: 0.1,
            warmup: 0,
            weight_decay: 0.0,
            eval_every: 0,
            checkpoint_every: 0,
            log_every: 1,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let w = Param::new(Tensor::zeros(1, monarch_tensor::DType::F32));
        let mut toy = Toy { w: w.clone(), step: 0, nan_from: u64::MAX, spread: 1.0 };
        let done = run(&mut toy, &cfg, &opts(dir.path())).unwrap();
        assert_eq!(done.losses, vec![10.0]);
        let w = w.value().to_vec::<f32>().unwrap()[0];
        assert!((w - 0.6).abs() < 1e-6, "w = {w}");
    }
}
