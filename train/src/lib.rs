//! The monarch command line and training binaries.

pub mod alloc_stats;
pub mod cli;
