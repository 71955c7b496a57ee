//! The [`Tensor`] type: shared storage plus a strided layout.

use crate::cpu::map::{copy_into, map1};
use crate::storage::{CpuStorage, Storage};
use crate::{DType, Device, Error, Layout, Result, Shape, WithDType, with_cpu_vec};
use half::{bf16, f16};
use std::sync::Arc;

/// An n-dimensional array. Cloning is cheap: clones and views (transpose, narrow,
/// broadcast, contiguous reshape) share one buffer behind an `Arc`. Tensors are
/// immutable; operations return new tensors.
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    layout: Layout,
}

impl Tensor {
    /// A contiguous tensor owning `storage`.
    pub(crate) fn from_cpu(storage: CpuStorage, shape: impl Into<Shape>) -> Self {
        Tensor { storage: Arc::new(Storage::Cpu(storage)), layout: Layout::contiguous(shape) }
    }

    /// A tensor over `storage` with `layout`.
    pub(crate) fn from_storage(storage: Storage, layout: Layout) -> Self {
        Tensor { storage: Arc::new(storage), layout }
    }

    /// The buffer behind the tensor.
    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The buffer, mutably, when no other tensor shares it.
    pub(crate) fn storage_mut(&mut self) -> Option<&mut Storage> {
        Arc::get_mut(&mut self.storage)
    }

    /// A view of the same storage under another layout.
    pub(crate) fn with_layout(&self, layout: Layout) -> Self {
        Tensor { storage: self.storage.clone(), layout }
    }

    /// A CPU tensor of the given shape from a vector in row-major order.
    pub fn from_vec<T: WithDType>(data: Vec<T>, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::ElementCount { op: "from_vec", len: data.len(), shape });
        }
        Ok(Self::from_cpu(T::into_storage(data), shape))
    }

    /// A CPU tensor copied from a slice in row-major order.
    pub fn from_slice<T: WithDType>(data: &[T], shape: impl Into<Shape>) -> Result<Self> {
        Self::from_vec(data.to_vec(), shape)
    }

    /// A zero-filled tensor on `device` (written there, not copied from the host).
    pub fn zeros_on(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Self::zeros(shape, dtype)),
            Device::Cuda(i) => Self::cuda_zeros(shape.into(), dtype, i),
        }
    }

    /// A tensor filled with `value` (converted to `dtype` as [`Tensor::full`] converts it)
    /// on `device`, written there by a kernel: on a GPU nothing is built on the host or
    /// copied from it.
    pub fn full_on(value: f64, shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Self::full(value, shape, dtype)),
            Device::Cuda(i) => Self::cuda_full(value, shape.into(), dtype, i),
        }
    }

    /// A 0-dimensional tensor holding `v`.
    pub fn scalar<T: WithDType>(v: T) -> Self {
        Self::from_cpu(T::into_storage(vec![v]), ())
    }

    /// A tensor filled with `value` (converted to `dtype`).
    pub fn full(value: f64, shape: impl Into<Shape>, dtype: DType) -> Self {
        let shape = shape.into();
        let n = shape.elem_count();
        let s = match dtype {
            DType::U8 => CpuStorage::U8(vec![value as u8; n]),
            DType::I64 => CpuStorage::I64(vec![value as i64; n]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::from_f64(value); n]),
            DType::F16 => CpuStorage::F16(vec![f16::from_f64(value); n]),
            DType::F32 => CpuStorage::F32(vec![value as f32; n]),
            DType::F64 => CpuStorage::F64(vec![value; n]),
        };
        Self::from_cpu(s, shape)
    }

    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Self {
        let shape = shape.into();
        Self::from_cpu(CpuStorage::zeros(dtype, shape.elem_count()), shape)
    }

    /// A tensor of ones.
    pub fn ones(shape: impl Into<Shape>, dtype: DType) -> Self {
        Self::full(1.0, shape, dtype)
    }

    /// Zeros with this tensor's shape and dtype.
    pub fn zeros_like(&self) -> Self {
        Self::zeros(self.shape(), self.dtype())
    }

    /// Ones with this tensor's shape and dtype.
    pub fn ones_like(&self) -> Self {
        Self::ones(self.shape(), self.dtype())
    }

    /// `start, start + step, ...` up to (excluding) `end`, as a 1-D tensor.
    pub fn arange(start: f64, end: f64, step: f64, dtype: DType) -> Result<Self> {
        if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
            crate::bail!("arange", "invalid range {start}..{end} step {step}");
        }
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        let v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
        Tensor::from_vec(v, n)?.to_dtype(dtype)
    }

    /// The logical shape.
    pub fn shape(&self) -> &Shape {
        self.layout.shape()
    }

    /// The logical dimensions.
    pub fn dims(&self) -> &[usize] {
        self.layout.shape().dims()
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape().rank()
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape().elem_count()
    }

    /// The extent of dimension `dim` (negative counts from the end).
    pub fn dim(&self, dim: impl crate::Dim) -> Result<usize> {
        self.shape().size(dim, "dim")
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    /// The device holding the data.
    pub fn device(&self) -> Device {
        self.storage.device()
    }

    /// The strided layout over the storage.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether the elements are dense and row-major.
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    /// Whether two tensors are views of the same buffer.
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// The host buffer, or an error naming `op` when the tensor is on another device.
    pub(crate) fn cpu(&self, op: &'static str) -> Result<&CpuStorage> {
        match &*self.storage {
            Storage::Cpu(s) => Ok(s),
            Storage::Cuda(_) => Err(Error::DeviceUnavailable {
                device: self.device(),
                msg: format!("{op} has no kernel for this device yet; move the tensor with to_device(Device::Cpu)"),
            }),
        }
    }

    /// The host elements and layout when the dtype is `T`.
    pub(crate) fn cpu_slice<T: WithDType>(&self, op: &'static str) -> Result<&[T]> {
        T::slice(self.cpu(op)?).ok_or(Error::DTypeMismatch { op, lhs: self.dtype(), rhs: T::DTYPE })
    }

    /// The elements in row-major order (copied to the host); the dtype must be `T`.
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        if self.device() != Device::Cpu {
            return self.download()?.to_vec();
        }
        let src = self.cpu_slice::<T>("to_vec")?;
        let mut out = vec![T::default(); self.elem_count()];
        copy_into(src, &self.layout, &mut out);
        Ok(out)
    }

    /// The elements converted to f64, whatever the dtype (copied to the host).
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        self.to_device(Device::Cpu)?.to_dtype(DType::F64)?.to_vec()
    }

    /// The elements converted to f32, whatever the dtype (copied to the host).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        self.to_device(Device::Cpu)?.to_dtype(DType::F32)?.to_vec()
    }

    /// The single element of a one-element tensor, as f64.
    pub fn to_scalar_f64(&self) -> Result<f64> {
        if self.elem_count() != 1 {
            crate::bail!("to_scalar", "tensor of shape {} is not a single element", self.shape());
        }
        Ok(self.to_vec_f64()?[0])
    }

    /// The single elements of one-element tensors, as f64, in order. The ones on a GPU
    /// are gathered there and copied back together, so the host waits for each device
    /// once rather than once per tensor; on a GPU they pass through f32 (device
    /// tensors have no f64).
    pub fn read_scalars(ts: &[&Tensor]) -> Result<Vec<f64>> {
        let mut out = vec![0.0; ts.len()];
        let mut devices: Vec<Device> = Vec::new();
        for (i, t) in ts.iter().enumerate() {
            if t.device() == Device::Cpu {
                out[i] = t.to_scalar_f64()?;
            } else if t.elem_count() != 1 {
                crate::bail!("read_scalars", "tensor of shape {} is not a single element", t.shape());
            } else if !devices.contains(&t.device()) {
                devices.push(t.device());
            }
        }
        for d in devices {
            let at: Vec<usize> = (0..ts.len()).filter(|&i| ts[i].device() == d).collect();
            let flat: Vec<Tensor> =
                at.iter().map(|&i| ts[i].to_dtype(DType::F32)?.reshape(1)).collect::<Result<_>>()?;
            let values = Tensor::cat(&flat.iter().collect::<Vec<_>>(), 0)?.to_vec_f32()?;
            for (&i, v) in at.iter().zip(values) {
                out[i] = f64::from(v);
            }
        }
        Ok(out)
    }

    /// A copy with elements converted to `dtype` (a cheap clone when already `dtype`).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        if let Storage::Cuda(_) = &*self.storage {
            return self.cuda_copy(dtype);
        }
        let src = self.cpu("to_dtype")?;
        let l = &self.layout;
        // f32 and bf16 directly (a bf16 model on the CPU converts every step); the rest
        // through f64, which holds every value of every dtype exactly (one rounding).
        let out = match (src, dtype) {
            (CpuStorage::F32(v), DType::BF16) => CpuStorage::BF16(map1(v, l, bf16::from_f32)),
            (CpuStorage::BF16(v), DType::F32) => CpuStorage::F32(map1(v, l, bf16::to_f32)),
            _ => with_cpu_vec!(src, v => convert(v, l, dtype)),
        };
        Ok(Tensor::from_cpu(out, self.shape()))
    }

    /// The tensor on `device` (a cheap clone when already there), contiguous. Moving to
    /// a GPU opens it on first use; without a driver or device this is
    /// [`Error::DeviceUnavailable`] saying why. f64 has no CUDA storage.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        match (self.device(), device) {
            (from, to) if from == to => Ok(self.clone()),
            (Device::Cpu, Device::Cuda(i)) => self.upload(i),
            (Device::Cuda(_), Device::Cpu) => self.download(),
            (Device::Cuda(_), Device::Cuda(i)) => self.download()?.upload(i),
            (Device::Cpu, Device::Cpu) => unreachable!("equal devices returned above"),
        }
    }

    /// A contiguous tensor with the same elements (a cheap clone when already contiguous).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        self.copy()
    }

    /// A contiguous copy of the elements in a buffer of its own.
    fn copy(&self) -> Result<Tensor> {
        if let Storage::Cuda(_) = &*self.storage {
            return self.cuda_copy(self.dtype());
        }
        let src = self.cpu("contiguous")?;
        let n = self.elem_count();
        let out = with_cpu_vec!(src, v => {
            let mut out = vec![Default::default(); n];
            copy_into(v, &self.layout, &mut out);
            CpuStorage::from(out)
        });
        Ok(Tensor::from_cpu(out, self.shape()))
    }

    /// Makes the buffer this tensor's own, holding exactly its elements in order, for a
    /// write in place: a copy when another tensor shares it or this one views only part
    /// of it, so views taken before keep their values.
    pub(crate) fn own_buffer(&mut self) -> Result<()> {
        let whole = self.layout.contiguous_range() == Some(0..self.storage_len());
        if !whole || Arc::get_mut(&mut self.storage).is_none() {
            *self = self.copy()?;
        }
        Ok(())
    }

    /// Mutable access to the elements for in-place updates (optimisers). Copies first if
    /// the buffer is shared with another tensor or the layout is not the whole buffer.
    pub fn as_mut_slice<T: WithDType>(&mut self) -> Result<&mut [T]> {
        if self.dtype() != T::DTYPE {
            return Err(Error::DTypeMismatch { op: "as_mut_slice", lhs: self.dtype(), rhs: T::DTYPE });
        }
        self.cpu("as_mut_slice")?;
        let whole = self.layout.contiguous_range() == Some(0..self.storage_len());
        if !whole || Arc::get_mut(&mut self.storage).is_none() {
            *self = Tensor::from_vec(self.to_vec::<T>()?, self.shape())?;
        }
        let Some(Storage::Cpu(s)) = Arc::get_mut(&mut self.storage) else {
            unreachable!("storage was made unique above")
        };
        Ok(T::slice_mut(s).expect("dtype checked above"))
    }

    fn storage_len(&self) -> usize {
        match &*self.storage {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }
}

impl<T: WithDType> From<Vec<T>> for CpuStorage {
    fn from(v: Vec<T>) -> Self {
        T::into_storage(v)
    }
}

fn convert<T: WithDType>(v: &[T], l: &Layout, dtype: DType) -> CpuStorage {
    fn go<T: WithDType, U: WithDType>(v: &[T], l: &Layout) -> CpuStorage {
        U::into_storage(map1(v, l, |x| U::from_f64(x.as_f64())))
    }
    match dtype {
        DType::U8 => go::<T, u8>(v, l),
        DType::I64 => go::<T, i64>(v, l),
        DType::BF16 => go::<T, bf16>(v, l),
        DType::F16 => go::<T, f16>(v, l),
        DType::F32 => go::<T, f32>(v, l),
        DType::F64 => go::<T, f64>(v, l),
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor[{}, {}, {}]", self.shape(), self.dtype(), self.device())?;
        if let Ok(v) = self.to_vec_f64() {
            let shown: Vec<String> = v.iter().take(8).map(|x| format!("{x:.4}")).collect();
            write!(f, " [{}{}]", shown.join(", "), if v.len() > 8 { ", ..." } else { "" })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f32 to bf16 and back directly round as the path through f64 does (once, to the
    /// nearest, ties to even), for every kind of value, in views too.
    #[test]
    fn f32_and_bf16_convert_as_through_f64() {
        let mut bits: Vec<u32> = (0..4096u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
        // Ties both ways, the largest finite values, infinities, zeros, subnormals.
        bits.extend([0x3f80_8000, 0x3f81_8000, 0x7f7f_ffff, 0xff7f_ffff, 0x7f80_0000, 0x8000_0000, 0x0000_0001]);
        let x = Tensor::from_vec(bits.iter().map(|&b| f32::from_bits(b)).collect::<Vec<_>>(), [bits.len()]).unwrap();
        let same = |a: &Tensor, b: &Tensor| {
            let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
        };
        // The whole vector, and a transposed (strided) view of its first 64 × 64.
        let view = x.narrow(0, 0, 64 * 64).unwrap().reshape([64, 64]).unwrap().t().unwrap();
        assert!(!view.is_contiguous());
        for x in [x, view] {
            let direct = x.to_dtype(DType::BF16).unwrap();
            assert!(same(&direct, &x.to_dtype(DType::F64).unwrap().to_dtype(DType::BF16).unwrap()));
            assert!(same(&direct.to_dtype(DType::F32).unwrap(), &direct.to_dtype(DType::F64).unwrap()));
        }
    }

    #[test]
    fn read_scalars_keeps_the_order_and_rejects_longer_tensors() {
        let (a, b, c) = (
            Tensor::scalar(1.5f64),
            Tensor::from_vec(vec![-7i64], 1).unwrap(),
            Tensor::full(0.25, [1, 1], DType::BF16),
        );
        assert_eq!(Tensor::read_scalars(&[&a, &b, &c]).unwrap(), vec![1.5, -7.0, 0.25]);
        assert!(Tensor::read_scalars(&[]).unwrap().is_empty());
        assert!(Tensor::read_scalars(&[&a, &Tensor::zeros(2, DType::F32)]).is_err());
    }
}
