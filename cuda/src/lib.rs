//! CUDA backend of monarch: device and stream context, caching allocator,
//! NVRTC-compiled kernels and cuBLASLt GEMM. This crate knows nothing of `Tensor`:
//! buffers are untyped device allocations tagged with a [`DType`], and shapes and
//! strides are passed as plain integers.
//!
//! The CUDA libraries are loaded at run time (cudarc with dynamic loading), so the
//! crate builds and its tests run on machines with no GPU and no CUDA toolkit:
//! [`CudaDevice::new`] returns [`CudaError::NoDriver`] there instead of panicking.
//! Kernel sources (`cuda/kernels/*.cu`, one per op family) are compiled by NVRTC for
//! the device's architecture on first use and cached on disk ([`KernelCache`]).
//!
//! Every op is asynchronous on the device's one stream; results are visible to later
//! ops at once and to the host after [`DeviceBuffer::to_host`] or
//! [`CudaDevice::synchronize`]. Host-to-device copies up to 16 MiB are staged through
//! pinned memory and do not wait for the stream either.
//!
//! Without a GPU, [`emulator`] provides a device that runs the same kernels on the CPU,
//! so that everything above the driver is tested there too.

mod alloc;
mod buffer;
mod cache;
mod device;
mod dtype;
pub mod emulator;
mod error;
pub mod gemm;
mod kernel_times;
pub mod kernels;
pub mod nvrtc;
pub mod ops;
mod staging;

pub use alloc::{CachingAllocator, MemoryStats, Pooled, RawAlloc, bucket};
pub use buffer::{DeviceBuffer, View, ViewMut};
pub use cache::{CACHE_ENV, KernelCache, WarmedKernel};
pub use device::{CudaDevice, DeviceAlloc, DeviceMemory, SYNC_UPLOADS_ENV, device_count, driver_present};
pub use dtype::{DType, Element};
pub use error::{CudaError, Result};
pub use kernel_times::{KERNEL_TIMES_ENV, KernelTime, format_kernel_times};
