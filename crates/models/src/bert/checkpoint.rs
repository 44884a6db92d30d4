//! File names of an HF BERT directory and opening its weights.

use crate::weights::Safetensors;
use crate::{ModelError, Result};
use std::path::Path;

/// Hyper-parameters.
pub const CONFIG_FILE: &str = "config.json";
/// Weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Fast-tokenizer definition.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// WordPiece vocabulary (fallback when `tokenizer.json` is absent).
pub const VOCAB_FILE: &str = "vocab.txt";
/// Tokenizer options such as `do_lower_case`.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Name prefix of the BERT body in `BertFor*` checkpoints.
pub const BODY_PREFIX: &str = "bert.";

/// Opens `dir/model.safetensors` and detects whether the body is stored under `bert.`.
pub(crate) fn open_weights(dir: &Path) -> Result<(Safetensors, String)> {
    let weights = Safetensors::open(&dir.join(WEIGHTS_FILE))?;
    let probe = "embeddings.word_embeddings.weight";
    let prefix = weights
        .detect_prefix(probe, &["", BODY_PREFIX])
        .ok_or_else(|| {
            ModelError::format(
                weights.path(),
                format!("missing tensor `{probe}` (with or without `{BODY_PREFIX}`)"),
            )
        })?;
    Ok((weights, prefix))
}
