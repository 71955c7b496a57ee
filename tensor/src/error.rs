//! The error type of every fallible tensor operation.

use crate::{DType, Device, Shape};
use std::path::PathBuf;

/// Everything that can go wrong in a tensor operation. Messages name the op and the
/// shapes, dtypes or devices involved.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// Two operands whose shapes must agree do not.
    #[error("{op}: shape mismatch between {lhs} and {rhs}")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// Left (or first) operand's shape.
        lhs: Shape,
        /// Right (or second) operand's shape.
        rhs: Shape,
    },
    /// Two shapes cannot be broadcast to a common shape.
    #[error("{op}: shapes {lhs} and {rhs} cannot be broadcast together")]
    Broadcast {
        /// The operation.
        op: &'static str,
        /// Left operand's shape.
        lhs: Shape,
        /// Right operand's shape.
        rhs: Shape,
    },
    /// Two operands have different dtypes.
    #[error("{op}: dtype mismatch between {lhs:?} and {rhs:?}")]
    DTypeMismatch {
        /// The operation.
        op: &'static str,
        /// Left operand's dtype.
        lhs: DType,
        /// Right operand's dtype.
        rhs: DType,
    },
    /// The operation does not support this dtype.
    #[error("{op}: unsupported dtype {dtype:?}")]
    UnsupportedDType {
        /// The operation.
        op: &'static str,
        /// The dtype given.
        dtype: DType,
    },
    /// Two operands live on different devices.
    #[error("{op}: device mismatch between {lhs:?} and {rhs:?}")]
    DeviceMismatch {
        /// The operation.
        op: &'static str,
        /// Left operand's device.
        lhs: Device,
        /// Right operand's device.
        rhs: Device,
    },
    /// A dimension index outside the tensor's rank.
    #[error("{op}: dimension {dim} out of range for a tensor of shape {shape}")]
    DimOutOfRange {
        /// The operation.
        op: &'static str,
        /// The dimension asked for (negative counts from the end).
        dim: i64,
        /// The tensor's shape.
        shape: Shape,
    },
    /// An index (into a dimension or a table) out of range.
    #[error("{op}: index {index} out of range for size {size}")]
    IndexOutOfRange {
        /// The operation.
        op: &'static str,
        /// The offending index.
        index: i64,
        /// The size it indexes.
        size: usize,
    },
    /// A buffer's length disagrees with the shape it is given.
    #[error("{op}: {len} elements do not fill shape {shape}")]
    ElementCount {
        /// The operation.
        op: &'static str,
        /// Elements provided.
        len: usize,
        /// The shape asked for.
        shape: Shape,
    },
    /// Any other invalid argument, with an explanation.
    #[error("{op}: {msg}")]
    Invalid {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A device that this build or machine cannot use.
    #[error("device {device} is not available: {msg}")]
    DeviceUnavailable {
        /// The device asked for.
        device: Device,
        /// Why it is not available.
        msg: String,
    },
    /// An I/O failure on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A host buffer larger than the machine can hold now.
    #[error("{op}: cannot allocate {elems} elements of {elem_bytes} bytes ({gb:.1} GB) on the host", gb = *.elems as f64 * *.elem_bytes as f64 / 1e9)]
    OutOfMemory {
        /// The operation.
        op: &'static str,
        /// Elements asked for.
        elems: usize,
        /// Bytes per element.
        elem_bytes: usize,
    },
    /// A malformed or unsupported safetensors file.
    #[error("{path}: not a valid safetensors file: {msg}")]
    SafeTensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

/// Result with the tensor [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Invalid { op, msg: msg.into() }
    }
}

/// Returns `Err(Error::Invalid)` with a formatted message.
#[macro_export]
macro_rules! bail {
    ($op:expr, $($arg:tt)*) => {
        return Err($crate::Error::Invalid { op: $op, msg: format!($($arg)*) })
    };
}
