//! Device buffers: untyped allocations tagged with their element type, and the views
//! (buffer, element offset, length) that ops read and write.

use crate::alloc::Pooled;
use crate::device::{CudaDevice, DeviceAlloc};
use crate::dtype::{as_bytes, as_bytes_mut};
use crate::{CudaError, DType, Element, Result};
use std::sync::Arc;

/// `len` elements of `dtype` in device memory, from the device's caching allocator
/// (dropping the buffer returns its block to the cache).
pub struct DeviceBuffer {
    device: Arc<CudaDevice>,
    dtype: DType,
    len: usize,
    ptr: u64,
    mem: Pooled<DeviceAlloc>,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({:?} x {} on cuda:{})", self.dtype, self.len, self.device.ordinal())
    }
}

impl DeviceBuffer {
    pub(crate) fn new(device: Arc<CudaDevice>, dtype: DType, len: usize, mem: Pooled<DeviceAlloc>) -> Self {
        let ptr = device.address(mem.block());
        DeviceBuffer { device, dtype, len, ptr, mem }
    }

    /// The device it lives on.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes reserved for it (its allocator bucket).
    pub fn reserved_bytes(&self) -> usize {
        self.mem.size()
    }

    /// The raw device address of element 0.
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// The whole buffer as a view.
    pub fn view(&self) -> View<'_> {
        View { buf: self, offset: 0, len: self.len }
    }

    /// Elements `offset .. offset + len` as a view.
    pub fn slice(&self, offset: usize, len: usize) -> Result<View<'_>> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            crate::error::bail!("slice", "elements {offset}..{} of a buffer of {}", offset + len, self.len);
        }
        Ok(View { buf: self, offset, len })
    }

    /// The whole buffer as a writable view.
    pub fn view_mut(&mut self) -> ViewMut<'_> {
        let len = self.len;
        ViewMut { buf: self, offset: 0, len }
    }

    /// Elements `offset .. offset + len` as a writable view.
    pub fn slice_mut(&mut self, offset: usize, len: usize) -> Result<ViewMut<'_>> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            crate::error::bail!("slice_mut", "elements {offset}..{} of a buffer of {}", offset + len, self.len);
        }
        Ok(ViewMut { buf: self, offset, len })
    }

    /// Sets every byte to zero.
    pub fn fill_zero(&mut self) -> Result<()> {
        self.device.memset_zero(self.ptr, self.len * self.dtype.size())
    }

    /// Copies `data` (same dtype and length) into the buffer.
    pub fn copy_from_host<T: Element>(&mut self, data: &[T]) -> Result<()> {
        self.check_host::<T>(data.len(), "copy_from_host")?;
        self.device.copy_to_device(self.ptr, as_bytes(data))
    }

    /// The buffer's elements on the host (waits for queued work).
    pub fn to_host<T: Element>(&self) -> Result<Vec<T>> {
        self.view().to_host()
    }

    fn check_host<T: Element>(&self, len: usize, op: &'static str) -> Result<()> {
        if T::DTYPE != self.dtype {
            return Err(CudaError::DType { op, expected: self.dtype, got: T::DTYPE });
        }
        if len != self.len {
            crate::error::bail!(op, "host length {len} for a buffer of {}", self.len);
        }
        Ok(())
    }
}

/// Read access to `len` elements of a buffer from element `offset` on.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    buf: &'a DeviceBuffer,
    offset: usize,
    len: usize,
}

/// Write access to `len` elements of a buffer from element `offset` on.
#[derive(Debug)]
pub struct ViewMut<'a> {
    buf: &'a mut DeviceBuffer,
    offset: usize,
    len: usize,
}

impl View<'_> {
    /// The viewed elements on the host (waits for queued work).
    pub fn to_host<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype() {
            return Err(CudaError::DType { op: "to_host", expected: self.dtype(), got: T::DTYPE });
        }
        // SAFETY: `Element` types are plain data, for which all-zero bytes are a valid value.
        let mut out: Vec<T> = vec![unsafe { std::mem::zeroed() }; self.len];
        // The view lies inside the buffer (checked when it was made) and holds the bytes.
        self.buf.device.copy_to_host(self.ptr(), as_bytes_mut(&mut out))?;
        Ok(out)
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.buf.dtype
    }
    /// Number of elements in view.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The device address of the view's first element.
    pub fn ptr(&self) -> u64 {
        self.buf.ptr + (self.offset * self.buf.dtype.size()) as u64
    }
    pub(crate) fn device(&self) -> &Arc<CudaDevice> {
        &self.buf.device
    }
}

impl ViewMut<'_> {
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.buf.dtype
    }
    /// Number of elements in view.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The device address of the view's first element.
    pub fn ptr(&self) -> u64 {
        self.buf.ptr + (self.offset * self.buf.dtype.size()) as u64
    }
    pub(crate) fn device(&self) -> &Arc<CudaDevice> {
        &self.buf.device
    }
}

/// Checks shared by every op: dtype, minimum length and device of each operand.
pub(crate) struct Check {
    pub op: &'static str,
}

impl Check {
    /// `v` must have `dtype` and at least `len` elements.
    pub fn input(&self, name: &str, v: &View<'_>, dtype: DType, len: usize) -> Result<()> {
        self.one(name, v.dtype(), v.len(), dtype, len)
    }
    /// `v` must have `dtype` and at least `len` elements.
    pub fn output(&self, name: &str, v: &ViewMut<'_>, dtype: DType, len: usize) -> Result<()> {
        self.one(name, v.dtype(), v.len(), dtype, len)
    }
    fn one(&self, name: &str, got: DType, have: usize, dtype: DType, len: usize) -> Result<()> {
        if got != dtype {
            return Err(CudaError::DType { op: self.op, expected: dtype, got });
        }
        if have < len {
            crate::error::bail!(self.op, "{name} has {have} elements, needs {len}");
        }
        Ok(())
    }
    /// All devices must be `dev`.
    pub fn same_device<'d>(
        &self,
        dev: &Arc<CudaDevice>,
        others: impl IntoIterator<Item = &'d Arc<CudaDevice>>,
    ) -> Result<()> {
        if others.into_iter().all(|d| Arc::ptr_eq(d, dev)) {
            Ok(())
        } else {
            Err(CudaError::DeviceMismatch { op: self.op })
        }
    }
}
