//! `monarch kernels`: compiles every CUDA kernel into the on-disk cache ahead of a run
//! (a first run otherwise compiles each kernel family when it first launches it).

use super::CliError;
use clap::Args;
use monarch_tensor::{Device, WarmedKernel, cuda_device, warm_kernel_cache};
use std::time::Instant;

/// Arguments of `monarch kernels`.
#[derive(Args, Debug)]
pub struct KernelsArgs {
    /// The GPU whose architecture to compile for: cuda or cuda:N.
    #[arg(long, default_value = "cuda")]
    device: Device,
    /// Compile for this architecture instead (sm_80, sm_90, ...): needs NVRTC, no GPU.
    #[arg(long)]
    arch: Option<String>,
    /// Compilations at once (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON line per kernel source instead of a table.
    #[arg(long)]
    json: bool,
}

impl KernelsArgs {
    /// Warms the cache and prints what was compiled and what was there already.
    pub fn run(self) -> Result<(), CliError> {
        let arch = match self.arch {
            Some(a) => checked_arch(&a)?,
            None => match self.device {
                Device::Cpu => {
                    return Err("the CPU runs no CUDA kernels: pass --device cuda[:N] or --arch sm_XX".into());
                }
                Device::Cuda(i) => cuda_device(i)?.arch().to_string(),
            },
        };
        let threads = self.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        let start = Instant::now();
        let (dir, warmed) = warm_kernel_cache(&arch, threads)?;
        let wall = start.elapsed().as_secs_f64();
        if self.json {
            for w in &warmed {
                println!(
                    "{{\"stem\":\"{}\",\"arch\":\"{arch}\",\"cached\":{},\"bytes\":{},\"seconds\":{:.3}}}",
                    w.stem, w.cached, w.bytes, w.seconds
                );
            }
        } else {
            print!("{}", table(&warmed, &arch, &dir.display().to_string(), threads, wall));
        }
        Ok(())
    }
}

/// `a` when it names a real architecture (`sm_` and digits, optionally `a`).
fn checked_arch(a: &str) -> Result<String, CliError> {
    let digits = a.strip_prefix("sm_").map(|r| r.strip_suffix('a').unwrap_or(r));
    match digits {
        Some(d) if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) => Ok(a.to_string()),
        _ => Err(format!("--arch {a:?}: expected sm_ and the compute capability, e.g. sm_80 or sm_90").into()),
    }
}

/// The table `run` prints: one row per source, then the totals.
fn table(warmed: &[WarmedKernel], arch: &str, dir: &str, threads: usize, wall: f64) -> String {
    let mut out =
        format!("kernel cache {dir} ({arch})\n{:<16} {:<9} {:>8} {:>8}\n", "source", "status", "seconds", "KiB");
    for w in warmed {
        let status = if w.cached { "cached" } else { "compiled" };
        out += &format!("{:<16} {status:<9} {:>8.2} {:>8.1}\n", w.stem, w.seconds, w.bytes as f64 / 1024.0);
    }
    let compiled = warmed.iter().filter(|w| !w.cached).count();
    let sum: f64 = warmed.iter().map(|w| w.seconds).sum();
    out += &format!(
        "{} sources: {compiled} compiled, {} cached; {sum:.1} s of work in {wall:.1} s on {threads} threads\n",
        warmed.len(),
        warmed.len() - compiled
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_architectures_pass() {
        for good in ["sm_80", "sm_90", "sm_90a", "sm_120"] {
            assert_eq!(checked_arch(good).unwrap(), good);
        }
        for bad in ["", "sm_", "sm_a", "90", "compute_90", "sm_9x", "sm_90 "] {
            assert!(checked_arch(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_table_counts_compiled_and_cached_sources() {
        let w = |stem, cached, seconds| WarmedKernel { stem, cached, bytes: 2048, seconds };
        let t = table(&[w("monarch", false, 5.0), w("sgd", true, 0.25)], "sm_90", "/c", 2, 5.1);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "kernel cache /c (sm_90)");
        assert!(lines[2].starts_with("monarch ") && lines[2].contains("compiled") && lines[2].ends_with("2.0"), "{t}");
        assert!(lines[3].contains("cached") && lines[3].contains("0.25"), "{t}");
        assert_eq!(lines[4], "2 sources: 1 compiled, 1 cached; 5.2 s of work in 5.1 s on 2 threads");
    }
}
