//! The papers' models, each with its configuration (TOML `[model]` tables) and the
//! structured layers chosen per role: [`Gpt2`], [`Vit`] and [`Mixer`].

mod gpt2;
pub mod hf_gpt2;
mod mixer;
mod patches;
mod vit;

pub use gpt2::{Gpt2, Gpt2Block, Gpt2Config};
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

/// An image classifier: images (batch, channels, height, width) to class logits.
pub trait ImageClassifier: crate::Module + crate::swap::SwapLinears + Send {
    /// Class logits (batch, classes).
    fn forward(&self, images: &monarch_autograd::Var, ctx: &crate::Ctx) -> Result<monarch_autograd::Var>;
    /// Training FLOPs (forward + backward) per image.
    fn train_flops_per_image(&self) -> f64;
    /// Number of classes.
    fn num_classes(&self) -> usize;
}
