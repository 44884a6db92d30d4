//! Errors: what a request gets back (status + JSON message) and what loading the server can hit.

use std::path::PathBuf;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ralm_knn::knnlm::KnnError;
use ralm_realm::error::RealmError;

/// Seconds a client is told to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// An error answered to a request: a status and a message, as `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable reason.
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400: the request is malformed or out of range.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: no such index, datastore or translator.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 413: the body or a text in it is too large.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    /// 500: something failed on the server's side.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 503: too many requests in flight.
    pub fn overloaded() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in flight; retry later",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        resp
    }
}

impl From<RealmError> for ApiError {
    fn from(e: RealmError) -> Self {
        match e {
            RealmError::Invalid(m) | RealmError::Tokenizer(m) => Self::bad_request(m),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<KnnError> for ApiError {
    fn from(e: KnnError) -> Self {
        match e {
            KnnError::Invalid(m) => Self::bad_request(m),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<ralm_models::ModelError> for ApiError {
    fn from(e: ralm_models::ModelError) -> Self {
        match e {
            ralm_models::ModelError::Invalid(m) | ralm_models::ModelError::Tokenizer(m) => {
                Self::bad_request(m)
            }
            other => Self::internal(other.to_string()),
        }
    }
}

/// Why the server could not load what its config names.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The config file is unreadable or invalid.
    #[error("config {path}: {msg}")]
    Config { path: PathBuf, msg: String },
    /// A model, index, datastore or translator failed to load.
    #[error("loading {what} from {path}: {msg}")]
    Load {
        what: String,
        path: PathBuf,
        msg: String,
    },
}

impl LoadError {
    /// A failure loading `what` from `path`.
    pub fn load(
        what: impl Into<String>,
        path: &std::path::Path,
        e: impl std::fmt::Display,
    ) -> Self {
        Self::Load {
            what: what.into(),
            path: path.to_path_buf(),
            msg: e.to_string(),
        }
    }
}
