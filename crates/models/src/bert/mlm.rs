//! `BertForMaskedLM`: the BERT body plus the HF masked-LM head, trainable and saveable.

use super::checkpoint::{
    self, BODY_PREFIX, CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, VOCAB_FILE, WEIGHTS_FILE,
};
use super::config::{BertConfig, HiddenAct};
use super::model::BertModel;
use super::nn::{activate, linear, LayerNorm, Mode};
use crate::weights::{save_safetensors, write_atomic};
use crate::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Name prefix of the MLM head (stored at the checkpoint root, never under `bert.`).
const HEAD_PREFIX: &str = "cls.";

/// The HF MLM head: dense + activation + layer norm, then the tied decoder plus `bias`.
pub struct MlmHead {
    dense: super::nn::Dense,
    norm: LayerNorm,
    bias: Tensor,
    act: HiddenAct,
}

impl MlmHead {
    /// Builds the head from `vb` rooted at `cls.predictions`.
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let t = vb.pp("transform");
        let h = cfg.hidden_size;
        Ok(Self {
            dense: linear(h, h, cfg.initializer_range, t.pp("dense"))?,
            norm: LayerNorm::for_config(cfg, t.pp("LayerNorm"))?,
            bias: vb.get_with_hints(cfg.vocab_size, "bias", Init::Const(0.0))?,
            act: cfg.hidden_act,
        })
    }

    /// Vocabulary logits `[.., vocab]` from hidden states `[.., h]`.
    pub fn forward(&self, hidden: &Tensor, word_emb: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = activate(&self.dense.forward(hidden, mode)?, self.act, mode)?;
        let x = self.norm.forward(&x, mode)?;
        let mut dims = x.dims().to_vec();
        let h = dims.pop().unwrap_or(1);
        let logits = x.reshape((x.elem_count() / h, h))?.matmul(&word_emb.t()?)?;
        dims.push(logits.dim(1)?);
        Ok(logits.broadcast_add(&self.bias)?.reshape(dims)?)
    }
}

/// BERT with an MLM head whose weights live in a `VarMap`, so it can be trained and saved.
pub struct BertForMaskedLM {
    bert: BertModel,
    head: MlmHead,
    varmap: VarMap,
    /// Directory the tokenizer files are copied from on save.
    source_dir: Option<PathBuf>,
}

impl BertForMaskedLM {
    /// A freshly initialised model (HF initialisation) on `device`.
    pub fn new_random(config: &BertConfig, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let (bert, head) = Self::build(config, &varmap, device)?;
        Ok(Self {
            bert,
            head,
            varmap,
            source_dir: None,
        })
    }

    /// Loads `dir` into trainable variables. The MLM head is loaded when the checkpoint has one
    /// and freshly initialised otherwise.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join(CONFIG_FILE))?;
        let (weights, prefix) = checkpoint::open_weights(dir)?;
        let mut model = Self::new_random(&config, device)?;
        weights.load_into_varmap(&model.varmap, &prefix, |name| name.starts_with(HEAD_PREFIX))?;
        model.source_dir = Some(dir.to_path_buf());
        Ok(model)
    }

    fn build(
        config: &BertConfig,
        varmap: &VarMap,
        device: &Device,
    ) -> Result<(BertModel, MlmHead)> {
        config.validate().map_err(ModelError::Invalid)?;
        let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
        let bert = BertModel::new(config, vb.clone())?;
        let head = MlmHead::new(config, vb.pp("cls").pp("predictions"))?;
        Ok((bert, head))
    }

    /// Makes [`BertForMaskedLM::save`] copy the tokenizer files of `dir`.
    pub fn set_tokenizer_source(&mut self, dir: &Path) {
        self.source_dir = Some(dir.to_path_buf());
    }

    /// The BERT body.
    pub fn bert(&self) -> &BertModel {
        &self.bert
    }

    /// All trainable variables (body and head), e.g. for an optimizer.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Last hidden state and vocabulary logits `[b, t, vocab]`.
    pub fn forward(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        mask: &Tensor,
        mode: Mode,
    ) -> Result<(Tensor, Tensor)> {
        let hidden = self.bert.forward(ids, type_ids, mask, mode)?;
        let logits = self
            .head
            .forward(&hidden, self.bert.word_embeddings(), mode)?;
        Ok((hidden, logits))
    }

    /// Vocabulary logits `[p, vocab]` at flat positions `positions` (u32 indices into `b * t`)
    /// only: the head runs on those rows, not on every token (a sixth of the training step's
    /// work at BERT's 15 % masking).
    pub fn logits_at(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        mask: &Tensor,
        positions: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let hidden = self.bert.forward(ids, type_ids, mask, mode)?;
        let (b, t, h) = hidden.dims3()?;
        let picked = hidden.reshape((b * t, h))?.index_select(positions, 0)?;
        self.head
            .forward(&picked, self.bert.word_embeddings(), mode)
    }

    /// Mean cross-entropy of `logits` `[p, vocab]` (from [`BertForMaskedLM::logits_at`])
    /// against `targets` (u32 token ids).
    pub fn masked_lm_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::loss::cross_entropy(logits, targets)?)
    }

    /// Writes `dir/config.json`, `dir/model.safetensors` (HF `BertForMaskedLM` layout: body under
    /// `bert.`, head under `cls.`, decoder tied) and copies the source tokenizer files.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        self.bert.config().save(&dir.join(CONFIG_FILE))?;
        let tensors: HashMap<String, Tensor> = {
            let vars = self.varmap.data().lock().map_err(|_| {
                ModelError::Invalid("variable map poisoned by a panicking thread".into())
            })?;
            vars.iter()
                .map(|(name, var)| {
                    let key = if name.starts_with(HEAD_PREFIX) {
                        name.clone()
                    } else {
                        format!("{BODY_PREFIX}{name}")
                    };
                    (key, var.as_tensor().clone())
                })
                .collect()
        };
        save_safetensors(&dir.join(WEIGHTS_FILE), &tensors)?;
        if let Some(src) = &self.source_dir {
            for file in [TOKENIZER_FILE, VOCAB_FILE, TOKENIZER_CONFIG_FILE] {
                let from = src.join(file);
                if from.exists() && src != dir {
                    let bytes = std::fs::read(&from).map_err(|e| ModelError::io(&from, e))?;
                    write_atomic(&dir.join(file), &bytes)?;
                }
            }
        }
        Ok(())
    }
}
