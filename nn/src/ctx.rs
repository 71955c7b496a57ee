//! Per-forward-pass context: training or evaluation, and distinct dropout seeds.

use monarch_autograd::Var;
use monarch_tensor::Result;
use std::cell::Cell;

/// What a forward pass needs besides its inputs. Dropout sites draw distinct seeds from
/// the step's seed in call order, so a pass is reproducible from `(seed, step)`.
#[derive(Debug)]
pub struct Ctx {
    /// Training mode (dropout on) or evaluation.
    pub train: bool,
    seed: u64,
    next: Cell<u64>,
}

impl Ctx {
    /// A training pass whose dropout masks derive from `seed` (e.g. run seed and step).
    pub fn train(seed: u64) -> Self {
        Ctx { train: true, seed, next: Cell::new(0) }
    }

    /// An evaluation pass: dropout is the identity.
    pub fn eval() -> Self {
        Ctx { train: false, seed: 0, next: Cell::new(0) }
    }

    /// A fresh seed for the next random op of this pass.
    pub fn next_seed(&self) -> u64 {
        let n = self.next.get();
        self.next.set(n + 1);
        self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03).rotate_left(17)
    }

    /// Dropout with probability `p` in training, identity otherwise.
    pub fn dropout(&self, x: &Var, p: f64) -> Result<Var> {
        if !self.train || p == 0.0 { Ok(x.clone()) } else { x.dropout(p, self.next_seed()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_distinct_and_reproducible() {
        let (a, b) = (Ctx::train(7), Ctx::train(7));
        let sa: Vec<u64> = (0..4).map(|_| a.next_seed()).collect();
        let sb: Vec<u64> = (0..4).map(|_| b.next_seed()).collect();
        assert_eq!(sa, sb);
        assert!(sa.windows(2).all(|w| w[0] != w[1]));
        assert_ne!(Ctx::train(8).next_seed(), sa[0]);
        let x = Var::constant(monarch_tensor::Tensor::ones(8, monarch_tensor::DType::F32));
        assert_eq!(Ctx::eval().dropout(&x, 0.5).unwrap().value().to_vec::<f32>().unwrap(), vec![1.0; 8]);
    }
}
