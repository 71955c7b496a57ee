//! The emulated device: a [`CudaDevice`](crate::CudaDevice) whose memory is host memory
//! and whose kernels are the real kernel sources run on the CPU by the emulator of
//! `cuda/emu/shim.h` (CUDA threads as fibers, barriers, warp shuffles, shared memory,
//! `cp.async`, `ldmatrix` and the bf16 tensor-core `mma`), with cuBLASLt's GEMM computed
//! on the host. Everything above the driver runs as on a GPU: the launchers' argument
//! lists (checked against each kernel's parameters at every launch), the buffers' views
//! and offsets, the caching allocator, and every op of the tensor crate. So the GPU
//! code paths are tested on machines without a GPU, slowly: one CPU thread runs every
//! launch, synchronously.
//!
//! It is off unless [`EMULATOR_ENV`] is set or [`set_emulated`] turned it on; then it is
//! device 0 and the only device. Each kernel source is compiled (C++20, `$CXX` or `c++`)
//! into a shared library at first use and cached beside the CUBINs.

mod build;
pub(crate) mod gemm;
mod memory;

pub use memory::HostMemory;

use crate::device::Arg;
use crate::kernels::KernelSource;
use crate::{CudaError, Result};
use cudarc::driver::LaunchConfig;
use std::collections::HashMap;
use std::ffi::c_void;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

/// Set (to anything but `0`) to make device 0 the emulated device.
pub const EMULATOR_ENV: &str = "MONARCH_CUDA_EMULATOR";

/// Set to a file path to have each emulated launch append its kernel's name there, one
/// per line (what `scripts/emu-coverage.sh` reads to list the kernels no test launches).
pub const LAUNCH_LOG_ENV: &str = "MONARCH_EMU_LAUNCH_LOG";

static FORCED: AtomicBool = AtomicBool::new(false);

/// Turns the emulated device on or off for devices opened afterwards (devices already
/// open stay what they are).
pub fn set_emulated(on: bool) {
    FORCED.store(on, Ordering::Relaxed);
}

/// Whether devices opened now are emulated ([`set_emulated`] or [`EMULATOR_ENV`]).
pub fn emulated() -> bool {
    FORCED.load(Ordering::Relaxed) || std::env::var(EMULATOR_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Turns the emulated device on when there is no GPU (no driver, or no device), saying
/// so on stderr: what the GPU tests call before opening device 0.
pub fn emulate_without_gpu() {
    if crate::device_count().map_or(true, |n| n == 0) {
        eprintln!("no GPU: running on the CUDA emulator");
        set_emulated(true);
    }
}

/// The architecture the emulated device reports (kernels and tiles are chosen for it).
pub(crate) const ARCH: &str = "sm_90";
/// Its multiprocessors (an H100 SXM's).
pub(crate) const SM_COUNT: u32 = 132;
/// The most dynamic shared memory a block may opt in to.
pub(crate) const MAX_SHARED_OPTIN: usize = build::DYNAMIC_SHARED;

/// `monarch_emu_<kernel>(dims, params, kinds, bytes, n)` of `cuda/emu/launcher.h`.
type Entry = unsafe extern "C" fn(*const LaunchDims, *const *mut c_void, *const i32, *const u32, i32) -> i32;

/// `emu::LaunchDims`.
#[repr(C)]
struct LaunchDims {
    grid: [u32; 3],
    block: [u32; 3],
}

/// One kernel of a loaded library.
#[derive(Clone)]
pub(crate) struct EmuKernel {
    name: Arc<str>,
    entry: Entry,
    _lib: Arc<libloading::Library>,
}

type Job = Box<dyn FnOnce() + Send>;

/// The loaded libraries by source stem.
fn libraries() -> &'static Mutex<HashMap<&'static str, Arc<libloading::Library>>> {
    static LIBS: OnceLock<Mutex<HashMap<&'static str, Arc<libloading::Library>>>> = OnceLock::new();
    LIBS.get_or_init(Default::default)
}

/// The launch thread is gone (a job panicked).
fn stopped() -> CudaError {
    CudaError::Emulator { msg: "its thread has stopped".into() }
}

/// Runs `job` on the launch thread (started at first use): the emulator's scheduler and
/// shared memory belong to one thread, which runs every launch of every emulated device.
fn run_on_launch_thread(job: Job) -> Result<()> {
    static JOBS: OnceLock<std::result::Result<Mutex<mpsc::Sender<Job>>, String>> = OnceLock::new();
    let jobs = JOBS.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("cuda-emulator".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map(|_| Mutex::new(tx))
            .map_err(|e| format!("cannot start its thread: {e}"))
    });
    match jobs {
        Ok(tx) => tx.lock().unwrap_or_else(|e| e.into_inner()).send(job).map_err(|_| stopped()),
        Err(msg) => Err(CudaError::Emulator { msg: msg.clone() }),
    }
}

/// Kernel `name` of `source`, building its library into `cache` (or finding it there)
/// and loading it once per process.
pub(crate) fn function(source: KernelSource, name: &str, cache: &Path) -> Result<EmuKernel> {
    let lib = {
        // Held while building, so one source is built once.
        let mut libs = libraries().lock().unwrap_or_else(|e| e.into_inner());
        match libs.get(source.stem) {
            Some(l) => l.clone(),
            None => {
                let path = build::library(source, cache)?;
                // SAFETY: the library is ours, built just now or earlier from the same
                // inputs; loading runs one initialiser, which allocates the shim's
                // scheduler (cuda/emu/shim.h) and touches nothing else.
                let lib = unsafe { libloading::Library::new(&path) }
                    .map_err(|e| CudaError::Emulator { msg: format!("cannot load {}: {e}", path.display()) })?;
                let lib = Arc::new(lib);
                libs.insert(source.stem, lib.clone());
                lib
            }
        }
    };
    let symbol = format!("monarch_emu_{name}");
    // SAFETY: every `monarch_emu_*` symbol of these libraries has the type `Entry`.
    let entry = unsafe { lib.get::<Entry>(symbol.as_bytes()) }
        .map(|s| *s)
        .map_err(|_| CudaError::Emulator { msg: format!("{}.cu has no kernel {name}", source.stem) })?;
    Ok(EmuKernel { name: name.into(), entry, _lib: lib })
}

/// Appends `name` to the [`LAUNCH_LOG_ENV`] file when one is set.
fn log_launch(name: &str) -> Result<()> {
    use std::io::Write;
    static LOG: OnceLock<Option<std::result::Result<Mutex<std::fs::File>, String>>> = OnceLock::new();
    let log = LOG.get_or_init(|| {
        let path = std::env::var_os(LAUNCH_LOG_ENV).filter(|p| !p.is_empty())?;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
        Some(
            file.map(Mutex::new)
                .map_err(|e| format!("cannot open {LAUNCH_LOG_ENV} file {}: {e}", Path::new(&path).display())),
        )
    });
    match log {
        None => Ok(()),
        Some(Err(msg)) => Err(CudaError::Emulator { msg: msg.clone() }),
        Some(Ok(file)) => {
            // One write per line: appends from several test processes do not interleave.
            let line = format!("{name}\n");
            let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
            file.write_all(line.as_bytes()).map_err(|e| CudaError::Emulator { msg: format!("{LAUNCH_LOG_ENV}: {e}") })
        }
    }
}

/// Runs `kernel` over `cfg` with `args` and waits for it. The launch shape is checked
/// as the driver would, the arguments against the kernel's parameters.
pub(crate) fn launch(kernel: &EmuKernel, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
    let (g, b) = (cfg.grid_dim, cfg.block_dim);
    let threads = b.0 as u64 * b.1 as u64 * b.2 as u64;
    if threads == 0 || threads > 1024 || threads % 32 != 0 {
        crate::error::bail!(
            "launch",
            "{}: the emulator runs blocks of 32 to 1024 threads, a multiple of 32; got {b:?}",
            kernel.name
        );
    }
    if g.0 == 0 || g.1 == 0 || g.2 == 0 || g.0 > i32::MAX as u32 || g.1 > 65535 || g.2 > 65535 {
        crate::error::bail!("launch", "{}: grid {g:?} is beyond the device's limits", kernel.name);
    }
    let dims = LaunchDims { grid: [g.0, g.1, g.2], block: [b.0, b.1, b.2] };
    let (kinds, bytes): (Vec<i32>, Vec<u32>) = args
        .iter()
        .map(|a| match a {
            Arg::U64(_) => (0, 8),
            Arg::I64(_) => (1, 8),
            Arg::I32(_) => (2, 4),
            Arg::F32(_) => (3, 4),
            Arg::Struct(words) => (4, words.len() as u32 * 8),
        })
        .unzip();
    let (owned, entry) = (args.to_vec(), kernel.entry);
    let (done_tx, done_rx) = mpsc::channel();
    let job: Job = Box::new(move || {
        let params: Vec<*mut c_void> = owned
            .iter()
            .map(|a| match a {
                Arg::U64(v) => v as *const u64 as *mut c_void,
                Arg::I64(v) => v as *const i64 as *mut c_void,
                Arg::I32(v) => v as *const i32 as *mut c_void,
                Arg::F32(v) => v as *const f32 as *mut c_void,
                Arg::Struct(words) => words.as_ptr() as *mut c_void,
            })
            .collect();
        // SAFETY: the entry checks the arguments against the kernel's parameters
        // before reading them; the launcher checked the buffers the kernel addresses.
        let code = unsafe { entry(&dims, params.as_ptr(), kinds.as_ptr(), bytes.as_ptr(), params.len() as i32) };
        let _ = done_tx.send(code);
    });
    run_on_launch_thread(job)?;
    let code = done_rx.recv().map_err(|_| stopped())?;
    match code {
        0 => log_launch(&kernel.name),
        c if c < 0 => {
            crate::error::bail!(
                "launch",
                "kernel {} takes {} arguments, {} were passed",
                kernel.name,
                -c - 1,
                args.len()
            )
        }
        c => crate::error::bail!(
            "launch",
            "kernel {}: argument {} ({:?}) does not fit its parameter",
            kernel.name,
            c - 1,
            args[c as usize - 1]
        ),
    }
}
