//! Tensors in CUDA memory: the buffer behind [`Storage::Cuda`](crate::Storage::Cuda),
//! the devices opened so far (one per ordinal, shared by every tensor on it), copies
//! between host and device, and the ops with a CUDA kernel (`ops`). Scatterbrain
//! attention is composed of device ops (`scatterbrain`); the ops at sizes their kernels
//! do not take (a butterfly over 8192, Scatterbrain blocks not a multiple of 64) run
//! [`through_host`], saying so once. The CPU path never touches the CUDA libraries, which are loaded only when a
//! tensor is first moved.

mod attention;
mod block_sparse;
pub(crate) mod butterfly;
mod index_bounds;
pub(crate) use block_sparse::DevicePlans;
use index_bounds::IndexBounds;
mod lookup;
mod monarch;
mod ops;
mod optim;
pub(crate) use optim::sgd_step;
mod rows;
pub(crate) mod scatterbrain;

use crate::{CpuStorage, DType, Device, Error, Layout, Result, Storage, Tensor};
use monarch_cuda::{CudaDevice, CudaError, DeviceBuffer, KernelCache, KernelTime, MemoryStats, View, WarmedKernel};
use std::sync::{Arc, Mutex, OnceLock};

/// A tensor's buffer in the memory of one GPU.
#[derive(Debug)]
pub struct CudaStorage {
    buf: DeviceBuffer,
    dtype: DType,
    /// For an `I64` buffer unchanged since its upload, the bounds of its values.
    bounds: Option<IndexBounds>,
}

impl CudaStorage {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.buf.device().ordinal()
    }

    /// The device buffer.
    pub fn buffer(&self) -> &DeviceBuffer {
        &self.buf
    }

    /// The buffer for writing: the upload bounds no longer hold and are dropped.
    fn written(&mut self) -> &mut DeviceBuffer {
        self.bounds = None;
        &mut self.buf
    }
}

/// Device `ordinal`, opened on first use and shared afterwards. Without a driver or
/// with no such device this is [`Error::DeviceUnavailable`] saying why.
pub fn cuda_device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    static OPEN: OnceLock<Mutex<Vec<Option<Arc<CudaDevice>>>>> = OnceLock::new();
    let mut open = OPEN.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(Some(d)) = open.get(ordinal) {
        return Ok(d.clone());
    }
    let dev = CudaDevice::new(ordinal)
        .map_err(|e| Error::DeviceUnavailable { device: Device::Cuda(ordinal), msg: e.to_string() })?;
    if open.len() <= ordinal {
        open.resize(ordinal + 1, None);
    }
    open[ordinal] = Some(dev.clone());
    Ok(dev)
}

/// Compiles every CUDA kernel source for `arch` (e.g. `sm_90`) into the on-disk kernel
/// cache that the devices load from, `threads` compilations at a time, skipping the ones
/// already there; returns the cache folder and what was done per source. A run started
/// after it compiles nothing. Needs NVRTC only, no GPU.
pub fn warm_kernel_cache(arch: &str, threads: usize) -> Result<(std::path::PathBuf, Vec<WarmedKernel>)> {
    let cache = KernelCache::from_env();
    let warmed = cache.warm(monarch_cuda::kernels::ALL, arch, threads).map_err(cuda_err("warm_kernel_cache"))?;
    Ok((cache.dir().to_path_buf(), warmed))
}

static ALLOW_TF32: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets f32 matrix products on a GPU use tensor cores with TF32 inputs (10-bit mantissa,
/// f32 accumulation), as `torch.backends.cuda.matmul.allow_tf32` does; off by default,
/// so that f32 means f32. The CPU is unaffected.
pub fn set_allow_tf32(on: bool) {
    ALLOW_TF32.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn tf32_allowed() -> bool {
    ALLOW_TF32.load(std::sync::atomic::Ordering::Relaxed)
}

/// The device-buffer dtype of a tensor dtype. f64 and f16 have none: the kernels compute
/// in f32 and bf16 (convert on the host first).
fn buffer_dtype(dtype: DType, op: &'static str) -> Result<monarch_cuda::DType> {
    Ok(match dtype {
        DType::U8 => monarch_cuda::DType::U8,
        DType::I64 => monarch_cuda::DType::I64,
        DType::BF16 => monarch_cuda::DType::BF16,
        DType::F32 => monarch_cuda::DType::F32,
        DType::F16 | DType::F64 => return Err(Error::UnsupportedDType { op, dtype }),
    })
}

/// Maps a CUDA failure inside `op` to a tensor error.
fn cuda_err(op: &'static str) -> impl Fn(CudaError) -> Error {
    move |e| Error::invalid(op, e.to_string())
}

impl Tensor {
    /// A contiguous tensor owning a device buffer of `dtype`.
    fn from_cuda(buf: DeviceBuffer, dtype: DType, shape: impl Into<crate::Shape>) -> Tensor {
        Tensor::from_storage(Storage::Cuda(CudaStorage { buf, dtype, bounds: None }), Layout::contiguous(shape))
    }

    /// Whether this is a device tensor whose upload bounds show every value to be an
    /// index below `size` or equal to `ignore`, without reading the values (`false` on
    /// the host, after the buffer was written, or when the bounds cannot tell).
    pub(crate) fn cuda_indices_admitted(&self, size: usize, ignore: Option<i64>) -> bool {
        match self.storage() {
            Storage::Cuda(s) => s.bounds.is_some_and(|b| b.admit(size, ignore)),
            Storage::Cpu(_) => false,
        }
    }

    /// The device buffer, or an error naming `op` when the tensor is on the host.
    fn cuda(&self, op: &'static str) -> Result<&CudaStorage> {
        match self.storage() {
            Storage::Cuda(s) => Ok(s),
            Storage::Cpu(_) => Err(Error::invalid(op, "a host tensor was given where a CUDA tensor is needed")),
        }
    }

    /// A view of the tensor's elements from its layout's offset to the end of the buffer.
    fn cuda_view(&self, op: &'static str) -> Result<View<'_>> {
        let s = self.cuda(op)?;
        let off = self.layout().offset();
        s.buf.slice(off, s.buf.len() - off).map_err(cuda_err(op))
    }

    /// Exactly the `elem_count` elements of a contiguous tensor.
    fn cuda_elems(&self, op: &'static str) -> Result<View<'_>> {
        let s = self.cuda(op)?;
        s.buf.slice(self.layout().offset(), self.elem_count()).map_err(cuda_err(op))
    }

    /// Copies a host tensor to CUDA device `ordinal` (contiguous there).
    pub(crate) fn upload(&self, ordinal: usize) -> Result<Tensor> {
        let op = "to_device";
        buffer_dtype(self.dtype(), op)?;
        let dev = cuda_device(ordinal)?;
        let host = self.contiguous()?;
        let (off, n) = (host.layout().offset(), host.elem_count());
        let mut bounds = None;
        let buf = match host.cpu(op)? {
            CpuStorage::U8(v) => dev.htod(&v[off..off + n]),
            CpuStorage::I64(v) => {
                bounds = Some(IndexBounds::of(&v[off..off + n]));
                dev.htod(&v[off..off + n])
            }
            CpuStorage::BF16(v) => dev.htod(&v[off..off + n]),
            CpuStorage::F32(v) => dev.htod(&v[off..off + n]),
            s @ (CpuStorage::F16(_) | CpuStorage::F64(_)) => {
                return Err(Error::UnsupportedDType { op, dtype: s.dtype() });
            }
        }
        .map_err(cuda_err(op))?;
        let storage = CudaStorage { buf, dtype: self.dtype(), bounds };
        Ok(Tensor::from_storage(Storage::Cuda(storage), Layout::contiguous(self.shape().clone())))
    }

    /// Copies a device tensor to host memory (contiguous there): only its own elements,
    /// not the rest of a buffer it is a view of.
    pub(crate) fn download(&self) -> Result<Tensor> {
        let op = "to_device";
        let t = self.contiguous()?;
        let v = t.cuda_elems(op)?;
        let host = match t.dtype() {
            DType::U8 => CpuStorage::U8(v.to_host().map_err(cuda_err(op))?),
            DType::I64 => CpuStorage::I64(v.to_host().map_err(cuda_err(op))?),
            DType::BF16 => CpuStorage::BF16(v.to_host().map_err(cuda_err(op))?),
            DType::F32 => CpuStorage::F32(v.to_host().map_err(cuda_err(op))?),
            dtype @ (DType::F16 | DType::F64) => return Err(Error::UnsupportedDType { op, dtype }),
        };
        Ok(Tensor::from_cpu(host, t.shape().clone()))
    }
}

/// The device of `ts` when they are on a GPU (all on one: else a device mismatch),
/// `None` when all are on the host. For the ops without a CUDA kernel, which then run
/// [`through_host`].
pub(crate) fn off_host(op: &'static str, ts: &[&Tensor]) -> Result<Option<Device>> {
    let Some(first) = ts.first() else { return Ok(None) };
    ops::same_device(op, first, &ts[1..])?;
    Ok((first.device() != Device::Cpu).then(|| first.device()))
}

/// Copies `ts` to the host for an op that has no CUDA path for them (sizes its kernels
/// do not take), saying once per op on stderr that it runs on
/// the CPU and why (`why` follows the op's name); the caller moves the results back.
pub(crate) fn through_host<const N: usize>(op: &'static str, why: &str, ts: [&Tensor; N]) -> Result<[Tensor; N]> {
    static WARNED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if !warned.contains(&op) {
        warned.push(op);
        eprintln!("warning: {op} {why}; this call runs on the CPU (inputs and results are copied)");
    }
    let mut out: [Tensor; N] = std::array::from_fn(|i| ts[i].clone());
    for t in out.iter_mut() {
        *t = t.to_device(Device::Cpu)?;
    }
    Ok(out)
}

impl Device {
    /// The device's memory counters: bytes its tensors hold now, the peak since the last
    /// [`reset_peak_memory`](Self::reset_peak_memory) and the bytes kept for reuse
    /// (the caching allocator's). `None` on the CPU (the host heap is not counted here).
    pub fn memory_stats(self) -> Result<Option<MemoryStats>> {
        match self {
            Device::Cpu => Ok(None),
            Device::Cuda(i) => Ok(Some(cuda_device(i)?.memory_stats())),
        }
    }

    /// Restarts the device's peak counter from its current use (nothing on the CPU).
    pub fn reset_peak_memory(self) -> Result<()> {
        if let Device::Cuda(i) = self {
            cuda_device(i)?.reset_peak_memory();
        }
        Ok(())
    }

    /// Device time per kernel so far, longest first, when `MONARCH_KERNEL_TIMES` is set
    /// (see [`monarch_cuda::KERNEL_TIMES_ENV`]); `None` on the CPU or without it.
    pub fn kernel_times(self) -> Result<Option<Vec<KernelTime>>> {
        match self {
            Device::Cpu => Ok(None),
            Device::Cuda(i) => cuda_device(i)?.kernel_times().map_err(cuda_err("kernel_times")),
        }
    }

    /// Forgets the per-kernel times so far (nothing on the CPU).
    pub fn reset_kernel_times(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(i) => cuda_device(i)?.reset_kernel_times().map_err(cuda_err("kernel_times")),
        }
    }

    /// Waits until the work queued on this device has finished (nothing to wait for on
    /// the CPU, whose ops return when done). Timers of GPU work call this.
    pub fn synchronize(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(i) => cuda_device(i)?.synchronize().map_err(cuda_err("synchronize")),
        }
    }
}
