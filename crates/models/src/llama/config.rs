//! Llama hyper-parameters, read from GGUF metadata or an HF `config.json`.

use crate::gguf::GgufFile;
use crate::{ModelError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The shape of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Number of token ids.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SiLU-gated feed-forward block.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when fewer than query heads).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Longest sequence the RoPE tables cover.
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    /// Whether the output projection reuses the token embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_ctx() -> usize {
    2048
}

impl LlamaConfig {
    /// Reads the `llama.*` keys of a GGUF file.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.string("general.architecture")?;
        if arch != "llama" {
            return Err(ModelError::format(
                g.path(),
                format!("architecture `{arch}` is not supported (only `llama`)"),
            ));
        }
        let hidden_size = g.usize("llama.embedding_length")?;
        let vocab_size = match g.opt_usize("llama.vocab_size")? {
            Some(v) => v,
            None => g.strings("tokenizer.ggml.tokens")?.len(),
        };
        let cfg = Self {
            vocab_size,
            hidden_size,
            intermediate_size: g.usize("llama.feed_forward_length")?,
            num_hidden_layers: g.usize("llama.block_count")?,
            num_attention_heads: g.usize("llama.attention.head_count")?,
            num_key_value_heads: g.opt_usize("llama.attention.head_count_kv")?,
            rms_norm_eps: g
                .opt_f64("llama.attention.layer_norm_rms_epsilon")?
                .unwrap_or_else(default_eps),
            rope_theta: g
                .opt_f64("llama.rope.freq_base")?
                .unwrap_or_else(default_theta),
            max_position_embeddings: g
                .opt_usize("llama.context_length")?
                .unwrap_or_else(default_ctx),
            tie_word_embeddings: !g.has_tensor("output.weight"),
        };
        cfg.validate()
            .map_err(|m| ModelError::format(g.path(), m))?;
        Ok(cfg)
    }

    /// Reads an HF `config.json` (transformers 4 or 5: the latter keeps the RoPE base under
    /// `rope_parameters`).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let invalid =
            |e: serde_json::Error| ModelError::format(path, format!("invalid Llama config: {e}"));
        let mut value: serde_json::Value = serde_json::from_str(&text).map_err(invalid)?;
        if let Some(obj) = value.as_object_mut() {
            let nested = obj
                .get("rope_parameters")
                .and_then(|p| p.get("rope_theta"))
                .cloned();
            if let (None, Some(theta)) = (obj.get("rope_theta"), nested) {
                obj.insert("rope_theta".into(), theta);
            }
        }
        let cfg: Self = serde_json::from_value(value).map_err(invalid)?;
        cfg.validate().map_err(|m| ModelError::format(path, m))?;
        Ok(cfg)
    }

    /// Number of key/value heads (defaults to the query head count).
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads)
            || !self.head_dim().is_multiple_of(2)
        {
            return Err(format!(
                "hidden_size {} must split into an even head size over {} heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(format!(
                "{} attention heads cannot be grouped over {} key/value heads",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return Err("rms_norm_eps and rope_theta must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_rope_base_of_transformers_5_configs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let base = r#""vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2"#;
        std::fs::write(
            &path,
            format!(r#"{{{base}, "rope_parameters": {{"rope_theta": 100000.0, "rope_type": "default"}}}}"#),
        )
        .unwrap();
        assert_eq!(
            LlamaConfig::from_json_file(&path).unwrap().rope_theta,
            100_000.0
        );
        std::fs::write(&path, format!(r#"{{{base}, "rope_theta": 500000.0}}"#)).unwrap();
        assert_eq!(
            LlamaConfig::from_json_file(&path).unwrap().rope_theta,
            500_000.0
        );
        std::fs::write(&path, format!(r#"{{{base}}}"#)).unwrap();
        assert_eq!(
            LlamaConfig::from_json_file(&path).unwrap().rope_theta,
            10_000.0
        );
        std::fs::write(&path, r#"{"vocab_size": "many"}"#).unwrap();
        let err = LlamaConfig::from_json_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("invalid Llama config"),
            "{err}"
        );
    }
}
