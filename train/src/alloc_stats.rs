//! Heap accounting: the process's global allocator counts the bytes it currently holds
//! and the peak since the last reset, so benchmarks can report the memory an operation
//! allocated (`monarch bench attention` reports `peak_bytes`). The cost is two relaxed
//! atomic updates per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator with byte counting.
pub struct CountingAlloc;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn grow(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; only counters change.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            CURRENT.fetch_sub(layout.size(), Relaxed);
            grow(new_size);
        }
        p
    }
}

/// Bytes currently allocated on the heap.
pub fn current_bytes() -> usize {
    CURRENT.load(Relaxed)
}

/// The most bytes held at once since the last [`reset_peak`].
pub fn peak_bytes() -> usize {
    PEAK.load(Relaxed)
}

/// Restarts peak tracking from the current level, which it returns.
pub fn reset_peak() -> usize {
    let now = CURRENT.load(Relaxed);
    PEAK.store(now, Relaxed);
    now
}

/// The peak heap growth while `f` runs, over the level when it started, with its result.
pub fn peak_growth<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = reset_peak();
    let r = f();
    (r, peak_bytes().saturating_sub(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_large_allocation_and_its_release() {
        let (len, grew) = peak_growth(|| {
            let v = vec![1u8; 64 << 20];
            std::hint::black_box(&v);
            v.len()
        });
        assert_eq!(len, 64 << 20);
        // Other test threads may allocate meanwhile: bound, do not pin.
        assert!(grew >= 64 << 20, "{grew}");
    }
}
