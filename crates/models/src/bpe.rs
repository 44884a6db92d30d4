//! Byte-level BPE tokenizers for Llama-family models, built from GGUF metadata or loaded from
//! a `tokenizer.json`.

use crate::gguf::GgufFile;
use crate::{ModelError, Result};
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// GGUF token type of control tokens (`<|endoftext|>`, `<|im_start|>`, ...).
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF token type of user-defined tokens.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// A causal-LM tokenizer with its special token ids.
pub struct LmTokenizer {
    inner: Tokenizer,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl LmTokenizer {
    /// The tokenizer for the model at `model_path`: a `tokenizer.json` next to a GGUF file (or
    /// inside an HF directory) when present, else the GGUF file's own tokenizer metadata.
    pub fn for_model(model_path: &Path) -> Result<Self> {
        let model_path = &crate::llama::resolve_model_path(model_path)?;
        let json = if model_path.is_dir() {
            model_path.join("tokenizer.json")
        } else {
            model_path.with_file_name("tokenizer.json")
        };
        if json.is_file() {
            return Self::from_json_file(&json);
        }
        if model_path.is_dir() {
            return Err(ModelError::format(&json, "missing tokenizer file"));
        }
        Self::from_gguf(&GgufFile::open(model_path)?)
    }

    /// Loads a HF `tokenizer.json`.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| ModelError::format(path, format!("invalid tokenizer: {e}")))?;
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        Ok(Self {
            bos_id: find(&["<s>", "<|begin_of_text|>", "<|im_start|>"]),
            eos_id: find(&["</s>", "<|end_of_text|>", "<|endoftext|>"]),
            inner,
        })
    }

    /// Builds a GPT-2-style byte-level BPE from the `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let kind = g.string("tokenizer.ggml.model")?;
        if kind != "gpt2" {
            return Err(ModelError::format(
                g.path(),
                format!("tokenizer model `{kind}` is not supported (only byte-level BPE `gpt2`)"),
            ));
        }
        let tokens = g.strings("tokenizer.ggml.tokens")?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let merges = g
            .strings("tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        ModelError::format(
                            g.path(),
                            format!("tokenizer.ggml.merges[{i}] `{m}` is not a pair"),
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| ModelError::format(g.path(), format!("invalid BPE vocabulary: {e}")))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let types = g.opt_i64s("tokenizer.ggml.token_type")?.unwrap_or_default();
        let added = |kind: i64, special: bool| -> Vec<AddedToken> {
            types
                .iter()
                .zip(&tokens)
                .filter(|(t, _)| **t == kind)
                .map(|(_, tok)| AddedToken::from(tok.to_string(), special))
                .collect()
        };
        inner
            .add_special_tokens(added(TOKEN_TYPE_CONTROL, true))
            .map_err(tok_err)?;
        inner
            .add_tokens(added(TOKEN_TYPE_USER_DEFINED, false))
            .map_err(tok_err)?;
        let id = |key: &str| -> Result<Option<u32>> { Ok(g.opt_usize(key)?.map(|x| x as u32)) };
        Ok(Self {
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            inner,
        })
    }

    /// Token ids of `text`, without BOS or any other added special token.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids` (special tokens included verbatim).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tok_err)
    }

    /// The vocabulary string of token `id`.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of vocabulary string `token`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Beginning-of-sequence id, if the tokenizer has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// End-of-sequence id, if the tokenizer has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// The tokenizer as canonical (compact) JSON.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(tok_err)
    }

    /// SHA-256 (hex) of [`to_json`](Self::to_json), for datastore manifests.
    pub fn tokenizer_hash(&self) -> Result<String> {
        Ok(crate::hash::sha256_hex(self.to_json()?.as_bytes()))
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}
