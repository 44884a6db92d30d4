//! The error type of every index operation.

use std::path::{Path, PathBuf};

/// Everything that can go wrong building, searching, saving or opening an index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file was read but its contents are wrong (truncated, corrupt, inconsistent).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// An index on disk does not match what the caller expects (dimension, metric, provenance).
    #[error("{}: {msg}", path.display())]
    Mismatch { path: PathBuf, msg: String },
    /// A caller passed an argument the index cannot accept.
    #[error("{0}")]
    Invalid(String),
    /// The GPU failed or ran out of memory (CUDA builds).
    #[error("GPU: {0}")]
    Gpu(String),
}

impl IndexError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A format error in `path`.
    pub fn format(path: &Path, msg: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    /// An expectation mismatch for the index at `path`.
    pub fn mismatch(path: &Path, msg: impl Into<String>) -> Self {
        Self::Mismatch {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    /// An invalid argument.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(msg.into())
    }

    /// A GPU failure.
    pub fn gpu(msg: impl Into<String>) -> Self {
        Self::Gpu(msg.into())
    }
}

/// Result alias for index operations.
pub type Result<T> = std::result::Result<T, IndexError>;
