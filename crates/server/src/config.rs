//! Server configuration: what to load (QA indexes, kNN-LM datastores, translators) and the
//! limits, batching and admin settings. Read from a JSON file; every field has a default.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::LoadError;

/// Everything `ralm serve` needs to know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on (`host:port`; port 0 picks a free one).
    pub listen: String,
    /// HF BERT directory of the dense encoder shared by the QA indexes.
    pub encoder: PathBuf,
    /// Sequences per encoder forward pass.
    pub encoder_batch: usize,
    /// GGUF file of the generative reader (`/v1/ask`).
    pub reader: PathBuf,
    /// Scale of inner products in `p(z|x)` for `/v1/ask`.
    pub score_scale: f64,
    /// Weight of BM25 scores in `p(z|x)` for `/v1/ask` (`ralm qa eval --fit-prior` fits it).
    pub bm25_weight: f64,
    /// QA index directories built by `ralm qa index`.
    pub qa_indexes: Vec<NamedPath>,
    /// Causal LM (GGUF file or HF directory) the kNN-LM datastores were built with.
    pub lm: PathBuf,
    /// Run a GGUF LM with quantized matmuls (less memory, about 5× slower scoring on CPU)
    /// instead of weights dequantized to f32.
    pub lm_quantized: bool,
    /// kNN-LM datastores built by `ralm knnlm build`.
    pub datastores: Vec<DatastoreConfig>,
    /// Marian/Bergamot translation model directories.
    pub translators: Vec<NamedPath>,
    /// kNN-MT datastores built by `ralm knnmt build`, each for one of the translators.
    pub mt_datastores: Vec<MtDatastoreConfig>,
    /// Request limits.
    pub limits: Limits,
    /// Cross-request batching.
    pub batching: Batching,
    /// Bearer token the admin endpoints demand (none: admin endpoints are open).
    pub admin_token: Option<String>,
    /// Where the models run: `cpu`, `cuda` or `cuda:N` (CUDA needs a `cuda` build).
    pub device: String,
}

/// A named directory or file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPath {
    /// The name requests use.
    pub name: String,
    /// Where it lives.
    pub path: PathBuf,
}

/// A kNN-LM datastore and its default mixing parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatastoreConfig {
    /// The name requests use.
    pub name: String,
    /// Datastore directory (reload re-opens it: point it at a symlink to swap datastores).
    pub path: PathBuf,
    /// Default weight of p_kNN.
    #[serde(default = "default_lambda")]
    pub lambda: f32,
    /// Neighbours per position.
    #[serde(default = "default_knn_k")]
    pub k: usize,
    /// Temperature of p_kNN over neighbour scores.
    #[serde(default = "default_knn_temperature")]
    pub temperature: f32,
    /// IVF lists probed per search.
    #[serde(default = "default_nprobe")]
    pub nprobe: usize,
}

/// A kNN-MT datastore: the translator it was built with and how to mix it in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtDatastoreConfig {
    /// The name requests use.
    pub name: String,
    /// Datastore directory (reload re-opens it: point it at a symlink to swap datastores).
    pub path: PathBuf,
    /// Name of the configured translator whose model built the datastore.
    pub translator: String,
    /// Let the gate trained by `ralm knnmt eval` pick λ at every step.
    #[serde(default)]
    pub adaptive: bool,
    /// Weight of p_kNN (default: the datastore's `tuned.json`).
    #[serde(default)]
    pub lambda: Option<f32>,
    /// Neighbours per step (default: `tuned.json`).
    #[serde(default)]
    pub k: Option<usize>,
    /// Temperature of p_kNN (default: `tuned.json`).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// IVF lists probed per search.
    #[serde(default = "default_mt_nprobe")]
    pub nprobe: usize,
    /// Re-score this many PQ candidates with the full keys (IVF-PQ datastores).
    #[serde(default)]
    pub rerank: Option<usize>,
}

fn default_mt_nprobe() -> usize {
    16
}

fn default_lambda() -> f32 {
    0.25
}
fn default_knn_k() -> usize {
    32
}
fn default_knn_temperature() -> f32 {
    10.0
}
fn default_nprobe() -> usize {
    32
}

/// Request limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body (413 beyond).
    pub max_body_bytes: usize,
    /// Longest query, question, text or prompt in characters (413 beyond).
    pub max_text_chars: usize,
    /// Largest `k` of retrieval and QA (400 beyond).
    pub max_k: usize,
    /// Most new tokens one generation may ask for (400 beyond).
    pub max_new_tokens: usize,
    /// Requests served at once; more get 503 with `Retry-After`.
    pub max_concurrent: usize,
    /// Per-request timeout in milliseconds (504 beyond).
    pub timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_text_chars: 4096,
            max_k: 50,
            max_new_tokens: 256,
            max_concurrent: 256,
            timeout_ms: 30_000,
        }
    }
}

impl Limits {
    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Cross-request batching of model forwards and index searches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Batching {
    /// Off: every request runs its own forward on the blocking pool.
    pub enabled: bool,
    /// Longest a request waits for others to join its batch, in milliseconds.
    pub max_wait_ms: u64,
    /// Most requests per batch.
    pub max_batch: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            enabled: true,
            max_wait_ms: 2,
            max_batch: 64,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            encoder: "models/minilm".into(),
            encoder_batch: 64,
            reader: "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            score_scale: ralm_realm::ask::DEFAULT_SCORE_SCALE,
            bm25_weight: 0.0,
            qa_indexes: Vec::new(),
            lm: "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            lm_quantized: false,
            datastores: Vec::new(),
            translators: Vec::new(),
            mt_datastores: Vec::new(),
            limits: Limits::default(),
            batching: Batching::default(),
            admin_token: None,
            device: "cpu".into(),
        }
    }
}

impl ServerConfig {
    /// Reads and validates a JSON config file.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::Config {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| LoadError::Config {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        cfg.validate().map_err(|msg| LoadError::Config {
            path: path.to_path_buf(),
            msg,
        })?;
        Ok(cfg)
    }

    /// Checks names are unique and non-empty and limits are positive.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = HashSet::new();
        let names = self
            .qa_indexes
            .iter()
            .map(|n| &n.name)
            .chain(self.datastores.iter().map(|d| &d.name))
            .chain(self.translators.iter().map(|t| &t.name))
            .chain(self.mt_datastores.iter().map(|d| &d.name));
        for name in names {
            if name.is_empty() || name.contains('/') {
                return Err(format!("invalid name {name:?} (non-empty, no '/')"));
            }
            if !seen.insert(name) {
                return Err(format!(
                    "name {name:?} is used twice (indexes, datastores and translators share one namespace)"
                ));
            }
        }
        for d in &self.datastores {
            if !(0.0..=1.0).contains(&d.lambda) || d.k == 0 || d.temperature <= 0.0 {
                return Err(format!(
                    "datastores.{}: need 0 ≤ lambda ≤ 1, k ≥ 1, temperature > 0",
                    d.name
                ));
            }
        }
        for d in &self.mt_datastores {
            if !self.translators.iter().any(|t| t.name == d.translator) {
                return Err(format!(
                    "mt_datastores.{}: translator {:?} is not configured",
                    d.name, d.translator
                ));
            }
            if d.lambda.is_some_and(|l| !(0.0..=1.0).contains(&l))
                || d.k == Some(0)
                || d.temperature.is_some_and(|t| t <= 0.0)
            {
                return Err(format!(
                    "mt_datastores.{}: need 0 ≤ lambda ≤ 1, k ≥ 1, temperature > 0",
                    d.name
                ));
            }
        }
        let l = &self.limits;
        let positive = [
            ("limits.max_body_bytes", l.max_body_bytes as u64),
            ("limits.max_text_chars", l.max_text_chars as u64),
            ("limits.max_k", l.max_k as u64),
            ("limits.max_new_tokens", l.max_new_tokens as u64),
            ("limits.max_concurrent", l.max_concurrent as u64),
            ("limits.timeout_ms", l.timeout_ms),
            ("batching.max_batch", self.batching.max_batch as u64),
            ("encoder_batch", self.encoder_batch as u64),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(format!("{field} must be at least 1"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_fields_and_unknown_fields_are_refused() {
        let cfg: ServerConfig = serde_json::from_str(
            r#"{"limits": {"max_k": 7}, "qa_indexes": [{"name": "a", "path": "x"}]}"#,
        )
        .unwrap();
        assert_eq!(cfg.limits.max_k, 7);
        assert_eq!(cfg.limits.max_concurrent, Limits::default().max_concurrent);
        assert!(cfg.batching.enabled);
        let err = serde_json::from_str::<ServerConfig>(r#"{"limits": {"max_kk": 7}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_kk"), "{err}");
    }

    #[test]
    fn duplicate_names_and_zero_limits_are_refused() {
        let mut cfg = ServerConfig::default();
        cfg.qa_indexes.push(NamedPath {
            name: "wiki".into(),
            path: "a".into(),
        });
        cfg.translators.push(NamedPath {
            name: "wiki".into(),
            path: "b".into(),
        });
        assert!(cfg.validate().unwrap_err().contains("used twice"));
        let mut cfg = ServerConfig::default();
        cfg.mt_datastores.push(MtDatastoreConfig {
            name: "software".into(),
            path: "c".into(),
            translator: "enpt".into(),
            adaptive: false,
            lambda: None,
            k: None,
            temperature: None,
            nprobe: 16,
            rerank: None,
        });
        assert!(cfg
            .validate()
            .unwrap_err()
            .contains("\"enpt\" is not configured"));
        cfg.translators.push(NamedPath {
            name: "enpt".into(),
            path: "d".into(),
        });
        cfg.validate().unwrap();
        cfg.mt_datastores[0].lambda = Some(1.5);
        assert!(cfg
            .validate()
            .unwrap_err()
            .contains("mt_datastores.software"));
        let mut cfg = ServerConfig::default();
        cfg.limits.max_concurrent = 0;
        assert!(cfg.validate().unwrap_err().contains("max_concurrent"));
    }
}
