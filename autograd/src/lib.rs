//! Tape-based reverse-mode automatic differentiation over `monarch_tensor::Tensor`.
