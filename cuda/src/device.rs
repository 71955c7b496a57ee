//! A CUDA device: its context, the one stream all work runs on, the caching allocator
//! and the kernels loaded so far; or the emulated device (`crate::emulator`), whose
//! memory is host memory and whose kernels run on the CPU.

use crate::alloc::{CachingAllocator, MemoryStats, RawAlloc};
use crate::buffer::DeviceBuffer;
use crate::cache::KernelCache;
use crate::emulator::{self, EmuKernel, HostMemory};
use crate::kernel_times::{KernelTime, KernelTimes};
use crate::kernels::KernelSource;
use crate::staging::Staging;
use crate::{CudaError, DType, Element, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg, sys,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Device memory: from the driver, allocated in stream order, or host memory for the
/// emulated device (no stream).
pub struct DeviceAlloc {
    stream: Option<Arc<CudaStream>>,
}

/// One block of [`DeviceAlloc`].
pub enum DeviceMemory {
    /// Driver memory.
    Driver(CudaSlice<u8>),
    /// The emulated device's host memory.
    Host(HostMemory),
}

impl RawAlloc for DeviceAlloc {
    type Block = DeviceMemory;
    fn alloc(&self, bytes: usize) -> Result<DeviceMemory> {
        match &self.stream {
            // SAFETY: the memory is uninitialised bytes; every op writes before it reads.
            Some(stream) => {
                unsafe { stream.alloc::<u8>(bytes) }.map(DeviceMemory::Driver).map_err(CudaError::driver("alloc"))
            }
            None => HostMemory::new(bytes).map(DeviceMemory::Host),
        }
    }
}

/// Set (to anything but `0`) to make every host-to-device copy wait for the stream
/// instead of staging it through pinned memory: a check on the staging.
pub const SYNC_UPLOADS_ENV: &str = "MONARCH_SYNC_UPLOADS";

fn sync_uploads() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(SYNC_UPLOADS_ENV).is_ok_and(|v| v != "0"))
}

/// Whether a CUDA driver library can be loaded on this machine (no GPU is touched).
pub fn driver_present() -> bool {
    // SAFETY: only probes whether the library can be opened.
    unsafe { sys::is_culib_present() }
}

/// The number of CUDA devices; [`CudaError::NoDriver`] when there is no driver. With
/// the emulated device on ([`emulator::emulated`]) it is the one device.
pub fn device_count() -> Result<usize> {
    if emulator::emulated() {
        return Ok(1);
    }
    if !driver_present() {
        return Err(CudaError::NoDriver);
    }
    CudaContext::device_count().map(|n| n.max(0) as usize).map_err(CudaError::driver("device_count"))
}

/// What runs a device's work.
pub(crate) enum Backend {
    /// A GPU through the driver.
    Driver(Box<Driver>),
    /// The CPU emulator (process-wide: see `crate::emulator`).
    Emulated,
}

/// A GPU's context, stream and what hangs off them.
pub(crate) struct Driver {
    /// Pinned buffers for host-to-device copies (first: freed before the context).
    staging: Mutex<Staging>,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    pub(crate) blas: std::sync::OnceLock<std::result::Result<crate::gemm::Blas, String>>,
    /// Per-kernel device time, when `MONARCH_KERNEL_TIMES` asks for it.
    times: Option<KernelTimes>,
}

impl Driver {
    /// The stream all of the device's work runs on.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

/// A loaded kernel.
#[derive(Clone)]
pub(crate) enum Kernel {
    /// From a CUBIN on a GPU.
    Driver(CudaFunction),
    /// From the emulator's library.
    Emulated(EmuKernel),
}

/// One GPU (or the emulated device) with its stream, allocator and loaded kernels.
/// Cheap to share as `Arc`.
pub struct CudaDevice {
    ordinal: usize,
    /// Declared before the backend, so buffers cached here are freed before its context.
    pool: Arc<CachingAllocator<DeviceAlloc>>,
    pub(crate) backend: Backend,
    arch: String,
    sm_count: u32,
    /// The most dynamic shared memory a block may opt in to (bytes).
    max_shared_optin: usize,
    cache: KernelCache,
    functions: Mutex<HashMap<String, Kernel>>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice(cuda:{}, {})", self.ordinal, self.arch)
    }
}

impl CudaDevice {
    /// Opens device `ordinal`. Returns [`CudaError::NoDriver`] when no driver is
    /// installed, [`CudaError::NoDevice`] when the ordinal does not exist and
    /// [`CudaError::OldDevice`] before sm_80, so callers can fall back to the CPU with a
    /// clear message.
    pub fn new(ordinal: usize) -> Result<Arc<Self>> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        if emulator::emulated() {
            return Self::emulated();
        }
        let ctx = CudaContext::new(ordinal).map_err(CudaError::driver("context"))?;
        let (major, minor) = ctx.compute_capability().map_err(CudaError::driver("compute_capability"))?;
        if major < 8 {
            return Err(CudaError::OldDevice { ordinal, arch: format!("sm_{major}{minor}") });
        }
        // One stream per device orders all work, so cross-stream event tracking is not needed.
        // SAFETY: no buffer of this context is used on another stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(CudaError::driver("stream"))?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(CudaError::driver("attribute"))? as u32;
        let max_shared_optin = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(CudaError::driver("attribute"))? as usize;
        Ok(Arc::new(CudaDevice {
            ordinal,
            pool: CachingAllocator::new(DeviceAlloc { stream: Some(stream.clone()) }),
            backend: Backend::Driver(Box::new(Driver {
                staging: Mutex::new(Staging::new(ctx.clone())),
                ctx,
                stream,
                modules: Mutex::new(HashMap::new()),
                blas: std::sync::OnceLock::new(),
                times: KernelTimes::from_env(),
            })),
            arch: format!("sm_{major}{minor}"),
            sm_count,
            max_shared_optin,
            cache: KernelCache::from_env(),
            functions: Mutex::new(HashMap::new()),
        }))
    }

    /// The emulated device (see `crate::emulator`), as device 0, whether or not
    /// [`emulator::emulated`] is on.
    pub fn emulated() -> Result<Arc<Self>> {
        let cache = KernelCache::from_env();
        Ok(Arc::new(CudaDevice {
            ordinal: 0,
            pool: CachingAllocator::new(DeviceAlloc { stream: None }),
            backend: Backend::Emulated,
            arch: emulator::ARCH.to_string(),
            sm_count: emulator::SM_COUNT,
            max_shared_optin: emulator::MAX_SHARED_OPTIN,
            cache,
            functions: Mutex::new(HashMap::new()),
        }))
    }

    /// Whether this is the emulated device.
    pub fn is_emulated(&self) -> bool {
        matches!(self.backend, Backend::Emulated)
    }

    /// The address of a block of this device's allocator.
    pub(crate) fn address(&self, block: &DeviceMemory) -> u64 {
        match (block, &self.backend) {
            (DeviceMemory::Driver(s), Backend::Driver(d)) => s.device_ptr(&d.stream).0,
            (DeviceMemory::Host(h), _) => h.address(),
            (DeviceMemory::Driver(_), Backend::Emulated) => unreachable!("the emulator allocates host memory"),
        }
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The architecture kernels are compiled for, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The number of streaming multiprocessors.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// The device's name as the driver reports it.
    pub fn name(&self) -> Result<String> {
        match &self.backend {
            Backend::Driver(d) => d.ctx.name().map_err(CudaError::driver("name")),
            Backend::Emulated => Ok(format!("CUDA emulator on the CPU (as {})", self.arch)),
        }
    }

    /// The driver's parts; `None` on the emulated device.
    pub(crate) fn driver(&self) -> Option<&Driver> {
        match &self.backend {
            Backend::Driver(d) => Some(d),
            Backend::Emulated => None,
        }
    }

    fn times(&self) -> Option<&KernelTimes> {
        self.driver().and_then(|d| d.times.as_ref())
    }

    /// Waits until all queued work has finished.
    pub fn synchronize(&self) -> Result<()> {
        let Some(d) = self.driver() else { return Ok(()) };
        d.stream.synchronize().map_err(CudaError::driver("synchronize"))?;
        d.times.as_ref().map_or(Ok(()), |t| t.collect())
    }

    /// Device time per kernel since the device opened (or the last
    /// [`reset_kernel_times`](Self::reset_kernel_times)), longest first; `None` unless
    /// [`KERNEL_TIMES_ENV`](crate::KERNEL_TIMES_ENV) turned the timer on.
    pub fn kernel_times(&self) -> Result<Option<Vec<KernelTime>>> {
        self.times().map(|t| t.report()).transpose()
    }

    /// Forgets the per-kernel times so far (warm-up runs, say).
    pub fn reset_kernel_times(&self) -> Result<()> {
        self.times().map_or(Ok(()), |t| t.reset())
    }

    /// Queues `work` (the launch of `name`), timed when the per-kernel timer is on.
    pub(crate) fn timed<T>(&self, name: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
        match self.driver() {
            Some(Driver { times: Some(t), stream, .. }) => t.time(stream, name, work),
            _ => work(),
        }
    }

    /// The allocator's counters.
    pub fn memory_stats(&self) -> MemoryStats {
        self.pool.stats()
    }

    /// Restarts the peak counter from the current use.
    pub fn reset_peak_memory(&self) {
        self.pool.reset_peak()
    }

    /// Returns cached, unused blocks to the driver.
    pub fn empty_cache(&self) {
        self.pool.empty_cache()
    }

    /// An uninitialised buffer of `len` elements of `dtype`.
    pub fn alloc(self: &Arc<Self>, dtype: DType, len: usize) -> Result<DeviceBuffer> {
        let mem = self.pool.alloc(len * dtype.size())?;
        Ok(DeviceBuffer::new(self.clone(), dtype, len, mem))
    }

    /// A zero-filled buffer.
    pub fn zeros(self: &Arc<Self>, dtype: DType, len: usize) -> Result<DeviceBuffer> {
        let mut b = self.alloc(dtype, len)?;
        b.fill_zero()?;
        Ok(b)
    }

    /// Queues a copy of `bytes` to device address `dst` (holding at least that many
    /// bytes of this device's memory). Copies up to 16 MiB go through a pinned staging
    /// buffer and return at once; larger ones (or all, with [`SYNC_UPLOADS_ENV`] set)
    /// wait for the stream, since their source may be freed right after.
    pub(crate) fn copy_to_device(&self, dst: u64, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let Some(d) = self.driver() else {
            // SAFETY: the caller guarantees `dst` holds the bytes (host memory here).
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst as *mut u8, bytes.len()) };
            return Ok(());
        };
        let stream = d.stream.cu_stream();
        if !sync_uploads() {
            let mut staging = d.staging.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: the caller guarantees `dst`; the stream is this device's.
            match unsafe { staging.copy(stream, dst, bytes) } {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    // Pinned memory may be short: copy synchronously instead, after
                    // whatever the failed attempt queued.
                    static WARNED: std::sync::Once = std::sync::Once::new();
                    WARNED.call_once(|| {
                        eprintln!("warning: staging a host-to-device copy failed ({e}); copying synchronously")
                    });
                    drop(staging);
                    self.synchronize()?;
                }
            }
        }
        // SAFETY: as above; the copy finishes before returning (the source may be freed).
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, bytes, stream) }
            .map_err(CudaError::driver("memcpy_htod"))?;
        self.synchronize()
    }

    /// A buffer holding a copy of `data`.
    pub fn htod<T: Element>(self: &Arc<Self>, data: &[T]) -> Result<DeviceBuffer> {
        let mut b = self.alloc(T::DTYPE, data.len())?;
        b.copy_from_host(data)?;
        Ok(b)
    }

    /// Copies `dst.len()` bytes from device address `src` to the host, after the work
    /// queued before.
    pub(crate) fn copy_to_host(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        match self.driver() {
            Some(d) => {
                // SAFETY: the caller guarantees `src` holds the bytes; the copy finishes
                // (synchronize) before `dst` is read.
                unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, d.stream.cu_stream()) }
                    .map_err(CudaError::driver("memcpy_dtoh"))?;
                self.synchronize()
            }
            None => {
                // SAFETY: as above (host memory here).
                unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
                Ok(())
            }
        }
    }

    /// Queues setting `bytes` bytes from device address `dst` to zero.
    pub(crate) fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        match self.driver() {
            // SAFETY: the caller guarantees the range lies in this device's memory.
            Some(d) => unsafe { cudarc::driver::result::memset_d8_async(dst, 0, bytes, d.stream.cu_stream()) }
                .map_err(CudaError::driver("memset")),
            None => {
                // SAFETY: as above (host memory here).
                unsafe { std::ptr::write_bytes(dst as *mut u8, 0, bytes) };
                Ok(())
            }
        }
    }

    /// The kernel `name` of `source`, compiled (or taken from the disk cache) and
    /// loaded on first use.
    pub(crate) fn function(&self, source: KernelSource, name: &str) -> Result<Kernel> {
        if let Some(f) = self.functions.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(f.clone());
        }
        let d = match &self.backend {
            Backend::Driver(d) => d,
            Backend::Emulated => {
                let f = Kernel::Emulated(emulator::function(source, name, self.cache.dir())?);
                self.functions.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), f.clone());
                return Ok(f);
            }
        };
        let module = {
            let mut modules = d.modules.lock().unwrap_or_else(|e| e.into_inner());
            match modules.get(source.stem) {
                Some(m) => m.clone(),
                None => {
                    let cubin = self.cache.get_or_compile(source, &self.arch)?;
                    let m = d
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
                        .map_err(CudaError::driver("load_module"))?;
                    modules.insert(source.stem, m.clone());
                    m
                }
            }
        };
        let f = Kernel::Driver(module.load_function(name).map_err(CudaError::driver("load_function"))?);
        self.functions.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// A grid for a grid-stride loop over `n` items with `threads` per block: enough
    /// blocks to fill the device, no more than the work needs.
    pub(crate) fn grid_for(&self, n: usize, threads: u32) -> u32 {
        let needed = n.div_ceil(threads as usize).max(1);
        needed.min(self.sm_count as usize * 16).max(1) as u32
    }

    /// Launches `f` with `cfg` and `args` in the kernel's parameter order.
    pub(crate) fn launch(&self, f: &Kernel, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        if cfg.shared_mem_bytes as usize > self.max_shared_optin {
            crate::error::bail!(
                "launch",
                "the kernel needs {} bytes of shared memory per block; {} allows {}",
                cfg.shared_mem_bytes,
                self.arch,
                self.max_shared_optin
            );
        }
        let (d, f) = match (&self.backend, f) {
            (Backend::Driver(d), Kernel::Driver(f)) => (d, f),
            (Backend::Emulated, Kernel::Emulated(k)) => return emulator::launch(k, cfg, args),
            _ => crate::error::bail!("launch", "a kernel loaded on another kind of device"),
        };
        if cfg.shared_mem_bytes > 48 * 1024 {
            f.set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                cfg.shared_mem_bytes as i32,
            )
            .map_err(CudaError::driver("set_attribute"))?;
        }
        let mut b = d.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::U64(v) => b.arg(v),
                Arg::I64(v) => b.arg(v),
                Arg::I32(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
                // The driver copies the parameter's size from this address.
                Arg::Struct(words) => b.arg(&words[0]),
            };
        }
        // SAFETY: each op validates its buffers' dtypes and lengths against the kernel's
        // contract before launching, and passes arguments in the kernel's order.
        let mut launch = move || unsafe { b.launch(cfg) }.map(|_| ()).map_err(CudaError::driver("launch"));
        match &d.times {
            Some(t) => t.time(&d.stream, &self.function_name(f), launch),
            None => launch(),
        }
    }

    /// The name `f` was loaded under (for the per-kernel timer).
    fn function_name(&self, f: &CudaFunction) -> String {
        let functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        let found =
            functions.iter().find(|(_, g)| matches!(g, Kernel::Driver(g) if g.cu_function() == f.cu_function()));
        found.map_or_else(|| "unnamed kernel".to_string(), |(name, _)| name.clone())
    }
}

/// One kernel argument, owned until the launch has read it.
#[derive(Clone, Debug)]
pub(crate) enum Arg {
    /// A device pointer or an unsigned 64-bit value.
    U64(u64),
    /// `long long`.
    I64(i64),
    /// `int`.
    I32(i32),
    /// `float`.
    F32(f32),
    /// A `#[repr(C)]` struct passed by value, as 8-byte words.
    Struct(Vec<u64>),
}

impl Arg {
    /// A `#[repr(C)]` plain-data struct passed by value.
    pub(crate) fn of<T: Copy>(v: &T) -> Arg {
        let mut words = vec![0u64; std::mem::size_of::<T>().div_ceil(8).max(1)];
        // SAFETY: copies the struct's bytes into a buffer at least as large.
        unsafe {
            std::ptr::copy_nonoverlapping((v as *const T).cast::<u8>(), words.as_mut_ptr().cast::<u8>(), size_of::<T>())
        };
        Arg::Struct(words)
    }

    /// A length or count as `long long`.
    pub(crate) fn len(n: usize) -> Arg {
        Arg::I64(n as i64)
    }
}
