//! The structured-layer options as command-line flags, shared by `monarch bench linear`
//! and the training binaries.

use clap::Args;
use monarch_nn::{Gate, LinearOptions, Rank};

/// `--nblocks`, `--rank`, `--butterfly-size`, `--n-factors`, `--block`, `--gate`; those a
/// kind does not use are ignored.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct LinearFlags {
    /// Blocks per factor (monarch, blockdiag); default 4.
    #[arg(long)]
    pub nblocks: Option<usize>,
    /// Rank, an integer or a fraction of min(in, out) (lowrank, pixelfly).
    #[arg(long)]
    pub rank: Option<Rank>,
    /// Flat block butterfly base size (blocksparse, pixelfly); default 16.
    #[arg(long)]
    pub butterfly_size: Option<usize>,
    /// Flat block butterfly factors (blocksparse, pixelfly); default 2.
    #[arg(long)]
    pub n_factors: Option<usize>,
    /// Block edge (blocksparse, pixelfly); default 32.
    #[arg(long)]
    pub block: Option<usize>,
    /// Pixelfly gate: half or learned.
    #[arg(long)]
    pub gate: Option<Gate>,
}

impl LinearFlags {
    /// The options given.
    pub fn options(&self) -> LinearOptions {
        LinearOptions {
            nblocks: self.nblocks,
            rank: self.rank,
            butterfly_size: self.butterfly_size,
            n_factors: self.n_factors,
            block: self.block,
            gate: self.gate,
        }
    }
}
