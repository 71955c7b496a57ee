//! Block sparsity layouts: which (row block, column block) tiles of a matrix are
//! stored or visited. Used by block-sparse linear layers (Pixelated Butterfly) and by
//! block-sparse attention.

use crate::{CpuStorage, Result, Tensor};

/// A 0/1 layout over `rows × cols` blocks of `block × block` elements, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMask {
    /// Block rows (matrix rows / block).
    pub rows: usize,
    /// Block columns (matrix columns / block).
    pub cols: usize,
    /// Block edge in elements.
    pub block: usize,
    /// `rows · cols` flags, row-major.
    pub set: Vec<bool>,
}

/// The flat block butterfly pattern of Pixelated Butterfly (Dao et al. 2021).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlatButterfly {
    /// Size of the base butterfly pattern, a power of two ≥ 2.
    pub butterfly_size: usize,
    /// Number of butterfly factors summed, `1 ≤ n_factors ≤ log₂ butterfly_size`.
    pub n_factors: usize,
    /// Block edge of the resulting layout.
    pub block: usize,
    /// Leading rows and columns that are set entirely (global tokens / channels).
    pub global_size: usize,
    /// Regroup the base pattern's columns as ShuffleNet's channel shuffle.
    pub shuffle: bool,
}

impl BlockMask {
    /// A layout from explicit flags (`rows · cols`, row-major).
    pub fn new(rows: usize, cols: usize, block: usize, set: Vec<bool>) -> Result<Self> {
        if set.len() != rows * cols || block == 0 {
            crate::bail!("BlockMask", "{} flags do not describe {rows}x{cols} blocks of size {block}", set.len());
        }
        Ok(BlockMask { rows, cols, block, set })
    }

    /// Whether block `(r, c)` is set.
    pub fn get(&self, r: usize, c: usize) -> bool {
        self.set[r * self.cols + c]
    }

    /// Number of set blocks.
    pub fn nnz(&self) -> usize {
        self.set.iter().filter(|&&s| s).count()
    }

    /// Fraction of blocks set.
    pub fn density(&self) -> f64 {
        self.nnz() as f64 / (self.rows * self.cols).max(1) as f64
    }

    /// The layout as a `U8` tensor of shape (rows, cols).
    pub fn to_tensor(&self) -> Tensor {
        Tensor::from_cpu(CpuStorage::U8(self.set.iter().map(|&s| s as u8).collect()), [self.rows, self.cols])
    }

    /// A local (sliding-window) layout: block `(r, c)` is set iff `|r − c| ≤ window`.
    /// Combined with causal masking it keeps the `window` blocks before each diagonal block.
    pub fn local(rows: usize, cols: usize, block: usize, window: usize) -> Result<Self> {
        let set = (0..rows * cols).map(|k| (k / cols).abs_diff(k % cols) <= window).collect();
        Self::new(rows, cols, block, set)
    }

    /// A layout from a user-supplied rank-2 tensor of 0s and 1s (any dtype), one element
    /// per block.
    pub fn from_layout(layout: &Tensor, block: usize) -> Result<Self> {
        let (rows, cols) = match layout.dims() {
            &[r, c] => (r, c),
            _ => crate::bail!("BlockMask", "a block layout must be 2-D, got shape {}", layout.shape()),
        };
        let v = layout.to_vec_f64()?;
        if let Some(x) = v.iter().find(|&&x| x != 0.0 && x != 1.0) {
            crate::bail!("BlockMask", "a block layout holds only 0 and 1, found {x}");
        }
        Self::new(rows, cols, block, v.into_iter().map(|x| x == 1.0).collect())
    }

    /// The flat block butterfly layout of an `out × inp` matrix: base cell `(a, b)` of
    /// the `butterfly_size²` pattern is set iff `a XOR b ∈ {0} ∪ {2^f : f < n_factors}`;
    /// each base cell covers an `(out/bs) × (inp/bs)` tile; the first `global_size`
    /// rows and columns are set; the result is pooled to blocks with any().
    pub fn flat_butterfly(out: usize, inp: usize, cfg: FlatButterfly) -> Result<Self> {
        let FlatButterfly { butterfly_size: bs, n_factors, block, global_size, shuffle } = cfg;
        let op = "flat_butterfly";
        if bs < 2 || !bs.is_power_of_two() {
            crate::bail!(op, "butterfly_size must be a power of two >= 2, got {bs}");
        }
        let log_n = bs.trailing_zeros() as usize;
        if !(1..=log_n).contains(&n_factors) {
            crate::bail!(op, "n_factors must lie in 1..={log_n} for butterfly_size {bs}, got {n_factors}");
        }
        if block == 0 || out % block != 0 || inp % block != 0 {
            crate::bail!(op, "a {out}x{inp} matrix does not split into blocks of {block}");
        }
        if out % bs != 0 || inp % bs != 0 {
            crate::bail!(op, "a {out}x{inp} matrix does not split into a {bs}x{bs} butterfly pattern");
        }
        let base = |a: usize, b: usize| {
            let x = a ^ b;
            x == 0 || (x.is_power_of_two() && x.trailing_zeros() < n_factors as u32)
        };
        // ShuffleNet regrouping: shuffled column `c·groups + g` is base column `g·per_group + c`.
        let groups = 1 << (log_n - n_factors);
        let per_group = bs / groups;
        let base_col = |j: usize| if shuffle { (j % groups) * per_group + j / groups } else { j };
        let (tile_r, tile_c) = (out / bs, inp / bs);
        let element = |i: usize, j: usize| i < global_size || j < global_size || base(i / tile_r, base_col(j / tile_c));
        let (rows, cols) = (out / block, inp / block);
        let mut set = vec![false; rows * cols];
        for (k, s) in set.iter_mut().enumerate() {
            let (r, c) = (k / cols, k % cols);
            // Any set element in the block: test each base tile it overlaps (first element of each overlap).
            let i_steps = (r * block..(r + 1) * block).filter(|&i| i == r * block || i % tile_r == 0);
            *s = i_steps.into_iter().any(|i| {
                (c * block..(c + 1) * block).filter(|&j| j == c * block || j % tile_c == 0).any(|j| element(i, j))
            }) || (r * block < global_size)
                || (c * block < global_size);
        }
        Ok(BlockMask { rows, cols, block, set })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(bs: usize, nf: usize, block: usize) -> FlatButterfly {
        FlatButterfly { butterfly_size: bs, n_factors: nf, block, global_size: 0, shuffle: false }
    }

    /// Reference: build the element mask explicitly and pool it.
    fn pooled_reference(out: usize, inp: usize, c: FlatButterfly) -> Vec<bool> {
        let (tr, tc) = (out / c.butterfly_size, inp / c.butterfly_size);
        let groups = 1 << (c.butterfly_size.trailing_zeros() as usize - c.n_factors);
        let per = c.butterfly_size / groups;
        let mut m = vec![vec![false; inp]; out];
        for (i, row) in m.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                let bc = if c.shuffle { ((j / tc) % groups) * per + (j / tc) / groups } else { j / tc };
                let x = (i / tr) ^ bc;
                *v = x == 0 || (0..c.n_factors).any(|f| x == 1 << f) || i < c.global_size || j < c.global_size;
            }
        }
        let (rows, cols) = (out / c.block, inp / c.block);
        (0..rows * cols)
            .map(|k| {
                let (r, cc) = (k / cols, k % cols);
                (0..c.block).any(|a| (0..c.block).any(|b| m[r * c.block + a][cc * c.block + b]))
            })
            .collect()
    }

    #[test]
    fn known_densities() {
        let d = |o, i, c| BlockMask::flat_butterfly(o, i, c).unwrap().density();
        assert!((d(1024, 1024, cfg(16, 2, 32)) - 0.1875).abs() < 1e-12);
        assert!((d(2048, 512, cfg(16, 2, 32)) - 0.1875).abs() < 1e-12);
        let m = BlockMask::flat_butterfly(3072, 768, cfg(16, 2, 32)).unwrap();
        assert_eq!(m.nnz(), 480);
        assert!((m.density() - 0.2083).abs() < 1e-4);
        assert!((d(1024, 1024, cfg(8, 2, 32)) - 0.375).abs() < 1e-12);
    }

    #[test]
    fn matches_the_element_mask_pooled_with_any() {
        for c in [
            cfg(16, 2, 32),
            FlatButterfly { butterfly_size: 8, n_factors: 1, block: 16, global_size: 40, shuffle: true },
            FlatButterfly { butterfly_size: 4, n_factors: 2, block: 16, global_size: 0, shuffle: true },
        ] {
            for (o, i) in [(256, 256), (768, 192), (192, 512)] {
                if o % c.butterfly_size != 0 || i % c.butterfly_size != 0 {
                    continue;
                }
                let m = BlockMask::flat_butterfly(o, i, c).unwrap();
                assert_eq!(m.set, pooled_reference(o, i, c), "{c:?} {o}x{i}");
            }
        }
    }

    #[test]
    fn local_and_user_layouts() {
        let m = BlockMask::local(4, 3, 16, 1).unwrap();
        let want = [1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 0, 1];
        assert_eq!(m.set, want.iter().map(|&x| x == 1).collect::<Vec<_>>());
        let t = Tensor::from_vec(want.iter().map(|&x| x as f32).collect(), [4, 3]).unwrap();
        assert_eq!(BlockMask::from_layout(&t, 16).unwrap(), m);
        assert_eq!(BlockMask::from_layout(&m.to_tensor(), 16).unwrap(), m);
        assert!(BlockMask::from_layout(&Tensor::from_vec(vec![0.5f32], [1, 1]).unwrap(), 16).is_err());
        assert!(BlockMask::from_layout(&Tensor::from_vec(vec![1f32], [1]).unwrap(), 16).is_err());
        assert!(BlockMask::local(2, 2, 0, 1).is_err());
    }

    #[test]
    fn bad_configurations_are_errors() {
        assert!(BlockMask::flat_butterfly(1024, 1024, cfg(12, 2, 32)).is_err());
        assert!(BlockMask::flat_butterfly(1024, 1024, cfg(16, 5, 32)).is_err());
        assert!(BlockMask::flat_butterfly(1000, 1024, cfg(16, 2, 32)).is_err());
        assert!(BlockMask::new(2, 2, 16, vec![true; 3]).is_err());
    }
}
