//! The named-entity tagger of salient-span masking: BERT with a linear token-classification
//! head (HF `BertForTokenClassification` layout, `classifier.*`) over IOB2 tags, trained with
//! cross-entropy on the first wordpiece of every word.

use std::path::Path;

use candle_core::{Device, Module, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};
use ralm_models::bert::{BertConfig, Mode, TokenBatch};
use serde::{Deserialize, Serialize};
use tokenizers::{Encoding, InputSequence};

use super::conll::TaggedSentence;
use crate::data::read_json;
use crate::error::{RealmError, Result};
use crate::finetune::adamw::{linear_schedule, AdamW, AdamWConfig};
use crate::fsutil::{replace_dir, write_atomic};
use crate::trainable::TrainableBert;

/// Name of the classification head's tensors.
const HEAD: &str = "classifier";
/// The tagger's own settings, stored beside the BERT files.
const TAGGER_FILE: &str = "tagger.json";
/// The CoNLL-2003 tag set.
pub const CONLL_LABELS: [&str; 9] = [
    "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC",
];

/// What `tagger.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaggerConfig {
    /// Tags in head-output order.
    pub labels: Vec<String>,
}

/// A sentence tokenized for the tagger: its wordpieces and the position of each word's first
/// wordpiece (`None` for words cut off by truncation).
pub struct TaggerInput {
    pub encoding: Encoding,
    pub first_piece: Vec<Option<usize>>,
}

/// BERT plus a linear tag head, trainable.
pub struct EntityTagger {
    body: TrainableBert,
    head: Linear,
    config: TaggerConfig,
}

fn head(hidden: usize, labels: usize) -> impl FnOnce(VarBuilder) -> candle_core::Result<Linear> {
    move |vb| {
        let vb = vb.pp(HEAD);
        let w = vb.get_with_hints((labels, hidden), "weight", Init::Const(0.0))?;
        let b = vb.get_with_hints(labels, "bias", Init::Const(0.0))?;
        Ok(Linear::new(w, Some(b)))
    }
}

impl EntityTagger {
    /// Loads `dir`: a tagger checkpoint (head and `tagger.json` used), or a plain HF BERT
    /// directory such as MiniLM, given a fresh head over `labels` drawn with `seed`.
    pub fn load(dir: &Path, labels: &[&str], seed: u64, device: &Device) -> Result<Self> {
        let saved = dir.join(TAGGER_FILE);
        let config = if saved.is_file() {
            read_json(&saved)?
        } else {
            TaggerConfig {
                labels: labels.iter().map(|l| l.to_string()).collect(),
            }
        };
        let bert = BertConfig::from_file(&dir.join(ralm_models::bert::checkpoint::CONFIG_FILE))?;
        let (body, head, head_loaded) = TrainableBert::load(
            dir,
            device,
            Some(&format!("{HEAD}.")),
            head(bert.hidden_size, config.labels.len()),
        )?;
        Self::assemble(body, head, config, head_loaded, seed)
    }

    /// A tagger on a randomly initialised body (seeded), e.g. a tiny model for tests.
    pub fn new_random(
        bert: &BertConfig,
        tokenizer: tokenizers::Tokenizer,
        tokenizer_path: &Path,
        labels: &[&str],
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let config = TaggerConfig {
            labels: labels.iter().map(|l| l.to_string()).collect(),
        };
        let (body, head) = TrainableBert::build(
            bert,
            tokenizer,
            tokenizer_path.to_path_buf(),
            device,
            head(bert.hidden_size, labels.len()),
        )?;
        body.reinit(seed, |_| true)?;
        Self::assemble(body, head, config, true, seed)
    }

    fn assemble(
        body: TrainableBert,
        head: Linear,
        config: TaggerConfig,
        head_loaded: bool,
        seed: u64,
    ) -> Result<Self> {
        if config.labels.is_empty() || !config.labels.iter().any(|l| l == "O") {
            return Err(RealmError::Invalid(
                "a tagger needs a label set that includes `O`".into(),
            ));
        }
        if !head_loaded {
            body.reinit(seed, |n| n.starts_with(HEAD))?;
        }
        Ok(Self { body, head, config })
    }

    /// Writes the tagger as an HF BERT directory plus `classifier.*` and `tagger.json`,
    /// replacing `dir` as a whole (see `fsutil::replace_dir`).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.config)
            .map_err(|e| RealmError::Invalid(format!("tagger settings: {e}")))?;
        replace_dir(dir, |tmp| {
            self.body.save(tmp)?;
            write_atomic(&tmp.join(TAGGER_FILE), |out| {
                std::io::Write::write_all(out, &bytes)
            })
        })
    }

    /// The trainable body (its `VarMap` holds the head too).
    pub fn body(&self) -> &TrainableBert {
        &self.body
    }

    /// Tags in head-output order.
    pub fn labels(&self) -> &[String] {
        &self.config.labels
    }

    /// Tokenizes pre-split `words` (truncated at the model's length).
    pub fn prepare(&self, words: &[String]) -> Result<TaggerInput> {
        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
        let encoding = self
            .body
            .tokenizer()
            .encode(InputSequence::from(refs.as_slice()), true)
            .map_err(|e| RealmError::Tokenizer(e.to_string()))?;
        let mut first_piece = vec![None; words.len()];
        for (pos, word) in encoding.get_word_ids().iter().enumerate() {
            if let Some(w) = word {
                let slot = &mut first_piece[*w as usize];
                if slot.is_none() {
                    *slot = Some(pos);
                }
            }
        }
        Ok(TaggerInput {
            encoding,
            first_piece,
        })
    }

    /// Tag logits `[b, t, labels]` of a batch of inputs (padded to the longest).
    pub fn logits(&self, inputs: &[&TaggerInput], mode: Mode) -> Result<Tensor> {
        let encodings: Vec<&Encoding> = inputs.iter().map(|i| &i.encoding).collect();
        let batch = TokenBatch::new(
            &encodings,
            self.body.bert().config().pad_token_id,
            self.body.device(),
        )?;
        let (hidden, _) = self.body.hidden_states_of(&batch, mode)?;
        Ok(self.head.forward(&hidden)?)
    }

    /// Mean cross-entropy over the first wordpiece of every (untruncated) word, in training
    /// mode; `tags[i][w]` is the label index of word `w` of input `i`. Also returns the
    /// wordpieces read.
    pub fn loss(&self, inputs: &[&TaggerInput], tags: &[Vec<u32>]) -> Result<(Tensor, usize)> {
        let logits = self.logits(inputs, Mode::Train)?;
        let (b, t, l) = logits.dims3()?;
        let mut positions = Vec::new();
        let mut targets = Vec::new();
        for (i, (input, tags)) in inputs.iter().zip(tags).enumerate() {
            for (first, &tag) in input.first_piece.iter().zip(tags) {
                if let Some(p) = first {
                    positions.push((i * t + p) as u32);
                    targets.push(tag);
                }
            }
        }
        if positions.is_empty() {
            return Err(RealmError::Invalid("no word to tag in the batch".into()));
        }
        let device = logits.device();
        let n = positions.len();
        let picked = logits
            .reshape((b * t, l))?
            .index_select(&Tensor::new(positions.as_slice(), device)?, 0)?;
        let log_p = candle_nn::ops::log_softmax(&picked, D::Minus1)?;
        let gold = log_p.gather(&Tensor::new(targets.as_slice(), device)?.unsqueeze(1)?, 1)?;
        let loss = (gold.sum_all()? * (-1.0 / n as f64))?;
        let tokens = inputs.iter().map(|i| i.encoding.len()).sum();
        Ok((loss, tokens))
    }

    /// The most likely tag of every word of each sentence (`O` for words cut off by
    /// truncation).
    pub fn predict(&self, sentences: &[Vec<String>]) -> Result<Vec<Vec<String>>> {
        if sentences.is_empty() {
            return Ok(Vec::new());
        }
        let inputs = sentences
            .iter()
            .map(|s| self.prepare(s))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&TaggerInput> = inputs.iter().collect();
        let best = self
            .logits(&refs, Mode::Inference)?
            .argmax(D::Minus1)?
            .to_vec2::<u32>()?;
        Ok(inputs
            .iter()
            .zip(&best)
            .map(|(input, row)| {
                input
                    .first_piece
                    .iter()
                    .map(|p| match p {
                        Some(p) => self.config.labels[row[*p] as usize].clone(),
                        None => "O".to_string(),
                    })
                    .collect()
            })
            .collect())
    }

    /// Label indices of `tags`; an unknown tag is an error naming it.
    pub fn label_ids(&self, tags: &[String]) -> Result<Vec<u32>> {
        tags.iter()
            .map(|t| {
                self.config
                    .labels
                    .iter()
                    .position(|l| l == t)
                    .map(|i| i as u32)
                    .ok_or_else(|| {
                        RealmError::Invalid(format!(
                            "tag `{t}` is not one of the tagger's labels {:?}",
                            self.config.labels
                        ))
                    })
            })
            .collect()
    }
}

/// What one tagger update did.
#[derive(Debug, Clone, Serialize)]
pub struct TaggerStep {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Wordpieces read.
    pub tokens: usize,
}

/// Trains an [`EntityTagger`] with AdamW (gradient clipping, linear warmup and decay).
pub struct TaggerTrainer {
    tagger: EntityTagger,
    optimizer: AdamW,
    peak_lr: f64,
    warmup: usize,
    total: usize,
}

impl TaggerTrainer {
    /// A trainer for `total` updates peaking at `lr` after `warmup`.
    pub fn new(tagger: EntityTagger, lr: f64, warmup: usize, total: usize) -> Result<Self> {
        if lr.is_nan() || lr <= 0.0 || total == 0 {
            return Err(RealmError::Invalid(
                "the learning rate and the number of updates must be positive".into(),
            ));
        }
        let optimizer = AdamW::new(
            &[("tagger.", tagger.body().varmap(), 1.0)],
            AdamWConfig::default(),
        )?;
        Ok(Self {
            tagger,
            optimizer,
            peak_lr: lr,
            warmup,
            total,
        })
    }

    /// One update on `batch`.
    pub fn step(&mut self, batch: &[&TaggedSentence]) -> Result<TaggerStep> {
        let inputs = batch
            .iter()
            .map(|s| self.tagger.prepare(&s.words))
            .collect::<Result<Vec<_>>>()?;
        let tags = batch
            .iter()
            .map(|s| self.tagger.label_ids(&s.tags))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&TaggerInput> = inputs.iter().collect();
        let (loss, tokens) = self.tagger.loss(&refs, &tags)?;
        let grads = loss.backward()?;
        let step = self.optimizer.steps();
        let lr = linear_schedule(step, self.warmup, self.total, self.peak_lr);
        let grad_norm = self.optimizer.step(&grads, lr)?;
        Ok(TaggerStep {
            step: step + 1,
            loss: loss.to_scalar::<f32>()? as f64,
            lr,
            grad_norm,
            tokens,
        })
    }

    /// The tagger being trained.
    pub fn tagger(&self) -> &EntityTagger {
        &self.tagger
    }
}
