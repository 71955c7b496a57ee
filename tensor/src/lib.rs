//! The monarch tensor: an n-dimensional array with a runtime dtype, a device, and a
//! strided layout so that transposes, slices and broadcasts are views without copies.
//!
//! CPU kernels run data-parallel over rayon; dense matrix products go through the
//! `gemm` crate. Every operation that can fail on user input returns [`Result`] with an
//! [`Error`] that names the operation and the shapes involved.

mod cpu;
mod cuda;
mod device;
mod dtype;
mod error;
mod layout;
mod masks;
pub mod ops;
mod safetensors_io;
mod shape;
mod storage;
mod tensor;

pub use cuda::{CudaStorage, cuda_device, set_allow_tf32, warm_kernel_cache};
pub use device::Device;
pub use dtype::{DType, Float, WithDType};
pub use error::{Error, Result};
pub use half::{bf16, f16};
pub use layout::Layout;
pub use masks::{BlockMask, FlatButterfly};
pub use monarch_cuda::ops::butterfly::BUTTERFLY_MAX_N;
pub use monarch_cuda::{KernelTime, MemoryStats, WarmedKernel, format_kernel_times};
pub use ops::{AdamW, BinaryOp, CmpOp, CrossEntropy, Init, LayerNormOut, ReduceOp, UnaryOp};
pub use ops::{AttentionGrads, AttentionOpts, AttentionOut, NaiveAttention, Scatterbrain};
pub use ops::{BlockSparsePlan, MONARCH_FUSED_ACTS, MonarchActOut, MonarchOut, MonarchShape};
pub use ops::{LinearCrossEntropy, linear_cross_entropy_chunk_rows};
pub use safetensors_io::{SafetensorsFile, load_safetensors, load_safetensors_where, save_safetensors, write_atomic};
pub use shape::{Dim, Dims, Shape};
pub use storage::{CpuStorage, Storage};
pub use tensor::Tensor;
