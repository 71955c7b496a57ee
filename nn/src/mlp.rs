//! The two-layer feed-forward block of transformers and mixers, with structured layers
//! chosen by [`LinearKind`].

use crate::structured::{LinearKind, LinearLayer};
use crate::{Ctx, Module, NamedParams, prefixed};
use monarch_autograd::Var;
use monarch_tensor::{Result, UnaryOp};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// The nonlinearity between the two layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// GELU, tanh approximation (GPT-2's `gelu_new`).
    #[default]
    GeluTanh,
    /// GELU, exact erf form (ViT, MLP-Mixer).
    GeluErf,
    /// ReLU.
    Relu,
}

impl Activation {
    /// The elementwise op.
    pub fn op(self) -> UnaryOp {
        match self {
            Activation::GeluTanh => UnaryOp::GeluTanh,
            Activation::GeluErf => UnaryOp::GeluErf,
            Activation::Relu => UnaryOp::Relu,
        }
    }

    /// Applies the nonlinearity.
    pub fn apply(self, x: &Var) -> Result<Var> {
        x.unary(self.op())
    }
}

/// `fc2(dropout(act(fc1(x))))`: `in → hidden → out`, each layer of its [`LinearKind`].
/// The two layers are named as the model's checkpoint convention wants (`c_fc`/`c_proj`
/// in GPT-2, `fc1`/`fc2` in timm's ViT and Mixer).
#[derive(Debug)]
pub struct Mlp {
    /// The expanding layer.
    pub fc1: Box<dyn LinearLayer>,
    /// The projecting layer.
    pub fc2: Box<dyn LinearLayer>,
    /// The nonlinearity.
    pub act: Activation,
    /// Dropout after the nonlinearity (training only).
    pub dropout: f64,
    names: [&'static str; 2],
}

impl Mlp {
    /// A freshly initialised block with layers of `kind`, named `names`.
    pub fn new(
        dims: [usize; 3],
        kind: &LinearKind,
        act: Activation,
        dropout: f64,
        names: [&'static str; 2],
        rng: &mut StdRng,
    ) -> Result<Self> {
        let [inp, hidden, out] = dims;
        Ok(Mlp {
            fc1: kind.build(inp, hidden, true, rng)?,
            fc2: kind.build(hidden, out, true, rng)?,
            act,
            dropout,
            names,
        })
    }

    /// Applies the block to `x` of shape (.., in).
    pub fn forward(&self, x: &Var, ctx: &Ctx) -> Result<Var> {
        let h = self.fc1.forward_act(x, self.act)?;
        self.fc2.forward(&ctx.dropout(&h, self.dropout)?)
    }

    /// The two layers, for FLOP counts.
    pub fn linears(&self) -> [&dyn LinearLayer; 2] {
        [self.fc1.as_ref(), self.fc2.as_ref()]
    }

    /// The two layers with their names, for densification and projection.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut Box<dyn LinearLayer>); 2] {
        [(self.names[0], &mut self.fc1), (self.names[1], &mut self.fc2)]
    }
}

impl Module for Mlp {
    fn named_params(&self) -> NamedParams {
        let mut p = prefixed(self.names[0], self.fc1.named_params());
        p.extend(prefixed(self.names[1], self.fc2.named_params()));
        p
    }
}
