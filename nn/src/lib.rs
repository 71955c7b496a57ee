//! Neural-network modules of monarch: the [`Module`] trait with stable hierarchical
//! parameter names (so checkpoints follow PyTorch / Hugging Face naming), the dense
//! [`Linear`] layer and its structured replacements, attention, MLPs, the papers' models
//! ([`models`]: GPT-2, ViT, MLP-Mixer), in-place densification and projection
//! ([`swap`]), checkpoints by name, and optimisers.

mod attention;
mod checkpoint;
mod ctx;
mod embedding;
mod layer_norm;
mod linear;
mod mlp;
pub mod models;
mod module;
pub mod optim;
mod self_attention;
pub mod structured;
pub mod swap;

pub use attention::{AttentionFlags, AttentionImpl, AttentionKernel, SparseLayout};
pub use checkpoint::{assign_params, load_params, save_params};
pub use ctx::Ctx;
pub use embedding::Embedding;
pub use layer_norm::LayerNorm;
pub use linear::Linear;
pub use mlp::{Activation, Mlp};
pub use module::{Module, NamedParams, param_count, params_to_device, params_to_dtype, prefixed, to_device};
pub use rand::{SeedableRng, rngs::StdRng};
pub use self_attention::{AttentionSpec, KvCache, SelfAttention};
pub use structured::{
    BlockDiagLinear, BlockSparseLinear, ButterflyLinear, Gate, LinearKind, LinearLayer, LinearOptions, LowRankLinear,
    MonarchLinear, PixelflyLinear, Rank,
};
