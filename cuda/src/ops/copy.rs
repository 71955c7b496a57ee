//! `kernels/copy.cu`: strided copies (making views contiguous) and dtype conversion.

use super::{MAX_DIMS, cfg_1d};
use crate::buffer::Check;
use crate::device::Arg;
use crate::{CudaError, DType, Result, View, ViewMut, kernels};

/// A shape with element strides, as `struct Strided6` of the kernels.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strided6 {
    shape: [i64; MAX_DIMS],
    stride: [i64; MAX_DIMS],
    ndim: i32,
    /// Explicit, zeroed: the struct is copied into kernel arguments as whole words.
    pad: i32,
}

impl Strided6 {
    /// The geometry of a view already checked by [`extent`].
    fn new(shape: &[usize], strides: &[usize]) -> Self {
        let mut g = Strided6 { shape: [1; MAX_DIMS], stride: [0; MAX_DIMS], ndim: shape.len() as i32, pad: 0 };
        for (d, (&s, &st)) in shape.iter().zip(strides).enumerate() {
            g.shape[d] = s as i64;
            g.stride[d] = st as i64;
        }
        g
    }
}

/// Checks a shape and strides of up to 6 dims and returns the element count and the
/// largest offset reached plus one (0 when empty).
pub(crate) fn extent(op: &'static str, shape: &[usize], strides: &[usize]) -> Result<(usize, usize)> {
    if shape.len() > MAX_DIMS || shape.len() != strides.len() {
        crate::error::bail!(op, "shape {shape:?} with strides {strides:?} (at most {MAX_DIMS} dims, one stride each)");
    }
    let n: usize = shape.iter().product();
    let span = if n == 0 { 0 } else { 1 + shape.iter().zip(strides).map(|(d, s)| (d - 1) * s).sum::<usize>() };
    Ok((n, span))
}

/// `dst[i] = src[offset(i)]` for the `i`-th element in row-major order over `shape`,
/// read through `strides` (elements, from the view's start; 0 repeats a dimension).
/// With dtypes f32→bf16 or bf16→f32 the values are converted (round to nearest even), u8
/// (masks) converts exactly to f32 or bf16; otherwise both views share a dtype among f32,
/// bf16, i64, i32, u8.
/// Kernel `copy_{f32,bf16,i64,i32,u8}` / `cast_{f32_bf16,bf16_f32,u8_f32,u8_bf16}(src, Strided6, dst, n)`,
/// 256 threads, grid-stride.
pub fn copy_strided(src: View<'_>, shape: &[usize], strides: &[usize], dst: ViewMut<'_>) -> Result<()> {
    let c = Check { op: "copy_strided" };
    let (n, span) = extent("copy_strided", shape, strides)?;
    c.input("src", &src, src.dtype(), span)?;
    c.output("dst", &dst, dst.dtype(), n)?;
    let dev = src.device().clone();
    c.same_device(&dev, [dst.device()])?;
    let name = match (src.dtype(), dst.dtype()) {
        (DType::F32, DType::F32) => "copy_f32",
        (DType::BF16, DType::BF16) => "copy_bf16",
        (DType::I64, DType::I64) => "copy_i64",
        (DType::I32, DType::I32) => "copy_i32",
        (DType::U8, DType::U8) => "copy_u8",
        (DType::F32, DType::BF16) => "cast_f32_bf16",
        (DType::BF16, DType::F32) => "cast_bf16_f32",
        (DType::U8, DType::F32) => "cast_u8_f32",
        (DType::U8, DType::BF16) => "cast_u8_bf16",
        (got, expected) => return Err(CudaError::DType { op: "copy_strided", expected, got }),
    };
    if n == 0 {
        return Ok(());
    }
    let g = Strided6::new(shape, strides);
    let f = dev.function(kernels::COPY, name)?;
    let args = [Arg::U64(src.ptr()), Arg::of(&g), Arg::U64(dst.ptr()), Arg::len(n)];
    dev.launch(&f, cfg_1d(dev.grid_for(n, 256), 256), &args)
}

/// `dst[offset_d(i)] = src[offset_s(i)]` for the `i`-th element in row-major order over
/// `shape`, both views read through their element strides (from each view's start): the
/// copy into part of a tensor, e.g. a new position of a key cache. One dtype among f32,
/// bf16, i64, i32, u8, copied bit for bit. The destination's elements must be distinct
/// (no stride 0 along a dimension of more than one element).
/// Kernel `assign_{f32,bf16,i64,i32,u8}(src, Strided6, dst, Strided6, n)`, 256 threads,
/// grid-stride.
pub fn assign_strided(
    src: View<'_>,
    src_strides: &[usize],
    dst: ViewMut<'_>,
    dst_strides: &[usize],
    shape: &[usize],
) -> Result<()> {
    let c = Check { op: "assign_strided" };
    let (n, src_span) = extent(c.op, shape, src_strides)?;
    let (_, dst_span) = extent(c.op, shape, dst_strides)?;
    if shape.iter().zip(dst_strides).any(|(&d, &s)| d > 1 && s == 0) {
        crate::error::bail!(c.op, "the destination repeats elements (shape {shape:?}, strides {dst_strides:?})");
    }
    c.input("src", &src, dst.dtype(), src_span)?;
    c.output("dst", &dst, dst.dtype(), dst_span)?;
    let dev = src.device().clone();
    c.same_device(&dev, [dst.device()])?;
    let name = match dst.dtype() {
        DType::F32 => "assign_f32",
        DType::BF16 => "assign_bf16",
        DType::I64 => "assign_i64",
        DType::I32 => "assign_i32",
        DType::U8 => "assign_u8",
        dtype => return Err(CudaError::UnsupportedDType { op: c.op, dtype }),
    };
    if n == 0 {
        return Ok(());
    }
    let (gs, gd) = (Strided6::new(shape, src_strides), Strided6::new(shape, dst_strides));
    let f = dev.function(kernels::COPY, name)?;
    let args = [Arg::U64(src.ptr()), Arg::of(&gs), Arg::U64(dst.ptr()), Arg::of(&gd), Arg::len(n)];
    dev.launch(&f, cfg_1d(dev.grid_for(n, 256), 256), &args)
}

/// Sets every element of `dst` to `value`, converted to its dtype as the host's
/// `Tensor::full` converts it (bf16 to nearest, integers truncated). The value travels as
/// a kernel argument: no host buffer, no host-to-device copy.
/// Kernel `fill_{f32,bf16,i64,u8}(dst, value, n)`, 256 threads, grid-stride.
pub fn fill(dst: ViewMut<'_>, value: f64) -> Result<()> {
    let (name, v) = match dst.dtype() {
        DType::F32 => ("fill_f32", Arg::F32(value as f32)),
        DType::BF16 => ("fill_bf16", Arg::of(&half::bf16::from_f64(value).to_bits())),
        DType::I64 => ("fill_i64", Arg::I64(value as i64)),
        DType::U8 => ("fill_u8", Arg::of(&(value as u8))),
        dtype => return Err(CudaError::UnsupportedDType { op: "fill", dtype }),
    };
    let n = dst.len();
    if n == 0 {
        return Ok(());
    }
    let dev = dst.device().clone();
    let f = dev.function(kernels::COPY, name)?;
    dev.launch(&f, cfg_1d(dev.grid_for(n, 256), 256), &[Arg::U64(dst.ptr()), v, Arg::len(n)])
}

/// Writes the (rows, cols) lower-triangle mask into `dst` (u8, rows·cols elements): 1
/// where `col - row <= diagonal`, else 0, as the host's `Tensor::tril_mask`; generated on
/// the device, so nothing is uploaded. Kernel `tril_mask_u8(dst, rows, cols, diagonal)`,
/// 256 threads, grid-stride.
pub fn tril_mask(dst: ViewMut<'_>, rows: usize, cols: usize, diagonal: i64) -> Result<()> {
    let c = crate::buffer::Check { op: "tril_mask" };
    c.output("mask", &dst, DType::U8, rows * cols)?;
    let n = rows * cols;
    if n == 0 {
        return Ok(());
    }
    let dev = dst.device().clone();
    let f = dev.function(kernels::COPY, "tril_mask_u8")?;
    let args = [Arg::U64(dst.ptr()), Arg::len(rows), Arg::len(cols), Arg::I64(diagonal)];
    dev.launch(&f, cfg_1d(dev.grid_for(n, 256), 256), &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_covers_the_last_element_and_rejects_bad_ranks() {
        assert_eq!(extent("t", &[2, 3], &[3, 1]).unwrap(), (6, 6));
        assert_eq!(extent("t", &[3, 2], &[1, 3]).unwrap(), (6, 6), "a transpose reads the same span");
        assert_eq!(extent("t", &[4, 5], &[0, 1]).unwrap(), (20, 5), "broadcast rows read one row");
        assert_eq!(extent("t", &[0, 5], &[5, 1]).unwrap(), (0, 0));
        assert!(extent("t", &[1; 7], &[1; 7]).is_err());
        assert!(extent("t", &[2, 2], &[1]).is_err());
    }
}
