//! The dense linear layer `y = x·Wᵀ + b`.

use crate::{Module, NamedParams};
use monarch_autograd::{Param, Var};
use monarch_tensor::{DType, Init, Result, Tensor};
use rand::Rng;

/// A dense layer with weight (out, in) in PyTorch layout and an optional bias (out).
#[derive(Clone, Debug)]
pub struct Linear {
    /// The weight, shape (out, in).
    pub weight: Param,
    /// The bias, shape (out).
    pub bias: Option<Param>,
}

impl Linear {
    /// A layer initialised like `torch.nn.Linear`: weight and bias uniform on `±1/√in`.
    pub fn new(inp: usize, out: usize, bias: bool, rng: &mut impl Rng) -> Result<Self> {
        let bound = 1.0 / (inp.max(1) as f64).sqrt();
        let init = Init::Uniform { lo: -bound, hi: bound };
        let weight = Param::new(init.tensor([out, inp], DType::F32, rng)?);
        let bias = if bias { Some(Param::new(init.tensor(out, DType::F32, rng)?)) } else { None };
        Ok(Linear { weight, bias })
    }

    /// A layer from an existing weight (out, in) and optional bias.
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out, _) = weight.shape().matrix_dims("Linear")?;
        if weight.rank() != 2 {
            monarch_tensor::bail!("Linear", "weight must be 2-D (out, in), got shape {}", weight.shape());
        }
        if let Some(b) = &bias
            && b.dims() != [out]
        {
            monarch_tensor::bail!("Linear", "bias of shape {} does not match {out} outputs", b.shape());
        }
        Ok(Linear { weight: Param::new(weight), bias: bias.map(Param::new) })
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.value().dims()[1]
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.value().dims()[0]
    }

    /// Applies the layer to `x` of shape (.., in).
    pub fn forward(&self, x: &Var) -> Result<Var> {
        x.linear(&self.weight.var(), self.bias.as_ref().map(|b| b.var()).as_ref())
    }
}

impl Module for Linear {
    fn named_params(&self) -> NamedParams {
        let mut p = vec![("weight".to_string(), self.weight.clone())];
        p.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn forward_matches_matmul_and_names_follow_pytorch() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let l = Linear::new(4, 3, true, &mut rng).unwrap();
        assert!(l.weight.value().to_vec::<f32>().unwrap().iter().all(|w| w.abs() <= 0.5));
        let x = Tensor::randn([2, 5, 4], 0.0, 1.0, 1).unwrap();
        let y = l.forward(&Var::constant(x.clone())).unwrap();
        let want = x.matmul(&l.weight.value().t().unwrap()).unwrap().add(&l.bias.as_ref().unwrap().value()).unwrap();
        assert_eq!(y.value().to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
        let names: Vec<String> = l.named_params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["weight", "bias"]);
        assert_eq!(crate::param_count(&l), 15);
        assert!(Linear::from_weights(Tensor::zeros([3, 4], DType::F32), Some(Tensor::zeros(4, DType::F32))).is_err());
    }
}
