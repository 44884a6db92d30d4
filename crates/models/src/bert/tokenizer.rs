//! Loading a BERT tokenizer (`tokenizer.json`, or WordPiece from `vocab.txt`) and turning
//! encodings into padded id/type/mask tensors.

use super::checkpoint::{TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, VOCAB_FILE};
use crate::{ModelError, Result};
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Encoding, Tokenizer, TruncationParams};

/// BERT's special tokens, registered so they are never split and can be skipped when decoding.
const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Loads the tokenizer of `dir` without padding (batches are padded dynamically) and truncating
/// to `max_len` tokens. Returns it with the path of the file it was built from.
pub fn load_tokenizer(dir: &Path, max_len: usize) -> Result<(Tokenizer, PathBuf)> {
    let json = dir.join(TOKENIZER_FILE);
    let vocab = dir.join(VOCAB_FILE);
    let (mut tok, path) = if json.exists() {
        let tok = Tokenizer::from_file(&json)
            .map_err(|e| ModelError::format(&json, format!("invalid tokenizer: {e}")))?;
        (tok, json)
    } else if vocab.exists() {
        (wordpiece_from_vocab(dir, &vocab)?, vocab)
    } else {
        return Err(ModelError::io(
            &json,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no tokenizer: neither {TOKENIZER_FILE} nor {VOCAB_FILE} exists"),
            ),
        ));
    };
    tok.with_padding(None);
    tok.with_truncation(Some(TruncationParams {
        max_length: max_len,
        ..Default::default()
    }))
    .map_err(|e| ModelError::format(&path, format!("cannot set truncation: {e}")))?;
    Ok((tok, path))
}

/// `do_lower_case` from `tokenizer_config.json` if present, else true.
fn do_lower_case(dir: &Path) -> Result<bool> {
    let path = dir.join(TOKENIZER_CONFIG_FILE);
    if !path.exists() {
        return Ok(true);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::format(&path, format!("invalid JSON: {e}")))?;
    match value.get("do_lower_case") {
        None => Ok(true),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| ModelError::format(&path, "`do_lower_case` is not a boolean")),
    }
}

/// BERT's WordPiece pipeline: BertNormalizer, BertPreTokenizer, `[CLS] … [SEP]` post-processing.
fn wordpiece_from_vocab(dir: &Path, vocab: &Path) -> Result<Tokenizer> {
    let lowercase = do_lower_case(dir)?;
    let bad = |msg: String| ModelError::format(vocab, msg);
    let path = vocab
        .to_str()
        .ok_or_else(|| bad("path is not valid UTF-8".into()))?;
    let model = WordPiece::from_file(path)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| bad(format!("invalid vocabulary: {e}")))?;
    let mut tok = Tokenizer::new(model);
    let id = |t: &str| {
        tok.token_to_id(t)
            .ok_or_else(|| bad(format!("special token {t} missing from the vocabulary")))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    id("[UNK]")?;
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .filter(|t| tok.token_to_id(t).is_some())
        .map(|t| AddedToken::from(*t, true))
        .collect();
    tok.add_special_tokens(specials)
        .map_err(|e| bad(format!("cannot add special tokens: {e}")))?;
    tok.with_decoder(Some(WordPieceDecoder::default()));
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
        .map_err(|e| bad(format!("cannot set normalizer: {e}")))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), sep),
        ("[CLS]".into(), cls),
    )));
    Ok(tok)
}

/// A padded batch: ids, token types (u32) and attention mask (f32), all `[b, t]`.
pub struct TokenBatch {
    /// Token ids, padded with the pad id.
    pub ids: Tensor,
    /// Token type (segment) ids.
    pub type_ids: Tensor,
    /// 1.0 at real tokens, 0.0 at padding.
    pub mask: Tensor,
    /// Number of real tokens per row.
    pub lengths: Vec<usize>,
}

impl TokenBatch {
    /// Pads `encodings` to the longest of them with `pad_id`.
    pub fn new(encodings: &[&Encoding], pad_id: u32, device: &Device) -> Result<Self> {
        let b = encodings.len();
        let t = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
        if b == 0 || t == 0 {
            return Err(ModelError::Invalid("cannot batch empty encodings".into()));
        }
        let mut ids = vec![pad_id; b * t];
        let mut types = vec![0u32; b * t];
        let mut mask = vec![0f32; b * t];
        for (row, e) in encodings.iter().enumerate() {
            let r = row * t..row * t + e.len();
            ids[r.clone()].copy_from_slice(e.get_ids());
            types[r.clone()].copy_from_slice(e.get_type_ids());
            mask[r].fill(1.0);
        }
        Ok(Self {
            ids: Tensor::from_vec(ids, (b, t), device)?,
            type_ids: Tensor::from_vec(types, (b, t), device)?,
            mask: Tensor::from_vec(mask, (b, t), device)?,
            lengths: encodings.iter().map(|e| e.len()).collect(),
        })
    }
}
