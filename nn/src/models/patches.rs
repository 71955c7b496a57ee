//! Patch embedding of vision models: non-overlapping `p × p` patches, each flattened in
//! the order a `Conv2d(C, D, p, stride = p)` reads its window, times a dense projection.

use crate::{Module, NamedParams};
use monarch_autograd::{Param, Var};
use monarch_tensor::{DType, Init, Result, bail};
use rand::Rng;

/// Splits images (batch, C, H, W) into patches (batch, (H/p)·(W/p), C·p·p), patches in
/// row-major order, each flattened as (channel, row, column).
pub fn to_patches(images: &Var, p: usize) -> Result<Var> {
    let &[b, c, h, w] = images.dims() else {
        bail!("to_patches", "expected images (batch, channels, height, width), got shape {}", images.shape());
    };
    if p == 0 || h % p != 0 || w % p != 0 {
        bail!("to_patches", "patch size {p} does not divide images of {h}x{w}");
    }
    let (gh, gw) = (h / p, w / p);
    images.reshape([b, c, gh, p, gw, p])?.permute(&[0, 2, 4, 1, 3, 5])?.reshape([b, gh * gw, c * p * p])
}

/// The patch embedding: `proj` is a convolution with kernel = stride = `p`, stored as
/// PyTorch's `Conv2d` weight (D, C, p, p) and bias (D), so checkpoints match timm's.
#[derive(Debug)]
pub struct PatchEmbed {
    /// Convolution weight (D, C, p, p).
    pub weight: Param,
    /// Convolution bias (D).
    pub bias: Param,
    /// Patch side.
    pub patch: usize,
}

impl PatchEmbed {
    /// A projection of `channels`-channel `patch × patch` patches to `dim` features,
    /// initialised like PyTorch's `Conv2d` (uniform on `±1/√fan_in`).
    pub fn new(channels: usize, patch: usize, dim: usize, rng: &mut impl Rng) -> Result<Self> {
        let fan_in = (channels * patch * patch).max(1);
        let bound = 1.0 / (fan_in as f64).sqrt();
        let init = Init::Uniform { lo: -bound, hi: bound };
        Ok(PatchEmbed {
            weight: Param::new(init.tensor([dim, channels, patch, patch], DType::F32, rng)?),
            bias: Param::new(init.tensor(dim, DType::F32, rng)?),
            patch,
        })
    }

    /// Embeds images (batch, C, H, W) → (batch, patches, D).
    pub fn forward(&self, images: &Var) -> Result<Var> {
        let w = self.weight.var();
        let (d, fan_in) = (w.dims()[0], w.dims()[1..].iter().product::<usize>());
        if images.dims().get(1) != Some(&w.dims()[1]) {
            bail!("PatchEmbed", "images of shape {} do not have the {} channels expected", images.shape(), w.dims()[1]);
        }
        to_patches(images, self.patch)?.linear(&w.reshape([d, fan_in])?, Some(&self.bias.var()))
    }

    /// Patches of an `h × w` image.
    pub fn num_patches(&self, h: usize, w: usize) -> usize {
        (h / self.patch) * (w / self.patch)
    }
}

impl Module for PatchEmbed {
    fn named_params(&self) -> NamedParams {
        vec![("proj.weight".into(), self.weight.clone()), ("proj.bias".into(), self.bias.clone())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monarch_tensor::Tensor;

    #[test]
    fn patches_follow_the_convolution_window_order() {
        // One 2-channel 4x4 image with distinct values; patch 2 → 4 patches of 8.
        let x = Tensor::arange(0.0, 32.0, 1.0, DType::F32).unwrap().reshape([1, 2, 4, 4]).unwrap();
        let p = to_patches(&Var::constant(x), 2).unwrap();
        assert_eq!(p.dims(), [1, 4, 8]);
        let v = p.value().to_vec::<f32>().unwrap();
        // Patch (0, 1): rows 0-1, columns 2-3; channel 0 then channel 1 (offset 16).
        assert_eq!(&v[8..16], &[2.0, 3.0, 6.0, 7.0, 18.0, 19.0, 22.0, 23.0]);
        // Patch (1, 0): rows 2-3, columns 0-1.
        assert_eq!(&v[16..20], &[8.0, 9.0, 12.0, 13.0]);
        assert!(to_patches(&Var::constant(Tensor::zeros([1, 1, 5, 4], DType::F32)), 2).is_err());
    }

    #[test]
    fn embedding_is_the_strided_convolution() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        use rand::SeedableRng;
        let pe = PatchEmbed::new(1, 2, 3, &mut rng).unwrap();
        let x = Tensor::randn([1, 1, 4, 4], 0.0, 1.0, 2).unwrap();
        let y = pe.forward(&Var::constant(x.clone())).unwrap().value().to_vec::<f32>().unwrap();
        let (xv, wv, bv) = (
            x.to_vec::<f32>().unwrap(),
            pe.weight.value().to_vec::<f32>().unwrap(),
            pe.bias.value().to_vec::<f32>().unwrap(),
        );
        // Direct convolution: out[o, i, j] = b[o] + Σ_{u,v} w[o, 0, u, v] · x[2i + u, 2j + v].
        for o in 0..3 {
            for (pi, (i, j)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                let mut s = bv[o];
                for u in 0..2 {
                    for v in 0..2 {
                        s += wv[o * 4 + u * 2 + v] * xv[(2 * i + u) * 4 + 2 * j + v];
                    }
                }
                assert!((y[pi * 3 + o] - s).abs() < 1e-5, "patch {pi} feature {o}");
            }
        }
    }
}
