//! Parameter initialisers, reproducible from a seeded generator.

use crate::{DType, Result, Shape, Tensor};
use rand::Rng;
use rand_distr::{Distribution, Normal, Uniform};

/// How to fill a new parameter. Fans follow PyTorch: for a weight of shape
/// `(out, in, k...)`, `fan_in = in·Πk` and `fan_out = out·Πk`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// A constant.
    Const(f64),
    /// Uniform on `[lo, hi)`.
    Uniform {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// Normal with the given mean and standard deviation.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
    /// Uniform on `±gain·√(3/fan_in)` (He). PyTorch's `nn.Linear` default is gain `1/√3`,
    /// i.e. `±1/√fan_in`.
    KaimingUniform {
        /// Gain (√2 for ReLU).
        gain: f64,
    },
    /// Normal with std `gain/√fan_in` (He).
    KaimingNormal {
        /// Gain (√2 for ReLU).
        gain: f64,
    },
    /// Uniform on `±gain·√(6/(fan_in+fan_out))` (Glorot).
    XavierUniform {
        /// Gain.
        gain: f64,
    },
    /// Normal with std `gain·√(2/(fan_in+fan_out))` (Glorot).
    XavierNormal {
        /// Gain.
        gain: f64,
    },
}

/// `(fan_in, fan_out)` of a weight shape.
pub fn fans(shape: &Shape) -> (usize, usize) {
    match shape.dims() {
        [] => (1, 1),
        [n] => (*n, *n),
        [out, inp, rest @ ..] => {
            let k: usize = rest.iter().product();
            (inp * k, out * k)
        }
    }
}

impl Init {
    /// A new tensor of `shape` drawn with `rng`, in `dtype` (drawn in f64, then rounded).
    pub fn tensor(&self, shape: impl Into<Shape>, dtype: DType, rng: &mut impl Rng) -> Result<Tensor> {
        let shape = shape.into();
        let n = shape.elem_count();
        let (fan_in, fan_out) = fans(&shape);
        // Drawn in f64 before rounding to `dtype`.
        crate::storage::check_host_alloc("init", n, 8)?;
        let uniform = |rng: &mut dyn rand::RngCore, b: f64| -> Result<Vec<f64>> {
            if !(b.is_finite() && b >= 0.0) {
                crate::bail!("init", "invalid uniform bound {b}");
            }
            if b == 0.0 {
                return Ok(vec![0.0; n]);
            }
            let d = Uniform::new(-b, b).map_err(|e| crate::Error::invalid("init", e.to_string()))?;
            Ok((0..n).map(|_| d.sample(rng)).collect())
        };
        let normal = |rng: &mut dyn rand::RngCore, mean: f64, std: f64| -> Result<Vec<f64>> {
            if !(std.is_finite() && std >= 0.0 && mean.is_finite()) {
                crate::bail!("init", "invalid normal distribution: mean {mean}, std {std}");
            }
            let d = Normal::new(mean, std).map_err(|e| crate::Error::invalid("init", e.to_string()))?;
            Ok((0..n).map(|_| d.sample(rng)).collect())
        };
        let v = match *self {
            Init::Zeros => return Ok(Tensor::zeros(shape, dtype)),
            Init::Ones => return Ok(Tensor::ones(shape, dtype)),
            Init::Const(c) => return Ok(Tensor::full(c, shape, dtype)),
            Init::Uniform { lo, hi } => {
                if lo >= hi || !lo.is_finite() || !hi.is_finite() {
                    crate::bail!("init", "invalid uniform range [{lo}, {hi})");
                }
                let d = Uniform::new(lo, hi).map_err(|e| crate::Error::invalid("init", e.to_string()))?;
                (0..n).map(|_| d.sample(rng)).collect()
            }
            Init::Normal { mean, std } => normal(rng, mean, std)?,
            Init::KaimingUniform { gain } => uniform(rng, gain * (3.0 / fan_in as f64).sqrt())?,
            Init::KaimingNormal { gain } => normal(rng, 0.0, gain / (fan_in as f64).sqrt())?,
            Init::XavierUniform { gain } => uniform(rng, gain * (6.0 / (fan_in + fan_out) as f64).sqrt())?,
            Init::XavierNormal { gain } => normal(rng, 0.0, gain * (2.0 / (fan_in + fan_out) as f64).sqrt())?,
        };
        Tensor::from_vec(v, shape)?.to_dtype(dtype)
    }
}

impl Tensor {
    /// Uniform samples on `[lo, hi)` in f32 from a generator seeded with `seed`.
    pub fn rand_uniform(shape: impl Into<Shape>, lo: f64, hi: f64, seed: u64) -> Result<Tensor> {
        Init::Uniform { lo, hi }.tensor(
            shape,
            DType::F32,
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed),
        )
    }

    /// Normal samples in f32 from a generator seeded with `seed`.
    pub fn randn(shape: impl Into<Shape>, mean: f64, std: f64, seed: u64) -> Result<Tensor> {
        Init::Normal { mean, std }.tensor(
            shape,
            DType::F32,
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_moments_and_reproducibility() {
        let t = Init::KaimingUniform { gain: 1.0 / 3f64.sqrt() }
            .tensor([64, 400], DType::F64, &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1))
            .unwrap();
        let v = t.to_vec::<f64>().unwrap();
        assert!(v.iter().all(|x| x.abs() <= 1.0 / 20.0));
        let a = Tensor::randn([100, 100], 1.0, 2.0, 5).unwrap().to_vec::<f32>().unwrap();
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / 1e4;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / 1e4;
        assert!((mean - 1.0).abs() < 0.06 && (var.sqrt() - 2.0).abs() < 0.06, "{mean} {var}");
        assert_eq!(a, Tensor::randn([100, 100], 1.0, 2.0, 5).unwrap().to_vec::<f32>().unwrap());
        assert_eq!(fans(&Shape::from([8, 3, 2, 2])), (12, 32));
        assert!(
            Init::Uniform { lo: 1.0, hi: 0.0 }
                .tensor(3, DType::F32, &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0))
                .is_err()
        );
        assert!(
            Init::Normal { mean: 0.0, std: -1.0 }
                .tensor(3, DType::F32, &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0))
                .is_err()
        );
    }
}
