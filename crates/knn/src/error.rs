//! The error type of datastore building, opening and kNN-LM / kNN-MT decoding.

use std::path::{Path, PathBuf};

/// Everything that can go wrong with a datastore or its use.
#[derive(Debug, thiserror::Error)]
pub enum KnnError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file was read but its contents are wrong.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A datastore does not match the model, tokenizer or settings it is used with.
    #[error("{}: {msg}", path.display())]
    Mismatch { path: PathBuf, msg: String },
    /// The index failed.
    #[error(transparent)]
    Index(#[from] ralm_index::IndexError),
    /// The language model or tokenizer failed.
    #[error(transparent)]
    Model(#[from] ralm_models::ModelError),
    /// A caller passed an argument that cannot be used.
    #[error("{0}")]
    Invalid(String),
}

impl KnnError {
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

    /// A mismatch between the datastore at `path` and its use.
    pub fn mismatch(path: &Path, msg: impl Into<String>) -> Self {
        Self::Mismatch {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}

impl From<candle_core::Error> for KnnError {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(e.into())
    }
}

/// Result alias for datastore operations.
pub type Result<T> = std::result::Result<T, KnnError>;
