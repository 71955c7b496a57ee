//! Building a kernel source into the emulated device's shared library: the source, the
//! prelude, `emu/shim.h` and `emu/launcher.h` (embedded, so a binary built elsewhere can
//! emulate too) are written to a scratch folder and compiled with the system C++
//! compiler (`$CXX`, else `c++`) as C++20 with `MONARCH_EMULATE`. Each kernel the
//! preprocessed source defines gets an entry `monarch_emu_<kernel>`. Libraries are cached
//! beside the CUBINs, keyed by everything that goes into them, and written under a
//! temporary name then renamed.

use crate::kernels::{KernelSource, PRELUDE};
use crate::{CudaError, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

const SHIM: &str = include_str!("../../emu/shim.h");
const LAUNCHER: &str = include_str!("../../emu/launcher.h");

/// Bytes of each `extern __shared__` array: the most dynamic shared memory a block of
/// the emulated sm_90 may opt in to (227 KiB, as on an H100).
pub(crate) const DYNAMIC_SHARED: usize = 232_448;

const FLAGS: &[&str] = &[
    "-std=c++20",
    "-O2",
    "-shared",
    "-fPIC",
    "-fvisibility=hidden",
    "-fvisibility-inlines-hidden",
    "-DMONARCH_EMULATE",
];

fn err(msg: impl Into<String>) -> CudaError {
    CudaError::Emulator { msg: msg.into() }
}

/// The C++ compiler: `$CXX`, else `c++`.
fn compiler() -> String {
    std::env::var("CXX").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| "c++".to_string())
}

/// Runs `cmd`, returning its standard output, or an error with its standard error.
fn output(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd.output().map_err(|e| err(format!("cannot run {what} ({e}); install a C++20 compiler or set CXX")))?;
    if !out.status.success() {
        return Err(err(format!("{what} failed:\n{}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The names of the `extern "C"` functions defined in preprocessed source `text` (the
/// kernels; the shim's own `monarch_emu_*` left out).
pub(crate) fn kernel_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for part in text.split("extern \"C\"").skip(1) {
        let Some(rest) = part.trim_start().strip_prefix("void") else { continue };
        let name: String = rest.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let defined = rest.trim_start()[name.len()..].trim_start().starts_with('(');
        if defined && !name.is_empty() && !name.starts_with("monarch_emu") && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The names of the `extern __shared__` arrays that `text` declares.
pub(crate) fn dynamic_shared_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for part in text.split("extern __shared__").skip(1) {
        let decl = part.split(';').next().unwrap_or("");
        let Some(before) = decl.split('[').next() else { continue };
        let name: String = before
            .trim_end()
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// A scratch folder removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The shared library of `source` for the emulated device, built into `cache` unless
/// it is there already.
pub(crate) fn library(source: KernelSource, cache: &Path) -> Result<PathBuf> {
    static SCRATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SCRATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = Scratch(std::env::temp_dir().join(format!("monarch-emu-{}-{}-{n}", std::process::id(), source.stem)));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| CudaError::Cache { path, source: e }
    };
    std::fs::create_dir_all(&dir.0).map_err(io(&dir.0))?;
    let cu = format!("{}.cu", source.stem);
    for (name, text) in
        [("shim.h", SHIM), ("launcher.h", LAUNCHER), ("common.cuh", PRELUDE), (cu.as_str(), source.text)]
    {
        std::fs::write(dir.0.join(name), text).map_err(io(&dir.0.join(name)))?;
    }
    let mut unit =
        format!("#include \"shim.h\"\n#include \"common.cuh\"\n#include \"{cu}\"\n#include \"launcher.h\"\n");
    for name in dynamic_shared_names(source.text) {
        unit += &format!("alignas(16) thread_local unsigned char {name}[{DYNAMIC_SHARED}];\n");
    }
    let unit_path = dir.0.join("library.cpp");
    std::fs::write(&unit_path, &unit).map_err(io(&unit_path))?;
    let cxx = compiler();
    let mut pre = Command::new(&cxx);
    pre.args(["-std=c++20", "-E", "-P", "-DMONARCH_EMULATE", "-I"]).arg(&dir.0).arg(&unit_path);
    let names = kernel_names(&output(pre, &format!("{cxx} -E on {cu}"))?);
    for name in &names {
        unit += &format!("MONARCH_EMU_KERNEL({name})\n");
    }
    std::fs::write(&unit_path, &unit).map_err(io(&unit_path))?;
    let mut version = Command::new(&cxx);
    version.arg("--version");
    let version = output(version, &format!("{cxx} --version"))?;
    let mut h = Sha256::new();
    for part in [version.as_str(), SHIM, LAUNCHER, PRELUDE, source.text, &unit].into_iter().chain(FLAGS.iter().copied())
    {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let key: String = h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect();
    let out_dir = cache.join("emulator");
    let lib = out_dir.join(format!("{}-{key}.so", source.stem));
    if lib.exists() {
        return Ok(lib);
    }
    std::fs::create_dir_all(&out_dir).map_err(io(&out_dir))?;
    let tmp = out_dir.join(format!(".{}-{key}.{}-{n}.tmp", source.stem, std::process::id()));
    let mut build = Command::new(&cxx);
    build.args(FLAGS).arg("-I").arg(&dir.0).arg(&unit_path).arg("-o").arg(&tmp);
    output(build, &format!("{cxx} on {cu}"))?;
    std::fs::rename(&tmp, &lib).map_err(io(&lib))?;
    Ok(lib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_are_the_defined_extern_c_functions() {
        let text = "extern \"C\" void monarch_emu_switch(void** a, void* b);\n\
                    extern \"C\" void add_f32(const float* x) { }\n\
                    extern \"C\" void add_bf16 (int n) { }\n\
                    extern \"C\" int not_a_kernel(int);\n\
                    extern \"C\" void add_f32(const float* x);";
        assert_eq!(kernel_names(text), ["add_f32", "add_bf16"]);
    }

    #[test]
    fn dynamic_shared_names_are_found() {
        let text = "extern __shared__ __align__(16) unsigned char fa_smem[];\nextern __shared__ float buf [];";
        assert_eq!(dynamic_shared_names(text), ["fa_smem", "buf"]);
        assert!(dynamic_shared_names("__shared__ float tile[64];").is_empty());
    }
}
