//! A caching allocator: device memory is requested in size buckets and, when a buffer
//! is dropped, kept for the next request of its bucket instead of being freed, so a
//! training step that allocates the same sizes as the last one touches the driver only
//! in its first step. Counters report the bytes in use, the peak, and the bytes cached.
//!
//! Reuse is safe because every kernel of a device runs on its one stream: work that
//! used a block is ordered before any later work that reuses it.

use crate::Result;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Where the blocks come from: the driver on a GPU, a fake in tests.
pub trait RawAlloc: Send + Sync {
    /// One allocation; dropping it returns the memory to the source.
    type Block: Send;
    /// Allocates `bytes` bytes.
    fn alloc(&self, bytes: usize) -> Result<Self::Block>;
}

/// Memory counters of an allocator, in bytes (bucketed sizes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Held by live buffers.
    pub current: usize,
    /// The largest `current` since creation or the last [`CachingAllocator::reset_peak`].
    pub peak: usize,
    /// Freed by buffers and kept for reuse.
    pub cached: usize,
    /// Requests served from the cache.
    pub hits: u64,
    /// Requests that went to the source.
    pub misses: u64,
}

/// The bucket (allocation size) for a request of `bytes`: multiples of 512 bytes up to
/// 1 MiB, above that eight buckets per power of two (at most 12.5% slack).
pub fn bucket(bytes: usize) -> usize {
    const SMALL: usize = 512;
    const LARGE: usize = 1 << 20;
    let bytes = bytes.max(1);
    if bytes <= LARGE {
        return bytes.div_ceil(SMALL) * SMALL;
    }
    let step = (bytes.next_power_of_two() / 16).max(SMALL);
    bytes.div_ceil(step) * step
}

struct State<B> {
    free: BTreeMap<usize, Vec<B>>,
    stats: MemoryStats,
}

/// A size-bucketed cache in front of a [`RawAlloc`].
pub struct CachingAllocator<R: RawAlloc> {
    raw: R,
    state: Mutex<State<R::Block>>,
}

/// A block lent by a [`CachingAllocator`]; dropping it hands the block back to the cache.
pub struct Pooled<R: RawAlloc> {
    block: Option<R::Block>,
    size: usize,
    pool: Arc<CachingAllocator<R>>,
}

impl<R: RawAlloc> CachingAllocator<R> {
    /// A cache in front of `raw`.
    pub fn new(raw: R) -> Arc<Self> {
        Arc::new(CachingAllocator {
            raw,
            state: Mutex::new(State { free: BTreeMap::new(), stats: MemoryStats::default() }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<R::Block>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A block of at least `bytes` bytes: a cached one of the same bucket when there is
    /// one, else a new one. When the source fails, the cache is emptied and the
    /// request tried once more before the error is returned.
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<Pooled<R>> {
        let size = bucket(bytes);
        let cached = {
            let mut st = self.lock();
            let block = st.free.get_mut(&size).and_then(Vec::pop);
            if block.is_some() {
                st.stats.cached -= size;
                st.stats.hits += 1;
            } else {
                st.stats.misses += 1;
            }
            block
        };
        let block = match cached {
            Some(b) => b,
            None => match self.raw.alloc(size) {
                Ok(b) => b,
                Err(_) => {
                    self.empty_cache();
                    self.raw.alloc(size)?
                }
            },
        };
        let mut st = self.lock();
        st.stats.current += size;
        st.stats.peak = st.stats.peak.max(st.stats.current);
        Ok(Pooled { block: Some(block), size, pool: self.clone() })
    }

    /// Frees every cached block back to the source.
    pub fn empty_cache(&self) {
        let free = {
            let mut st = self.lock();
            st.stats.cached = 0;
            std::mem::take(&mut st.free)
        };
        drop(free);
    }

    /// The counters now.
    pub fn stats(&self) -> MemoryStats {
        self.lock().stats
    }

    /// Restarts the peak from the current use.
    pub fn reset_peak(&self) {
        let mut st = self.lock();
        st.stats.peak = st.stats.current;
    }
}

impl<R: RawAlloc> Pooled<R> {
    /// The block.
    pub fn block(&self) -> &R::Block {
        self.block.as_ref().expect("a pooled block is present until drop")
    }

    /// The bucket size actually reserved, in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
}

impl<R: RawAlloc> Drop for Pooled<R> {
    fn drop(&mut self) {
        if let Some(block) = self.block.take() {
            let mut st = self.pool.lock();
            st.stats.current -= self.size;
            st.stats.cached += self.size;
            st.free.entry(self.size).or_default().push(block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts live bytes at the source; fails above a limit.
    struct Fake {
        live: Arc<AtomicUsize>,
        limit: usize,
    }

    struct FakeBlock {
        bytes: usize,
        live: Arc<AtomicUsize>,
    }

    impl Drop for FakeBlock {
        fn drop(&mut self) {
            self.live.fetch_sub(self.bytes, Ordering::SeqCst);
        }
    }

    impl RawAlloc for Fake {
        type Block = FakeBlock;
        fn alloc(&self, bytes: usize) -> Result<FakeBlock> {
            if self.live.load(Ordering::SeqCst) + bytes > self.limit {
                return Err(crate::CudaError::Driver { op: "alloc", msg: "out of memory".into() });
            }
            self.live.fetch_add(bytes, Ordering::SeqCst);
            Ok(FakeBlock { bytes, live: self.live.clone() })
        }
    }

    fn fake(limit: usize) -> (Arc<CachingAllocator<Fake>>, Arc<AtomicUsize>) {
        let live = Arc::new(AtomicUsize::new(0));
        (CachingAllocator::new(Fake { live: live.clone(), limit }), live)
    }

    #[test]
    fn buckets_round_up_with_bounded_slack() {
        assert_eq!(bucket(0), 512);
        assert_eq!(bucket(1), 512);
        assert_eq!(bucket(512), 512);
        assert_eq!(bucket(513), 1024);
        assert_eq!(bucket(1 << 20), 1 << 20);
        assert_eq!(bucket((1 << 20) + 1), (1 << 20) + (1 << 17));
        assert_eq!(bucket(3 << 20), 3 << 20);
        for bytes in [1usize, 700, 4097, 1_000_001, 1_048_577, 5_000_000, 123_456_789] {
            let b = bucket(bytes);
            assert!(b >= bytes && (b - bytes) * 8 <= bytes.max(512 * 8), "{bytes} -> {b}");
            assert_eq!(bucket(b), b, "a bucket size is its own bucket");
        }
    }

    #[test]
    fn freed_blocks_are_reused_across_steps_and_counted() {
        let (pool, live) = fake(1 << 30);
        for step in 0..3 {
            let a = pool.alloc(1000).unwrap();
            let b = pool.alloc(3 << 20).unwrap();
            assert_eq!(a.size(), 1024);
            let s = pool.stats();
            assert_eq!(s.current, 1024 + (3 << 20));
            assert_eq!(s.cached, 0, "step {step}");
            drop((a, b));
        }
        let s = pool.stats();
        assert_eq!((s.hits, s.misses), (4, 2), "only the first step reaches the source");
        assert_eq!((s.current, s.cached, s.peak), (0, 1024 + (3 << 20), 1024 + (3 << 20)));
        assert_eq!(live.load(Ordering::SeqCst), 1024 + (3 << 20));
        pool.empty_cache();
        assert_eq!(live.load(Ordering::SeqCst), 0);
        assert_eq!(pool.stats().cached, 0);
    }

    #[test]
    fn peak_tracks_the_high_water_mark_and_resets() {
        let (pool, _) = fake(1 << 30);
        let a = pool.alloc(4096).unwrap();
        let b = pool.alloc(4096).unwrap();
        drop(b);
        assert_eq!(pool.stats().peak, 8192);
        pool.reset_peak();
        assert_eq!(pool.stats().peak, 4096);
        drop(a);
        assert_eq!(pool.stats().current, 0);
    }

    #[test]
    fn a_failed_request_empties_the_cache_and_retries() {
        let (pool, live) = fake(8192);
        drop(pool.alloc(4096).unwrap());
        drop(pool.alloc(2048).unwrap());
        assert_eq!(live.load(Ordering::SeqCst), 6144);
        // The 4096 bucket is served from the cache.
        let a = pool.alloc(4096).unwrap();
        // 4096 fresh bytes do not fit beside 4096 live + 2048 cached: the cache is dropped, then they fit.
        let b = pool.alloc(4000).unwrap();
        assert_eq!(live.load(Ordering::SeqCst), 4096 + 4096);
        assert!(pool.alloc(1).is_err(), "still full: the error comes back");
        drop((a, b));
    }
}
