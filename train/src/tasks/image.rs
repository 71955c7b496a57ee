//! `train-vit` and `train-mixer`: image classification with a ViT or an MLP-Mixer on any
//! image set the data crate opens (default: the embedded UCI digits).

use super::{
    DataConfig, RunConfig, TaskInfo, TrainArgs, list_configs, print_config, project_roles, read_weights, resolve, train,
};
use crate::trainer::{Eval, RunSummary, Task, TrainError};
use monarch_autograd::{Var, no_grad};
use monarch_data::Split;
use monarch_data::image::{ImageBatch, ImageLoader, ImageLoaderConfig, ImageSet, Subset, Transform};
use monarch_data::image::{open_image_set, open_image_split};
use monarch_nn::models::{ImageClassifier, Mixer, MixerConfig, Vit, VitConfig};
use monarch_nn::swap;
use monarch_nn::{Ctx, LinearKind, NamedParams, assign_params, param_count};
use monarch_tensor::CrossEntropy;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

/// `train-vit`'s name and default configuration.
pub const VIT: TaskInfo = TaskInfo { name: "vit", default_config: "vit-tiny" };
/// `train-mixer`'s name and default configuration.
pub const MIXER: TaskInfo = TaskInfo { name: "mixer", default_config: "mixer-tiny" };

/// An image model that the task can build, densify and start from dense weights.
pub trait ImageModel: ImageClassifier + Sized {
    /// Its configuration.
    type Config: Clone + Serialize + for<'de> Deserialize<'de>;
    /// A freshly initialised model.
    fn build(cfg: &Self::Config, seed: u64) -> monarch_tensor::Result<Self>;
    /// Input side, channels.
    fn input(cfg: &Self::Config) -> (usize, usize);
    /// The model's configuration.
    fn config_mut(&mut self) -> &mut Self::Config;
    /// The roles of its swappable layers (a name fragment) with their configured kinds.
    fn roles(cfg: &Self::Config) -> [(&'static str, LinearKind); 2];
    /// `cfg` with every role dense.
    fn dense(cfg: &Self::Config) -> Self::Config;
    /// Applies the model flags.
    fn apply_flags(cfg: &mut Self::Config, args: &TrainArgs) -> Result<(), TrainError>;
}

impl ImageModel for Vit {
    type Config = VitConfig;
    fn build(cfg: &VitConfig, seed: u64) -> monarch_tensor::Result<Self> {
        Vit::new(cfg, seed)
    }
    fn input(cfg: &VitConfig) -> (usize, usize) {
        (cfg.image_size, cfg.channels)
    }
    fn config_mut(&mut self) -> &mut VitConfig {
        &mut self.cfg
    }
    fn roles(cfg: &VitConfig) -> [(&'static str, LinearKind); 2] {
        [(".attn.", cfg.attn_linear.clone()), (".mlp.", cfg.mlp_linear.clone())]
    }
    fn dense(cfg: &VitConfig) -> VitConfig {
        VitConfig { attn_linear: LinearKind::Dense, mlp_linear: LinearKind::Dense, ..cfg.clone() }
    }
    fn apply_flags(cfg: &mut VitConfig, args: &TrainArgs) -> Result<(), TrainError> {
        args.apply_kinds(["--attn-linear", "--mlp-linear"], [&mut cfg.attn_linear, &mut cfg.mlp_linear])?;
        args.apply_attention(&mut cfg.attention)?;
        Ok(cfg.validate()?)
    }
}

impl ImageModel for Mixer {
    type Config = MixerConfig;
    fn build(cfg: &MixerConfig, seed: u64) -> monarch_tensor::Result<Self> {
        Mixer::new(cfg, seed)
    }
    fn input(cfg: &MixerConfig) -> (usize, usize) {
        (cfg.image_size, cfg.channels)
    }
    fn config_mut(&mut self) -> &mut MixerConfig {
        &mut self.cfg
    }
    fn roles(cfg: &MixerConfig) -> [(&'static str, LinearKind); 2] {
        [(".mlp_tokens.", cfg.token_linear.clone()), (".mlp_channels.", cfg.channel_linear.clone())]
    }
    fn dense(cfg: &MixerConfig) -> MixerConfig {
        MixerConfig { token_linear: LinearKind::Dense, channel_linear: LinearKind::Dense, ..cfg.clone() }
    }
    fn apply_flags(cfg: &mut MixerConfig, args: &TrainArgs) -> Result<(), TrainError> {
        args.apply_kinds(["--token-linear", "--channel-linear"], [&mut cfg.token_linear, &mut cfg.channel_linear])?;
        if args.attention.is_some() || args.attention_params_given() {
            return Err(TrainError::Config("--attention does not apply to the MLP-Mixer (it has no attention)".into()));
        }
        Ok(cfg.validate()?)
    }
}

/// A model of `cfg` whose weights come from the dense checkpoint at `path` (a monarch
/// checkpoint or a file of the model's parameter names), each layer then projected onto
/// its configured kind.
pub fn init_from<M: ImageModel>(cfg: &M::Config, path: &Path) -> Result<M, TrainError> {
    let mut model = M::build(&M::dense(cfg), 0)?;
    assign_params(&model.named_params(), read_weights(path)?, false, "init_from", "the file")
        .map_err(|e| TrainError::Config(format!("--init-from {}: {e}", path.display())))?;
    let [(r1, k1), (r2, k2)] = M::roles(cfg);
    project_roles(&mut model, [(r1, &k1), (r2, &k2)])?;
    *model.config_mut() = cfg.clone();
    Ok(model)
}

/// Where the training loader stands: epoch and batch within it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDataState {
    /// Epochs completed.
    pub epoch: u64,
    /// Batches of the current epoch consumed.
    pub batch: usize,
}

/// An image classifier with its training and validation sets.
pub struct ImageTask<M> {
    name: &'static str,
    model: M,
    train: Arc<dyn ImageSet>,
    val: Arc<dyn ImageSet>,
    train_cfg: ImageLoaderConfig,
    val_cfg: ImageLoaderConfig,
    loader: Option<ImageLoader>,
    state: ImageDataState,
    eval_batches: usize,
}

impl<M: ImageModel> ImageTask<M> {
    /// The task of `cfg` around `model`, with the data of `cfg.data`.
    pub fn new(name: &'static str, cfg: &RunConfig<M::Config>, model: M) -> Result<Self, TrainError> {
        let (size, channels) = M::input(&cfg.model);
        let (train, val) = open_sets(&cfg.data, cfg.train.seed)?;
        for set in [&train, &val] {
            check_set(set.as_ref(), size, channels, model.num_classes(), cfg.data.augment)?;
        }
        let native = train.image_size() == Some((size, size));
        let transform = match (cfg.data.augment, native) {
            (true, _) => Transform::train(size as u32),
            (false, true) => Transform::AsIs,
            (false, false) => Transform::Eval { size: size as u32 },
        };
        let eval_transform = if val.image_size() == Some((size, size)) {
            Transform::AsIs
        } else {
            Transform::Eval { size: size as u32 }
        };
        let mut train_cfg = ImageLoaderConfig::new(cfg.train.batch_size, transform);
        (train_cfg.seed, train_cfg.workers, train_cfg.drop_last) = (cfg.train.seed, cfg.data.workers.max(1), true);
        let mut val_cfg = ImageLoaderConfig::new(cfg.train.batch_size, eval_transform);
        (val_cfg.shuffle, val_cfg.workers) = (false, cfg.data.workers.max(1));
        if train.len() < cfg.train.batch_size {
            return Err(TrainError::Config(format!(
                "{}: {} training images are fewer than one batch of {}",
                train.path().display(),
                train.len(),
                cfg.train.batch_size
            )));
        }
        Ok(ImageTask {
            name,
            model,
            train,
            val,
            train_cfg,
            val_cfg,
            loader: None,
            state: ImageDataState::default(),
            eval_batches: cfg.train.eval_batches,
        })
    }

    fn next_batch(&mut self) -> Result<ImageBatch, TrainError> {
        loop {
            if self.loader.is_none() {
                let l =
                    ImageLoader::new(self.train.clone(), self.train_cfg.clone(), self.state.epoch, self.state.batch)?;
                self.loader = Some(l);
            }
            match self.loader.as_mut().and_then(Iterator::next) {
                Some(batch) => {
                    self.state.batch += 1;
                    return Ok(batch?);
                }
                None => {
                    self.loader = None;
                    self.state = ImageDataState { epoch: self.state.epoch + 1, batch: 0 };
                }
            }
        }
    }

    fn loss(&self, batch: &ImageBatch, ctx: &Ctx) -> Result<(Var, Var), TrainError> {
        // Images are decoded on the host; they and the labels go where the parameters are,
        // together, before the step's work is queued (a copy over the staging limit waits
        // for the stream, then empty).
        let device = self.model.named_params().first().map_or(monarch_tensor::Device::Cpu, |(_, p)| p.value().device());
        let (images, labels) = (batch.images.to_device(device)?, batch.labels.to_device(device)?);
        let logits = self.model.forward(&Var::constant(images), ctx)?;
        let ce = CrossEntropy { ignore_index: None, label_smoothing: 0.0 };
        Ok((logits.cross_entropy(&labels, ce)?, logits))
    }
}

/// A training and a validation set.
type TrainVal = (Arc<dyn ImageSet>, Arc<dyn ImageSet>);

/// The (train, validation) sets of `data.path`: its train/val (or test) splits where it
/// has them, else a seeded hold-out of `val_fraction`.
fn open_sets(data: &DataConfig, seed: u64) -> Result<TrainVal, TrainError> {
    if data.path.is_empty() {
        return Err(TrainError::Config(
            "this configuration needs --data: an image folder, an ImageNet-style root, IDX or CIFAR-10 files".into(),
        ));
    }
    let path = Path::new(&data.path);
    if path.is_dir()
        && let (Ok(train), Ok(val)) = (open_image_split(path, Split::Train), open_image_split(path, Split::Val))
    {
        return Ok((train.into(), val.into()));
    }
    let all: Arc<dyn ImageSet> = open_image_set(path)?.into();
    let (train, val) = Subset::holdout(all, data.val_fraction, seed)?;
    Ok((Arc::new(train), Arc::new(val)))
}

/// Fails unless `set` fits a model of `size`² × `channels` inputs and `classes` outputs.
fn check_set(
    set: &dyn ImageSet,
    size: usize,
    channels: usize,
    classes: usize,
    augment: bool,
) -> Result<(), TrainError> {
    let at = set.path().display();
    if set.channels() != channels {
        return Err(TrainError::Config(format!(
            "{at}: images have {} channels, the model takes {channels}",
            set.channels()
        )));
    }
    if set.num_classes() > classes {
        return Err(TrainError::Config(format!(
            "{at}: {} classes, the model has {classes} outputs",
            set.num_classes()
        )));
    }
    if let Some((h, w)) = set.image_size()
        && !augment
        && (h < size || w < size)
    {
        return Err(TrainError::Config(format!("{at}: images of {h}x{w} are smaller than the model's {size}x{size}")));
    }
    Ok(())
}

impl<M: ImageModel> Task for ImageTask<M> {
    fn name(&self) -> &str {
        self.name
    }

    fn unit(&self) -> &'static str {
        "images"
    }

    fn params(&self) -> NamedParams {
        self.model.named_params()
    }

    fn train_flops_per_item(&self) -> Option<f64> {
        Some(self.model.train_flops_per_image())
    }

    fn describe(&self) -> Value {
        json!({
            "params": param_count(&self.model),
            "train_flops_per_image": self.model.train_flops_per_image(),
            "train_images": self.train.len(),
            "val_images": self.val.len(),
        })
    }

    fn train_batch(&mut self, ctx: &Ctx) -> Result<(Var, usize), TrainError> {
        let batch = self.next_batch()?;
        let n = batch.labels.elem_count();
        Ok((self.loss(&batch, ctx)?.0, n))
    }

    fn evaluate(&mut self, full: bool) -> Result<Eval, TrainError> {
        let _guard = no_grad();
        let limit = if full || self.eval_batches == 0 { usize::MAX } else { self.eval_batches };
        let (mut loss_sum, mut correct, mut count) = (0.0, 0usize, 0usize);
        for batch in ImageLoader::new(self.val.clone(), self.val_cfg.clone(), 0, 0)?.take(limit) {
            let batch = batch?;
            let (loss, logits) = self.loss(&batch, &Ctx::eval())?;
            let n = batch.labels.elem_count();
            loss_sum += loss.value().to_scalar_f64()? * n as f64;
            let pred = logits.value().argmax(1)?.to_vec::<i64>()?;
            correct += pred.iter().zip(batch.labels.to_vec::<i64>()?).filter(|(p, l)| **p == *l).count();
            count += n;
        }
        let n = count.max(1) as f64;
        Ok(Eval { loss: loss_sum / n, metrics: vec![("accuracy", correct as f64 / n), ("val_images", count as f64)] })
    }

    fn data_state(&self) -> Value {
        serde_json::to_value(self.state).unwrap_or(Value::Null)
    }

    fn restore_data_state(&mut self, state: &Value) -> Result<(), TrainError> {
        self.state = serde_json::from_value(state.clone())
            .map_err(|e| TrainError::Other(format!("checkpoint's data position: {e}")))?;
        self.loader = None;
        Ok(())
    }

    fn densify(&mut self) -> Result<usize, TrainError> {
        let n = swap::densify(&mut self.model)?;
        let dense = M::dense(self.model.config_mut());
        *self.model.config_mut() = dense;
        Ok(n)
    }
}

/// Runs `train-vit` (`M = Vit`) or `train-mixer` (`M = Mixer`) with `args`.
pub fn main<M: ImageModel>(info: &TaskInfo, args: &TrainArgs) -> Result<Option<RunSummary>, TrainError> {
    if list_configs(args) {
        return Ok(None);
    }
    let cfg: RunConfig<M::Config> = resolve(info, args, |c, a| M::apply_flags(&mut c.model, a))?;
    if print_config(args, &cfg)? {
        return Ok(None);
    }
    let model = match &args.init_from {
        Some(path) if !args.resume => init_from::<M>(&cfg.model, path)?,
        _ => M::build(&cfg.model, cfg.train.seed)?,
    };
    let mut task = ImageTask::new(info.name, &cfg, model)?;
    train(info, &mut task, &cfg, args).map(Some)
}
