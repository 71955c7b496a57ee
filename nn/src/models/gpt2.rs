//! GPT-2 (Radford et al. 2019): pre-LayerNorm decoder blocks, learned positions, GELU
//! (tanh) MLPs and an output head tied to the token embedding. Parameter names follow
//! Hugging Face's `GPT2Model` (`wte.weight`, `h.0.attn.c_attn.weight`, ...), with weights
//! in PyTorch `Linear` layout (out, in); see [`super::hf_gpt2`] for loading Hugging Face
//! checkpoints, whose `Conv1D` weights are stored transposed.

use super::{linear_macs, reinit_dense};
use crate::mlp::{Activation, Mlp};
use crate::self_attention::{AttentionSpec, KvCache, SelfAttention};
use crate::structured::{LinearKind, LinearLayer};
use crate::swap::{SwapLinears, prefixed_linears};
use crate::{AttentionImpl, Ctx, Embedding, LayerNorm, Module, NamedParams, prefixed};
use monarch_autograd::Var;
use monarch_tensor::{CrossEntropy, Result, Tensor, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// The shape and layer kinds of a GPT-2 (`[model]` in a TOML config). Missing fields take
/// GPT-2 small's values with dense layers and flash attention.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gpt2Config {
    /// Vocabulary size (GPT-2's BPE: 50257).
    pub vocab_size: usize,
    /// Longest sequence (positions learned).
    pub block_size: usize,
    /// Decoder blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Width.
    pub n_embd: usize,
    /// Dropout on embeddings, attention probabilities, residual branches.
    pub dropout: f64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Kind of the attention projections (`c_attn`, `c_proj`).
    pub attn_linear: LinearKind,
    /// Kind of the MLP layers (`c_fc`, `c_proj`).
    pub mlp_linear: LinearKind,
    /// The attention implementation.
    pub attention: AttentionImpl,
}

impl Default for Gpt2Config {
    fn default() -> Self {
        Gpt2Config::small()
    }
}

impl Gpt2Config {
    /// GPT-2 small (124M parameters), dense.
    pub fn small() -> Self {
        Gpt2Config {
            vocab_size: 50257,
            block_size: 1024,
            n_layer: 12,
            n_head: 12,
            n_embd: 768,
            dropout: 0.0,
            layer_norm_eps: 1e-5,
            attn_linear: LinearKind::Dense,
            mlp_linear: LinearKind::Dense,
            attention: AttentionImpl::Flash,
        }
    }

    /// GPT-2 medium (350M parameters), dense.
    pub fn medium() -> Self {
        Gpt2Config { n_layer: 24, n_head: 16, n_embd: 1024, ..Self::small() }
    }

    /// Checks the sizes before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        if self.vocab_size == 0 || self.block_size == 0 || self.n_layer == 0 || self.n_embd == 0 {
            bail!("Gpt2Config", "vocab_size, block_size, n_layer and n_embd must be at least 1");
        }
        if self.n_head == 0 || self.n_embd % self.n_head != 0 {
            bail!("Gpt2Config", "n_embd {} is not a multiple of n_head {}", self.n_embd, self.n_head);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("Gpt2Config", "dropout must lie in [0, 1), got {}", self.dropout);
        }
        if !(self.layer_norm_eps >= 0.0 && self.layer_norm_eps.is_finite()) {
            bail!("Gpt2Config", "layer_norm_eps must be a finite number >= 0, got {}", self.layer_norm_eps);
        }
        Ok(())
    }
}

/// One pre-LN decoder block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Debug)]
pub struct Gpt2Block {
    /// Norm before attention.
    pub ln_1: LayerNorm,
    /// Causal self-attention.
    pub attn: SelfAttention,
    /// Norm before the MLP.
    pub ln_2: LayerNorm,
    /// The MLP, 4× wide.
    pub mlp: Mlp,
}

impl Gpt2Block {
    fn forward(&self, x: &Var, ctx: &Ctx) -> Result<Var> {
        let x = x.add(&self.attn.forward(&self.ln_1.forward(x)?, ctx)?)?;
        x.add(&self.mlp.forward(&self.ln_2.forward(&x)?, ctx)?)
    }

    /// [`Gpt2Block::forward`] in evaluation mode for new positions after those `kv` holds.
    fn forward_cached(&self, x: &Var, kv: &mut KvCache) -> Result<Var> {
        let x = x.add(&self.attn.forward_cached(&self.ln_1.forward(x)?, kv)?)?;
        x.add(&self.mlp.forward(&self.ln_2.forward(&x)?, &Ctx::eval())?)
    }
}

impl Module for Gpt2Block {
    fn named_params(&self) -> NamedParams {
        let mut p = Self::prefixed("ln_1", &self.ln_1);
        p.extend(Self::prefixed("attn", &self.attn));
        p.extend(Self::prefixed("ln_2", &self.ln_2));
        p.extend(Self::prefixed("mlp", &self.mlp));
        p
    }
}

/// Every layer's keys and values of the positions decoded so far, for
/// [`Gpt2::hidden_cached`].
#[derive(Clone, Debug, Default)]
pub struct Gpt2Cache {
    layers: Vec<KvCache>,
}

impl Gpt2Cache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, KvCache::len)
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the first `len` positions of every layer ([`KvCache::truncate`]).
    pub fn truncate(&mut self, len: usize) {
        self.layers.iter_mut().for_each(|kv| kv.truncate(len));
    }
}

/// A GPT-2 language model.
#[derive(Debug)]
pub struct Gpt2 {
    /// Its configuration.
    pub cfg: Gpt2Config,
    /// Token embedding (vocab, n_embd), also the output head.
    pub wte: Embedding,
    /// Position embedding (block_size, n_embd).
    pub wpe: Embedding,
    /// The decoder blocks.
    pub h: Vec<Gpt2Block>,
    /// Final norm.
    pub ln_f: LayerNorm,
}

impl Gpt2 {
    /// A model initialised as GPT-2 is, from `seed`: embeddings and dense weights
    /// N(0, 0.02²), residual output projections N(0, (0.02/√(2·n_layer))²), biases 0;
    /// structured layers keep their own initialisation.
    pub fn new(cfg: &Gpt2Config, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let d = cfg.n_embd;
        let wte = Embedding::new(cfg.vocab_size, d, 0.02, &mut rng)?;
        let wpe = Embedding::new(cfg.block_size, d, 0.01, &mut rng)?;
        let spec = AttentionSpec {
            heads: cfg.n_head,
            causal: true,
            linear: &cfg.attn_linear,
            attention: &cfg.attention,
            dropout: cfg.dropout,
            names: ["c_attn", "c_proj"],
        };
        let mut h = Vec::with_capacity(cfg.n_layer);
        for _ in 0..cfg.n_layer {
            h.push(Gpt2Block {
                ln_1: LayerNorm::new(d, cfg.layer_norm_eps),
                attn: SelfAttention::new(d, &spec, &mut rng)?,
                ln_2: LayerNorm::new(d, cfg.layer_norm_eps),
                mlp: Mlp::new(
                    [d, 4 * d, d],
                    &cfg.mlp_linear,
                    Activation::GeluTanh,
                    cfg.dropout,
                    ["c_fc", "c_proj"],
                    &mut rng,
                )?,
            });
        }
        let mut model = Gpt2 { cfg: cfg.clone(), wte, wpe, h, ln_f: LayerNorm::new(d, cfg.layer_norm_eps) };
        let resid_std = 0.02 / ((2 * cfg.n_layer) as f64).sqrt();
        for (name, layer) in model.linears_mut() {
            let std = if name.ends_with(".c_proj") { resid_std } else { 0.02 };
            reinit_dense(layer.as_ref(), std, &mut rng)?;
        }
        Ok(model)
    }

    /// The final hidden states (batch, seq, n_embd) for token ids `ids` (`I64`, (batch, seq)).
    pub fn hidden(&self, ids: &Tensor, ctx: &Ctx) -> Result<Var> {
        let &[_, t] = ids.dims() else { bail!("Gpt2", "token ids must be (batch, seq), got shape {}", ids.shape()) };
        if t == 0 || t > self.cfg.block_size {
            bail!("Gpt2", "sequence length {t} is not in 1..={}", self.cfg.block_size);
        }
        // Positions 0..t are the first t rows of the position table (a view, no lookup).
        let pos = self.wpe.weight.var().narrow(0, 0, t)?;
        let mut x = ctx.dropout(&self.wte.forward(ids)?.add(&pos)?, self.cfg.dropout)?;
        for block in &self.h {
            x = block.forward(&x, ctx)?;
        }
        self.ln_f.forward(&x)
    }

    /// Whether [`Gpt2::hidden_cached`] can run (naive or flash attention).
    pub fn can_cache(&self) -> bool {
        self.h.iter().all(|b| b.attn.can_cache())
    }

    /// The final hidden states (batch, new, n_embd) of the tokens `ids` (batch, new) that
    /// follow the positions `cache` holds, which gains theirs: decoding one token at a
    /// time costs one position's forward, not the whole prefix's. Evaluation mode (no
    /// dropout). Refuses more than `block_size` positions in all, and attention kinds
    /// without a cache ([`Gpt2::can_cache`]).
    pub fn hidden_cached(&self, ids: &Tensor, cache: &mut Gpt2Cache) -> Result<Var> {
        let &[_, t] = ids.dims() else { bail!("Gpt2", "token ids must be (batch, seq), got shape {}", ids.shape()) };
        let start = cache.len();
        if t == 0 || start + t > self.cfg.block_size {
            bail!("Gpt2", "{t} new positions after {start} cached do not fit 1..={}", self.cfg.block_size);
        }
        cache.layers.resize_with(self.h.len(), || KvCache::with_max_len(self.cfg.block_size));
        let pos = self.wpe.weight.var().narrow(0, start, t)?;
        let mut x = self.wte.forward(ids)?.add(&pos)?;
        // A layer that cannot cache (every layer shares the attention kind) refuses at the
        // first, before any cache changes.
        for (block, kv) in self.h.iter().zip(&mut cache.layers) {
            x = block.forward_cached(&x, kv)?;
        }
        self.ln_f.forward(&x)
    }

    /// Next-token logits (batch, seq, vocab) through the tied head.
    pub fn forward(&self, ids: &Tensor, ctx: &Ctx) -> Result<Var> {
        self.hidden(ids, ctx)?.linear(&self.wte.weight.var(), None)
    }

    /// Mean next-token cross-entropy of `ids` against `targets` (both (batch, seq));
    /// targets equal to `ignore_index` count for nothing.
    pub fn loss(&self, ids: &Tensor, targets: &Tensor, ignore_index: i64, ctx: &Ctx) -> Result<Var> {
        if ids.dims() != targets.dims() {
            return Err(monarch_tensor::Error::ShapeMismatch {
                op: "Gpt2::loss",
                lhs: ids.shape().clone(),
                rhs: targets.shape().clone(),
            });
        }
        // The tied head and the loss in one op: the (rows, vocab) logits never exist whole.
        let hidden = self.hidden(ids, ctx)?.reshape([ids.elem_count(), self.cfg.n_embd])?;
        let ce = CrossEntropy { ignore_index: Some(ignore_index), label_smoothing: 0.0 };
        hidden.linear_cross_entropy(&self.wte.weight.var(), &targets.flatten_all()?, ce, None)
    }

    /// Training FLOPs (forward + backward = 3 × forward) per token at sequence length
    /// `seq`: 2 per multiply-add of every linear layer and the head, plus attention's
    /// `QKᵀ` and `PV` over the whole `seq` (the convention of the PaLM appendix).
    pub fn train_flops_per_token(&self, seq: usize) -> f64 {
        let c = &self.cfg;
        let linear: usize = self.h.iter().map(|b| linear_macs(&b.attn.linears()) + linear_macs(&b.mlp.linears())).sum();
        let head = c.vocab_size * c.n_embd;
        let attention = 2 * c.n_layer * seq * c.n_embd;
        3.0 * 2.0 * (linear + head + attention) as f64
    }
}

impl Module for Gpt2 {
    fn named_params(&self) -> NamedParams {
        let mut p = Self::prefixed("wte", &self.wte);
        p.extend(Self::prefixed("wpe", &self.wpe));
        for (i, b) in self.h.iter().enumerate() {
            p.extend(prefixed(&format!("h.{i}"), b.named_params()));
        }
        p.extend(Self::prefixed("ln_f", &self.ln_f));
        p
    }
}

impl SwapLinears for Gpt2 {
    fn linears_mut(&mut self) -> Vec<(String, &mut Box<dyn LinearLayer>)> {
        let mut out = Vec::new();
        for (i, b) in self.h.iter_mut().enumerate() {
            out.extend(prefixed_linears(&format!("h.{i}.attn"), b.attn.linears_mut()));
            out.extend(prefixed_linears(&format!("h.{i}.mlp"), b.mlp.linears_mut()));
        }
        out
    }
}
