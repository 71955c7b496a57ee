//! The real kernel sources run on the CPU: each driver in `cuda/emu/` includes
//! `kernels/common.cuh` and one `kernels/<stem>.cu`, emulates CUDA threads, warps,
//! barriers, shared memory and the tensor-core instructions (`cuda/emu/shim.h`), launches
//! the kernels as the launchers in `src/ops/` do and compares with f64 references. Each
//! test compiles its driver with the system C++ compiler (`$CXX`, else `c++`) and says
//! SKIPPED when there is no C++20 compiler. Needs no GPU.
//!
//! The tests in `races` run the same drivers under the race check (`shim.h`,
//! `MONARCH_EMU_RACECHECK`: ThreadSanitizer with each CUDA thread a fiber and
//! `__syncthreads` the only ordering within a block), which fails on two threads of a
//! block touching one word with no barrier between them, whichever order they ran in.
//! They say SKIPPED where the compiler cannot build or run a ThreadSanitizer program.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The C++ compiler to use: `$CXX`, else `c++`.
fn compiler() -> String {
    std::env::var("CXX").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| "c++".to_string())
}

/// Whether `cxx` builds a C++20 program with `flags` that then runs (a missing compiler
/// counts as no).
fn builds_and_runs(cxx: &str, flags: &[&str], dir: &Path) -> bool {
    let probe = dir.join("probe.cpp");
    let exe = dir.join("probe");
    std::fs::write(&probe, "#if __cplusplus < 202002L\n#error not C++20\n#endif\nint main() { return 0; }\n").unwrap();
    let built = Command::new(cxx)
        .arg("-std=c++20")
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(&probe)
        .output()
        .is_ok_and(|o| o.status.success());
    built && Command::new(&exe).output().is_ok_and(|o| o.status.success())
}

/// How a driver is built and run.
#[derive(Clone, Copy, PartialEq)]
enum Check {
    /// Its cases' values against the references.
    Values,
    /// The same under ThreadSanitizer: any race within a block fails the run.
    Races,
}

impl Check {
    /// The compiler flags beyond the include paths.
    fn flags(self) -> &'static [&'static str] {
        match self {
            Check::Values => &["-O2", "-DMONARCH_EMULATE"],
            Check::Races => &["-O2", "-g", "-fsanitize=thread", "-DMONARCH_EMULATE", "-DMONARCH_EMU_RACECHECK"],
        }
    }
}

/// ThreadSanitizer's options for every run: a race report ends the run at once, with
/// this exit status.
const TSAN_OPTIONS: &str = "halt_on_error=1 exitcode=66";
const RACE_EXIT: i32 = 66;

/// Compiles `emu/<driver>.cpp` for `check` into `dir`; `None` (having said SKIPPED) where
/// the compiler cannot build and run such a program.
fn build(driver: &str, check: Check, dir: &Path) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cxx = compiler();
    let probe_flags: &[&str] = if check == Check::Races { &["-fsanitize=thread"] } else { &[] };
    if !builds_and_runs(&cxx, probe_flags, dir) {
        let what = if check == Check::Races { "C++20 with -fsanitize=thread" } else { "C++20" };
        eprintln!("SKIPPED: {driver} in the kernel emulator: {cxx} cannot build and run {what}");
        return None;
    }
    let exe = dir.join(driver);
    let build = Command::new(&cxx)
        .arg("-std=c++20")
        .args(check.flags())
        .arg("-I")
        .arg(root.join("kernels"))
        .arg("-I")
        .arg(root.join("emu"))
        .arg(root.join("emu").join(format!("{driver}.cpp")))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(build.status.success(), "{cxx} failed on emu/{driver}.cpp:\n{}", String::from_utf8_lossy(&build.stderr));
    Some(exe)
}

/// Runs `exe` with `args`: its exit code (`None` when a signal ended it), stdout and stderr.
fn run(exe: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(exe).args(args).env("TSAN_OPTIONS", TSAN_OPTIONS).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Compiles `emu/<driver>.cpp` for `check`, runs it and fails with its output unless
/// every case passed (and, for `Check::Races`, no race was reported).
fn emulate(driver: &str, check: Check) {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = build(driver, check, dir.path()) else { return };
    let (code, stdout, stderr) = run(&exe, &[]);
    assert_eq!(code, Some(0), "emulated {driver} failed:\n{stdout}{stderr}");
    eprint!("{stdout}");
}

/// The race check on its own cases (`emu/racecheck.cpp`): each racy one must end with
/// ThreadSanitizer's report, each clean one without, so the check can neither miss a
/// missing barrier nor call a correct kernel racy.
#[test]
fn the_race_check_reports_exactly_the_racy_cases() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = build("racecheck", Check::Races, dir.path()) else { return };
    let (code, list, _) = run(&exe, &["--list"]);
    assert_eq!(code, Some(0));
    let cases: Vec<(&str, bool)> =
        list.lines().map(|l| l.split_once(' ').map(|(name, kind)| (name, kind == "racy")).unwrap()).collect();
    assert!(cases.iter().filter(|c| c.1).count() >= 4 && cases.iter().filter(|c| !c.1).count() >= 4, "{list}");
    for (name, racy) in cases {
        let (code, stdout, stderr) = run(&exe, &[name]);
        let reported = stderr.contains("ThreadSanitizer: data race");
        if racy {
            assert!(
                code == Some(RACE_EXIT) && reported,
                "racy case {name} was not reported ({code:?}):\n{stdout}{stderr}"
            );
        } else {
            assert!(code == Some(0) && !reported, "clean case {name} failed ({code:?}):\n{stdout}{stderr}");
        }
    }
}

#[test]
fn flash_attention_forward_and_backward() {
    emulate("flash_attention", Check::Values);
}

#[test]
fn monarch_grouped_gemms() {
    emulate("monarch", Check::Values);
}

#[test]
fn block_sparse_forward_dx_dw() {
    emulate("block_sparse", Check::Values);
}

#[test]
fn softmax_forward_and_backward() {
    emulate("softmax", Check::Values);
}

#[test]
fn layer_norm_forward_and_backward() {
    emulate("layer_norm", Check::Values);
}

#[test]
fn cross_entropy_forward_and_backward() {
    emulate("cross_entropy", Check::Values);
}

#[test]
fn reduce_rows_and_columns() {
    emulate("reduce", Check::Values);
}

#[test]
fn embedding_index_select_add_gather_scatter() {
    emulate("embedding", Check::Values);
}

#[test]
fn binary_cmp_where_with_broadcasting() {
    emulate("binary", Check::Values);
}

#[test]
fn unary_forward_and_backward() {
    emulate("unary", Check::Values);
}

#[test]
fn strided_copies_and_casts() {
    emulate("copy", Check::Values);
}

#[test]
fn dropout_matches_the_cpu_mask() {
    emulate("dropout", Check::Values);
}

#[test]
fn adamw_steps() {
    emulate("adamw", Check::Values);
}

#[test]
fn sgd_steps() {
    emulate("sgd", Check::Values);
}

#[test]
fn butterfly_forward_and_backward() {
    emulate("butterfly", Check::Values);
}

/// The race check of each driver, named by it.
macro_rules! race_checks {
    ($($driver:ident),* $(,)?) => {
        mod races {
            use super::{emulate, Check};
            $(
                #[test]
                fn $driver() {
                    emulate(stringify!($driver), Check::Races);
                }
            )*
        }
    };
}

race_checks!(
    flash_attention,
    monarch,
    block_sparse,
    softmax,
    layer_norm,
    cross_entropy,
    reduce,
    embedding,
    binary,
    unary,
    copy,
    dropout,
    adamw,
    sgd,
    butterfly
);
