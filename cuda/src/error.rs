//! Errors of the CUDA backend.

use crate::DType;

/// Everything the CUDA backend can fail with. No call panics on bad input or a
/// missing driver; each reports one of these instead.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No CUDA driver library (`libcuda.so`) could be loaded: there is no NVIDIA
    /// driver on this machine, so only the CPU can be used.
    #[error("no CUDA driver found (libcuda could not be loaded); use the CPU device")]
    NoDriver,
    /// The driver loaded but reports no device with this ordinal.
    #[error("no CUDA device with ordinal {ordinal} ({count} present)")]
    NoDevice {
        /// The requested ordinal.
        ordinal: usize,
        /// How many devices the driver reports.
        count: usize,
    },
    /// The device predates the bf16 tensor cores every kernel module uses.
    #[error("CUDA device {ordinal} is {arch}; the kernels need sm_80 (Ampere) or newer")]
    OldDevice {
        /// The device's ordinal.
        ordinal: usize,
        /// Its architecture, e.g. `sm_75`.
        arch: String,
    },
    /// NVRTC could not be found: set `MONARCH_NVRTC_LIB` to the library file or its folder
    /// (for example `pip install nvidia-cuda-nvrtc-cu12` and point at `site-packages/nvidia/cuda_nvrtc/lib`).
    #[error("NVRTC not found (searched {searched}); set MONARCH_NVRTC_LIB to libnvrtc.so.* or its folder")]
    NoNvrtc {
        /// Where the search looked.
        searched: String,
    },
    /// cuBLAS or cuBLASLt could not be loaded.
    #[error("{lib} not found: install the CUDA math libraries (for example nvidia-cublas-cu12) on the loader path")]
    NoBlas {
        /// The missing library.
        lib: &'static str,
    },
    /// NVRTC rejected a kernel source.
    #[error("NVRTC failed to compile {kernel}.cu for {arch}:\n{log}")]
    Compile {
        /// The kernel family (file stem).
        kernel: &'static str,
        /// The target architecture, e.g. `sm_90`.
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// A call of the CUDA driver failed.
    #[error("CUDA driver error in {op}: {msg}")]
    Driver {
        /// What was being done.
        op: &'static str,
        /// The driver's message.
        msg: String,
    },
    /// A cuBLAS / cuBLASLt call failed.
    #[error("cuBLAS error in {op}: {msg}")]
    Blas {
        /// What was being done.
        op: &'static str,
        /// The library's message.
        msg: String,
    },
    /// A buffer has the wrong element type for an op.
    #[error("{op}: expected {expected:?}, got {got:?}")]
    DType {
        /// The op.
        op: &'static str,
        /// The dtype it accepts.
        expected: DType,
        /// The dtype it was given.
        got: DType,
    },
    /// A dtype an op has no kernel for.
    #[error("{op}: no kernel for dtype {dtype:?}")]
    UnsupportedDType {
        /// The op.
        op: &'static str,
        /// The dtype.
        dtype: DType,
    },
    /// Sizes, shapes or strides that do not fit the buffers or the op.
    #[error("{op}: {msg}")]
    Shape {
        /// The op.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// Buffers of two different devices were mixed in one call.
    #[error("{op}: buffers live on different devices")]
    DeviceMismatch {
        /// The op.
        op: &'static str,
    },
    /// The emulated device could not build, load or run a kernel.
    #[error("CUDA emulator: {msg}")]
    Emulator {
        /// What went wrong.
        msg: String,
    },
    /// Reading or writing the kernel cache failed.
    #[error("kernel cache {path}: {source}")]
    Cache {
        /// The file or folder.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Result of the CUDA backend.
pub type Result<T, E = CudaError> = std::result::Result<T, E>;

impl CudaError {
    /// A driver error from cudarc, tagged with what was being done.
    pub(crate) fn driver(op: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError {
        move |e| CudaError::Driver { op, msg: e.to_string() }
    }

    /// A cuBLAS(Lt) error from cudarc.
    pub(crate) fn blas<E: std::fmt::Display>(op: &'static str) -> impl FnOnce(E) -> CudaError {
        move |e| CudaError::Blas { op, msg: e.to_string() }
    }
}

/// Returns a [`CudaError::Shape`] from the enclosing function.
macro_rules! bail {
    ($op:expr, $($arg:tt)*) => {
        return Err($crate::CudaError::Shape { op: $op, msg: format!($($arg)*) })
    };
}
pub(crate) use bail;
