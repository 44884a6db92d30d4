//! The dense retriever's encoder: a BERT sentence encoder (MiniLM: mean pooling + L2 norm, as
//! sentence-transformers does) for questions and passages, and the provenance that ties an
//! index to it.

use std::path::Path;

use candle_core::Device;
use ralm_models::bert::{BertEncoder, EncoderOptions, Pooling};
use serde_json::json;
use tokenizers::Encoding;

use crate::error::{RealmError, Result};
use crate::passages::Passage;

/// Questions are cut to this many wordpieces (special tokens included) before encoding.
pub const MAX_QUESTION_WORDPIECES: usize = 64;

/// A question after length checks: the text actually used, and a warning if it was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The (possibly truncated) question text.
    pub text: String,
    /// Set when the question was truncated.
    pub warning: Option<String>,
}

/// A BERT sentence encoder used as both towers of the retriever.
pub struct DenseEncoder {
    inner: BertEncoder,
    provenance: serde_json::Value,
}

/// The text a passage is embedded as: its title, then its text.
pub fn passage_text(p: &Passage) -> String {
    format!("{}. {}", p.title, p.text)
}

impl DenseEncoder {
    /// Loads an HF BERT directory with `pooling` and L2 normalisation.
    pub fn load(dir: &Path, pooling: Pooling, batch_size: usize, device: &Device) -> Result<Self> {
        let options = EncoderOptions {
            pooling,
            normalize: true,
            batch_size,
        };
        let inner = BertEncoder::load(dir, options, device)?;
        let provenance = json!({
            "encoder_model_sha256": inner.model_hash()?,
            "encoder_tokenizer_sha256": inner.tokenizer_hash()?,
            "encoder_pooling": format!("{pooling:?}").to_lowercase(),
            "encoder_normalize": true,
            "encoder_dim": inner.dim(),
            "encoder_projection": inner.dim() != inner.config().hidden_size,
        });
        Ok(Self { inner, provenance })
    }

    /// What identifies this encoder in an index manifest (a JSON object).
    pub fn provenance(&self) -> &serde_json::Value {
        &self.provenance
    }

    /// Width of the vectors.
    pub fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// Cuts `question` to [`MAX_QUESTION_WORDPIECES`] wordpieces, with a warning when it does.
    pub fn check_question(&self, question: &str) -> Result<Question> {
        let enc = self
            .inner
            .tokenize(&[question])?
            .pop()
            .ok_or_else(|| RealmError::Tokenizer("no encoding returned".into()))?;
        // Offsets of real tokens (special tokens have the empty span at 0).
        let spans: Vec<(usize, usize)> = enc
            .get_offsets()
            .iter()
            .zip(enc.get_special_tokens_mask())
            .filter(|(_, &special)| special == 0)
            .map(|(&o, _)| o)
            .collect();
        let limit = MAX_QUESTION_WORDPIECES - 2;
        let truncated_by_tokenizer = !enc.get_overflowing().is_empty();
        if spans.len() <= limit && !truncated_by_tokenizer {
            return Ok(Question {
                text: question.to_string(),
                warning: None,
            });
        }
        let cut = spans.get(limit - 1).map_or(question.len(), |&(_, end)| end);
        let text = question[..cut].to_string();
        Ok(Question {
            warning: Some(format!(
                "question truncated to {limit} wordpieces: \"{text}\" (the rest is ignored)"
            )),
            text,
        })
    }

    /// One unit vector per question, row-major `n × dim`.
    pub fn encode_questions(&self, questions: &[&str]) -> Result<Vec<f32>> {
        Ok(self.inner.encode(questions)?.flatten_all()?.to_vec1()?)
    }

    /// Tokenizes passages for [`encode_tokenized`](Self::encode_tokenized).
    pub fn tokenize_passages(&self, passages: &[Passage]) -> Result<Vec<Encoding>> {
        let texts: Vec<String> = passages.iter().map(passage_text).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        Ok(self.inner.tokenize(&refs)?)
    }

    /// One unit vector per tokenized passage, row-major `n × dim`.
    pub fn encode_tokenized(&self, encodings: &[Encoding]) -> Result<Vec<f32>> {
        Ok(self
            .inner
            .encode_encodings(encodings)?
            .flatten_all()?
            .to_vec1()?)
    }
}

/// The top-`k` rows of `index` by score with `query`, best first, as (row, score); the
/// padding of a short result is dropped.
pub(crate) fn top_rows(
    index: &dyn ralm_index::Index,
    query: &[f32],
    k: usize,
) -> Result<Vec<(usize, f32)>> {
    let hits = index.search(query, k, &ralm_index::SearchParams::default())?;
    let (ids, scores) = hits.row(0);
    Ok(ids
        .iter()
        .zip(scores)
        .filter(|(&id, _)| id != u64::MAX)
        .map(|(&id, &s)| (id as usize, s))
        .collect())
}

/// Inner product of two equal-length vectors.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
