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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structured::Rank;
    use monarch_autograd::autocast;
    use monarch_tensor::{DType, Tensor};
    use rand::SeedableRng;

    #[test]
    fn under_autocast_an_mlp_keeps_its_hidden_activations_bf16_with_the_same_results() {
        let x = Tensor::randn([3, 5, 16], 0.0, 1.0, 21).unwrap();
        let kinds = [
            LinearKind::Dense,
            LinearKind::Monarch { nblocks: 4 },
            LinearKind::BlockSparse { butterfly_size: 2, n_factors: 1, block: 16 },
            LinearKind::LowRank { rank: Rank::Fixed(4) },
        ];
        for kind in &kinds {
            for act in [Activation::GeluTanh, Activation::GeluErf, Activation::Relu] {
                let mlp = Mlp::new([16, 48, 16], kind, act, 0.0, ["a", "b"], &mut StdRng::seed_from_u64(4)).unwrap();
                let run = |keep_low: bool| {
                    let _g = autocast(Some(DType::BF16));
                    let xv = Var::leaf(x.clone());
                    let y = if keep_low {
                        let h = mlp.fc1.forward_act(&xv, act).unwrap();
                        assert_eq!(h.dtype(), DType::BF16, "{kind:?} {act:?}: the hidden activations stay bf16");
                        mlp.forward(&xv, &Ctx::eval()).unwrap()
                    } else if matches!(kind, LinearKind::Monarch { .. }) {
                        // The fused activation's bf16 result entering the second layer as
                        // a fresh f32 var (cast to bf16 again there), as before.
                        let h = mlp.fc1.forward_act(&xv, act).unwrap().to_dtype(DType::F32).unwrap();
                        mlp.fc2.forward(&h).unwrap()
                    } else {
                        // The activation in f32 on the widened product, as before.
                        mlp.fc2.forward(&act.apply(&mlp.fc1.forward(&xv).unwrap()).unwrap()).unwrap()
                    };
                    assert_eq!(y.dtype(), DType::F32);
                    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                    let mut out =
                        vec![y.value().to_vec::<f32>().unwrap(), grads.get(&xv).unwrap().to_vec::<f32>().unwrap()];
                    out.extend(mlp.named_params().iter().map(|(_, p)| grads.get(p).unwrap().to_vec::<f32>().unwrap()));
                    out
                };
                // The activation computes in f32 from the same bf16 values either way and
                // its result (and its gradient) is rounded to bf16 once: no bit changes.
                assert_eq!(run(true), run(false), "{kind:?} {act:?}");
            }
        }
    }
}
