//! A two-layer MLP trained with plain SGD and with AdamW on a made-up regression
//! problem reaches a low loss, and training is reproducible from the seed.

use monarch_autograd::Var;
use monarch_nn::optim::{AdamW, Optimizer, Sgd};
use monarch_nn::{Linear, Module, NamedParams, SeedableRng, StdRng};
use monarch_tensor::Tensor;

struct Mlp {
    l1: Linear,
    l2: Linear,
}

impl Module for Mlp {
    fn named_params(&self) -> NamedParams {
        let mut p = Self::prefixed("l1", &self.l1);
        p.extend(Self::prefixed("l2", &self.l2));
        p
    }
}

/// y = sin(2·x0) + x1² on 256 points of [-1, 1]².
fn data() -> (Tensor, Tensor) {
    let x = Tensor::rand_uniform([256, 2], -1.0, 1.0, 3).unwrap();
    let v = x.to_vec::<f32>().unwrap();
    let y: Vec<f32> = v.chunks(2).map(|p| (2.0 * p[0]).sin() + p[1] * p[1]).collect();
    (x, Tensor::from_vec(y, [256, 1]).unwrap())
}

fn train(opt: &mut dyn Optimizer, steps: usize) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(0);
    let mlp = Mlp { l1: Linear::new(2, 32, true, &mut rng).unwrap(), l2: Linear::new(32, 1, true, &mut rng).unwrap() };
    let (x, y) = data();
    let params = mlp.named_params();
    let mut losses = vec![];
    for _ in 0..steps {
        let h = mlp.l1.forward(&Var::constant(x.clone())).unwrap().tanh().unwrap();
        let err = mlp.l2.forward(&h).unwrap().sub(&Var::constant(y.clone())).unwrap();
        let loss = err.sqr().unwrap().mean_all().unwrap();
        losses.push(loss.value().to_scalar_f64().unwrap());
        let grads = loss.backward().unwrap();
        opt.step(&params, &grads).unwrap();
    }
    losses
}

#[test]
fn sgd_reaches_a_low_loss() {
    let losses = train(&mut Sgd::new(0.2, 0.9, 0.0), 400);
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < 0.01 && last < first / 20.0, "loss {first} -> {last}");
}

#[test]
fn adamw_reaches_a_low_loss_reproducibly() {
    let hyper = monarch_tensor::AdamW { lr: 0.02, weight_decay: 0.0, ..Default::default() };
    let a = train(&mut AdamW::new(hyper), 300);
    assert!(*a.last().unwrap() < 0.01, "final loss {}", a.last().unwrap());
    let b = train(&mut AdamW::new(hyper), 300);
    assert_eq!(a, b, "same seed, same losses");
}
