//! The trainable query tower: a copy of the retriever's BERT that embeds questions (pooling +
//! L2 normalisation, as the document tower did when the index was built).

use std::path::Path;

use candle_core::{Device, Tensor};
use ralm_models::bert::{l2_normalize, BertConfig, Mode, Pooling, TokenBatch};
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{RealmError, Result};
use crate::retriever::MAX_QUESTION_WORDPIECES;
use crate::trainable::TrainableBert;

/// BERT + pooling + L2 normalisation over questions, with trainable weights.
pub struct QueryTower {
    body: TrainableBert,
    pooling: Pooling,
}

impl QueryTower {
    /// Loads an HF BERT directory (the zero-shot encoder, or a saved query tower).
    pub fn load(dir: &Path, pooling: Pooling, device: &Device) -> Result<Self> {
        let (body, (), _) = TrainableBert::load(dir, device, None, |_| Ok(()))?;
        Self::assemble(body, pooling)
    }

    /// A randomly initialised tower (seeded), e.g. a tiny model for tests.
    pub fn new_random(
        config: &BertConfig,
        tokenizer: Tokenizer,
        tokenizer_path: &Path,
        pooling: Pooling,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let (body, ()) = TrainableBert::build(
            config,
            tokenizer,
            tokenizer_path.to_path_buf(),
            device,
            |_| Ok(()),
        )?;
        body.reinit(seed, |_| true)?;
        Self::assemble(body, pooling)
    }

    fn assemble(body: TrainableBert, pooling: Pooling) -> Result<Self> {
        let mut tower = Self { body, pooling };
        // Questions are cut where the retriever cuts them.
        tower.set_max_len(MAX_QUESTION_WORDPIECES)?;
        Ok(tower)
    }

    /// Cuts texts to `max_len` wordpieces (`[CLS]` and `[SEP]` included), e.g. the passage
    /// length for a document tower.
    pub fn set_max_len(&mut self, max_len: usize) -> Result<()> {
        self.body
            .tokenizer_mut()
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| RealmError::Tokenizer(e.to_string()))?;
        Ok(())
    }

    /// How token vectors are pooled.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// The trainable body.
    pub fn body(&self) -> &TrainableBert {
        &self.body
    }

    /// Unit vectors `[n, dim]` for `questions`.
    pub fn embed(&self, questions: &[&str], mode: Mode) -> Result<Tensor> {
        let encodings = self
            .body
            .tokenizer()
            .encode_batch(questions.to_vec(), true)
            .map_err(|e| RealmError::Tokenizer(e.to_string()))?;
        let refs: Vec<_> = encodings.iter().collect();
        let batch = TokenBatch::new(
            &refs,
            self.body.bert().config().pad_token_id,
            self.body.device(),
        )?;
        self.embed_batch(&batch, mode)
    }

    /// Unit vectors `[b, dim]` of an already tokenized batch.
    pub fn embed_batch(&self, batch: &TokenBatch, mode: Mode) -> Result<Tensor> {
        let (hidden, mask) = self.body.hidden_states_of(batch, mode)?;
        Ok(l2_normalize(&self.pooling.pool(&hidden, &mask)?)?)
    }

    /// Writes the tower as an HF BERT directory, loadable by the dense retriever.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.body.save(dir)
    }
}
