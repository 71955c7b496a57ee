//! Compiles every kernel source for Ampere (sm_80) and Hopper (sm_90) with NVRTC and
//! fails on any error or warning. Needs no GPU: only the NVRTC library, which
//! `.ci/install-nvrtc` installs from PyPI. Without NVRTC the test says so and passes.

use monarch_cuda::kernels::ALL;
use monarch_cuda::nvrtc;

#[test]
fn every_kernel_compiles_cleanly_for_sm80_and_sm90() {
    let lib = match nvrtc::nvrtc() {
        Ok(lib) => lib,
        Err(e) => {
            eprintln!("SKIPPED: kernel compile check: {e}");
            return;
        }
    };
    eprintln!("NVRTC {}.{} from {:?}", lib.version.0, lib.version.1, lib.path);
    let jobs: Vec<_> = ALL.iter().flat_map(|s| ["sm_80", "sm_90"].map(move |arch| (*s, arch))).collect();
    // Two threads: the CI machine has two cores, and NVRTC compiles are independent.
    let failures: Vec<String> = std::thread::scope(|scope| {
        let halves = jobs.chunks(jobs.len().div_ceil(2)).map(|part| {
            scope.spawn(move || {
                part.iter()
                    .filter_map(|(src, arch)| match src.compile(arch) {
                        Err(e) => Some(e.to_string()),
                        Ok(c) if c.log.contains("warning") => {
                            Some(format!("{}.cu for {arch} warns:\n{}", src.stem, c.log))
                        }
                        Ok(c) if c.cubin.is_empty() => Some(format!("{}.cu for {arch}: empty CUBIN", src.stem)),
                        Ok(_) => None,
                    })
                    .collect::<Vec<_>>()
            })
        });
        halves.collect::<Vec<_>>().into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!("compiled {} kernel sources for sm_80 and sm_90", ALL.len());
}

#[test]
fn a_broken_source_reports_nvrtc_log() {
    if nvrtc::nvrtc().is_err() {
        eprintln!("SKIPPED: NVRTC not found");
        return;
    }
    let err = nvrtc::compile("broken", "broken.cu", "extern \"C\" __global__ void k() { undeclared(); }", "sm_90")
        .unwrap_err()
        .to_string();
    assert!(err.contains("broken.cu") && err.contains("undeclared"), "{err}");
}

#[test]
fn warming_compiles_what_the_cache_lacks_then_only_reads_it() {
    if nvrtc::nvrtc().is_err() {
        eprintln!("SKIPPED: NVRTC not found");
        return;
    }
    use monarch_cuda::KernelCache;
    use monarch_cuda::kernels::{DROPOUT, SGD, SOFTMAX};
    let dir = tempfile::tempdir().unwrap();
    let cache = KernelCache::new(dir.path());
    let first = cache.warm(&[SGD, DROPOUT], "sm_80", 2).unwrap();
    assert_eq!(first.iter().map(|w| (w.stem, w.cached)).collect::<Vec<_>>(), [("sgd", false), ("dropout", false)]);
    assert!(first.iter().all(|w| w.bytes > 0));
    // One more source, on one thread: the first two are read back with the same size,
    // in the order asked for.
    let second = cache.warm(&[SOFTMAX, SGD, DROPOUT], "sm_80", 1).unwrap();
    let got: Vec<_> = second.iter().map(|w| (w.stem, w.cached)).collect();
    assert_eq!(got, [("softmax", false), ("sgd", true), ("dropout", true)]);
    assert_eq!((second[1].bytes, second[2].bytes), (first[0].bytes, first[1].bytes));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3, "one CUBIN per source, no temporary file left");
    // Another architecture is another entry; a bad one is NVRTC's error, not a panic.
    assert!(!cache.warm(&[SGD], "sm_90", 4).unwrap()[0].cached);
    assert!(cache.warm(&[SGD], "sm_1", 4).is_err());
}
