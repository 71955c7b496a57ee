//! `kernels/butterfly.cu`: the butterfly product (log₂ n factors of 2×2 blocks) and its
//! gradients, for rows of f32 or bf16 with twiddles of the same dtype.

use super::cfg_1d;
use crate::buffer::Check;
use crate::device::Arg;
use crate::{DType, Result, View, ViewMut, kernels};
use cudarc::driver::LaunchConfig;

/// The largest butterfly size the kernels take: one row of it fills their shared buffer.
pub const BUTTERFLY_MAX_N: usize = 8192;

/// Threads of every butterfly block.
const THREADS: u32 = 256;

/// The bytes the backward's scratch and partial sums may take together.
const BACKWARD_BYTES: usize = 64 << 20;

/// Sizes of one butterfly call: `rows` rows of `inp` features (`inp ≤ n = 2^log_n`)
/// through `stacks` stacks, the stacked outputs truncated to `out ≤ stacks·n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ButterflyDims {
    /// Rows of the input.
    pub rows: usize,
    /// Input features.
    pub inp: usize,
    /// Output features.
    pub out: usize,
    /// log₂ of the butterfly size n.
    pub log_n: usize,
    /// Stacks of factors.
    pub stacks: usize,
}

impl ButterflyDims {
    fn n(&self) -> usize {
        1 << self.log_n
    }

    /// Twiddle elements: (stacks, log_n, n/2, 2, 2).
    pub fn twiddle_len(&self) -> usize {
        self.stacks * self.log_n * self.n() * 2
    }

    fn check(&self, op: &'static str) -> Result<()> {
        let n = self.n();
        if self.log_n > BUTTERFLY_MAX_N.trailing_zeros() as usize {
            crate::error::bail!(op, "butterfly size {n} is over the kernels' {BUTTERFLY_MAX_N}");
        }
        if self.inp > n || self.out > self.stacks * n {
            crate::error::bail!(op, "{} inputs and {} outputs for {} stacks of {n}", self.inp, self.out, self.stacks);
        }
        Ok(())
    }

    /// Rows a block holds at once: as many as fill the shared buffer, at most 32.
    pub fn rows_per_block(&self) -> usize {
        (BUTTERFLY_MAX_N >> self.log_n).clamp(1, 32)
    }

    /// The backward's persistent grid: at most one block per SM, fewer when the
    /// per-block scratch (levels and dx sums, `rows_per_block·(log_n+1)·n`) and twiddle
    /// partials (`stacks·log_n·n·2`, f32) would pass `BACKWARD_BYTES`; never more
    /// blocks than row groups.
    pub fn backward_blocks(&self, sm_count: u32) -> usize {
        let per_block = 4 * (self.rows_per_block() * (self.log_n + 1) * self.n() + self.twiddle_len());
        let groups = self.rows.div_ceil(self.rows_per_block());
        (BACKWARD_BYTES / per_block.max(1)).clamp(1, sm_count as usize).min(groups.max(1))
    }
}

/// `y = butterfly(x)`: `x` (rows, inp), `tw` (stacks, log_n, n/2, 2, 2), `y` (rows, out),
/// contiguous, one dtype. Kernel `butterfly_fwd_{f32,bf16}(x, tw, y, rows, inp, out,
/// log_n, per_block)`, grid (ceil(rows / per_block), ceil(out / n)), 256 threads.
pub fn butterfly_forward(z: ButterflyDims, x: View<'_>, tw: View<'_>, y: ViewMut<'_>) -> Result<()> {
    let c = Check { op: "butterfly_forward" };
    z.check(c.op)?;
    let dt = x.dtype();
    c.input("x", &x, dt, z.rows * z.inp)?;
    c.input("twiddle", &tw, dt, z.twiddle_len())?;
    c.output("y", &y, dt, z.rows * z.out)?;
    let dev = x.device().clone();
    c.same_device(&dev, [tw.device(), y.device()])?;
    if z.rows * z.out == 0 {
        return Ok(());
    }
    let per = z.rows_per_block();
    let f = dev.function(kernels::BUTTERFLY, &format!("butterfly_fwd_{}", dt.kernel_suffix(c.op)?))?;
    let cfg = LaunchConfig {
        grid_dim: (z.rows.div_ceil(per) as u32, z.out.div_ceil(z.n()) as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let args = [
        Arg::U64(x.ptr()),
        Arg::U64(tw.ptr()),
        Arg::U64(y.ptr()),
        Arg::len(z.rows),
        Arg::len(z.inp),
        Arg::len(z.out),
        Arg::I32(z.log_n as i32),
        Arg::I32(per as i32),
    ];
    dev.launch(&f, cfg, &args)
}

/// `(dx, dtw)` of [`butterfly_forward`] from `dy` (rows, out). Kernels:
/// `butterfly_bwd_{f32,bf16}(x, tw, dy, dx, scratch, part, rows, inp, out, log_n, stacks,
/// per_block)` on [`ButterflyDims::backward_blocks`] blocks of 256 threads, then
/// `butterfly_bwd_finish_{f32,bf16}(part, dtw, blocks, count)` summing the blocks'
/// partials in order (deterministic), 256 threads a block.
pub fn butterfly_backward(
    z: ButterflyDims,
    x: View<'_>,
    tw: View<'_>,
    dy: View<'_>,
    dx: ViewMut<'_>,
    dtw: ViewMut<'_>,
) -> Result<()> {
    let c = Check { op: "butterfly_backward" };
    z.check(c.op)?;
    let dt = x.dtype();
    c.input("x", &x, dt, z.rows * z.inp)?;
    c.input("twiddle", &tw, dt, z.twiddle_len())?;
    c.input("dy", &dy, dt, z.rows * z.out)?;
    c.output("dx", &dx, dt, z.rows * z.inp)?;
    c.output("dtwiddle", &dtw, dt, z.twiddle_len())?;
    let dev = x.device().clone();
    c.same_device(&dev, [tw.device(), dy.device(), dx.device(), dtw.device()])?;
    let suffix = dt.kernel_suffix(c.op)?;
    let count = z.twiddle_len();
    if z.rows == 0 || z.out == 0 {
        // No rows or no outputs: every gradient is zero.
        super::copy::fill(dx, 0.0)?;
        return super::copy::fill(dtw, 0.0);
    }
    let per = z.rows_per_block();
    let blocks = z.backward_blocks(dev.sm_count());
    let scratch = dev.alloc(DType::F32, blocks * per * (z.log_n + 1) * z.n())?;
    let part = dev.alloc(DType::F32, (blocks * count).max(1))?;
    let f = dev.function(kernels::BUTTERFLY, &format!("butterfly_bwd_{suffix}"))?;
    let args = [
        Arg::U64(x.ptr()),
        Arg::U64(tw.ptr()),
        Arg::U64(dy.ptr()),
        Arg::U64(dx.ptr()),
        Arg::U64(scratch.device_ptr()),
        Arg::U64(part.device_ptr()),
        Arg::len(z.rows),
        Arg::len(z.inp),
        Arg::len(z.out),
        Arg::I32(z.log_n as i32),
        Arg::I32(z.stacks as i32),
        Arg::I32(per as i32),
    ];
    dev.launch(&f, cfg_1d(blocks as u32, THREADS), &args)?;
    if count == 0 {
        return Ok(());
    }
    let f = dev.function(kernels::BUTTERFLY, &format!("butterfly_bwd_finish_{suffix}"))?;
    let args = [Arg::U64(part.device_ptr()), Arg::U64(dtw.ptr()), Arg::len(blocks), Arg::len(count)];
    dev.launch(&f, cfg_1d(count.div_ceil(THREADS as usize) as u32, THREADS), &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_fill_the_shared_buffer_and_the_scratch_stays_bounded() {
        let z = ButterflyDims { rows: 16384, inp: 768, out: 3072, log_n: 10, stacks: 3 };
        assert_eq!(z.rows_per_block(), 8);
        // 4·(8·11·1024 + 3·10·1024·2) bytes a block: 110 fit in 64 MiB.
        assert_eq!(z.backward_blocks(132), 110);
        assert_eq!(ButterflyDims { stacks: 1, ..z }.backward_blocks(132), 132);
        let big = ButterflyDims { rows: 16384, inp: 8192, out: 8192, log_n: 13, stacks: 1 };
        assert_eq!(big.rows_per_block(), 1);
        let blocks = big.backward_blocks(132);
        let bytes = 4 * blocks * ((big.log_n + 1) * 8192 + big.twiddle_len());
        assert!(blocks < 132 && bytes <= BACKWARD_BYTES, "{blocks} blocks, {bytes} bytes");
        let few = ButterflyDims { rows: 20, inp: 4, out: 4, log_n: 2, stacks: 1 };
        assert_eq!((few.rows_per_block(), few.backward_blocks(132)), (32, 1));
        assert!(ButterflyDims { log_n: 14, ..big }.check("t").is_err());
        assert!(ButterflyDims { inp: 9000, ..big }.check("t").is_err());
    }
}
