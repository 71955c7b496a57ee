//! The error type of monarch-data: every message names the file, and the byte offset
//! where the problem lies when there is one.

use std::path::PathBuf;

/// Everything that can go wrong while reading or writing a data set.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// The operating system refused an operation on a file or folder.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file's bytes do not follow its format.
    #[error("{path}: at byte {offset}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Where the problem starts.
        offset: u64,
        /// What is wrong.
        msg: String,
    },
    /// A file or folder that is not what the operation needs (unknown format, no images,
    /// sets that disagree), with an explanation.
    #[error("{path}: {msg}")]
    Invalid {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// An image that cannot be decoded.
    #[error("{path}: cannot decode image: {msg}")]
    Image {
        /// The image file (or the set and index of the image).
        path: PathBuf,
        /// The decoder's message.
        msg: String,
    },
    /// An argument out of range (batch size, sequence length, fractions), or a saved
    /// loader state that does not fit the data.
    #[error("{0}")]
    Config(String),
    /// A failure of the tensor library while building a batch.
    #[error(transparent)]
    Tensor(#[from] monarch_tensor::Error),
}

/// Result with the data [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// An [`Error::Format`] for `path` at byte `offset`.
    pub fn format(path: impl Into<PathBuf>, offset: u64, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), offset, msg: msg.into() }
    }

    /// An [`Error::Invalid`] for `path`.
    pub fn invalid(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Invalid { path: path.into(), msg: msg.into() }
    }
}

/// Converts a tensor-library I/O error (from `write_atomic`) into this crate's error.
pub(crate) fn from_tensor_io(e: monarch_tensor::Error) -> Error {
    match e {
        monarch_tensor::Error::Io { path, source } => Error::Io { path, source },
        other => Error::Tensor(other),
    }
}
