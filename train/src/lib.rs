//! The monarch command line and training binaries.

pub mod cli;
