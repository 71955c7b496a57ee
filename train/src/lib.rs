//! The monarch command line and training binaries.

pub mod alloc_stats;
pub mod block_cache;
pub mod cli;
pub mod tasks;
pub mod trainer;
