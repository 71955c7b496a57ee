//! MLP-Mixer (Tolstikhin et al. 2021): patch embedding, then blocks that mix across
//! patches (token MLP on the transposed sequence) and across channels (channel MLP),
//! global average pooling and a linear head. Parameter names follow timm's `MlpMixer`
//! (`stem.proj.weight`, `blocks.0.mlp_tokens.fc1.weight`, `blocks.0.mlp_channels.fc2.bias`, ...).

use super::{ImageClassifier, PatchEmbed, check_images, linear_macs, reinit_dense, validate_vision};
use crate::mlp::{Activation, Mlp};
use crate::structured::{LinearKind, LinearLayer};
use crate::swap::{SwapLinears, prefixed_linears};
use crate::{Ctx, LayerNorm, Linear, Module, NamedParams, prefixed};
use monarch_autograd::Var;
use monarch_tensor::Result;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// The shape and layer kinds of an MLP-Mixer (`[model]` in a TOML config). Missing fields
/// take Mixer-S/16's values at 224 pixels, dense.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MixerConfig {
    /// Input side in pixels (square images).
    pub image_size: usize,
    /// Patch side in pixels; divides `image_size`.
    pub patch_size: usize,
    /// Input channels.
    pub channels: usize,
    /// Output classes.
    pub num_classes: usize,
    /// Width (channels per patch).
    pub dim: usize,
    /// Blocks.
    pub depth: usize,
    /// Hidden width of the token-mixing MLPs.
    pub token_mlp_dim: usize,
    /// Hidden width of the channel-mixing MLPs.
    pub channel_mlp_dim: usize,
    /// Dropout inside the MLPs.
    pub dropout: f64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Kind of the token-mixing layers.
    pub token_linear: LinearKind,
    /// Kind of the channel-mixing layers.
    pub channel_linear: LinearKind,
}

impl Default for MixerConfig {
    fn default() -> Self {
        MixerConfig::small()
    }
}

impl MixerConfig {
    /// Mixer-S/16 at 224 pixels, 1000 classes (18M parameters).
    pub fn small() -> Self {
        MixerConfig {
            image_size: 224,
            patch_size: 16,
            channels: 3,
            num_classes: 1000,
            dim: 512,
            depth: 8,
            token_mlp_dim: 256,
            channel_mlp_dim: 2048,
            dropout: 0.0,
            layer_norm_eps: 1e-6,
            token_linear: LinearKind::Dense,
            channel_linear: LinearKind::Dense,
        }
    }

    /// Mixer-B/16 at 224 pixels (59M parameters).
    pub fn base() -> Self {
        MixerConfig { dim: 768, depth: 12, token_mlp_dim: 384, channel_mlp_dim: 3072, ..Self::small() }
    }

    /// Checks the sizes before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        let sizes = [self.channels, self.num_classes, self.dim, self.depth, self.token_mlp_dim, self.channel_mlp_dim];
        validate_vision("MixerConfig", &sizes, (self.image_size, self.patch_size), self.dropout, self.layer_norm_eps)
    }

    /// Patches per image.
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

/// One Mixer block: `x + tokens(norm1(x)ᵀ)ᵀ`, then `x + channels(norm2(x))`.
#[derive(Debug)]
pub struct MixerBlock {
    /// Norm before token mixing.
    pub norm1: LayerNorm,
    /// Token-mixing MLP (patches → token_mlp_dim → patches).
    pub mlp_tokens: Mlp,
    /// Norm before channel mixing.
    pub norm2: LayerNorm,
    /// Channel-mixing MLP (dim → channel_mlp_dim → dim).
    pub mlp_channels: Mlp,
}

impl Module for MixerBlock {
    fn named_params(&self) -> NamedParams {
        let mut p = Self::prefixed("norm1", &self.norm1);
        p.extend(Self::prefixed("mlp_tokens", &self.mlp_tokens));
        p.extend(Self::prefixed("norm2", &self.norm2));
        p.extend(Self::prefixed("mlp_channels", &self.mlp_channels));
        p
    }
}

/// An MLP-Mixer classifier.
#[derive(Debug)]
pub struct Mixer {
    /// Its configuration.
    pub cfg: MixerConfig,
    /// Patch embedding.
    pub stem: PatchEmbed,
    /// The blocks.
    pub blocks: Vec<MixerBlock>,
    /// Final norm.
    pub norm: LayerNorm,
    /// Classification head (dense).
    pub head: Linear,
}

impl Mixer {
    /// A model initialised from `seed` (dense layers N(0, 0.02²) with zero biases;
    /// structured layers keep their own initialisation).
    pub fn new(cfg: &MixerConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let (d, n) = (cfg.dim, cfg.num_patches());
        let stem = PatchEmbed::new(cfg.channels, cfg.patch_size, d, &mut rng)?;
        let mut blocks = Vec::with_capacity(cfg.depth);
        for _ in 0..cfg.depth {
            let names = ["fc1", "fc2"];
            blocks.push(MixerBlock {
                norm1: LayerNorm::new(d, cfg.layer_norm_eps),
                mlp_tokens: Mlp::new(
                    [n, cfg.token_mlp_dim, n],
                    &cfg.token_linear,
                    Activation::GeluErf,
                    cfg.dropout,
                    names,
                    &mut rng,
                )?,
                norm2: LayerNorm::new(d, cfg.layer_norm_eps),
                mlp_channels: Mlp::new(
                    [d, cfg.channel_mlp_dim, d],
                    &cfg.channel_linear,
                    Activation::GeluErf,
                    cfg.dropout,
                    names,
                    &mut rng,
                )?,
            });
        }
        let head = Linear::new(d, cfg.num_classes, true, &mut rng)?;
        let mut model = Mixer { cfg: cfg.clone(), stem, blocks, norm: LayerNorm::new(d, cfg.layer_norm_eps), head };
        for (_, layer) in model.linears_mut() {
            reinit_dense(layer.as_ref(), 0.02, &mut rng)?;
        }
        reinit_dense(&model.head, 0.02, &mut rng)?;
        Ok(model)
    }
}

impl ImageClassifier for Mixer {
    fn forward(&self, images: &Var, ctx: &Ctx) -> Result<Var> {
        let c = &self.cfg;
        check_images("Mixer", images, c.channels, c.image_size)?;
        let mut x = self.stem.forward(images)?;
        for blk in &self.blocks {
            let t = blk.norm1.forward(&x)?.transpose(1, 2)?;
            x = x.add(&blk.mlp_tokens.forward(&t, ctx)?.transpose(1, 2)?)?;
            x = x.add(&blk.mlp_channels.forward(&blk.norm2.forward(&x)?, ctx)?)?;
        }
        self.head.forward(&self.norm.forward(&x)?.mean(1)?)
    }

    fn train_flops_per_image(&self) -> f64 {
        let c = &self.cfg;
        let n = c.num_patches();
        let (mut per_image, embed) = (0usize, c.channels * c.patch_size * c.patch_size * c.dim * n);
        for b in &self.blocks {
            // Token MLPs run once per channel, channel MLPs once per patch.
            per_image += linear_macs(&b.mlp_tokens.linears()) * c.dim + linear_macs(&b.mlp_channels.linears()) * n;
        }
        3.0 * 2.0 * (per_image + embed + c.dim * c.num_classes) as f64
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }
}

impl Module for Mixer {
    fn named_params(&self) -> NamedParams {
        let mut p = Self::prefixed("stem", &self.stem);
        for (i, b) in self.blocks.iter().enumerate() {
            p.extend(prefixed(&format!("blocks.{i}"), b.named_params()));
        }
        p.extend(Self::prefixed("norm", &self.norm));
        p.extend(Self::prefixed("head", &self.head));
        p
    }
}

impl SwapLinears for Mixer {
    fn linears_mut(&mut self) -> Vec<(String, &mut Box<dyn LinearLayer>)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            out.extend(prefixed_linears(&format!("blocks.{i}.mlp_tokens"), b.mlp_tokens.linears_mut()));
            out.extend(prefixed_linears(&format!("blocks.{i}.mlp_channels"), b.mlp_channels.linears_mut()));
        }
        out
    }
}
