//! `BertEncoder`: tokenizer + BERT + pooling (+ projection, + L2 normalisation) → one vector
//! per text or text pair, with length-sorted dynamic batching.

use super::checkpoint::{self, CONFIG_FILE};
use super::config::BertConfig;
use super::model::BertModel;
use super::nn::Mode;
use super::pooling::{l2_normalize, Pooling};
use super::tokenizer::{load_tokenizer, TokenBatch};
use crate::hash::file_sha256;
use crate::{ModelError, Result};
use candle_core::{Device, Module, Tensor};
use candle_nn::Linear;
use std::path::{Path, PathBuf};
use tokenizers::{EncodeInput, Encoding, Tokenizer};

/// Name of the optional projection applied after pooling (e.g. REALM's 128-d embedder).
const PROJECTION: &str = "projection";

/// How a [`BertEncoder`] turns hidden states into vectors.
#[derive(Debug, Clone, Copy)]
pub struct EncoderOptions {
    /// Pooling over tokens.
    pub pooling: Pooling,
    /// Scale every output vector to unit L2 norm.
    pub normalize: bool,
    /// Sequences per forward pass.
    pub batch_size: usize,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        Self {
            pooling: Pooling::Mean,
            normalize: true,
            batch_size: 32,
        }
    }
}

/// A sentence encoder over an HF BERT directory, running in inference mode.
pub struct BertEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    projection: Option<Linear>,
    options: EncoderOptions,
    device: Device,
    weights_path: PathBuf,
    tokenizer_path: PathBuf,
}

impl BertEncoder {
    /// Loads config, weights (memory-mapped), tokenizer and, when present, `projection.*`.
    pub fn load(dir: &Path, options: EncoderOptions, device: &Device) -> Result<Self> {
        if options.batch_size == 0 {
            return Err(ModelError::Invalid("batch size must be at least 1".into()));
        }
        let config = BertConfig::from_file(&dir.join(CONFIG_FILE))?;
        let (weights, prefix) = checkpoint::open_weights(dir)?;
        let weights_path = weights.path().to_path_buf();
        let projection = match weights.shape(&format!("{PROJECTION}.weight")) {
            Some(dims) if dims.len() == 2 && dims[1] == config.hidden_size => Some(Linear::new(
                weights.load(
                    "",
                    &format!("{PROJECTION}.weight"),
                    &dims.as_slice().into(),
                    device,
                )?,
                Some(weights.load("", &format!("{PROJECTION}.bias"), &dims[0].into(), device)?),
            )),
            Some(dims) => {
                return Err(ModelError::format(
                    &weights_path,
                    format!(
                        "tensor `{PROJECTION}.weight` has shape {dims:?}, expected [d, {}]",
                        config.hidden_size
                    ),
                ))
            }
            None => None,
        };
        let model = BertModel::new(
            &config,
            weights.var_builder(&prefix, candle_core::DType::F32, device),
        )
        .map_err(|e| ModelError::format(&weights_path, e.to_string()))?;
        let (tokenizer, tokenizer_path) = load_tokenizer(dir, config.max_position_embeddings)?;
        Ok(Self {
            model,
            tokenizer,
            projection,
            options,
            device: device.clone(),
            weights_path,
            tokenizer_path,
        })
    }

    /// The BERT body.
    pub fn model(&self) -> &BertModel {
        &self.model
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &BertConfig {
        self.model.config()
    }

    /// The tokenizer (no padding, truncation at the model's maximum length).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The device tensors are computed on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Width of the output vectors.
    pub fn dim(&self) -> usize {
        match &self.projection {
            Some(p) => p.weight().dim(0).unwrap_or(0),
            None => self.config().hidden_size,
        }
    }

    /// SHA-256 (hex) of the weights file.
    pub fn model_hash(&self) -> Result<String> {
        file_sha256(&self.weights_path)
    }

    /// SHA-256 (hex) of the tokenizer file (`tokenizer.json` or `vocab.txt`).
    pub fn tokenizer_hash(&self) -> Result<String> {
        file_sha256(&self.tokenizer_path)
    }

    /// Tokenizes single texts: ids, token types and character offsets for span extraction.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Encoding>> {
        self.tokenize_inputs(texts.iter().map(|t| EncodeInput::from(*t)).collect())
    }

    /// Tokenizes pairs as `[CLS] a [SEP] b [SEP]` with token types 0 then 1.
    pub fn tokenize_pairs(&self, pairs: &[(&str, &str)]) -> Result<Vec<Encoding>> {
        self.tokenize_inputs(
            pairs
                .iter()
                .map(|&(a, b)| EncodeInput::from((a, b)))
                .collect(),
        )
    }

    fn tokenize_inputs(&self, inputs: Vec<EncodeInput>) -> Result<Vec<Encoding>> {
        self.tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Last hidden states `[b, t, h]` and mask `[b, t]` for one batch of encodings.
    pub fn hidden_states(&self, encodings: &[&Encoding]) -> Result<(Tensor, Tensor)> {
        let batch = TokenBatch::new(encodings, self.config().pad_token_id, &self.device)?;
        let hidden =
            self.model
                .forward(&batch.ids, &batch.type_ids, &batch.mask, Mode::Inference)?;
        Ok((hidden, batch.mask))
    }

    /// One vector per text, `[n, dim]`.
    pub fn encode(&self, texts: &[&str]) -> Result<Tensor> {
        self.encode_encodings(&self.tokenize(texts)?)
    }

    /// One vector per `(a, b)` pair, `[n, dim]`.
    pub fn encode_pairs(&self, pairs: &[(&str, &str)]) -> Result<Tensor> {
        self.encode_encodings(&self.tokenize_pairs(pairs)?)
    }

    /// One vector per encoding, `[n, dim]`, batching by length to minimise padding.
    pub fn encode_encodings(&self, encodings: &[Encoding]) -> Result<Tensor> {
        if encodings.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.dim()),
                candle_core::DType::F32,
                &self.device,
            )?);
        }
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].len()));
        let mut parts = Vec::new();
        for chunk in order.chunks(self.options.batch_size) {
            let batch: Vec<&Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
            let (hidden, mask) = self.hidden_states(&batch)?;
            parts.push(self.options.pooling.pool(&hidden, &mask)?);
        }
        let mut pooled = Tensor::cat(&parts, 0)?;
        if let Some(p) = &self.projection {
            pooled = p.forward(&pooled)?;
        }
        if self.options.normalize {
            pooled = l2_normalize(&pooled)?;
        }
        let mut inverse = vec![0u32; order.len()];
        for (sorted_pos, &orig) in order.iter().enumerate() {
            inverse[orig] = sorted_pos as u32;
        }
        let inverse = Tensor::new(inverse.as_slice(), &self.device)?;
        Ok(pooled.index_select(&inverse, 0)?)
    }
}
