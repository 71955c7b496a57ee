//! The Vision Transformer (Dosovitskiy et al. 2021): patch embedding, a class token,
//! learned positions, pre-LN bidirectional blocks and a linear head on the class token.
//! Parameter names follow timm's `VisionTransformer` (`patch_embed.proj.weight`,
//! `cls_token`, `pos_embed`, `blocks.0.attn.qkv.weight`, `blocks.0.mlp.fc1.weight`, ...).

use super::{ImageClassifier, PatchEmbed, check_images, linear_macs, reinit_dense, validate_vision};
use crate::mlp::{Activation, Mlp};
use crate::self_attention::{AttentionSpec, SelfAttention};
use crate::structured::{LinearKind, LinearLayer};
use crate::swap::{SwapLinears, prefixed_linears};
use crate::{AttentionImpl, Ctx, LayerNorm, Linear, Module, NamedParams, prefixed};
use monarch_autograd::{Param, Var};
use monarch_tensor::{DType, Init, Result, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// The shape and layer kinds of a ViT (`[model]` in a TOML config). Missing fields take
/// ViT-S/16's values at 224 pixels, dense, with flash attention.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VitConfig {
    /// Input side in pixels (square images).
    pub image_size: usize,
    /// Patch side in pixels; divides `image_size`.
    pub patch_size: usize,
    /// Input channels.
    pub channels: usize,
    /// Output classes.
    pub num_classes: usize,
    /// Width.
    pub dim: usize,
    /// Blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// Hidden width of the MLPs.
    pub mlp_dim: usize,
    /// Dropout on embeddings, attention probabilities and residual branches.
    pub dropout: f64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Kind of the attention projections (`qkv`, `proj`).
    pub attn_linear: LinearKind,
    /// Kind of the MLP layers (`fc1`, `fc2`).
    pub mlp_linear: LinearKind,
    /// The attention implementation.
    pub attention: AttentionImpl,
}

impl Default for VitConfig {
    fn default() -> Self {
        VitConfig::small()
    }
}

impl VitConfig {
    /// ViT-S/16 at 224 pixels, 1000 classes (22M parameters).
    pub fn small() -> Self {
        VitConfig {
            image_size: 224,
            patch_size: 16,
            channels: 3,
            num_classes: 1000,
            dim: 384,
            depth: 12,
            heads: 6,
            mlp_dim: 1536,
            dropout: 0.0,
            layer_norm_eps: 1e-6,
            attn_linear: LinearKind::Dense,
            mlp_linear: LinearKind::Dense,
            attention: AttentionImpl::Flash,
        }
    }

    /// ViT-B/16 at 224 pixels (86M parameters).
    pub fn base() -> Self {
        VitConfig { dim: 768, heads: 12, mlp_dim: 3072, ..Self::small() }
    }

    /// Checks the sizes before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        let sizes = [self.channels, self.num_classes, self.dim, self.depth, self.mlp_dim, self.heads];
        validate_vision("VitConfig", &sizes, (self.image_size, self.patch_size), self.dropout, self.layer_norm_eps)?;
        if self.dim % self.heads != 0 {
            bail!("VitConfig", "dim {} is not a multiple of heads {}", self.dim, self.heads);
        }
        Ok(())
    }

    /// Patches per image.
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

/// One pre-LN encoder block.
#[derive(Debug)]
pub struct VitBlock {
    /// Norm before attention.
    pub norm1: LayerNorm,
    /// Bidirectional self-attention.
    pub attn: SelfAttention,
    /// Norm before the MLP.
    pub norm2: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
}

impl Module for VitBlock {
    fn named_params(&self) -> NamedParams {
        let mut p = Self::prefixed("norm1", &self.norm1);
        p.extend(Self::prefixed("attn", &self.attn));
        p.extend(Self::prefixed("norm2", &self.norm2));
        p.extend(Self::prefixed("mlp", &self.mlp));
        p
    }
}

/// A Vision Transformer classifier.
#[derive(Debug)]
pub struct Vit {
    /// Its configuration.
    pub cfg: VitConfig,
    /// Patch embedding.
    pub patch_embed: PatchEmbed,
    /// The class token (1, 1, dim).
    pub cls_token: Param,
    /// Learned positions (1, patches + 1, dim).
    pub pos_embed: Param,
    /// The encoder blocks.
    pub blocks: Vec<VitBlock>,
    /// Final norm.
    pub norm: LayerNorm,
    /// Classification head (dense).
    pub head: Linear,
}

impl Vit {
    /// A model initialised from `seed` (timm's scheme: dense weights, positions and class
    /// token N(0, 0.02²), biases 0; structured layers keep their own initialisation).
    pub fn new(cfg: &VitConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let d = cfg.dim;
        let normal = Init::Normal { mean: 0.0, std: 0.02 };
        let patch_embed = PatchEmbed::new(cfg.channels, cfg.patch_size, d, &mut rng)?;
        let cls_token = Param::new(normal.tensor([1, 1, d], DType::F32, &mut rng)?);
        let pos_embed = Param::new(normal.tensor([1, cfg.num_patches() + 1, d], DType::F32, &mut rng)?);
        let spec = AttentionSpec {
            heads: cfg.heads,
            causal: false,
            linear: &cfg.attn_linear,
            attention: &cfg.attention,
            dropout: cfg.dropout,
            names: ["qkv", "proj"],
        };
        let mut blocks = Vec::with_capacity(cfg.depth);
        for _ in 0..cfg.depth {
            blocks.push(VitBlock {
                norm1: LayerNorm::new(d, cfg.layer_norm_eps),
                attn: SelfAttention::new(d, &spec, &mut rng)?,
                norm2: LayerNorm::new(d, cfg.layer_norm_eps),
                mlp: Mlp::new(
                    [d, cfg.mlp_dim, d],
                    &cfg.mlp_linear,
                    Activation::GeluErf,
                    cfg.dropout,
                    ["fc1", "fc2"],
                    &mut rng,
                )?,
            });
        }
        let head = Linear::new(d, cfg.num_classes, true, &mut rng)?;
        let mut model = Vit {
            cfg: cfg.clone(),
            patch_embed,
            cls_token,
            pos_embed,
            blocks,
            norm: LayerNorm::new(d, cfg.layer_norm_eps),
            head,
        };
        for (_, layer) in model.linears_mut() {
            reinit_dense(layer.as_ref(), 0.02, &mut rng)?;
        }
        reinit_dense(&model.head, 0.02, &mut rng)?;
        Ok(model)
    }
}

impl ImageClassifier for Vit {
    fn forward(&self, images: &Var, ctx: &Ctx) -> Result<Var> {
        let c = &self.cfg;
        check_images("Vit", images, c.channels, c.image_size)?;
        let x = self.patch_embed.forward(images)?;
        let b = x.dims()[0];
        let cls = self.cls_token.var().broadcast_as([b, 1, c.dim])?;
        let x = Var::cat(&[&cls, &x], 1)?.add(&self.pos_embed.var())?;
        let mut x = ctx.dropout(&x, c.dropout)?;
        for blk in &self.blocks {
            x = x.add(&blk.attn.forward(&blk.norm1.forward(&x)?, ctx)?)?;
            x = x.add(&blk.mlp.forward(&blk.norm2.forward(&x)?, ctx)?)?;
        }
        let cls_out = self.norm.forward(&x)?.narrow(1, 0, 1)?.squeeze(1)?;
        self.head.forward(&cls_out)
    }

    fn train_flops_per_image(&self) -> f64 {
        let c = &self.cfg;
        let tokens = c.num_patches() + 1;
        let linear: usize =
            self.blocks.iter().map(|b| linear_macs(&b.attn.linears()) + linear_macs(&b.mlp.linears())).sum();
        let attention = 2 * c.depth * tokens * c.dim;
        let embed = c.channels * c.patch_size * c.patch_size * c.dim;
        let per_token = linear + attention + embed;
        3.0 * 2.0 * (per_token * tokens + c.dim * c.num_classes) as f64
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }
}

impl Module for Vit {
    fn named_params(&self) -> NamedParams {
        let mut p = Self::prefixed("patch_embed", &self.patch_embed);
        p.push(("cls_token".into(), self.cls_token.clone()));
        p.push(("pos_embed".into(), self.pos_embed.clone()));
        for (i, b) in self.blocks.iter().enumerate() {
            p.extend(prefixed(&format!("blocks.{i}"), b.named_params()));
        }
        p.extend(Self::prefixed("norm", &self.norm));
        p.extend(Self::prefixed("head", &self.head));
        p
    }
}

impl SwapLinears for Vit {
    fn linears_mut(&mut self) -> Vec<(String, &mut Box<dyn LinearLayer>)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            out.extend(prefixed_linears(&format!("blocks.{i}.attn"), b.attn.linears_mut()));
            out.extend(prefixed_linears(&format!("blocks.{i}.mlp"), b.mlp.linears_mut()));
        }
        out
    }
}
