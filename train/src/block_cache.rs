//! A cache of large heap blocks behind the global allocator. A training step allocates
//! the same large buffers (logits, activations, gradients) every step; the system
//! allocator returns each to the kernel when it is freed and page-faults a fresh mapping
//! on the next step, which cost a third of a small GPT-2's step on two cores. Freed blocks
//! of at least [`MIN_BLOCK`] bytes are kept here, by size class, and handed out again.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

/// Smallest block the cache keeps.
pub const MIN_BLOCK: usize = 4 << 20;
/// Size classes are multiples of this.
const GRANULE: usize = 64 << 10;
/// Alignment of cached blocks (requests asking more bypass the cache).
const ALIGN: usize = 64;
/// Most blocks kept.
const SLOTS: usize = 64;
/// Most bytes kept.
pub const MAX_CACHED: usize = 3 << 30;

#[derive(Clone, Copy)]
struct Block {
    ptr: usize,
    size: usize,
    age: u64,
}

struct Cache {
    slots: [Option<Block>; SLOTS],
    bytes: usize,
    clock: u64,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache { slots: [None; SLOTS], bytes: 0, clock: 0 });

/// The size class of a request that the cache serves, `None` for small, over-aligned
/// or larger-than-the-cache ones.
pub fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size();
    ((MIN_BLOCK..=MAX_CACHED).contains(&size) && layout.align() <= ALIGN).then(|| size.next_multiple_of(GRANULE))
}

fn block_layout(size: usize) -> Layout {
    // Sizes are multiples of GRANULE and ALIGN is a power of two: always valid.
    Layout::from_size_align(size, ALIGN).expect("valid block layout")
}

fn lock() -> std::sync::MutexGuard<'static, Cache> {
    CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A block of `class` bytes: a cached one (contents undefined) or a fresh one from the
/// system (zeroed when `zeroed`); the flag says whether it came from the cache.
///
/// # Safety
/// `class` must come from [`class_of`].
pub unsafe fn take(class: usize, zeroed: bool) -> (*mut u8, bool) {
    {
        let mut c = lock();
        if let Some(slot) = c.slots.iter_mut().find(|s| s.is_some_and(|b| b.size == class)) {
            let b = slot.take().expect("found");
            c.bytes -= b.size;
            return (b.ptr as *mut u8, true);
        }
    }
    let layout = block_layout(class);
    // SAFETY: a non-zero size and a valid alignment.
    let p = unsafe { if zeroed { System.alloc_zeroed(layout) } else { System.alloc(layout) } };
    (p, false)
}

/// Keeps a freed block of `class` bytes, evicting the oldest ones past the limits.
///
/// # Safety
/// `ptr` must have come from [`take`] with the same `class` and not be used again.
pub unsafe fn give(ptr: *mut u8, class: usize) {
    // Every slot may be evicted, and the block itself freed when no slot is left.
    let mut evicted = [None; SLOTS + 1];
    {
        let mut c = lock();
        c.clock += 1;
        let age = c.clock;
        let mut n = 0;
        while c.bytes + class > MAX_CACHED || c.slots.iter().all(Option::is_some) {
            let Some(oldest) = c.slots.iter_mut().filter(|s| s.is_some()).min_by_key(|s| s.map_or(0, |b| b.age)) else {
                break;
            };
            let b = oldest.take().expect("some");
            c.bytes -= b.size;
            evicted[n] = Some(b);
            n += 1;
        }
        if let Some(free) = c.slots.iter_mut().find(|s| s.is_none()) {
            *free = Some(Block { ptr: ptr as usize, size: class, age });
            c.bytes += class;
        } else {
            evicted[n] = Some(Block { ptr: ptr as usize, size: class, age });
        }
    }
    for b in evicted.into_iter().flatten() {
        // SAFETY: every block was allocated by `take` with this layout.
        unsafe { System.dealloc(b.ptr as *mut u8, block_layout(b.size)) };
    }
}

/// Bytes held in the cache now.
pub fn cached_bytes() -> usize {
    lock().bytes
}
