//! The buffers behind tensors: an enum over devices. CPU kernels match on the host
//! variant only; CUDA tensors carry a `monarch_cuda` buffer (see `crate::cuda`).

use crate::{DType, Error, Result};
use half::{bf16, f16};

/// Host buffers of at least this many bytes are tried before an op makes them.
const CHECKED_ALLOC: usize = 64 << 20;

/// [`Error::OutOfMemory`] when `elems` elements of `elem_bytes` bytes cannot be allocated
/// on the host now, so that a size the machine cannot hold (a typo in a config, say) is
/// an error and not the allocator's abort. Buffers under 64 MiB pass unchecked.
pub(crate) fn check_host_alloc(op: &'static str, elems: usize, elem_bytes: usize) -> Result<()> {
    let oom = || Error::OutOfMemory { op, elems, elem_bytes };
    let bytes = elems.checked_mul(elem_bytes).filter(|&b| b <= isize::MAX as usize).ok_or_else(oom)?;
    if bytes >= CHECKED_ALLOC {
        let mut probe = Vec::<u8>::new();
        probe.try_reserve_exact(bytes).map_err(|_| oom())?;
        // The probe is freed unused: keep the allocation from being optimised away.
        std::hint::black_box(&mut probe);
    }
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use crate::{DType, Error, Tensor};

    /// Sizes past the address space (2⁴⁷ bytes on x86-64 and AArch64 user space) and past
    /// `usize` are errors, not aborts, and name the op.
    #[test]
    fn buffers_no_machine_holds_are_errors() {
        let err = Tensor::randn([1 << 22, 1 << 22], 0.0, 1.0, 0).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { op: "init", elems, elem_bytes: 8 } if elems == 1 << 44), "{err}");
        let a = Tensor::zeros([1 << 23, 0], DType::F32);
        let b = Tensor::zeros([0, 1 << 23], DType::F32);
        let err = a.matmul(&b).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { op: "matmul", elem_bytes: 4, .. }), "{err}");
        assert!(err.to_string().starts_with("matmul: cannot allocate 70368744177664 elements of 4 bytes"), "{err}");
        let huge = Tensor::zeros([usize::MAX >> 8, 0], DType::F32);
        let err = huge.matmul(&Tensor::zeros([0, 1 << 20], DType::F32)).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
        // Below the checked size nothing changes.
        assert_eq!(Tensor::randn([4, 4], 0.0, 1.0, 0).unwrap().dims(), [4, 4]);
    }
}
