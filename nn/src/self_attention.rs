//! Multi-head self-attention: a fused query/key/value projection, the attention
//! implementation chosen by [`AttentionImpl`], and an output projection, each projection
//! of its [`LinearKind`].

use crate::structured::{LinearKind, LinearLayer};
use crate::{AttentionImpl, Ctx, Module, NamedParams, prefixed};
use monarch_autograd::Var;
use monarch_tensor::{AttentionOpts, Result, bail};
use rand::rngs::StdRng;

/// Causal (GPT-2) or bidirectional (ViT) multi-head self-attention over (batch, seq, dim).
/// The projections are named as the model's checkpoints want (`c_attn`/`c_proj` in GPT-2,
/// `qkv`/`proj` in timm's ViT).
#[derive(Debug)]
pub struct SelfAttention {
    /// The fused projection `dim → 3·dim` (queries, keys, values in that order).
    pub qkv: Box<dyn LinearLayer>,
    /// The output projection `dim → dim`.
    pub proj: Box<dyn LinearLayer>,
    /// Number of heads; `dim` is a multiple of it.
    pub heads: usize,
    /// Hide later positions from earlier ones.
    pub causal: bool,
    /// Which attention kernel runs.
    pub attention: AttentionImpl,
    /// Dropout on the attention probabilities (training only).
    pub attn_dropout: f64,
    /// Dropout on the output (training only).
    pub resid_dropout: f64,
    names: [&'static str; 2],
}

/// Settings of a [`SelfAttention`] besides its width.
#[derive(Clone, Debug)]
pub struct AttentionSpec<'a> {
    /// Number of heads.
    pub heads: usize,
    /// Causal masking.
    pub causal: bool,
    /// Kind of both projections.
    pub linear: &'a LinearKind,
    /// The attention implementation.
    pub attention: &'a AttentionImpl,
    /// Dropout on probabilities and on the output.
    pub dropout: f64,
    /// Names of the fused input and the output projections.
    pub names: [&'static str; 2],
}

impl SelfAttention {
    /// A freshly initialised block of width `dim`.
    pub fn new(dim: usize, spec: &AttentionSpec<'_>, rng: &mut StdRng) -> Result<Self> {
        if spec.heads == 0 || dim % spec.heads != 0 {
            bail!("SelfAttention", "width {dim} is not a multiple of {} heads", spec.heads);
        }
        let attn_dropout = match spec.attention {
            // Scatterbrain's low-rank part has no probabilities to drop.
            AttentionImpl::Scatterbrain { .. } => 0.0,
            _ => spec.dropout,
        };
        Ok(SelfAttention {
            qkv: spec.linear.build(dim, 3 * dim, true, rng)?,
            proj: spec.linear.build(dim, dim, true, rng)?,
            heads: spec.heads,
            causal: spec.causal,
            attention: spec.attention.clone(),
            attn_dropout,
            resid_dropout: spec.dropout,
            names: spec.names,
        })
    }

    /// Attention of `x` (batch, seq, dim) over itself → (batch, seq, dim).
    pub fn forward(&self, x: &Var, ctx: &Ctx) -> Result<Var> {
        let &[b, t, d] = x.dims() else {
            bail!("SelfAttention", "expected input (batch, seq, dim), got shape {}", x.shape());
        };
        let (h, hd) = (self.heads, d / self.heads);
        // (b, t, 3, h, hd) → (3, b, h, t, hd), one copy; q, k and v are views of it.
        let qkv = self.qkv.forward(x)?.reshape([b, t, 3, h, hd])?.permute(&[2, 0, 3, 1, 4])?.contiguous()?;
        let part = |i: usize| qkv.narrow(0, i, 1)?.squeeze(0);
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let dropout = if ctx.train { self.attn_dropout } else { 0.0 };
        let seed = if dropout > 0.0 { ctx.next_seed() } else { 0 };
        let opts = AttentionOpts { causal: self.causal, dropout, seed };
        let y = self.attention.apply(&q, &k, &v, &opts)?;
        let y = y.transpose(1, 2)?.reshape([b, t, d])?;
        ctx.dropout(&self.proj.forward(&y)?, self.resid_dropout)
    }

    /// The two layers, for FLOP counts.
    pub fn linears(&self) -> [&dyn LinearLayer; 2] {
        [self.qkv.as_ref(), self.proj.as_ref()]
    }

    /// The two projections with their names, for densification and projection.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut Box<dyn LinearLayer>); 2] {
        [(self.names[0], &mut self.qkv), (self.names[1], &mut self.proj)]
    }
}

impl Module for SelfAttention {
    fn named_params(&self) -> NamedParams {
        let mut p = prefixed(self.names[0], self.qkv.named_params());
        p.extend(prefixed(self.names[1], self.proj.named_params()));
        p
    }
}
