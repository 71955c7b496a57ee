//! Device time per kernel, for machines without Nsight Systems: with
//! `MONARCH_KERNEL_TIMES` set (to anything but `0` or empty), every kernel launch and
//! every cuBLASLt product is bracketed by two timing events on the device's stream. The
//! pairs are read when the device synchronises, so the work stays asynchronous; each
//! launch costs the host two event records (a few microseconds), which is why timings
//! meant for the record run without it.

use crate::{CudaError, Result};
use cudarc::driver::{CudaEvent, CudaStream, sys};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The environment variable that turns the per-kernel timer on.
pub const KERNEL_TIMES_ENV: &str = "MONARCH_KERNEL_TIMES";

/// One kernel's total over the launches timed so far.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// The kernel's name (`cublasLt_matmul` for cuBLASLt products).
    pub name: String,
    /// How many launches were timed.
    pub launches: u64,
    /// Their summed device time in milliseconds.
    pub ms: f64,
}

/// Pending event pairs and per-name totals.
pub(crate) struct KernelTimes {
    pending: Mutex<Vec<(String, CudaEvent, CudaEvent)>>,
    totals: Mutex<BTreeMap<String, (u64, f64)>>,
}

/// Pairs are read once this many wait, so that a long run without a synchronisation does
/// not hold events without bound.
const MAX_PENDING: usize = 4096;

impl KernelTimes {
    /// A timer when [`KERNEL_TIMES_ENV`] asks for one.
    pub(crate) fn from_env() -> Option<Self> {
        let on = std::env::var(KERNEL_TIMES_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        on.then(|| KernelTimes { pending: Mutex::new(Vec::new()), totals: Mutex::new(BTreeMap::new()) })
    }

    /// Records the start of `name`'s work on `stream`; `work` queues it; then the end.
    pub(crate) fn time<T>(&self, stream: &Arc<CudaStream>, name: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = stream.record_event(flags).map_err(CudaError::driver("record_event"))?;
        let out = work()?;
        let end = stream.record_event(flags).map_err(CudaError::driver("record_event"))?;
        let full = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.push((name.to_string(), start, end));
            p.len() >= MAX_PENDING
        };
        if full {
            self.collect()?;
        }
        Ok(out)
    }

    /// Adds every pending pair's elapsed time to its kernel's total (waiting for the
    /// events to complete).
    pub(crate) fn collect(&self) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        for (name, start, end) in pending {
            let ms = start.elapsed_ms(&end).map_err(CudaError::driver("event_elapsed"))?;
            let t = totals.entry(name).or_insert((0, 0.0));
            t.0 += 1;
            t.1 += ms as f64;
        }
        Ok(())
    }

    /// Every kernel's total so far, longest first.
    pub(crate) fn report(&self) -> Result<Vec<KernelTime>> {
        self.collect()?;
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<KernelTime> =
            totals.iter().map(|(name, &(launches, ms))| KernelTime { name: name.clone(), launches, ms }).collect();
        v.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(v)
    }

    /// Forgets the totals (and pending pairs) so far.
    pub(crate) fn reset(&self) -> Result<()> {
        self.collect()?;
        self.totals.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }
}

/// Formats `times` as a table: name, launches, total and mean time, share of the total.
pub fn format_kernel_times(times: &[KernelTime]) -> String {
    let all: f64 = times.iter().map(|t| t.ms).sum();
    let mut s = format!("{:<40} {:>9} {:>11} {:>11} {:>6}\n", "kernel", "launches", "total ms", "mean us", "share");
    for t in times {
        let mean_us = 1e3 * t.ms / t.launches.max(1) as f64;
        let share = if all > 0.0 { 100.0 * t.ms / all } else { 0.0 };
        s += &format!("{:<40} {:>9} {:>11.3} {:>11.1} {:>5.1}%\n", t.name, t.launches, t.ms, mean_us, share);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_each_kernel_with_its_mean_and_share() {
        let times = [
            KernelTime { name: "grouped_gemm_bf16".into(), launches: 4, ms: 3.0 },
            KernelTime { name: "monarch_permute_bf16".into(), launches: 2, ms: 1.0 },
        ];
        let t = format_kernel_times(&times);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("grouped_gemm_bf16") && lines[1].contains("750.0") && lines[1].ends_with("75.0%"));
        assert!(lines[2].contains("500.0") && lines[2].ends_with("25.0%"));
        assert_eq!(format_kernel_times(&[]).lines().count(), 1);
    }
}
