//! `config.json` of an HF BERT directory.

use crate::{ModelError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Activation of the feed-forward block (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// Exact GELU (erf), HF `gelu`.
    Gelu,
    /// Tanh-approximated GELU, HF `gelu_new`.
    GeluNew,
    /// ReLU.
    Relu,
}

/// The BERT hyper-parameters read from `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Word-piece vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    #[serde(default = "default_act")]
    pub hidden_act: HiddenAct,
    /// Dropout after embeddings, attention output and feed-forward output.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Number of learned positions (the longest input).
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Number of token types (segments).
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// Standard deviation of the weight initialiser.
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Epsilon of every layer norm.
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    /// Id of the padding token.
    #[serde(default)]
    pub pad_token_id: u32,
    /// Only `absolute` is supported.
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
    /// Model type tag, `bert`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
}

fn default_act() -> HiddenAct {
    HiddenAct::Gelu
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_pos() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_init_range() -> f64 {
    0.02
}
fn default_ln_eps() -> f64 {
    1e-12
}
fn default_pos_type() -> String {
    "absolute".into()
}
fn default_model_type() -> String {
    "bert".into()
}

impl BertConfig {
    /// Reads and validates `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| ModelError::format(path, format!("invalid BERT config: {e}")))?;
        cfg.validate()
            .map_err(|msg| ModelError::format(path, msg))?;
        Ok(cfg)
    }

    /// Checks the invariants the model relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type `{}` is not supported (only `absolute`)",
                self.position_embedding_type
            ));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        if self.vocab_size == 0 || self.max_position_embeddings == 0 || self.type_vocab_size == 0 {
            return Err(
                "vocab_size, max_position_embeddings and type_vocab_size must be > 0".into(),
            );
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Writes this config as pretty JSON to `path` (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut value = serde_json::to_value(self)
            .map_err(|e| ModelError::format(path, format!("cannot serialize config: {e}")))?;
        value["architectures"] = serde_json::json!(["BertForMaskedLM"]);
        let text = serde_json::to_string_pretty(&value)
            .map_err(|e| ModelError::format(path, format!("cannot serialize config: {e}")))?;
        crate::weights::write_atomic(path, text.as_bytes())
    }
}
