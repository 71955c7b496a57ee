//! Structured linear layers: one interface ([`LinearLayer`]) over the dense layer and
//! its structured replacements, so that models choose by configuration ([`LinearKind`]).
//!
//! - [`MonarchLinear`]: two block-diagonal factors with permutations (Dao et al. 2022),
//!   checkpoint-compatible with the reference `MonarchLinear` (`blkdiag1`, `blkdiag2`, `bias`).
//! - [`BlockDiagLinear`]: one block-diagonal factor.
//! - [`LowRankLinear`]: `U·V` of a given rank.
//! - [`ButterflyLinear`]: the classic product of log₂ n butterfly factors.
//! - [`BlockSparseLinear`]: a fixed block mask, only set blocks stored and computed.
//! - [`PixelflyLinear`]: flat block butterfly block-sparse plus low-rank (Dao et al. 2021).
//!
//! Every layer densifies exactly ([`LinearLayer::to_dense`], reverse sparsification),
//! and [`LinearKind::project`] maps a dense layer onto a structured one (Frobenius-optimal
//! where the structure allows it, see [`project`]).

mod block_diag;
mod block_sparse;
mod butterfly;
mod kind;
mod low_rank;
mod monarch;
mod pixelfly;
pub mod project;

pub use block_diag::BlockDiagLinear;
pub use block_sparse::BlockSparseLinear;
pub use butterfly::ButterflyLinear;
pub use kind::{Gate, LinearKind, LinearOptions, Rank};
pub use low_rank::LowRankLinear;
pub use monarch::MonarchLinear;
pub use pixelfly::PixelflyLinear;

use crate::{Linear, Module};
use monarch_autograd::Var;
use monarch_tensor::{DType, Result, Tensor};

/// A linear map `x (.., in) → (.., out)` with trainable parameters: the dense layer or a
/// structured one. Models hold `Box<dyn LinearLayer>` and pick the kind by configuration.
pub trait LinearLayer: Module + Send + Sync + std::fmt::Debug {
    /// Applies the layer to `x` of shape (.., in). Under autocast `x` may arrive in the
    /// autocast dtype (another product's output kept low, as in [`crate::SelfAttention`]);
    /// the result is then f32 either way.
    fn forward(&self, x: &Var) -> Result<Var>;
    /// [`forward`](Self::forward) for a result that only other products read (attention's
    /// queries, keys and values): under autocast it may stay in the autocast dtype, sparing
    /// its widening to f32; f32 otherwise. A layer whose result is one product overrides it.
    fn forward_low(&self, x: &Var) -> Result<Var> {
        Ok(monarch_autograd::low_precision(&self.forward(x)?))
    }
    /// `act` applied to `self.forward(x)`; a layer whose last pass can apply the
    /// activation on the way (Monarch) overrides it. The result goes on to the next
    /// product (an MLP's second layer): under autocast it may be in the autocast dtype,
    /// the activation reading and writing it (and computing in f32, as on the widened
    /// product), which spares the hidden activations' casts both ways.
    fn forward_act(&self, x: &Var, act: crate::Activation) -> Result<Var> {
        act.apply(&self.forward_low(x)?)
    }
    /// Input features.
    fn in_features(&self) -> usize;
    /// Output features.
    fn out_features(&self) -> usize;
    /// Forward multiply-adds per input row (bias excluded).
    fn macs_per_row(&self) -> usize;
    /// The dense layer computing the same function (for reverse sparsification).
    fn to_dense(&self) -> Result<Linear>;
    /// The kind of this layer, as configured.
    fn kind(&self) -> LinearKind;
}

impl LinearLayer for Linear {
    fn forward(&self, x: &Var) -> Result<Var> {
        Linear::forward(self, x)
    }
    fn forward_low(&self, x: &Var) -> Result<Var> {
        monarch_autograd::low_output(|| Linear::forward(self, x))
    }
    fn in_features(&self) -> usize {
        Linear::in_features(self)
    }
    fn out_features(&self) -> usize {
        Linear::out_features(self)
    }
    fn macs_per_row(&self) -> usize {
        self.in_features() * self.out_features()
    }
    fn to_dense(&self) -> Result<Linear> {
        Linear::from_weights(self.weight.value(), self.bias.as_ref().map(|b| b.value()))
    }
    fn kind(&self) -> LinearKind {
        LinearKind::Dense
    }
}

/// The bias of a structured layer as a dense layer would have it, initialised like
/// `torch.nn.Linear` (uniform on `±1/√in`).
fn init_bias(inp: usize, out: usize, bias: bool, rng: &mut impl rand::Rng) -> Result<Option<monarch_autograd::Param>> {
    if !bias {
        return Ok(None);
    }
    let bound = 1.0 / (inp.max(1) as f64).sqrt();
    let init = monarch_tensor::Init::Uniform { lo: -bound, hi: bound };
    Ok(Some(monarch_autograd::Param::new(init.tensor(out, DType::F32, rng)?)))
}

/// The dense weight (out, in) of a bias-free linear map of `inp` features given as a
/// function of a batch of input rows: its response to the identity, computed in f64 and
/// returned in `dtype`.
fn dense_weight(inp: usize, dtype: DType, apply: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let eye: Vec<f64> = (0..inp * inp).map(|i| if i / inp == i % inp { 1.0 } else { 0.0 }).collect();
    // Row i of the response is W·e_i: the transpose of the dense weight.
    apply(&Tensor::from_vec(eye, [inp, inp])?)?.t()?.contiguous()?.to_dtype(dtype)
}

/// `x` in `dtype`, widening an input that arrived in the autocast dtype, for a layer that
/// does not take it as it is: butterflies (not autocast), or a layer reading its input in
/// several products (Pixelfly), whose gradient would otherwise be summed in bf16.
fn input_in(x: &Var, dtype: DType) -> Result<Var> {
    if x.dtype() == dtype { Ok(x.clone()) } else { x.to_dtype(dtype) }
}

/// A parameter's value in f64 (for exact densification and projection).
fn f64_of(p: &monarch_autograd::Param) -> Result<Tensor> {
    p.value().to_dtype(DType::F64)
}
