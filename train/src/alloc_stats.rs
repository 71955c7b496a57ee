//! Heap accounting: the process's global allocator counts the bytes it currently holds
//! and the peak since the last reset, so benchmarks can report the memory an operation
//! allocated (`monarch bench attention` reports `peak_bytes`). The cost is two relaxed
//! atomic updates per allocation. Large blocks go through [`crate::block_cache`]; the
//! counts are of bytes in use, not of bytes the cache keeps.

use crate::block_cache::{class_of, give, take};
use monarch_tensor::Device;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator with byte counting and a cache of large blocks.
pub struct CountingAlloc;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn grow(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: small requests are forwarded unchanged to the system allocator; large ones
// (`class_of` is `Some`) are always served and released through the block cache, which
// allocates and frees them with one layout per size class. Only counters change besides.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = match class_of(layout) {
            // SAFETY: the class comes from class_of.
            Some(class) => unsafe { take(class, false).0 },
            // SAFETY: the caller's contract is passed on.
            None => unsafe { System.alloc(layout) },
        };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = match class_of(layout) {
            Some(class) => {
                // SAFETY: the class comes from class_of; a reused block holds at least
                // `layout.size()` writable bytes.
                let (p, reused) = unsafe { take(class, true) };
                if reused {
                    unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
                }
                p
            }
            // SAFETY: the caller's contract is passed on.
            None => unsafe { System.alloc_zeroed(layout) },
        };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match class_of(layout) {
            // SAFETY: a block of this layout was served by `take` for this class.
            Some(class) => unsafe { give(ptr, class) },
            // SAFETY: the caller's contract is passed on.
            None => unsafe { System.dealloc(ptr, layout) },
        }
        CURRENT.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the new layout has the old alignment and a size the caller vouches for.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            (None, None) => {
                // SAFETY: the caller's contract is passed on.
                let p = unsafe { System.realloc(ptr, layout, new_size) };
                if !p.is_null() {
                    CURRENT.fetch_sub(layout.size(), Relaxed);
                    grow(new_size);
                }
                p
            }
            (Some(a), Some(b)) if a == b => {
                CURRENT.fetch_sub(layout.size(), Relaxed);
                grow(new_size);
                ptr
            }
            _ => {
                // SAFETY: a fresh block for the new layout, the common prefix copied, the
                // old block released as it was allocated.
                unsafe {
                    let p = self.alloc(new_layout);
                    if !p.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    p
                }
            }
        }
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

/// The peak growth of the memory `device`'s tensors live in while `f` runs, with `f`'s
/// result: the heap's ([`peak_growth`]) on the CPU, the caching allocator's counters on a
/// GPU.
pub fn peak_growth_on<R>(device: Device, f: impl FnOnce() -> R) -> monarch_tensor::Result<(R, usize)> {
    if device == Device::Cpu {
        return Ok(peak_growth(f));
    }
    let base = device.memory_stats()?.map_or(0, |s| s.current);
    device.reset_peak_memory()?;
    let r = f();
    Ok((r, device.memory_stats()?.map_or(0, |s| s.peak.saturating_sub(base))))
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

    #[test]
    fn large_blocks_are_reused_zeroed_and_resized() {
        let big = 8 << 20;
        let mut v = vec![7u8; big];
        v[big - 1] = 9;
        drop(v);
        assert!(crate::block_cache::cached_bytes() >= big);
        // A zeroed request of the same class may get the freed block back: all zero anyway.
        let z = vec![0u8; big];
        assert!(z.iter().all(|&b| b == 0));
        // Growing across classes and shrinking below the cache's minimum keep the contents.
        let mut g: Vec<u8> = (0..big).map(|i| (i % 251) as u8).collect();
        g.resize(3 * big, 1);
        assert!(g[..big].iter().enumerate().all(|(i, &b)| b == (i % 251) as u8) && g[3 * big - 1] == 1);
        g.truncate(1000);
        g.shrink_to_fit();
        assert!(g.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    }
}
