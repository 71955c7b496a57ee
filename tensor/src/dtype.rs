//! Runtime element types and the Rust types that carry them.

use crate::storage::CpuStorage;
use half::{bf16, f16};

/// The element type of a tensor, known at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// Unsigned byte: images and boolean masks (0 or 1).
    U8,
    /// Signed 64-bit integer: indices and token ids.
    I64,
    /// bfloat16.
    BF16,
    /// IEEE half precision.
    F16,
    /// IEEE single precision, the default for training.
    F32,
    /// IEEE double precision, used by gradient checks.
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::BF16 | DType::F16 => 2,
            DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::BF16 | DType::F16 | DType::F32 | DType::F64)
    }

    /// The lower-case name used in files and on the command line (`f32`, `bf16`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::U8 => "u8",
            DType::I64 => "i64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DType {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        Ok(match s {
            "u8" => DType::U8,
            "i64" => DType::I64,
            "bf16" => DType::BF16,
            "f16" => DType::F16,
            "f32" => DType::F32,
            "f64" => DType::F64,
            _ => crate::bail!("dtype", "unknown dtype {s:?} (expected u8, i64, bf16, f16, f32 or f64)"),
        })
    }
}

/// A Rust type that can be the element of a CPU tensor.
pub trait WithDType: Copy + Send + Sync + std::fmt::Debug + PartialOrd + Default + 'static {
    /// The runtime dtype of `Self`.
    const DTYPE: DType;
    /// Converts from f64 (rounding, saturating for integers).
    fn from_f64(v: f64) -> Self;
    /// Converts to f64 (lossless for the float types).
    fn as_f64(self) -> f64;
    /// Wraps a vector into CPU storage.
    fn into_storage(data: Vec<Self>) -> CpuStorage;
    /// Borrows the storage's data if it holds `Self`.
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    /// Mutably borrows the storage's data if it holds `Self`.
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
    /// Appends the little-endian bytes of `self`.
    fn write_le(self, out: &mut Vec<u8>);
    /// Reads one value from exactly `size_in_bytes` little-endian bytes.
    fn read_le(b: &[u8]) -> Self;
}

macro_rules! with_dtype {
    ($t:ty, $variant:ident, $from:expr, $to:expr) => {
        impl WithDType for $t {
            const DTYPE: DType = DType::$variant;
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
            fn as_f64(self) -> f64 {
                $to(self)
            }
            fn into_storage(data: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(data)
            }
            fn slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read_le(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("caller passes exactly one element"))
            }
        }
    };
}

with_dtype!(u8, U8, |v: f64| v as u8, |v: u8| v as f64);
with_dtype!(i64, I64, |v: f64| v as i64, |v: i64| v as f64);
with_dtype!(bf16, BF16, bf16::from_f64, bf16::to_f64);
with_dtype!(f16, F16, f16::from_f64, f16::to_f64);
with_dtype!(f32, F32, |v: f64| v as f32, |v: f32| v as f64);
with_dtype!(f64, F64, |v: f64| v, |v: f64| v);

/// The floating-point types the CPU kernels compute in (f32 and f64); bf16 and f16
/// tensors are computed in f32 and rounded back.
pub trait Float:
    WithDType
    + num_traits::Float
    + num_traits::FloatConst
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + std::ops::DivAssign
{
    /// The error function.
    fn erf(self) -> Self;
    /// Converts from f32.
    fn from_f32(v: f32) -> Self;
}

impl Float for f32 {
    fn erf(self) -> Self {
        libm::erff(self)
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Float for f64 {
    fn erf(self) -> Self {
        libm::erf(self)
    }
    fn from_f32(v: f32) -> Self {
        v as f64
    }
}
