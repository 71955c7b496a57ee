//! Dropout with a counter-based generator: the mask is a pure function of the seed and
//! each element's row-major index, so backward regenerates it instead of saving it and
//! every backend draws the same mask.

use super::float_map;
use crate::cpu::map::from_fn;
use crate::{Float, Result, Tensor};

/// A uniform number in [0, 1) from `(seed, index)`: SplitMix64 of the combined counter.
#[inline(always)]
pub fn counter_uniform(seed: u64, index: u64) -> f32 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

impl Tensor {
    /// Zeroes each element with probability `p` and scales the rest by `1/(1-p)`; the
    /// mask depends only on `seed` and the element's position. The backward of dropout
    /// is the same call on the output gradient.
    pub fn dropout(&self, p: f64, seed: u64) -> Result<Tensor> {
        if !(0.0..1.0).contains(&p) {
            crate::bail!("dropout", "probability must lie in [0, 1), got {p}");
        }
        if p == 0.0 {
            return Ok(self.clone());
        }
        let x = self.contiguous()?;
        if x.device() != crate::Device::Cpu {
            return x.cuda_dropout(p, seed);
        }
        Ok(float_map!(&x, "dropout", x.shape(), |v, l| kernel(&v[l.offset()..l.offset() + x.elem_count()], p, seed)))
    }
}

fn kernel<T: Float>(v: &[T], p: f64, seed: u64) -> Vec<T> {
    let scale = T::from_f64(1.0 / (1.0 - p));
    let pf = p as f32;
    from_fn(v.len(), |i| if counter_uniform(seed, i as u64) < pf { T::zero() } else { v[i] * scale })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn keeps_about_one_minus_p_and_preserves_the_mean() {
        let x = Tensor::ones([200, 500], DType::F32);
        let y = x.dropout(0.25, 7).unwrap().to_vec::<f32>().unwrap();
        let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
        assert!((kept - 0.75).abs() < 0.005, "kept {kept}");
        let mean = y.iter().map(|&v| v as f64).sum::<f64>() / y.len() as f64;
        assert!((mean - 1.0).abs() < 0.01);
        assert_eq!(x.dropout(0.25, 7).unwrap().to_vec::<f32>().unwrap(), y);
        assert_ne!(x.dropout(0.25, 8).unwrap().to_vec::<f32>().unwrap(), y);
        assert!(x.dropout(1.0, 0).is_err());
    }
}
