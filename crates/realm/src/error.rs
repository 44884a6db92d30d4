//! The error type shared by the corpus readers, chunker, metrics and retrievers.

use std::path::{Path, PathBuf};

/// Everything that can go wrong reading data, building passages or searching.
#[derive(Debug, thiserror::Error)]
pub enum RealmError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file was read but its contents are not what the reader expects.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// The search engine failed on an index directory.
    #[error("{}: search index: {msg}", path.display())]
    Index { path: PathBuf, msg: String },
    /// Tokenization failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A caller passed an argument that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// Loading or running a model (encoder or reader) failed.
    #[error(transparent)]
    Model(#[from] ralm_models::ModelError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// A nearest-neighbour index failed, or does not match what was expected of it.
    #[error(transparent)]
    Vectors(#[from] ralm_index::IndexError),
}

impl RealmError {
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

    /// A format error at a 1-based `line` of `path`.
    pub fn at_line(path: &Path, line: usize, msg: impl std::fmt::Display) -> Self {
        Self::format(path, format!("line {line}: {msg}"))
    }

    /// A search-engine error on the index at `path`.
    pub fn index(path: &Path, err: impl std::fmt::Display) -> Self {
        Self::Index {
            path: path.to_path_buf(),
            msg: err.to_string(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, RealmError>;
