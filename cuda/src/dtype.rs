//! Element types of device buffers.

use half::{bf16, f16};

/// The element type a [`DeviceBuffer`](crate::DeviceBuffer) holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// Unsigned bytes (masks).
    U8,
    /// 32-bit signed integers (block-sparse indices).
    I32,
    /// 64-bit signed integers (class targets, token ids).
    I64,
    /// bfloat16.
    BF16,
    /// IEEE half.
    F16,
    /// IEEE single.
    F32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::BF16 | DType::F16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 => 8,
        }
    }

    /// The suffix of the kernel variant for this dtype (`f32`, `bf16`), if there is one.
    pub(crate) fn kernel_suffix(self, op: &'static str) -> crate::Result<&'static str> {
        match self {
            DType::F32 => Ok("f32"),
            DType::BF16 => Ok("bf16"),
            dtype => Err(crate::CudaError::UnsupportedDType { op, dtype }),
        }
    }
}

/// A host type that can be copied to and from a device buffer bit for bit.
///
/// # Safety
/// Implementors must be plain data: no padding, every bit pattern valid.
pub unsafe trait Element: Copy + Send + Sync + 'static {
    /// The matching dtype tag.
    const DTYPE: DType;
}

unsafe impl Element for u8 {
    const DTYPE: DType = DType::U8;
}
unsafe impl Element for i32 {
    const DTYPE: DType = DType::I32;
}
unsafe impl Element for i64 {
    const DTYPE: DType = DType::I64;
}
unsafe impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
}
unsafe impl Element for f16 {
    const DTYPE: DType = DType::F16;
}
unsafe impl Element for f32 {
    const DTYPE: DType = DType::F32;
}

/// The bytes of a slice of plain elements.
pub(crate) fn as_bytes<T: Element>(v: &[T]) -> &[u8] {
    // SAFETY: `Element` types are plain data without padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

/// The bytes of a mutable slice of plain elements.
pub(crate) fn as_bytes_mut<T: Element>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: `Element` types are plain data; every bit pattern is a valid value.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), std::mem::size_of_val(v)) }
}
