//! Typed launchers of the kernels, one module per kernel source (same stems as the CPU
//! ops). Each checks dtypes, lengths and devices of its operands, then queues the
//! kernel on the device's stream. The doc comment of each function is its contract:
//! argument order, layouts (row-major, element strides) and launch shape.

pub mod adamw;
pub mod binary;
pub mod block_sparse;
pub mod butterfly;
pub mod copy;
pub mod cross_entropy;
pub mod dropout;
pub mod embedding;
pub mod flash_attention;
pub mod layer_norm;
pub mod monarch;
pub mod reduce;
pub mod sgd;
pub mod softmax;
pub mod unary;

use cudarc::driver::LaunchConfig;

/// The most dimensions a strided or broadcast kernel takes.
pub const MAX_DIMS: usize = 6;

/// A 1-D launch of `threads` per block over `grid` blocks.
pub(crate) fn cfg_1d(grid: u32, threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// The launch of a row kernel: block (X, Y) = Y rows of X threads, X a power of two in
/// 32..=512 fitted to the row length, 256 threads a block when rows are short.
pub(crate) fn cfg_rows(rows: usize, cols: usize) -> LaunchConfig {
    let x = cols.next_power_of_two().clamp(32, 512) as u32;
    let y = (256 / x).max(1);
    let grid = rows.div_ceil(y as usize).max(1) as u32;
    LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (x, y, 1), shared_mem_bytes: 0 }
}

/// How many row chunks a column reduction over `rows` rows and `cols` columns splits
/// into so that the device is full: about 4 blocks per SM, chunks of at least 64 rows.
pub(crate) fn column_chunks(rows: usize, cols: usize, sm_count: u32) -> usize {
    let col_blocks = cols.div_ceil(32).max(1);
    let want = (sm_count as usize * 4).div_ceil(col_blocks);
    want.clamp(1, rows.div_ceil(64).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_blocks_fit_the_row_length() {
        let c = cfg_rows(1000, 10);
        assert_eq!((c.block_dim, c.grid_dim.0), ((32, 8, 1), 125));
        let c = cfg_rows(3, 50_000);
        assert_eq!((c.block_dim, c.grid_dim.0), ((512, 1, 1), 3));
        let c = cfg_rows(0, 0);
        assert_eq!(c.grid_dim.0, 1);
    }

    #[test]
    fn column_chunks_fill_the_device_without_tiny_chunks() {
        assert_eq!(column_chunks(16384, 768, 132), 22);
        assert_eq!(column_chunks(100, 768, 132), 2);
        assert_eq!(column_chunks(10, 1 << 20, 132), 1);
    }
}
