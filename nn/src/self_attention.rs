//! Multi-head self-attention: a fused query/key/value projection, the attention
//! implementation chosen by [`AttentionImpl`], and an output projection, each projection
//! of its [`LinearKind`].

use crate::structured::{LinearKind, LinearLayer};
use crate::{AttentionImpl, Ctx, Module, NamedParams, prefixed};
use monarch_autograd::Var;
use monarch_tensor::{AttentionOpts, Result, Tensor, bail};
use rand::rngs::StdRng;

/// One attention layer's keys and values of the positions decoded so far, for
/// [`SelfAttention::forward_cached`]. They live in buffers (batch, heads, capacity,
/// head_dim) that new positions are written into in place, growing by doubling (not past
/// the bound of [`KvCache::with_max_len`] unless the positions need it), so a decoding
/// step copies only its own keys and values and attention reads the cache where it lies. While anything else
/// still holds the views a step handed out (a recorded graph, when decoding outside
/// `no_grad`), the next write copies the buffers first, so those views never change.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    buf: Option<(Tensor, Tensor)>,
    len: usize,
    max_len: Option<usize>,
}

impl KvCache {
    /// An empty cache whose buffers grow to at most `max_len` positions before they are
    /// needed (a model's context length), not past it by doubling.
    pub fn with_max_len(max_len: usize) -> Self {
        KvCache { max_len: Some(max_len), ..Default::default() }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the buffers hold room for.
    pub fn capacity(&self) -> usize {
        self.buf.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Keeps the first `len` positions only (all when it holds fewer): decoding goes on
    /// from there, as after a rejected draft or to reuse a shared prompt. The buffers stay.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends keys `k` and values `v` (batch, heads, new, head_dim) and returns every
    /// position's, views of the buffers (batch, heads, len, head_dim).
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let &[b, h, t, hd] = k.dims() else { bail!("KvCache", "keys must be (batch, heads, new, head_dim)") };
        let fits = |buf: &Tensor| {
            let d = buf.dims();
            (d[0], d[1], d[3]) == (b, h, hd) && buf.device() == k.device()
        };
        match &self.buf {
            Some((kb, _)) if !fits(kb) && self.len > 0 => {
                let d = kb.dims();
                bail!("KvCache", "a cache of batch {} and {} heads of {} cannot take {}", d[0], d[1], d[3], k.shape());
            }
            Some((kb, _)) if !fits(kb) => self.buf = None,
            _ => {}
        }
        let need = self.len + t;
        if need > self.capacity() {
            let grown = (2 * self.capacity()).min(self.max_len.unwrap_or(usize::MAX)).max(need);
            let dtype = self.buf.as_ref().map_or(k.dtype(), |(kb, _)| kb.dtype());
            let fresh = || Tensor::zeros_on([b, h, grown, hd], dtype, k.device());
            let (mut nk, mut nv) = (fresh()?, fresh()?);
            if let Some((kb, vb)) = &self.buf
                && self.len > 0
            {
                nk.slice_assign(2, 0, &kb.narrow(2, 0, self.len)?)?;
                nv.slice_assign(2, 0, &vb.narrow(2, 0, self.len)?)?;
            }
            self.buf = Some((nk, nv));
        }
        let (kb, vb) = self.buf.as_mut().expect("allocated above");
        let dtype = kb.dtype();
        kb.slice_assign(2, self.len, &k.to_dtype(dtype)?)?;
        vb.slice_assign(2, self.len, &v.to_dtype(dtype)?)?;
        self.len = need;
        Ok((kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?))
    }
}

/// Causal (GPT-2) or bidirectional (ViT) multi-head self-attention over (batch, seq, dim).
/// The projections are named as the model's checkpoints want (`c_attn`/`c_proj` in GPT-2,
/// `qkv`/`proj` in timm's ViT). Under autocast the output projection's input arrives in
/// the autocast dtype.
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

    /// The input's (batch, seq, dim), and its queries, keys and values, each (batch,
    /// heads, seq, head_dim): (b, t, 3, h, hd) → (3, b, h, t, hd), one copy, of which q,
    /// k and v are views. Under autocast they stay in its dtype through the copy,
    /// attention and the output projection's input, as only products use them.
    fn heads_qkv(&self, x: &Var) -> Result<([usize; 3], [Var; 3])> {
        let &[b, t, d] = x.dims() else {
            bail!("SelfAttention", "expected input (batch, seq, dim), got shape {}", x.shape());
        };
        let (h, hd) = (self.heads, d / self.heads);
        let qkv = self.qkv.forward_low(x)?.reshape([b, t, 3, h, hd])?.permute(&[2, 0, 3, 1, 4])?.contiguous()?;
        let part = |i: usize| qkv.narrow(0, i, 1)?.squeeze(0);
        Ok(([b, t, d], [part(0)?, part(1)?, part(2)?]))
    }

    /// Attention of `x` (batch, seq, dim) over itself → (batch, seq, dim).
    pub fn forward(&self, x: &Var, ctx: &Ctx) -> Result<Var> {
        let ([b, t, d], [q, k, v]) = self.heads_qkv(x)?;
        let dropout = if ctx.train { self.attn_dropout } else { 0.0 };
        let seed = if dropout > 0.0 { ctx.next_seed() } else { 0 };
        let opts = AttentionOpts { causal: self.causal, dropout, seed };
        let y = self.attention.apply(&q, &k, &v, &opts)?;
        let y = y.transpose(1, 2)?.reshape([b, t, d])?;
        ctx.dropout(&self.proj.forward(&y)?, self.resid_dropout)
    }

    /// Whether [`SelfAttention::forward_cached`] can run: the dense implementations
    /// (naive, flash), whose masks do not depend on where a query sits in the sequence.
    pub fn can_cache(&self) -> bool {
        matches!(self.attention, AttentionImpl::Naive | AttentionImpl::Flash)
    }

    /// Attention of the new positions `x` (batch, new, dim) over every position so far:
    /// those whose keys and values `cache` holds from earlier calls, then these, which it
    /// gains. Decoding with it does not recompute the prefix; the mask is the usual one
    /// (causal: each new position sees every earlier one and itself), with no dropout.
    pub fn forward_cached(&self, x: &Var, cache: &mut KvCache) -> Result<Var> {
        if !self.can_cache() {
            bail!("SelfAttention", "{:?} attention has no key/value cache (naive or flash have)", self.attention);
        }
        let ([b, t, d], [q, k, v]) = self.heads_qkv(x)?;
        let (k, v) = cache.append(k.value(), v.value())?;
        // Causal attention aligns the last query with the last key: the new positions
        // see the whole cache.
        let opts = AttentionOpts { causal: self.causal, dropout: 0.0, seed: 0 };
        let y = self.attention.apply(&q, &Var::constant(k), &Var::constant(v), &opts)?;
        self.proj.forward(&y.transpose(1, 2)?.reshape([b, t, d])?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structured::{Gate, Rank};
    use monarch_autograd::autocast;
    use monarch_tensor::{DType, Tensor};
    use rand::SeedableRng;
    use std::sync::{Arc, Mutex};

    /// A layer that records the dtype of its last input.
    #[derive(Debug)]
    struct Spy(Box<dyn LinearLayer>, Arc<Mutex<Option<DType>>>);

    impl Module for Spy {
        fn named_params(&self) -> NamedParams {
            self.0.named_params()
        }
    }

    impl LinearLayer for Spy {
        fn forward(&self, x: &Var) -> Result<Var> {
            *self.1.lock().unwrap() = Some(x.dtype());
            self.0.forward(x)
        }
        fn in_features(&self) -> usize {
            self.0.in_features()
        }
        fn out_features(&self) -> usize {
            self.0.out_features()
        }
        fn macs_per_row(&self) -> usize {
            self.0.macs_per_row()
        }
        fn to_dense(&self) -> Result<crate::Linear> {
            self.0.to_dense()
        }
        fn kind(&self) -> LinearKind {
            self.0.kind()
        }
    }

    /// Output and the gradients of input and parameters under bf16 autocast: through
    /// [`SelfAttention::forward`], or (`keep_low` false) through the same layers with the
    /// qkv projection's output widened to f32, as before q, k and v were kept in bf16.
    fn run(attn: &SelfAttention, x: &Tensor, keep_low: bool) -> Vec<Vec<f32>> {
        let _g = autocast(Some(DType::BF16));
        let xv = Var::leaf(x.clone());
        let y = if keep_low {
            attn.forward(&xv, &Ctx::eval()).unwrap()
        } else {
            let &[b, t, d] = x.dims() else { unreachable!() };
            let (h, hd) = (attn.heads, d / attn.heads);
            // A fresh f32 var: autocast casts it to bf16 again for attention.
            let qkv = attn.qkv.forward(&xv).unwrap().mul_scalar(1.0).unwrap();
            let qkv = qkv.reshape([b, t, 3, h, hd]).unwrap().permute(&[2, 0, 3, 1, 4]).unwrap().contiguous().unwrap();
            let part = |i: usize| qkv.narrow(0, i, 1).unwrap().squeeze(0).unwrap();
            let opts = AttentionOpts { causal: attn.causal, dropout: 0.0, seed: 0 };
            let y = attn.attention.apply(&part(0), &part(1), &part(2), &opts).unwrap();
            attn.proj.forward(&y.transpose(1, 2).unwrap().reshape([b, t, d]).unwrap()).unwrap()
        };
        assert_eq!(y.dtype(), DType::F32);
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![y.value().to_vec::<f32>().unwrap(), grads.get(&xv).unwrap().to_vec::<f32>().unwrap()];
        for (name, p) in attn.named_params() {
            let g = grads.get(&p).unwrap_or_else(|| panic!("no gradient for {name}"));
            assert_eq!(g.dtype(), DType::F32, "{name}");
            out.push(g.to_vec::<f32>().unwrap());
        }
        out
    }

    /// `run` both ways, checking that the output projection's input is bf16 when kept low.
    fn compare(attn: &mut SelfAttention, x: &Tensor, what: &str) {
        let seen = Arc::new(Mutex::new(None));
        let proj = std::mem::replace(
            &mut attn.proj,
            Box::new(crate::Linear::new(1, 1, false, &mut StdRng::seed_from_u64(0)).unwrap()),
        );
        attn.proj = Box::new(Spy(proj, seen.clone()));
        let (low, widened) = (run(attn, x, true), run(attn, x, false));
        assert_eq!(*seen.lock().unwrap(), Some(DType::F32), "{what}: the old path widens");
        // bf16 values are exact in f32 and the three gradient parts are disjoint:
        // keeping them low changes no bit.
        assert_eq!(low, widened, "{what}");
        run(attn, x, true);
        assert_eq!(*seen.lock().unwrap(), Some(DType::BF16), "{what}: attention's output stays bf16");
    }

    /// The cache grows by doubling up to its bound (then exactly as needed), keeps its
    /// buffers when truncated, and takes another batch size once emptied.
    #[test]
    fn a_key_cache_doubles_up_to_its_bound_and_keeps_its_buffers() {
        let spec = AttentionSpec {
            heads: 2,
            causal: true,
            linear: &LinearKind::Dense,
            attention: &AttentionImpl::Flash,
            dropout: 0.0,
            names: ["a", "b"],
        };
        let attn = SelfAttention::new(8, &spec, &mut StdRng::seed_from_u64(1)).unwrap();
        let _guard = monarch_autograd::no_grad();
        let x = |b: usize, t: usize| Var::constant(Tensor::randn([b, t, 8], 0.0, 1.0, t as u64).unwrap());
        let mut cache = KvCache::with_max_len(10);
        let mut seen = Vec::new();
        for t in [3, 1, 1, 1, 1, 3, 1] {
            attn.forward_cached(&x(2, t), &mut cache).unwrap();
            seen.push((cache.len(), cache.capacity()));
        }
        assert_eq!(seen, [(3, 3), (4, 6), (5, 6), (6, 6), (7, 10), (10, 10), (11, 11)]);
        cache.truncate(4);
        assert_eq!((cache.len(), cache.capacity()), (4, 11));
        assert!(attn.forward_cached(&x(3, 1), &mut cache).is_err(), "another batch size");
        cache.truncate(0);
        attn.forward_cached(&x(3, 2), &mut cache).unwrap();
        assert_eq!((cache.len(), cache.capacity()), (2, 2));
    }

    #[test]
    fn under_autocast_queries_keys_and_values_stay_bf16_with_the_same_results() {
        let x = Tensor::randn([2, 8, 32], 0.0, 1.0, 11).unwrap();
        fn spec<'a>(linear: &'a LinearKind, attention: &'a AttentionImpl, causal: bool) -> AttentionSpec<'a> {
            AttentionSpec { heads: 4, causal, linear, attention, dropout: 0.0, names: ["a", "b"] }
        }
        for (linear, attention) in [
            (LinearKind::Dense, AttentionImpl::Flash),
            (LinearKind::Monarch { nblocks: 4 }, AttentionImpl::Flash),
            (LinearKind::BlockSparse { butterfly_size: 2, n_factors: 1, block: 16 }, AttentionImpl::Flash),
            (LinearKind::LowRank { rank: Rank::Fixed(8) }, AttentionImpl::Flash),
            (LinearKind::Dense, AttentionImpl::Naive),
        ] {
            let mut attn =
                SelfAttention::new(32, &spec(&linear, &attention, true), &mut StdRng::seed_from_u64(3)).unwrap();
            compare(&mut attn, &x, &format!("{linear:?} {attention:?}"));
        }
        // Output projections of the other kinds take the bf16 input too; a butterfly (not
        // autocast) widens it.
        let (bs, r) = ((2, 1, 16), Rank::Fixed(4));
        for proj in [
            LinearKind::Butterfly,
            LinearKind::BlockDiag { nblocks: 4 },
            LinearKind::Pixelfly { butterfly_size: bs.0, n_factors: bs.1, block: bs.2, rank: r, gate: Gate::Half },
            LinearKind::Pixelfly { butterfly_size: bs.0, n_factors: bs.1, block: bs.2, rank: r, gate: Gate::Learned },
        ] {
            let mut rng = StdRng::seed_from_u64(3);
            let mut attn =
                SelfAttention::new(32, &spec(&LinearKind::Dense, &AttentionImpl::Flash, false), &mut rng).unwrap();
            attn.proj = proj.build(32, 32, true, &mut rng).unwrap();
            compare(&mut attn, &x, &format!("{proj:?} projection"));
        }
    }
}
