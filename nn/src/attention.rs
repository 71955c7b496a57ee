//! Which attention implementation a model runs, as configuration: deserialised from a
//! TOML config (`[attention]` tables below) or built from command-line flags, and applied
//! to query, key and value [`Var`]s of shape (batch, heads, seq, head_dim).
//!
//! ```toml
//! attention = { impl = "flash" }
//! attention = { impl = "block_sparse", block = 128, layout = { kind = "butterfly", butterfly_size = 16, n_factors = 2 } }
//! attention = { impl = "block_sparse", layout = { kind = "density", density = 0.25 } }
//! attention = { impl = "block_sparse", layout = { kind = "local", window = 2 } }
//! attention = { impl = "block_sparse", block = 128, layout = { kind = "blocks", blocks = [[1, 0], [1, 1]] } }
//! attention = { impl = "scatterbrain", features = 64, block = 128, window = 1 }
//! ```

use monarch_autograd::Var;
use monarch_tensor::{AttentionOpts, BlockMask, FlatButterfly, Result, Scatterbrain, Tensor, bail};
use serde::{Deserialize, Serialize};

const OP: &str = "attention config";

/// An attention implementation and its parameters (see the module docs for TOML).
/// Deserialisation rejects unknown fields and fields that do not apply to the chosen
/// implementation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "impl", rename_all = "snake_case", try_from = "RawAttention")]
pub enum AttentionImpl {
    /// Materialised scores: the reference, memory quadratic in the sequence length.
    Naive,
    /// FlashAttention: exact, tiled, memory linear in the sequence length.
    #[default]
    Flash,
    /// FlashAttention visiting only the blocks of a sparsity layout.
    BlockSparse {
        /// Block edge in tokens (the tile of the kernel; default 128).
        block: usize,
        /// Which (query block, key block) pairs are visited.
        layout: SparseLayout,
    },
    /// Scatterbrain: exact local band plus Performer random-feature low rank.
    Scatterbrain {
        /// Random features of the low-rank part (default 64).
        features: usize,
        /// Block edge of the exact local part, in tokens (default 128).
        block: usize,
        /// Neighbouring blocks on each side seen exactly (default 1).
        window: usize,
        /// Seed of the random projection (default 0).
        seed: u64,
    },
}

const DEFAULT_BLOCK: usize = 128;
const DEFAULT_FEATURES: usize = 64;
const DEFAULT_WINDOW: usize = 1;

/// Every field any implementation takes, as written in a config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttention {
    #[serde(rename = "impl")]
    name: String,
    block: Option<usize>,
    layout: Option<SparseLayout>,
    features: Option<usize>,
    window: Option<usize>,
    seed: Option<u64>,
}

impl TryFrom<RawAttention> for AttentionImpl {
    type Error = monarch_tensor::Error;

    fn try_from(r: RawAttention) -> Result<Self> {
        let unused = |what: &str, given: bool| -> Result<()> {
            if given {
                bail!(OP, "{what} does not apply to attention {:?}", r.name);
            }
            Ok(())
        };
        match r.name.as_str() {
            "naive" | "flash" => {
                unused("block", r.block.is_some())?;
                unused("layout", r.layout.is_some())?;
                unused("features", r.features.is_some())?;
                unused("window", r.window.is_some())?;
                unused("seed", r.seed.is_some())?;
                Ok(if r.name == "naive" { AttentionImpl::Naive } else { AttentionImpl::Flash })
            }
            "block_sparse" => {
                unused("features", r.features.is_some())?;
                unused("window (give it in the layout)", r.window.is_some())?;
                unused("seed", r.seed.is_some())?;
                let Some(layout) = r.layout else { bail!(OP, "block_sparse needs a layout") };
                Ok(AttentionImpl::BlockSparse { block: r.block.unwrap_or(DEFAULT_BLOCK), layout })
            }
            "scatterbrain" => {
                unused("layout", r.layout.is_some())?;
                Ok(AttentionImpl::Scatterbrain {
                    features: r.features.unwrap_or(DEFAULT_FEATURES),
                    block: r.block.unwrap_or(DEFAULT_BLOCK),
                    window: r.window.unwrap_or(DEFAULT_WINDOW),
                    seed: r.seed.unwrap_or(0),
                })
            }
            other => bail!(OP, "unknown attention {other:?} (expected naive, flash, block_sparse or scatterbrain)"),
        }
    }
}

/// The block layout of block-sparse attention over (query block, key block) pairs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SparseLayout {
    /// The flat block butterfly of Pixelated Butterfly over sequence blocks: query block
    /// `a` sees key block `b` iff the base cells they fall in differ by 0 or a power of two
    /// below `2^n_factors` (XOR), plus `global_blocks` leading global rows and columns.
    Butterfly {
        /// Size of the base pattern, a power of two.
        butterfly_size: usize,
        /// Butterfly factors summed.
        n_factors: usize,
        /// Leading blocks that see and are seen by everything.
        #[serde(default)]
        global_blocks: usize,
    },
    /// The flat block butterfly (no global blocks) whose density over the block grid is
    /// nearest `density`.
    Density {
        /// Target fraction of blocks set, in (0, 1].
        density: f64,
    },
    /// A sliding window: query block `a` sees key blocks `b` with `|a − b| ≤ window`.
    Local {
        /// Blocks on each side.
        window: usize,
    },
    /// A user layout of 0/1 rows over (query block, key block); shorter sequences use its
    /// top-left corner.
    Blocks {
        /// One row of 0s and 1s per query block.
        blocks: Vec<Vec<u8>>,
    },
}

/// Command-line form of [`AttentionImpl`]: `--attention` and the parameters that apply to it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttentionFlags {
    /// `naive`, `flash`, `block_sparse` or `scatterbrain`.
    pub name: String,
    /// Block edge (block_sparse, scatterbrain).
    pub block: Option<usize>,
    /// Block density of a butterfly layout (block_sparse).
    pub density: Option<f64>,
    /// Blocks on each side of a local window (block_sparse, scatterbrain).
    pub window: Option<usize>,
    /// Random features (scatterbrain).
    pub features: Option<usize>,
}

impl AttentionImpl {
    /// The implementation the flags ask for; parameters that do not apply are errors.
    /// For block_sparse, `--density` picks a butterfly layout and `--window` a local one.
    pub fn from_flags(f: &AttentionFlags) -> Result<Self> {
        let (layout, window) = match (f.name.as_str(), f.density, f.window) {
            ("block_sparse", Some(density), None) => (Some(SparseLayout::Density { density }), None),
            ("block_sparse", None, Some(window)) => (Some(SparseLayout::Local { window }), None),
            ("block_sparse", ..) => bail!(OP, "block_sparse needs exactly one of --density and --window"),
            (_, Some(_), _) => bail!(OP, "--density applies only to block_sparse, not {:?}", f.name),
            (_, None, window) => (None, window),
        };
        let raw =
            RawAttention { name: f.name.clone(), block: f.block, layout, features: f.features, window, seed: None };
        Self::try_from(raw)
    }

    /// The implementation prepared for `n_q` queries and `n_k` keys (masks built), to
    /// reuse across layers and steps of one sequence length.
    pub fn kernel(&self, n_q: usize, n_k: usize) -> Result<AttentionKernel> {
        Ok(match self {
            AttentionImpl::Naive => AttentionKernel::Naive,
            AttentionImpl::Flash => AttentionKernel::Flash,
            AttentionImpl::BlockSparse { block, layout } => {
                AttentionKernel::BlockSparse(layout.mask(n_q, n_k, *block)?)
            }
            &AttentionImpl::Scatterbrain { features, block, window, seed } => {
                AttentionKernel::Scatterbrain(Scatterbrain { features, block, window, seed })
            }
        })
    }

    /// Attention of `q` (batch, heads, n_q, d) over `k` and `v` (batch, heads, n_k, d) with
    /// this implementation; see [`AttentionKernel::apply`].
    pub fn apply(&self, q: &Var, k: &Var, v: &Var, opts: &AttentionOpts) -> Result<Var> {
        let (n_q, n_k) = (q.dims().get(2).copied().unwrap_or(0), k.dims().get(2).copied().unwrap_or(0));
        self.kernel(n_q, n_k)?.apply(q, k, v, opts)
    }
}

impl SparseLayout {
    /// The block mask over `ceil(n_q / block) × ceil(n_k / block)` blocks.
    pub fn mask(&self, n_q: usize, n_k: usize, block: usize) -> Result<BlockMask> {
        if block == 0 {
            bail!(OP, "block must be at least 1");
        }
        let (rows, cols) = (n_q.div_ceil(block), n_k.div_ceil(block));
        match self {
            &SparseLayout::Butterfly { butterfly_size, n_factors, global_blocks } => butterfly(
                rows,
                cols,
                block,
                FlatButterfly { butterfly_size, n_factors, block, global_size: global_blocks * block, shuffle: false },
            ),
            &SparseLayout::Density { density } => {
                if !(density > 0.0 && density <= 1.0) {
                    bail!(OP, "density must lie in (0, 1], got {density}");
                }
                nearest_butterfly(rows, cols, block, density)
            }
            &SparseLayout::Local { window } => BlockMask::local(rows, cols, block, window),
            SparseLayout::Blocks { blocks } => {
                let width = blocks.first().map_or(0, Vec::len);
                if blocks.len() < rows || width < cols || blocks.iter().any(|r| r.len() != width) {
                    bail!(OP, "a {}x{width} block layout does not cover {rows}x{cols} blocks of {block}", blocks.len());
                }
                let flat: Vec<f32> = blocks[..rows].iter().flat_map(|r| r[..cols].iter().map(|&x| x as f32)).collect();
                BlockMask::from_layout(&Tensor::from_vec(flat, [rows, cols])?, block)
            }
        }
    }
}

/// The flat butterfly over `rows × cols` blocks: built on the grid padded to a multiple of
/// the butterfly size, then cropped to its top-left corner.
fn butterfly(rows: usize, cols: usize, block: usize, cfg: FlatButterfly) -> Result<BlockMask> {
    let bs = cfg.butterfly_size.max(1);
    let (pr, pc) = (rows.next_multiple_of(bs).max(bs), cols.next_multiple_of(bs).max(bs));
    let full = BlockMask::flat_butterfly(pr * block, pc * block, cfg)?;
    let set = (0..rows * cols).map(|k| full.get(k / cols, k % cols)).collect();
    BlockMask::new(rows, cols, block, set)
}

/// The flat butterfly (sizes up to the grid, any number of factors) whose density is
/// nearest `density`; ties go to the larger butterfly (the finer pattern).
fn nearest_butterfly(rows: usize, cols: usize, block: usize, density: f64) -> Result<BlockMask> {
    let mut best: Option<BlockMask> = None;
    let mut bs = 2;
    while bs <= rows.max(cols).max(2) {
        for n_factors in 1..=bs.trailing_zeros() as usize {
            let cfg = FlatButterfly { butterfly_size: bs, n_factors, block, global_size: 0, shuffle: false };
            let m = butterfly(rows, cols, block, cfg)?;
            if best.as_ref().is_none_or(|b| (m.density() - density).abs() <= (b.density() - density).abs()) {
                best = Some(m);
            }
        }
        bs *= 2;
    }
    best.ok_or_else(|| monarch_tensor::Error::invalid(OP, "no butterfly layout fits"))
}

/// An [`AttentionImpl`] prepared for one sequence length.
#[derive(Clone, Debug, PartialEq)]
pub enum AttentionKernel {
    /// [`Var::naive_attention`].
    Naive,
    /// [`Var::flash_attention`].
    Flash,
    /// [`Var::block_sparse_attention`] with this mask.
    BlockSparse(BlockMask),
    /// [`Var::scatterbrain_attention`] with these parameters.
    Scatterbrain(Scatterbrain),
}

impl AttentionKernel {
    /// Scaled dot-product attention (scale 1/√head_dim) of `q` (batch, heads, n_q, d) over
    /// `k` and `v` (batch, heads, n_k, d), causal and with dropout on the probabilities as
    /// `opts` says (dropout seeded by `opts.seed`; Scatterbrain takes no dropout).
    pub fn apply(&self, q: &Var, k: &Var, v: &Var, opts: &AttentionOpts) -> Result<Var> {
        match self {
            AttentionKernel::Naive => q.naive_attention(k, v, opts),
            AttentionKernel::Flash => q.flash_attention(k, v, opts),
            AttentionKernel::BlockSparse(mask) => q.block_sparse_attention(k, v, mask, opts),
            AttentionKernel::Scatterbrain(cfg) => q.scatterbrain_attention(k, v, cfg, opts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Config {
        attention: AttentionImpl,
    }

    fn parse(s: &str) -> std::result::Result<AttentionImpl, toml::de::Error> {
        toml::from_str::<Config>(s).map(|c| c.attention)
    }

    #[test]
    fn deserialises_from_toml() {
        assert_eq!(parse(r#"attention = { impl = "flash" }"#).unwrap(), AttentionImpl::Flash);
        let bs = parse(
            r#"attention = { impl = "block_sparse", layout = { kind = "butterfly", butterfly_size = 16, n_factors = 2 } }"#,
        )
        .unwrap();
        let layout = SparseLayout::Butterfly { butterfly_size: 16, n_factors: 2, global_blocks: 0 };
        assert_eq!(bs, AttentionImpl::BlockSparse { block: 128, layout });
        let sb = parse("[attention]\nimpl = \"scatterbrain\"\nfeatures = 32\nwindow = 2\n").unwrap();
        assert_eq!(sb, AttentionImpl::Scatterbrain { features: 32, block: 128, window: 2, seed: 0 });
        let user = parse(
            r#"attention = { impl = "block_sparse", block = 8, layout = { kind = "blocks", blocks = [[1, 0], [1, 1]] } }"#,
        );
        assert_eq!(
            user.unwrap().kernel(9, 9).unwrap(),
            AttentionKernel::BlockSparse(BlockMask::new(2, 2, 8, vec![true, false, true, true]).unwrap())
        );
        assert!(parse(r#"attention = { impl = "fast" }"#).is_err());
        assert!(parse(r#"attention = { impl = "flash", block = 3 }"#).is_err());
        assert!(parse(r#"attention = { impl = "block_sparse", layout = { kind = "local" } }"#).is_err());
    }

    #[test]
    fn from_flags_rejects_parameters_that_do_not_apply() {
        let flags = |name: &str| AttentionFlags { name: name.into(), ..Default::default() };
        assert_eq!(AttentionImpl::from_flags(&flags("naive")).unwrap(), AttentionImpl::Naive);
        let bs = AttentionImpl::from_flags(&AttentionFlags { density: Some(0.25), ..flags("block_sparse") }).unwrap();
        assert_eq!(bs, AttentionImpl::BlockSparse { block: 128, layout: SparseLayout::Density { density: 0.25 } });
        assert!(AttentionImpl::from_flags(&AttentionFlags { density: Some(0.25), ..flags("flash") }).is_err());
        assert!(AttentionImpl::from_flags(&flags("block_sparse")).is_err());
        assert!(AttentionImpl::from_flags(&AttentionFlags { density: Some(0.5), ..flags("scatterbrain") }).is_err());
        assert!(AttentionImpl::from_flags(&flags("sparse")).is_err());
    }

    #[test]
    fn layouts_cover_ragged_sequences_and_hit_the_density() {
        let d = SparseLayout::Density { density: 0.25 }.mask(4096, 4096, 64).unwrap();
        assert_eq!((d.rows, d.cols, d.density()), (64, 64, 0.25));
        let b =
            SparseLayout::Butterfly { butterfly_size: 8, n_factors: 1, global_blocks: 1 }.mask(128, 100, 16).unwrap();
        assert_eq!((b.rows, b.cols), (8, 7));
        // Base cells of one block: row 2 sees column 3 (2 XOR 3 = 1), not 1 (XOR 3); column 0 is global.
        assert!(b.get(2, 3) && !b.get(2, 1) && b.get(6, 0));
        assert!(SparseLayout::Blocks { blocks: vec![vec![1]] }.mask(100, 100, 64).is_err());
        assert!(SparseLayout::Density { density: 0.0 }.mask(64, 64, 8).is_err());
        assert!(SparseLayout::Local { window: 1 }.mask(64, 64, 0).is_err());
    }
}
