//! A frozen causal LM as the knowledge-augmented encoder: `p(y|z,x)` is the LM's probability of
//! the span's tokens after the document `z` and the words of `x` before the span. The LM is not
//! trained, so the marginal likelihood trains the retriever alone (the retriever half of REALM,
//! as in REPLUG's LM-supervised retrieval). It starts out able to copy a span from `z`, which a
//! fresh MLM head on a sentence encoder does not learn on a CPU (`docs/realm-pretraining.md`).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use ralm_models::bpe::LmTokenizer;
use ralm_models::llama::{LlamaModel, WeightMode};

use super::MaskedSentence;
use crate::error::{RealmError, Result};

/// A masked sentence as the LM reads it: its tokens before the span and the span's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LmSentence {
    /// Tokens of the words before the span (the last ones when there are many).
    pub prefix: Vec<u32>,
    /// Tokens of the span (with the space before it, as the LM writes words).
    pub targets: Vec<u32>,
}

/// A causal LM (GGUF file or HF Llama directory) reading `z`, a blank line, then the sentence.
pub struct LmReader {
    model: LlamaModel,
    tokenizer: LmTokenizer,
    /// The tokens every row starts with (the model's `bos` when it has one).
    start: Vec<u32>,
    /// Tokens between the document and the sentence.
    separator: Vec<u32>,
    path: PathBuf,
    /// SHA-256 (hex) of the weight file, hashed once at load.
    sha256: String,
}

impl LmReader {
    /// Loads the model at `path` (dequantized to f32) and its tokenizer, and hashes its weights.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let model = LlamaModel::load(path, WeightMode::F32, device)?;
        let sha256 = model.model_hash()?;
        let tokenizer = LmTokenizer::for_model(path)?;
        let start = tokenizer.bos_id().into_iter().collect();
        let separator = tokenizer.encode("\n\n")?;
        Ok(Self {
            model,
            tokenizer,
            start,
            separator,
            path: path.to_path_buf(),
            sha256,
        })
    }

    /// Where the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SHA-256 (hex) of the model's weight file, as it was when loaded.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// Splits `s` at its span: the tokens of the words before it (the last `max_tokens` at
    /// most) and those of the span itself; an error when the span has no token.
    pub fn sentence(&self, s: &MaskedSentence, max_tokens: usize) -> Result<LmSentence> {
        let before = s.text[..s.span.0].trim_end();
        let targets = self.tokenizer.encode(&s.text[before.len()..s.span.1])?;
        if targets.is_empty() {
            return Err(RealmError::Invalid(format!(
                "the span {:?} of {:?} has no token for the LM reader",
                s.span, s.text
            )));
        }
        let prefix = self.tokenizer.encode(before)?;
        let keep = prefix.len().min(max_tokens.saturating_sub(targets.len()));
        Ok(LmSentence {
            prefix: prefix[prefix.len() - keep..].to_vec(),
            targets,
        })
    }

    /// Tokens of a document's text, the first `max_tokens` of them.
    pub fn document(&self, text: &str, max_tokens: usize) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(text)?;
        ids.truncate(max_tokens);
        Ok(ids)
    }

    /// The row the LM reads for `x` after document tokens `z` (`None`: the null document):
    /// start, `z`, separator, the words before the span, the span. The span's tokens are last.
    pub fn row(&self, z: Option<&[u32]>, x: &LmSentence) -> Vec<u32> {
        let mut row = self.start.clone();
        if let Some(z) = z {
            row.extend(z);
            row.extend(&self.separator);
        }
        row.extend(&x.prefix);
        row.extend(&x.targets);
        row
    }

    /// Attention heads of the model (for grouping rows by attention size).
    pub fn heads(&self) -> usize {
        self.model.config().num_attention_heads
    }

    /// Log-probabilities `[Σ targets, vocab]` of the next token at the positions that predict
    /// the last `targets[r]` tokens of each row `r` of `ids` `[rows, t]` (right-padded; a causal
    /// LM never reads the padding after a token), rows in order. Inference only: no gradient.
    pub fn target_log_probs(
        &self,
        ids: &Tensor,
        lengths: &[usize],
        targets: &[usize],
    ) -> Result<Tensor> {
        let hidden = self.model.forward(ids, 0, None)?.hidden;
        let t = hidden.dim(1)?;
        let mut flat = Vec::new();
        for (r, (&len, &m)) in lengths.iter().zip(targets).enumerate() {
            if m >= len {
                return Err(RealmError::Invalid(format!(
                    "an LM reader row of {len} tokens cannot predict its last {m}"
                )));
            }
            flat.extend((len - m - 1..len - 1).map(|p| (r * t + p) as u32));
        }
        let d = hidden.dim(2)?;
        let picked = hidden
            .reshape((t * lengths.len(), d))?
            .index_select(&Tensor::new(flat.as_slice(), hidden.device())?, 0)?;
        let logits = self.model.logits(&picked)?;
        Ok(candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?.detach())
    }
}
