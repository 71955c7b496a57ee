//! Page-locked host buffers that host-to-device copies are staged through, so that a
//! copy does not wait for the stream. A copy from ordinary (pageable) memory must either
//! wait for the copy to finish before its source may be freed, or be staged: here the data
//! is copied into a pinned slot, the device copy is queued from the slot, and an event
//! recorded after it marks when the slot may be written again. Copies larger than a slot
//! may be, or made when no slot can be had, are the caller's to do synchronously.

use crate::{CudaError, Result};
use cudarc::driver::{CudaContext, result, sys};
use std::sync::Arc;

/// The most slots kept.
const MAX_SLOTS: usize = 8;
/// The largest copy staged (bytes); a slot holds at most this much.
pub(crate) const MAX_STAGED: usize = 16 << 20;
/// The smallest slot allocated (bytes).
const MIN_SLOT: usize = 64 << 10;

/// One pinned buffer and the event after the last copy out of it.
struct Slot {
    ptr: *mut u8,
    cap: usize,
    event: sys::CUevent,
    /// When the slot was last used (a counter), to reuse the least recent first.
    used: u64,
}

/// The slots of one device.
pub(crate) struct Staging {
    ctx: Arc<CudaContext>,
    slots: Vec<Slot>,
    clock: u64,
}

// SAFETY: the slots' pointers and events belong to the device's context and are only
// touched under the device's lock on `Staging`.
unsafe impl Send for Staging {}

impl Staging {
    /// No slots yet (they are allocated at first use) for `ctx`'s copies.
    pub(crate) fn new(ctx: Arc<CudaContext>) -> Staging {
        Staging { ctx, slots: Vec::new(), clock: 0 }
    }

    /// Queues a copy of `bytes` to device address `dst` on `stream` through a pinned slot;
    /// `Ok(false)` when the copy is not staged (too large) and the caller must copy it
    /// synchronously.
    ///
    /// # Safety
    /// `dst` must hold `bytes.len()` bytes of the context's memory, and `stream` be the
    /// context's.
    pub(crate) unsafe fn copy(&mut self, stream: sys::CUstream, dst: sys::CUdeviceptr, bytes: &[u8]) -> Result<bool> {
        if bytes.is_empty() || bytes.len() > MAX_STAGED {
            return Ok(false);
        }
        self.ctx.bind_to_thread().map_err(CudaError::driver("bind_to_thread"))?;
        let at = self.slot_for(bytes.len())?;
        self.clock += 1;
        let slot = &mut self.slots[at];
        slot.used = self.clock;
        // SAFETY: the slot holds at least `bytes.len()` bytes and its last copy finished
        // (`slot_for`); the copy is queued before the event that guards the slot again.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), slot.ptr, bytes.len());
            let host = std::slice::from_raw_parts(slot.ptr, bytes.len());
            result::memcpy_htod_async(dst, host, stream).map_err(CudaError::driver("memcpy_htod"))?;
            result::event::record(slot.event, stream).map_err(CudaError::driver("event_record"))?;
        }
        Ok(true)
    }

    /// A slot of at least `len` bytes whose last copy has finished: a free one, a new one,
    /// or the least recently used one after waiting for it (reallocated when too small).
    fn slot_for(&mut self, len: usize) -> Result<usize> {
        let mut free = None;
        for (i, s) in self.slots.iter().enumerate() {
            // SAFETY: the event was created with the slot and is not destroyed yet.
            if s.cap >= len && finished(unsafe { result::event::query(s.event) })? {
                free = Some(i);
                break;
            }
        }
        if let Some(i) = free {
            return Ok(i);
        }
        let cap = len.next_power_of_two().clamp(MIN_SLOT, MAX_STAGED);
        if self.slots.len() < MAX_SLOTS {
            self.slots.push(Slot::new(cap)?);
            return Ok(self.slots.len() - 1);
        }
        let oldest = (0..self.slots.len()).min_by_key(|&i| self.slots[i].used).unwrap_or(0);
        let s = &mut self.slots[oldest];
        // SAFETY: as above.
        unsafe { result::event::synchronize(s.event) }.map_err(CudaError::driver("event_synchronize"))?;
        if s.cap < len {
            *s = Slot::new(cap)?;
        }
        Ok(oldest)
    }
}

/// Whether an event query says the recorded work finished (`NOT_READY`: not yet).
fn finished(q: std::result::Result<(), result::DriverError>) -> Result<bool> {
    match q {
        Ok(()) => Ok(true),
        Err(e) if e.0 == sys::cudaError_enum::CUDA_ERROR_NOT_READY => Ok(false),
        Err(e) => Err(CudaError::driver("event_query")(e)),
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // The slots are freed next (after this), which needs the context current.
        let _ = self.ctx.bind_to_thread();
    }
}

impl Slot {
    fn new(cap: usize) -> Result<Slot> {
        // SAFETY: a fresh allocation; its bytes are written before any copy reads them.
        let ptr = unsafe { result::malloc_host(cap, 0) }.map_err(CudaError::driver("malloc_host"))?;
        let event = match result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING) {
            Ok(e) => e,
            Err(e) => {
                // SAFETY: just allocated by malloc_host, never used.
                let _ = unsafe { result::free_host(ptr) };
                return Err(CudaError::driver("event_create")(e));
            }
        };
        Ok(Slot { ptr: ptr.cast(), cap, event, used: 0 })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: the copy out of the slot finishes before its memory is freed; both
        // handles are this slot's and freed once.
        unsafe {
            let _ = result::event::synchronize(self.event);
            let _ = result::event::destroy(self.event);
            let _ = result::free_host(self.ptr.cast());
        }
    }
}
