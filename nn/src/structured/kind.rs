//! [`LinearKind`]: which linear layer a model uses, from configuration files or flags.

use super::{
    BlockDiagLinear, BlockSparseLinear, ButterflyLinear, LinearLayer, LowRankLinear, MonarchLinear, PixelflyLinear,
};
use crate::Linear;
use monarch_tensor::{Error, FlatButterfly, Result};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// A rank: an integer, or a fraction of `min(in, out)` (TOML `rank = 64` or `rank = 0.25`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Rank {
    /// An absolute rank.
    Fixed(usize),
    /// A fraction in (0, 1] of `min(in, out)`, rounded, at least 1.
    Fraction(f64),
}

impl Rank {
    /// The rank for an `out × inp` matrix; errors when it is 0 or exceeds `min(in, out)`.
    pub fn resolve(&self, inp: usize, out: usize) -> Result<usize> {
        let full = inp.min(out);
        let r = match *self {
            Rank::Fixed(r) => r,
            Rank::Fraction(f) if f > 0.0 && f <= 1.0 => ((f * full as f64).round() as usize).max(1),
            Rank::Fraction(f) => monarch_tensor::bail!("rank", "a fractional rank must lie in (0, 1], got {f}"),
        };
        if r == 0 || r > full {
            monarch_tensor::bail!("rank", "rank {r} is not in 1..={full} for a {out}x{inp} matrix");
        }
        Ok(r)
    }
}

impl std::str::FromStr for Rank {
    type Err = Error;
    /// `64` is a fixed rank, `0.25` a fraction.
    fn from_str(s: &str) -> Result<Self> {
        if let Ok(r) = s.parse::<usize>() {
            return Ok(Rank::Fixed(r));
        }
        match s.parse::<f64>() {
            Ok(f) => Ok(Rank::Fraction(f)),
            Err(_) => monarch_tensor::bail!("rank", "{s:?} is neither an integer rank nor a fraction"),
        }
    }
}

impl std::fmt::Display for Rank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rank::Fixed(r) => write!(f, "{r}"),
            Rank::Fraction(x) => write!(f, "{x}"),
        }
    }
}

/// How Pixelfly mixes its sparse and low-rank terms: `lerp(sparse, low_rank, g)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gate {
    /// `g = 0.5`.
    #[default]
    Half,
    /// A learned per-token gate `g = sigmoid(Linear(in, 1)(x))`.
    Learned,
}

impl std::str::FromStr for Gate {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "half" => Ok(Gate::Half),
            "learned" => Ok(Gate::Learned),
            _ => monarch_tensor::bail!("gate", "unknown gate {s:?} (expected half or learned)"),
        }
    }
}

/// Which linear layer to use. Reads naturally from TOML, e.g.
/// `linear = { kind = "monarch", nblocks = 4 }` or
/// `linear = { kind = "pixelfly", butterfly_size = 16, n_factors = 2, block = 32, rank = 0.05 }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LinearKind {
    /// The dense layer.
    Dense,
    /// [`MonarchLinear`] with `nblocks` blocks per factor.
    Monarch {
        /// Blocks per factor.
        nblocks: usize,
    },
    /// [`BlockDiagLinear`] with `nblocks` blocks.
    #[serde(rename = "blockdiag")]
    BlockDiag {
        /// Diagonal blocks.
        nblocks: usize,
    },
    /// [`LowRankLinear`] of the given rank.
    #[serde(rename = "lowrank")]
    LowRank {
        /// Rank, absolute or a fraction of `min(in, out)`.
        rank: Rank,
    },
    /// [`ButterflyLinear`].
    Butterfly,
    /// [`BlockSparseLinear`] with a flat block butterfly mask.
    #[serde(rename = "blocksparse")]
    BlockSparse {
        /// Base butterfly size, a power of two.
        butterfly_size: usize,
        /// Butterfly factors in the mask, `1..=log₂ butterfly_size`.
        n_factors: usize,
        /// Block edge: 16, 32 or 64.
        block: usize,
    },
    /// [`PixelflyLinear`]: flat block butterfly block-sparse plus low-rank.
    Pixelfly {
        /// Base butterfly size, a power of two.
        butterfly_size: usize,
        /// Butterfly factors in the mask, `1..=log₂ butterfly_size`.
        n_factors: usize,
        /// Block edge: 16, 32 or 64.
        block: usize,
        /// Rank of the low-rank term.
        rank: Rank,
        /// How the two terms mix.
        #[serde(default)]
        gate: Gate,
    },
}

/// Options of [`LinearKind::from_options`], as command-line flags give them; those a
/// kind does not use are ignored, missing ones take the documented defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinearOptions {
    /// Blocks per factor (monarch, blockdiag); default 4.
    pub nblocks: Option<usize>,
    /// Rank (lowrank, pixelfly); required by both.
    pub rank: Option<Rank>,
    /// Base butterfly size (blocksparse, pixelfly); default 16.
    pub butterfly_size: Option<usize>,
    /// Butterfly factors (blocksparse, pixelfly); default 2.
    pub n_factors: Option<usize>,
    /// Block edge (blocksparse, pixelfly); default 32.
    pub block: Option<usize>,
    /// Gate (pixelfly); default half.
    pub gate: Option<Gate>,
}

impl LinearKind {
    /// Every kind's name as [`from_options`](Self::from_options) and TOML spell it.
    pub const NAMES: [&'static str; 7] =
        ["dense", "monarch", "blockdiag", "lowrank", "butterfly", "blocksparse", "pixelfly"];

    /// A kind from its name and flag-style options (`--linear monarch --nblocks 4`).
    pub fn from_options(name: &str, o: &LinearOptions) -> Result<Self> {
        let rank = || o.rank.ok_or_else(|| Error::invalid("linear", format!("{name} needs a rank (--rank)")));
        let (butterfly_size, n_factors, block) =
            (o.butterfly_size.unwrap_or(16), o.n_factors.unwrap_or(2), o.block.unwrap_or(32));
        let kind = match name {
            "dense" => LinearKind::Dense,
            "monarch" => LinearKind::Monarch { nblocks: o.nblocks.unwrap_or(4) },
            "blockdiag" => LinearKind::BlockDiag { nblocks: o.nblocks.unwrap_or(4) },
            "lowrank" => LinearKind::LowRank { rank: rank()? },
            "butterfly" => LinearKind::Butterfly,
            "blocksparse" => LinearKind::BlockSparse { butterfly_size, n_factors, block },
            "pixelfly" => LinearKind::Pixelfly {
                butterfly_size,
                n_factors,
                block,
                rank: rank()?,
                gate: o.gate.unwrap_or_default(),
            },
            _ => monarch_tensor::bail!("linear", "unknown linear kind {name:?} (expected one of {:?})", Self::NAMES),
        };
        Ok(kind)
    }

    /// The kind's name ([`NAMES`](Self::NAMES)).
    pub fn name(&self) -> &'static str {
        match self {
            LinearKind::Dense => "dense",
            LinearKind::Monarch { .. } => "monarch",
            LinearKind::BlockDiag { .. } => "blockdiag",
            LinearKind::LowRank { .. } => "lowrank",
            LinearKind::Butterfly => "butterfly",
            LinearKind::BlockSparse { .. } => "blocksparse",
            LinearKind::Pixelfly { .. } => "pixelfly",
        }
    }

    /// A freshly initialised layer of this kind mapping `inp` to `out` features.
    pub fn build(&self, inp: usize, out: usize, bias: bool, rng: &mut StdRng) -> Result<Box<dyn LinearLayer>> {
        Ok(match *self {
            LinearKind::Dense => Box::new(Linear::new(inp, out, bias, rng)?),
            LinearKind::Monarch { nblocks } => Box::new(MonarchLinear::new(inp, out, nblocks, bias, rng)?),
            LinearKind::BlockDiag { nblocks } => Box::new(BlockDiagLinear::new(inp, out, nblocks, bias, rng)?),
            LinearKind::LowRank { rank } => Box::new(LowRankLinear::new(inp, out, rank, bias, rng)?),
            LinearKind::Butterfly => Box::new(ButterflyLinear::new(inp, out, bias, rng)?),
            LinearKind::BlockSparse { butterfly_size, n_factors, block } => {
                Box::new(BlockSparseLinear::new(inp, out, flat(butterfly_size, n_factors, block), bias, rng)?)
            }
            LinearKind::Pixelfly { butterfly_size, n_factors, block, rank, gate } => {
                let cfg = flat(butterfly_size, n_factors, block);
                Box::new(PixelflyLinear::new(inp, out, cfg, rank, gate, bias, rng)?)
            }
        })
    }

    /// The layer of this kind nearest to `dense` (same function where the structure
    /// allows it): Frobenius-optimal for monarch, blockdiag, lowrank and blocksparse;
    /// an error for butterfly and pixelfly, which have no closed-form projection.
    pub fn project(&self, dense: &Linear) -> Result<Box<dyn LinearLayer>> {
        Ok(match *self {
            LinearKind::Dense => Box::new(LinearLayer::to_dense(dense)?),
            LinearKind::Monarch { nblocks } => Box::new(MonarchLinear::project(dense, nblocks)?),
            LinearKind::BlockDiag { nblocks } => Box::new(BlockDiagLinear::project(dense, nblocks)?),
            LinearKind::LowRank { rank } => Box::new(LowRankLinear::project(dense, rank)?),
            LinearKind::BlockSparse { butterfly_size, n_factors, block } => {
                Box::new(BlockSparseLinear::project(dense, flat(butterfly_size, n_factors, block))?)
            }
            LinearKind::Butterfly | LinearKind::Pixelfly { .. } => {
                monarch_tensor::bail!("project", "projection onto {} layers is not supported", self.name())
            }
        })
    }
}

/// The flat block butterfly configuration that configuration files describe (no global
/// rows or columns, no shuffle).
fn flat(butterfly_size: usize, n_factors: usize, block: usize) -> FlatButterfly {
    FlatButterfly { butterfly_size, n_factors, block, global_size: 0, shuffle: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_reads_tagged_tables_and_ranks() {
        let k: LinearKind = serde_json::from_str(r#"{"kind": "monarch", "nblocks": 4}"#).unwrap();
        assert_eq!(k, LinearKind::Monarch { nblocks: 4 });
        let k: LinearKind = serde_json::from_str(
            r#"{"kind": "pixelfly", "butterfly_size": 16, "n_factors": 2, "block": 32, "rank": 0.25}"#,
        )
        .unwrap();
        assert_eq!(
            k,
            LinearKind::Pixelfly {
                butterfly_size: 16,
                n_factors: 2,
                block: 32,
                rank: Rank::Fraction(0.25),
                gate: Gate::Half
            }
        );
        let k: LinearKind = serde_json::from_str(r#"{"kind": "lowrank", "rank": 64}"#).unwrap();
        assert_eq!(k, LinearKind::LowRank { rank: Rank::Fixed(64) });
        assert_eq!(serde_json::from_str::<LinearKind>(r#"{"kind": "dense"}"#).unwrap(), LinearKind::Dense);
        for bad in [r#"{"kind": "monarch"}"#, r#"{"kind": "nope"}"#, r#"{"kind": "monarch", "nblocks": 2, "rank": 3}"#]
        {
            assert!(serde_json::from_str::<LinearKind>(bad).is_err(), "{bad}");
        }
        let round = serde_json::to_string(&LinearKind::BlockDiag { nblocks: 2 }).unwrap();
        assert_eq!(round, r#"{"kind":"blockdiag","nblocks":2}"#);
    }

    #[test]
    fn toml_tables_read_naturally() {
        #[derive(Deserialize)]
        struct Cfg {
            linear: LinearKind,
            mlp: LinearKind,
            attn: LinearKind,
        }
        let c: Cfg = toml::from_str(
            r#"
            linear = { kind = "monarch", nblocks = 4 }
            mlp = { kind = "pixelfly", butterfly_size = 16, n_factors = 2, block = 32, rank = 0.05, gate = "learned" }
            attn = { kind = "lowrank", rank = 64 }
            "#,
        )
        .unwrap();
        assert_eq!(c.linear, LinearKind::Monarch { nblocks: 4 });
        let fly = LinearKind::Pixelfly {
            butterfly_size: 16,
            n_factors: 2,
            block: 32,
            rank: Rank::Fraction(0.05),
            gate: Gate::Learned,
        };
        assert_eq!(c.mlp, fly);
        assert_eq!(c.attn, LinearKind::LowRank { rank: Rank::Fixed(64) });
    }

    #[test]
    fn from_options_applies_defaults_and_rejects_unknowns() {
        let o = LinearOptions::default();
        assert_eq!(LinearKind::from_options("monarch", &o).unwrap(), LinearKind::Monarch { nblocks: 4 });
        assert!(LinearKind::from_options("lowrank", &o).is_err());
        assert!(LinearKind::from_options("sparse", &o).is_err());
        let o = LinearOptions { rank: Some("0.5".parse().unwrap()), ..Default::default() };
        assert_eq!(LinearKind::from_options("lowrank", &o).unwrap(), LinearKind::LowRank { rank: Rank::Fraction(0.5) });
        for name in LinearKind::NAMES {
            let o = LinearOptions { rank: Some(Rank::Fixed(2)), ..Default::default() };
            assert_eq!(LinearKind::from_options(name, &o).unwrap().name(), name);
        }
    }

    #[test]
    fn ranks_resolve_or_explain() {
        assert_eq!(Rank::Fixed(8).resolve(32, 16).unwrap(), 8);
        assert_eq!(Rank::Fraction(0.25).resolve(32, 16).unwrap(), 4);
        assert_eq!(Rank::Fraction(0.01).resolve(32, 16).unwrap(), 1);
        assert!(Rank::Fixed(17).resolve(32, 16).is_err());
        assert!(Rank::Fixed(0).resolve(32, 16).is_err());
        assert!(Rank::Fraction(1.5).resolve(32, 16).is_err());
        assert!("x".parse::<Rank>().is_err());
        assert!("learned".parse::<Gate>().is_ok() && "always".parse::<Gate>().is_err());
    }
}
