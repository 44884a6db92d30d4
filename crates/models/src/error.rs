//! The error type shared by every model loader and runner.

use std::path::{Path, PathBuf};

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file was read but its contents are not what the loader expects.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Tokenization failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A caller passed an argument the model cannot accept.
    #[error("{0}")]
    Invalid(String),
}

impl ModelError {
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
}

/// Result alias for model operations.
pub type Result<T> = std::result::Result<T, ModelError>;
