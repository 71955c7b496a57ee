//! `kernels/dropout.cu`: dropout with the CPU's counter-based generator.

use super::cfg_1d;
use crate::buffer::Check;
use crate::device::Arg;
use crate::{Result, View, ViewMut, kernels};

/// `y[i] = 0` where `counter_uniform(seed, offset + i) < p`, else `x[i]/(1-p)`, over
/// contiguous f32 or bf16 `x`: the same mask as the CPU for the same seed and element
/// index. The backward is the same call on the output gradient. `offset` is the index
/// of `x[0]` in the whole tensor when it is processed in parts (0 otherwise).
/// Kernel `dropout_{f32,bf16}(x, y, n, p, scale, seed, offset)`, 256 threads, grid-stride.
pub fn dropout(x: View<'_>, p: f64, seed: u64, offset: u64, y: ViewMut<'_>) -> Result<()> {
    let c = Check { op: "dropout" };
    if !(0.0..1.0).contains(&p) {
        crate::error::bail!(c.op, "probability must lie in [0, 1), got {p}");
    }
    let n = x.len();
    c.output("y", &y, x.dtype(), n)?;
    let dev = x.device().clone();
    c.same_device(&dev, [y.device()])?;
    if n == 0 {
        return Ok(());
    }
    let f = dev.function(kernels::DROPOUT, &format!("dropout_{}", x.dtype().kernel_suffix(c.op)?))?;
    // As the CPU: the mask compares with p in f32, the scale is 1/(1-p) in f64, rounded.
    let scale = (1.0 / (1.0 - p)) as f32;
    let args = [
        Arg::U64(x.ptr()),
        Arg::U64(y.ptr()),
        Arg::len(n),
        Arg::F32(p as f32),
        Arg::F32(scale),
        Arg::U64(seed),
        Arg::U64(offset),
    ];
    dev.launch(&f, cfg_1d(dev.grid_for(n, 256), 256), &args)
}

/// The CPU generator, for tests and host-side masks: a uniform number in [0, 1) from
/// `(seed, index)`, SplitMix64 of the combined counter; bit-identical to the kernel's
/// `counter_uniform` and to `monarch_tensor::counter_uniform`.
pub fn counter_uniform(seed: u64, index: u64) -> f32 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}
