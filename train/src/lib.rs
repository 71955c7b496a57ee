//! The monarch command line and training binaries.
