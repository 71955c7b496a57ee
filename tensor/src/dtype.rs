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
    /// `e^self` for the hot loops (softmax, cross-entropy, attention): a branch-free
    /// polynomial for f32 that vectorises (relative error below 3e-7, exactly 0 below the
    /// smallest normal result); libm's `exp` for f64, so gradient checks stay exact.
    fn fast_exp(self) -> Self;
    /// `tanh(self)` through [`fast_exp`](Self::fast_exp) for f32 (absolute error below
    /// 3e-7: meant for GELU, not for tiny arguments whose relative error matters); libm's
    /// `tanh` for f64.
    fn fast_tanh(self) -> Self;
    /// The error function through [`fast_exp`](Self::fast_exp) for f32 (Abramowitz and
    /// Stegun 7.1.26, absolute error below 1e-6: meant for GELU); libm's `erf` for f64.
    fn fast_erf(self) -> Self;
}

impl Float for f32 {
    fn erf(self) -> Self {
        libm::erff(self)
    }
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn fast_exp(self) -> f32 {
        // Cephes expf: e^x = 2^n · e^r with n = round(x / ln 2), |r| ≤ ln 2 / 2.
        const LO: f32 = -87.336_55;
        const HI: f32 = 88.722_83;
        let x = self.clamp(LO, HI);
        // Round to nearest by adding and removing 1.5·2^23 (no floor call, so the loop
        // vectorises without SSE4.1); ties may go either way, |r| ≤ ln 2 / 2 holds.
        const SHIFT: f32 = 12_582_912.0;
        let shifted = x * std::f32::consts::LOG2_E + SHIFT;
        let n = shifted - SHIFT;
        let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
        let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
            + 1.666_666_5e-1)
            * r
            + 0.5;
        let y = p * r * r + r + 1.0;
        // n as an integer: `shifted` lies in [2²³, 2²⁴), where one unit is one step of
        // the bits, so its bits less SHIFT's are n. (`n as i32` saturates, a scalar
        // conversion per lane that kept the callers' loops from vectorising.)
        let ni = (shifted.to_bits() as i32).wrapping_sub(SHIFT.to_bits() as i32);
        let scale = f32::from_bits(((ni + 127) as u32) << 23);
        if self < LO { 0.0 } else { y * scale }
    }
    #[inline(always)]
    fn fast_tanh(self) -> f32 {
        // tanh(x) = (e^{2x} − 1) / (e^{2x} + 1); |x| ≤ 9 keeps e^{2x} finite, and
        // tanh(9) rounds to 1 in f32.
        let e = (2.0 * self.clamp(-9.0, 9.0)).fast_exp();
        (e - 1.0) / (e + 1.0)
    }
    #[inline(always)]
    fn fast_erf(self) -> f32 {
        let x = self.abs();
        let t = 1.0 / (1.0 + 0.327_591_1 * x);
        let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_7) * t - 0.284_496_74) * t + 0.254_829_6) * t;
        let y = 1.0 - poly * (-x * x).fast_exp();
        if self < 0.0 { -y } else { y }
    }
}

impl Float for f64 {
    fn erf(self) -> Self {
        libm::erf(self)
    }
    fn from_f32(v: f32) -> Self {
        v as f64
    }
    #[inline(always)]
    fn fast_exp(self) -> f64 {
        self.exp()
    }
    #[inline(always)]
    fn fast_tanh(self) -> f64 {
        self.tanh()
    }
    #[inline(always)]
    fn fast_erf(self) -> f64 {
        libm::erf(self)
    }
}

#[cfg(test)]
mod fast_math_tests {
    use super::Float;

    #[test]
    fn fast_exp_tanh_and_erf_match_libm() {
        let (mut worst_exp, mut worst_tanh, mut worst_erf) = (0.0f64, 0.0f64, 0.0f64);
        for i in -87_000..88_000 {
            let x = i as f32 * 1e-3 + 3.7e-4;
            let (got, want) = (x.fast_exp() as f64, (x as f64).exp());
            worst_exp = worst_exp.max(((got - want) / want).abs());
            let y = x / 8.0;
            worst_tanh = worst_tanh.max((y.fast_tanh() as f64 - (y as f64).tanh()).abs());
            worst_erf = worst_erf.max((y.fast_erf() as f64 - libm::erf(y as f64)).abs());
        }
        assert!(worst_erf < 1e-6, "erf absolute error {worst_erf}");
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp}");
        assert!(worst_tanh < 3e-7, "tanh absolute error {worst_tanh}");
        assert_eq!(f32::NEG_INFINITY.fast_exp(), 0.0);
        assert_eq!((-100.0f32).fast_exp(), 0.0);
        assert_eq!(0.0f32.fast_exp(), 1.0);
        assert_eq!((f32::INFINITY.fast_tanh(), f32::NEG_INFINITY.fast_tanh()), (1.0, -1.0));
    }
}
