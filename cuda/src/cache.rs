//! The on-disk cache of compiled kernels. A CUBIN is stored under a key hashed from
//! everything that changes it: the full source text (prelude included), the target
//! architecture, NVRTC's version and the compile options. Files are written to a
//! temporary name and renamed, so a reader never sees a half-written CUBIN.

use crate::kernels::KernelSource;
use crate::{CudaError, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The environment variable that overrides the cache folder.
pub const CACHE_ENV: &str = "MONARCH_CUDA_CACHE";

/// A folder of compiled kernels.
#[derive(Clone, Debug)]
pub struct KernelCache {
    dir: PathBuf,
}

impl KernelCache {
    /// The cache at `$MONARCH_CUDA_CACHE`, else `<user cache dir>/monarch/kernels`, else
    /// under the system temporary folder.
    pub fn from_env() -> Self {
        let dir = std::env::var_os(CACHE_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("monarch").join("kernels"));
        KernelCache { dir }
    }

    /// A cache in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        KernelCache { dir: dir.into() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The hex key of a translation unit compiled for `arch` by NVRTC `version`.
    pub fn key(translation_unit: &str, arch: &str, version: (i32, i32)) -> String {
        let mut h = Sha256::new();
        for part in [translation_unit, arch, &format!("{}.{}", version.0, version.1)] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        for opt in crate::nvrtc::compile_options(arch) {
            h.update((opt.len() as u64).to_le_bytes());
            h.update(opt.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Where the CUBIN of `stem` with `key` lives.
    pub fn path(&self, stem: &str, arch: &str, key: &str) -> PathBuf {
        self.dir.join(format!("{stem}-{arch}-{}.cubin", &key[..32.min(key.len())]))
    }

    /// The cached CUBIN, if present and readable.
    pub fn load(&self, stem: &str, arch: &str, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(stem, arch, key)).ok().filter(|b| !b.is_empty())
    }

    /// Stores a CUBIN atomically (temporary file, then rename).
    pub fn store(&self, stem: &str, arch: &str, key: &str, cubin: &[u8]) -> Result<()> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CudaError::Cache { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(err(&self.dir))?;
        let path = self.path(stem, arch, key);
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, cubin).map_err(err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            CudaError::Cache { path: path.clone(), source: e }
        })
    }

    /// The CUBIN of `source` for `arch`: from the cache, or compiled with NVRTC and
    /// stored (a cache that cannot be written is not an error; the kernel still runs).
    pub fn get_or_compile(&self, source: KernelSource, arch: &str) -> Result<Vec<u8>> {
        Ok(self.fetch(source, arch, crate::nvrtc::nvrtc()?.version)?.0)
    }

    /// [`get_or_compile`](Self::get_or_compile) for NVRTC `version`, and whether the
    /// CUBIN came from the cache.
    fn fetch(&self, source: KernelSource, arch: &str, version: (i32, i32)) -> Result<(Vec<u8>, bool)> {
        let key = Self::key(&source.translation_unit(), arch, version);
        if let Some(cubin) = self.load(source.stem, arch, &key) {
            return Ok((cubin, true));
        }
        let compiled = source.compile(arch)?;
        let _ = self.store(source.stem, arch, &key, &compiled.cubin);
        Ok((compiled.cubin, false))
    }
}

/// What [`KernelCache::warm`] did for one kernel source.
#[derive(Clone, Debug, PartialEq)]
pub struct WarmedKernel {
    /// The source's stem.
    pub stem: &'static str,
    /// Whether the cache already held it (nothing was compiled).
    pub cached: bool,
    /// The CUBIN's size in bytes.
    pub bytes: usize,
    /// Seconds spent on it (reading the cache, or compiling and storing).
    pub seconds: f64,
}

impl KernelCache {
    /// Puts the CUBIN of every source in `sources` for `arch` into the cache, compiling
    /// the ones it lacks on `threads` threads at once (NVRTC compilations are
    /// independent; the longest sources start first), so that later processes load them
    /// without compiling. Results come in the order of `sources`; the first failure is
    /// returned after every thread has finished.
    pub fn warm(&self, sources: &[KernelSource], arch: &str, threads: usize) -> Result<Vec<WarmedKernel>> {
        let version = crate::nvrtc::nvrtc()?.version;
        let mut order: Vec<usize> = (0..sources.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sources[i].text.len()));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let one = |i: usize| -> Result<WarmedKernel> {
            let start = std::time::Instant::now();
            let (cubin, cached) = self.fetch(sources[i], arch, version)?;
            let seconds = start.elapsed().as_secs_f64();
            Ok(WarmedKernel { stem: sources[i].stem, cached, bytes: cubin.len(), seconds })
        };
        let mut done: Vec<(usize, Result<WarmedKernel>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads.clamp(1, sources.len().max(1)))
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(&i) = order.get(at) else { return mine };
                            mine.push((i, one(i)));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        });
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_changes_with_source_arch_and_version_only() {
        let k = KernelCache::key("src", "sm_90", (12, 9));
        assert_eq!(k, KernelCache::key("src", "sm_90", (12, 9)), "deterministic");
        assert_eq!(k.len(), 64);
        assert_ne!(k, KernelCache::key("src ", "sm_90", (12, 9)));
        assert_ne!(k, KernelCache::key("src", "sm_80", (12, 9)));
        assert_ne!(k, KernelCache::key("src", "sm_90", (13, 0)));
        // Length-prefixed parts: moving text across a boundary changes the key.
        assert_ne!(KernelCache::key("ab", "c", (1, 0)), KernelCache::key("a", "bc", (1, 0)));
    }

    #[test]
    fn store_then_load_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(dir.path().join("nested"));
        let key = KernelCache::key("x", "sm_90", (12, 9));
        assert!(cache.load("unary", "sm_90", &key).is_none());
        cache.store("unary", "sm_90", &key, b"cubin bytes").unwrap();
        assert_eq!(cache.load("unary", "sm_90", &key).unwrap(), b"cubin bytes");
        let other = KernelCache::key("x", "sm_80", (12, 9));
        assert!(cache.load("unary", "sm_80", &other).is_none(), "another arch is another entry");
        let names: Vec<_> = std::fs::read_dir(cache.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind: {names:?}");
    }

    #[test]
    fn an_unwritable_folder_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let cache = KernelCache::new(&file);
        let err = cache.store("unary", "sm_90", "00", b"x").unwrap_err();
        assert!(matches!(err, CudaError::Cache { .. }), "{err}");
    }
}
