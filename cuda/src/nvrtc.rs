//! Finding, loading and calling NVRTC, the runtime CUDA C++ compiler.
//!
//! NVRTC needs no driver and no GPU, so kernels compile (and are checked) on any
//! machine that has the library. It is looked for, in order:
//! 1. `MONARCH_NVRTC_LIB`: the library file, or a folder holding `libnvrtc.so.*`;
//! 2. the dynamic loader's own search path (`LD_LIBRARY_PATH`, a CUDA toolkit);
//! 3. the site-packages of `python3`, where the `nvidia-cuda-nvrtc-cu12` wheel
//!    (`nvidia/cuda_nvrtc/lib`) or a CUDA 13 wheel (`nvidia/cu13/lib`) puts it.
//!
//! A file found by path is loaded first, so that cudarc's own lookup by library name
//! (`libnvrtc.so.13`, `libnvrtc.so.12`, ...) resolves to the already-loaded library.

use crate::{CudaError, Result};
use cudarc::nvrtc::{result, sys};
use std::ffi::{CStr, CString, c_char};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The environment variable naming the NVRTC library file or its folder.
pub const NVRTC_ENV: &str = "MONARCH_NVRTC_LIB";

/// A loaded NVRTC.
#[derive(Debug)]
pub struct Nvrtc {
    /// `(major, minor)` as NVRTC reports it.
    pub version: (i32, i32),
    /// The file it was loaded from, when found by path rather than by the loader.
    pub path: Option<PathBuf>,
}

/// The output of one compilation.
#[derive(Debug)]
pub struct Compiled {
    /// The CUBIN image for the requested architecture.
    pub cubin: Vec<u8>,
    /// NVRTC's log (warnings); empty when the source compiled cleanly.
    pub log: String,
}

/// NVRTC, loaded on first use; the same error is returned on every call when it is missing.
pub fn nvrtc() -> Result<&'static Nvrtc> {
    static NVRTC: OnceLock<std::result::Result<Nvrtc, String>> = OnceLock::new();
    NVRTC.get_or_init(load).as_ref().map_err(|searched| CudaError::NoNvrtc { searched: searched.clone() })
}

fn load() -> std::result::Result<Nvrtc, String> {
    let mut searched = Vec::new();
    let mut path = None;
    let explicit = std::env::var_os(NVRTC_ENV).map(PathBuf::from);
    if let Some(p) = &explicit {
        searched.push(format!("{NVRTC_ENV}={}", p.display()));
        path = library_in(p).filter(|f| preload(f));
    }
    // SAFETY: only probes whether the library can be opened.
    if path.is_none() && !unsafe { sys::is_culib_present() } {
        searched.push("the dynamic loader path".into());
        for dir in python_site_packages() {
            for sub in ["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"] {
                let d = dir.join(sub);
                searched.push(d.display().to_string());
                path = library_in(&d).filter(|f| preload(f));
                if path.is_some() {
                    break;
                }
            }
            if path.is_some() {
                break;
            }
        }
    }
    // SAFETY: as above; a library preloaded by path is found here under its soname.
    if !unsafe { sys::is_culib_present() } {
        return Err(searched.join(", "));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }.result().map_err(|e| format!("nvrtcVersion: {e:?}"))?;
    Ok(Nvrtc { version: (major, minor), path })
}

/// The NVRTC library at `p`: `p` itself if it is a file, else the `libnvrtc.so.N` with
/// the highest major version in folder `p` (never the `.alt` or builtins variants).
fn library_in(p: &Path) -> Option<PathBuf> {
    if p.is_file() {
        return Some(p.to_path_buf());
    }
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir(p).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let major = match name.strip_prefix("libnvrtc.so") {
            Some("") => 0,
            Some(rest) => match rest.strip_prefix('.').and_then(|v| v.split('.').next()?.parse().ok()) {
                Some(m) => m,
                None => continue,
            },
            None => continue,
        };
        if best.as_ref().is_none_or(|(m, _)| major > *m) {
            best = Some((major, entry.path()));
        }
    }
    best.map(|(_, p)| p)
}

/// Loads the library at `file` for the life of the process; false if it cannot be loaded.
fn preload(file: &Path) -> bool {
    static KEEP: std::sync::Mutex<Vec<libloading::Library>> = std::sync::Mutex::new(Vec::new());
    // SAFETY: NVRTC's initialisers have no preconditions.
    match unsafe { libloading::Library::new(file) } {
        Ok(lib) => {
            KEEP.lock().unwrap_or_else(|e| e.into_inner()).push(lib);
            true
        }
        Err(_) => false,
    }
}

/// The site-packages folders of the `python3` on the PATH (empty when there is none).
fn python_site_packages() -> Vec<PathBuf> {
    let script = "import site,sys\nfor p in site.getsitepackages()+[site.getusersitepackages()]: print(p)";
    let out = match std::process::Command::new("python3").args(["-c", script]).output() {
        Ok(o) if o.status.success() => o.stdout,
        _ => return Vec::new(),
    };
    String::from_utf8_lossy(&out).lines().map(PathBuf::from).filter(|p| p.is_dir()).collect()
}

/// Compiles `source` (named `name` in diagnostics) to a CUBIN for `arch` (e.g. `sm_90`).
/// `kernel` names the kernel family in errors. A failed compilation returns
/// [`CudaError::Compile`] with NVRTC's log; warnings come back in [`Compiled::log`].
pub fn compile(kernel: &'static str, name: &str, source: &str, arch: &str) -> Result<Compiled> {
    nvrtc()?;
    let fail = |log: String| CudaError::Compile { kernel, arch: arch.to_string(), log };
    let src = CString::new(source).map_err(|_| fail("source contains a NUL byte".into()))?;
    let cname = CString::new(name).map_err(|_| fail("name contains a NUL byte".into()))?;
    let prog = result::create_program(&src, Some(&cname)).map_err(|e| fail(format!("{e:?}")))?;
    let options = compile_options(arch);
    // SAFETY: `prog` was just created and is destroyed below, after its last use.
    let compiled = unsafe { result::compile_program(prog, &options) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(prog) }.map(|l| c_text(&l)).unwrap_or_default();
    let cubin = compiled.map_err(|_| fail(log.clone())).and_then(|()| {
        let mut size = 0usize;
        // SAFETY: `prog` compiled successfully; the buffer has the size NVRTC reported.
        unsafe {
            sys::nvrtcGetCUBINSize(prog, &mut size).result().map_err(|e| fail(format!("{e:?}")))?;
            let mut cubin = vec![0u8; size];
            sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()).result().map_err(|e| fail(format!("{e:?}")))?;
            Ok(cubin)
        }
    });
    // SAFETY: `prog` is not used after this.
    let _ = unsafe { result::destroy_program(prog) };
    Ok(Compiled { cubin: cubin?, log: log.trim().to_string() })
}

/// The NVRTC options every kernel is built with.
pub(crate) fn compile_options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "--std=c++17".into(), "--restrict".into()]
}

/// Text of a NUL-terminated C buffer.
fn c_text(buf: &[c_char]) -> String {
    // SAFETY: c_char and u8 have one size; the slice is read up to its first NUL.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), buf.len()) };
    CStr::from_bytes_until_nul(bytes).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_in_a_folder_prefers_the_highest_major_and_skips_variants() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["libnvrtc.so.12", "libnvrtc.so.13", "libnvrtc.alt.so.13", "libnvrtc-builtins.so.13.0", "x"] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        assert_eq!(library_in(dir.path()).unwrap(), dir.path().join("libnvrtc.so.13"));
        let file = dir.path().join("x");
        assert_eq!(library_in(&file).unwrap(), file);
        assert!(library_in(&dir.path().join("missing")).is_none());
    }
}
