//! The papers' models, each with its configuration (TOML `[model]` tables) and the
//! structured layers chosen per role: [`Gpt2`], [`Vit`] and [`Mixer`].

mod gpt2;
pub mod hf_gpt2;
mod mixer;
mod patches;
mod vit;

pub use gpt2::{Gpt2, Gpt2Block, Gpt2Cache, Gpt2Config};
pub use mixer::{Mixer, MixerBlock, MixerConfig};
pub use patches::{PatchEmbed, to_patches};
pub use vit::{Vit, VitBlock, VitConfig};

use crate::structured::LinearLayer;
use monarch_tensor::{DType, Init, Result, Tensor};
use rand::Rng;

/// Forward multiply-adds per row of `layers` together.
fn linear_macs(layers: &[&dyn LinearLayer]) -> usize {
    layers.iter().map(|l| l.macs_per_row()).sum()
}

/// Re-draws a dense layer's weight from N(0, std²) and zeroes its bias (GPT-2's
/// initialisation); structured layers are left as they are.
fn reinit_dense(layer: &dyn LinearLayer, std: f64, rng: &mut impl Rng) -> Result<()> {
    if layer.kind() != crate::LinearKind::Dense {
        return Ok(());
    }
    for (name, p) in layer.named_params() {
        let shape = p.value().shape().clone();
        let value = match name.as_str() {
            "weight" => Init::Normal { mean: 0.0, std }.tensor(shape, DType::F32, rng)?,
            _ => Tensor::zeros(shape, DType::F32),
        };
        p.set(value)?;
    }
    Ok(())
}

/// Checks what every vision configuration shares: `sizes` all at least 1, patches that
/// tile the image, dropout in [0, 1), a finite layer-norm eps >= 0.
fn validate_vision(
    what: &'static str,
    sizes: &[usize],
    (image_size, patch_size): (usize, usize),
    dropout: f64,
    layer_norm_eps: f64,
) -> Result<()> {
    if sizes.contains(&0) || image_size == 0 || patch_size == 0 {
        monarch_tensor::bail!(what, "every size must be at least 1");
    }
    if image_size % patch_size != 0 {
        monarch_tensor::bail!(what, "patch_size {patch_size} does not divide image_size {image_size}");
    }
    if !(0.0..1.0).contains(&dropout) {
        monarch_tensor::bail!(what, "dropout must lie in [0, 1), got {dropout}");
    }
    if !(layer_norm_eps >= 0.0 && layer_norm_eps.is_finite()) {
        monarch_tensor::bail!(what, "layer_norm_eps must be a finite number >= 0, got {layer_norm_eps}");
    }
    Ok(())
}

/// Fails unless `images` is (batch, channels, size, size).
fn check_images(what: &'static str, images: &monarch_autograd::Var, channels: usize, size: usize) -> Result<()> {
    let d = images.dims();
    if d.len() != 4 || d[1..] != [channels, size, size] {
        monarch_tensor::bail!(
            what,
            "expected images (batch, {channels}, {size}, {size}), got shape {}",
            images.shape()
        );
    }
    Ok(())
}

/// An image classifier: images (batch, channels, height, width) to class logits.
pub trait ImageClassifier: crate::Module + crate::swap::SwapLinears + Send {
    /// Class logits (batch, classes).
    fn forward(&self, images: &monarch_autograd::Var, ctx: &crate::Ctx) -> Result<monarch_autograd::Var>;
    /// Training FLOPs (forward + backward) per image.
    fn train_flops_per_image(&self) -> f64;
    /// Number of classes.
    fn num_classes(&self) -> usize;
}
