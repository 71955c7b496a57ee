//! Neural-network modules of monarch: the [`Module`] trait with stable hierarchical
//! parameter names (so checkpoints follow PyTorch / Hugging Face naming), the dense
//! [`Linear`] layer, checkpoints by name, and optimisers.

mod attention;
mod checkpoint;
mod ctx;
mod embedding;
mod layer_norm;
mod linear;
mod module;
pub mod optim;
pub mod structured;

pub use attention::{AttentionFlags, AttentionImpl, AttentionKernel, SparseLayout};
pub use checkpoint::{load_params, save_params};
pub use ctx::Ctx;
pub use embedding::Embedding;
pub use layer_norm::LayerNorm;
pub use linear::Linear;
pub use module::{Module, NamedParams, param_count};
pub use rand::{SeedableRng, rngs::StdRng};
pub use structured::{
    BlockDiagLinear, BlockSparseLinear, ButterflyLinear, Gate, LinearKind, LinearLayer, LinearOptions, LowRankLinear,
    MonarchLinear, PixelflyLinear, Rank,
};
