//! Request and response bodies of the JSON endpoints, and the checks every request passes
//! before any model work. Request types refuse unknown fields.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use ralm_realm::ask::{AskResult, RetrieverKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::Limits;
use crate::error::ApiError;

/// A JSON body whose rejections are [`ApiError`]s: 413 when over the body limit, else 400
/// with serde's message (which names the field and position).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rej) => Err(rejection(rej)),
        }
    }
}

fn rejection(rej: JsonRejection) -> ApiError {
    if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(rej.body_text())
    } else {
        ApiError::bad_request(rej.body_text())
    }
}

fn default_k() -> usize {
    5
}

/// `POST /v1/retrieve`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrieveRequest {
    /// The query text.
    pub query: String,
    /// Passages to return.
    #[serde(default = "default_k")]
    pub k: usize,
    /// QA index name (default: the first configured).
    #[serde(default)]
    pub index: Option<String>,
    /// `hybrid` (default), `dense` or `bm25`.
    #[serde(default)]
    pub retriever: Option<String>,
}

/// One retrieved passage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// Passage id.
    pub id: String,
    /// Article title.
    pub title: String,
    /// Passage text.
    pub text: String,
    /// Dense inner product with the query.
    pub score: f32,
}

/// Answer of `POST /v1/retrieve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrieveResponse {
    /// Index searched.
    pub index: String,
    /// Its snapshot version.
    pub version: u64,
    /// The query as used (possibly truncated).
    pub query: String,
    /// Passages, best first.
    pub hits: Vec<Hit>,
    /// E.g. that the query was truncated.
    pub warnings: Vec<String>,
}

/// `POST /v1/ask`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskRequest {
    /// The question.
    pub question: String,
    /// Passages to read.
    #[serde(default = "default_k")]
    pub k: usize,
    /// QA index name (default: the first configured).
    #[serde(default)]
    pub index: Option<String>,
    /// `hybrid` (default), `dense` or `bm25`.
    #[serde(default)]
    pub retriever: Option<String>,
}

/// Answer of `POST /v1/ask`: the QA result with the index it came from.
#[derive(Debug, Clone, Serialize)]
pub struct AskResponse {
    /// Index searched.
    pub index: String,
    /// Its snapshot version.
    pub version: u64,
    /// Answer, candidates and evidence.
    #[serde(flatten)]
    pub result: AskResult,
}

/// `POST /v1/lm/score`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    /// Text to score.
    pub text: String,
    /// Datastore name (default: the first configured).
    #[serde(default)]
    pub datastore: Option<String>,
    /// Weight of p_kNN (default: the datastore's).
    #[serde(default)]
    pub lambda: Option<f32>,
}

/// Answer of `POST /v1/lm/score`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreResponse {
    /// Datastore used.
    pub datastore: String,
    /// Its load generation.
    pub version: u64,
    /// λ used.
    pub lambda: f32,
    /// Predicted tokens (every token after the first).
    pub tokens: Vec<String>,
    /// log p_kNN-LM of each predicted token (nats).
    pub log_probs: Vec<f32>,
    /// log p_LM of each predicted token under the base LM alone (nats).
    pub lm_log_probs: Vec<f32>,
    /// exp(mean negative log p_kNN-LM).
    pub perplexity: f64,
    /// exp(mean negative log p_LM).
    pub lm_perplexity: f64,
}

fn default_max_new_tokens() -> usize {
    32
}

/// `POST /v1/lm/generate` (answered as server-sent events).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// The prompt.
    pub prompt: String,
    /// Datastore name (default: the first configured).
    #[serde(default)]
    pub datastore: Option<String>,
    /// Weight of p_kNN (default: the datastore's).
    #[serde(default)]
    pub lambda: Option<f32>,
    /// Most new tokens.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 (default) is greedy.
    #[serde(default)]
    pub temperature: f64,
    /// Seed of the sampler.
    #[serde(default)]
    pub seed: u64,
}

/// `POST /v1/translate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranslateRequest {
    /// Source sentence.
    pub text: String,
    /// Translator name (default: the datastore's translator, else the first configured).
    #[serde(default)]
    pub model: Option<String>,
    /// kNN-MT datastore to mix into decoding (default: none, plain decoding).
    #[serde(default)]
    pub datastore: Option<String>,
}

/// Answer of `POST /v1/translate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranslateResponse {
    /// Translator used.
    pub model: String,
    /// The translation.
    pub translation: String,
    /// The kNN-MT datastore used and its load generation, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<UsedDatastore>,
}

/// A datastore an answer used, and which load of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsedDatastore {
    /// Name.
    pub name: String,
    /// Load generation (1, then +1 per reload).
    pub version: u64,
}

/// Refuses an empty text (400) or one longer than the limit (413).
pub fn check_text(field: &str, text: &str, limits: &Limits) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(format!(
            "`{field}` must not be empty"
        )));
    }
    let n = text.chars().count();
    if n > limits.max_text_chars {
        return Err(ApiError::too_large(format!(
            "`{field}` has {n} characters; the limit is {}",
            limits.max_text_chars
        )));
    }
    Ok(())
}

/// Refuses `k` outside `1..=max_k` (400).
pub fn check_k(k: usize, limits: &Limits) -> Result<(), ApiError> {
    if k == 0 || k > limits.max_k {
        return Err(ApiError::bad_request(format!(
            "`k` must be between 1 and {}, got {k}",
            limits.max_k
        )));
    }
    Ok(())
}

/// Refuses λ outside `[0, 1]` (400).
pub fn check_lambda(lambda: f32) -> Result<(), ApiError> {
    if !(0.0..=1.0).contains(&lambda) {
        return Err(ApiError::bad_request(format!(
            "`lambda` must be between 0 and 1, got {lambda}"
        )));
    }
    Ok(())
}

/// The retriever a request names (`hybrid`, as on the command line, when none).
pub fn retriever_kind(name: Option<&str>) -> Result<RetrieverKind, ApiError> {
    name.unwrap_or("hybrid")
        .parse()
        .map_err(ApiError::bad_request)
}
