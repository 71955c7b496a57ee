//! The real kernel sources run on the CPU: each driver in `cuda/emu/` includes
//! `kernels/common.cuh` and one `kernels/<stem>.cu`, emulates CUDA threads, warps,
//! barriers, shared memory and the tensor-core instructions (`cuda/emu/shim.h`), launches
//! the kernels as the launchers in `src/ops/` do and compares with f64 references. Each
//! test compiles its driver with the system C++ compiler (`$CXX`, else `c++`) and says
//! SKIPPED when there is no C++20 compiler. Needs no GPU.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The C++ compiler to use: `$CXX`, else `c++`.
fn compiler() -> String {
    std::env::var("CXX").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| "c++".to_string())
}

/// Whether `cxx` compiles C++20 (a missing compiler counts as no).
fn has_cxx20(cxx: &str, dir: &Path) -> bool {
    let probe = dir.join("probe.cpp");
    std::fs::write(&probe, "#if __cplusplus < 202002L\n#error not C++20\n#endif\nint main() { return 0; }\n").unwrap();
    Command::new(cxx)
        .args(["-std=c++20", "-c", "-o"])
        .arg(dir.join("probe.o"))
        .arg(&probe)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Compiles `emu/<driver>.cpp` with MONARCH_EMULATE, runs it and fails with its output
/// unless every case passed.
fn emulate(driver: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let cxx = compiler();
    if !has_cxx20(&cxx, dir.path()) {
        eprintln!("SKIPPED: {driver} in the kernel emulator: no C++20 compiler ({cxx})");
        return;
    }
    let exe = dir.path().join(driver);
    let build = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-DMONARCH_EMULATE", "-I"])
        .arg(root.join("kernels"))
        .arg("-I")
        .arg(root.join("emu"))
        .arg(root.join("emu").join(format!("{driver}.cpp")))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(build.status.success(), "{cxx} failed on emu/{driver}.cpp:\n{}", String::from_utf8_lossy(&build.stderr));
    let run = Command::new(&exe).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "emulated {driver} failed ({}):\n{stdout}{stderr}", run.status);
    eprint!("{stdout}");
}

#[test]
fn flash_attention_forward_and_backward() {
    emulate("flash_attention");
}

#[test]
fn monarch_grouped_gemms() {
    emulate("monarch");
}

#[test]
fn block_sparse_forward_dx_dw() {
    emulate("block_sparse");
}

#[test]
fn softmax_forward_and_backward() {
    emulate("softmax");
}

#[test]
fn layer_norm_forward_and_backward() {
    emulate("layer_norm");
}

#[test]
fn cross_entropy_forward_and_backward() {
    emulate("cross_entropy");
}

#[test]
fn reduce_rows_and_columns() {
    emulate("reduce");
}

#[test]
fn embedding_index_select_add_gather_scatter() {
    emulate("embedding");
}

#[test]
fn binary_cmp_where_with_broadcasting() {
    emulate("binary");
}

#[test]
fn unary_forward_and_backward() {
    emulate("unary");
}

#[test]
fn strided_copies_and_casts() {
    emulate("copy");
}

#[test]
fn dropout_matches_the_cpu_mask() {
    emulate("dropout");
}

#[test]
fn adamw_steps() {
    emulate("adamw");
}

#[test]
fn sgd_steps() {
    emulate("sgd");
}

#[test]
fn butterfly_forward_and_backward() {
    emulate("butterfly");
}
