//! CUDA backend of monarch: device and stream context, caching allocator,
//! NVRTC-compiled kernels and cuBLAS. This crate knows nothing of `Tensor`.
