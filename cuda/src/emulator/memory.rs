//! The emulated device's memory: host memory, 256-byte aligned as the driver's, filled
//! with 0xff bytes (NaN as f32 and bf16) when new, so that reading what no kernel wrote
//! shows. On Unix each block is mapped between two inaccessible guard pages and ends
//! where the second begins (to the 256-byte alignment), so a kernel that reads or writes
//! past either end of its allocation faults instead of touching a neighbour.

use crate::{CudaError, Result};

/// One block of emulated device memory.
pub struct HostMemory {
    ptr: std::ptr::NonNull<u8>,
    #[cfg(unix)]
    map: (*mut libc::c_void, usize),
    #[cfg(not(unix))]
    layout: std::alloc::Layout,
}

// SAFETY: the memory is owned; all access goes through the device's one launch thread
// or its synchronous copies.
unsafe impl Send for HostMemory {}
// SAFETY: a shared reference only gives the address.
unsafe impl Sync for HostMemory {}

fn out_of_memory(bytes: usize) -> CudaError {
    CudaError::Driver { op: "alloc", msg: format!("out of host memory for {bytes} bytes") }
}

impl HostMemory {
    /// A block of `bytes` bytes (at least 1), every byte 0xff.
    pub(crate) fn new(bytes: usize) -> Result<HostMemory> {
        let bytes = bytes.max(1);
        let m = Self::map(bytes)?;
        // SAFETY: the block holds `bytes` writable bytes.
        unsafe { std::ptr::write_bytes(m.ptr.as_ptr(), 0xff, bytes) };
        Ok(m)
    }

    #[cfg(unix)]
    fn map(bytes: usize) -> Result<HostMemory> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(4096);
        let body = bytes.checked_next_multiple_of(page).ok_or_else(|| out_of_memory(bytes))?;
        let len = body.checked_add(2 * page).ok_or_else(|| out_of_memory(bytes))?;
        // SAFETY: an anonymous private mapping of `len` bytes; nothing else refers to it.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(out_of_memory(bytes));
        }
        let base = map.cast::<u8>();
        // SAFETY: both guard pages lie inside the mapping.
        let guarded = unsafe {
            libc::mprotect(map, page, libc::PROT_NONE) == 0
                && libc::mprotect(base.add(page + body).cast(), page, libc::PROT_NONE) == 0
        };
        // The block ends at the second guard page, rounded down to 256 bytes.
        let start = page + body - bytes.next_multiple_of(256);
        let m = HostMemory {
            // SAFETY: `start` lies inside the mapping, which is not null.
            ptr: unsafe { std::ptr::NonNull::new_unchecked(base.add(start)) },
            map: (map, len),
        };
        if !guarded {
            return Err(CudaError::Driver { op: "alloc", msg: "cannot protect the guard pages".into() });
        }
        Ok(m)
    }

    #[cfg(not(unix))]
    fn map(bytes: usize) -> Result<HostMemory> {
        let layout = std::alloc::Layout::from_size_align(bytes, 256).map_err(|_| out_of_memory(bytes))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = std::ptr::NonNull::new(unsafe { std::alloc::alloc(layout) }).ok_or_else(|| out_of_memory(bytes))?;
        Ok(HostMemory { ptr, layout })
    }

    /// The address of the first byte.
    pub(crate) fn address(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping (or allocation) was made in `map` and is released once.
        #[cfg(unix)]
        unsafe {
            libc::munmap(self.map.0, self.map.1);
        }
        #[cfg(not(unix))]
        unsafe {
            std::alloc::dealloc(self.ptr.as_ptr(), self.layout)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_poisoned_and_end_at_their_guard_page() {
        for bytes in [1, 255, 256, 512, 4096, 5000, 1 << 20] {
            let m = HostMemory::new(bytes).unwrap();
            assert_eq!(m.address() % 256, 0, "{bytes}");
            // SAFETY: the block holds `bytes` bytes.
            let all = unsafe { std::slice::from_raw_parts(m.address() as *const u8, bytes) };
            assert!(all.iter().all(|&b| b == 0xff), "{bytes}");
            #[cfg(unix)]
            assert_eq!((m.address() as usize + bytes.next_multiple_of(256)) % 4096, 0, "{bytes}");
        }
    }
}
