//! The buffers behind tensors: an enum over devices. CPU kernels match on the host
//! variant only; CUDA tensors carry a `monarch_cuda` buffer (see `crate::cuda`).

use crate::DType;
use half::{bf16, f16};

/// A host buffer of one dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum CpuStorage {
    /// Unsigned bytes.
    U8(Vec<u8>),
    /// 64-bit signed integers.
    I64(Vec<i64>),
    /// bfloat16.
    BF16(Vec<bf16>),
    /// IEEE half.
    F16(Vec<f16>),
    /// IEEE single.
    F32(Vec<f32>),
    /// IEEE double.
    F64(Vec<f64>),
}

/// Applies `$body` to the vector inside a [`CpuStorage`] whatever its dtype, binding it to `$v`.
#[macro_export]
#[doc(hidden)]
macro_rules! with_cpu_vec {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            $crate::CpuStorage::U8($v) => $body,
            $crate::CpuStorage::I64($v) => $body,
            $crate::CpuStorage::BF16($v) => $body,
            $crate::CpuStorage::F16($v) => $body,
            $crate::CpuStorage::F32($v) => $body,
            $crate::CpuStorage::F64($v) => $body,
        }
    };
}

impl CpuStorage {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::U8(_) => DType::U8,
            CpuStorage::I64(_) => DType::I64,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_cpu_vec!(self, v => v.len())
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A zero-filled buffer.
    pub fn zeros(dtype: DType, len: usize) -> Self {
        match dtype {
            DType::U8 => CpuStorage::U8(vec![0; len]),
            DType::I64 => CpuStorage::I64(vec![0; len]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; len]),
            DType::F16 => CpuStorage::F16(vec![f16::ZERO; len]),
            DType::F32 => CpuStorage::F32(vec![0.0; len]),
            DType::F64 => CpuStorage::F64(vec![0.0; len]),
        }
    }
}

/// A tensor's buffer on some device.
#[derive(Debug)]
pub enum Storage {
    /// Host memory.
    Cpu(CpuStorage),
    /// The memory of one CUDA GPU.
    Cuda(crate::cuda::CudaStorage),
}

impl Storage {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }

    /// The device holding the buffer.
    pub fn device(&self) -> crate::Device {
        match self {
            Storage::Cpu(_) => crate::Device::Cpu,
            Storage::Cuda(s) => crate::Device::Cuda(s.ordinal()),
        }
    }
}

/// Applies `$body` to the vectors inside two [`CpuStorage`]s of the same dtype, binding
/// them to `$a` and `$b`; evaluates `$mismatch` when the dtypes differ.
#[macro_export]
#[doc(hidden)]
macro_rules! with_cpu_pair {
    ($x:expr, $y:expr, ($a:ident, $b:ident) => $body:expr, $mismatch:expr) => {
        match ($x, $y) {
            ($crate::CpuStorage::U8($a), $crate::CpuStorage::U8($b)) => $body,
            ($crate::CpuStorage::I64($a), $crate::CpuStorage::I64($b)) => $body,
            ($crate::CpuStorage::BF16($a), $crate::CpuStorage::BF16($b)) => $body,
            ($crate::CpuStorage::F16($a), $crate::CpuStorage::F16($b)) => $body,
            ($crate::CpuStorage::F32($a), $crate::CpuStorage::F32($b)) => $body,
            ($crate::CpuStorage::F64($a), $crate::CpuStorage::F64($b)) => $body,
            _ => $mismatch,
        }
    };
}
