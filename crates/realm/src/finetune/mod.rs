//! REALM fine-tuning for open-domain QA: the query tower and the extractive reader are trained
//! on the marginal likelihood of the gold answer over the top-k retrieved passages; the
//! document tower and the index stay frozen, and `p(z|x)` is recomputed from the query tower
//! against the stored passage vectors so gradients reach it.
//!
//! A checkpoint directory holds `finetune.json` (step, settings, and the provenance of the
//! document encoder the query tower was trained against), `reader/` and `query/` (HF BERT
//! directories) and `optimizer.safetensors` (AdamW moments).

pub mod adamw;
pub mod loss;
pub mod query;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};
use ralm_models::bert::{Mode, Pooling};
use serde::{Deserialize, Serialize};

use crate::data::{read_json, QaExample};
use crate::error::{RealmError, Result};
use crate::fsutil::{replace_dir, write_atomic};
use crate::passages::document_of;
use crate::qa_index::QaIndex;
use crate::reader::{span_scores, ExtractiveReader, ReaderInput, ReaderOptions, SpanMatcher};
use crate::retriever::DenseEncoder;
use adamw::{linear_schedule, AdamW, AdamWConfig};
use loss::marginal_loss;
use query::QueryTower;

/// Name of the checkpoint directory inside a training output directory.
pub const CHECKPOINT_DIR: &str = "checkpoint";
const STATE_FILE: &str = "finetune.json";
const READER_DIR: &str = "reader";
const QUERY_DIR: &str = "query";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const FORMAT: &str = "ralm-realm-finetune";
const VERSION: u32 = 1;

/// Fine-tuning settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FineTuneConfig {
    /// Passages retrieved per question.
    pub k: usize,
    /// Scale of inner products in `p(z|x) = softmax(scale · q·d)`.
    pub scale: f64,
    /// Questions per update.
    pub batch_size: usize,
    /// Updates in the whole run (the schedule decays to 0 there).
    pub total_steps: usize,
    /// Linear warmup updates.
    pub warmup_steps: usize,
    /// Peak learning rate of the reader.
    pub lr: f64,
    /// Peak learning rate of the query tower.
    pub query_lr: f64,
    /// AdamW weight decay of matrices.
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
    /// Warm start: the first this many updates train the reader on the gold passage only.
    pub gold_steps: usize,
    /// Reader input and span limits.
    pub reader: ReaderOptions,
    /// Pooling of both towers (`mean` or `cls`).
    pub pooling: String,
    /// Seed of the reader head's initialisation.
    pub seed: u64,
}

impl FineTuneConfig {
    fn validate(&self) -> Result<Pooling> {
        if self.k == 0 || self.batch_size == 0 || self.total_steps == 0 {
            return Err(RealmError::Invalid(
                "k, batch size and total steps must be at least 1".into(),
            ));
        }
        if !(self.lr > 0.0 && self.query_lr >= 0.0 && self.scale > 0.0) {
            return Err(RealmError::Invalid(
                "learning rates must be positive (query_lr may be 0) and scale > 0".into(),
            ));
        }
        self.pooling.parse().map_err(RealmError::Invalid)
    }
}

/// What `finetune.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    pub format: String,
    pub version: u32,
    /// Updates taken.
    pub step: usize,
    pub config: FineTuneConfig,
    /// Provenance of the document encoder whose index vectors the query tower was trained
    /// against: a QA index built by that encoder accepts this query tower.
    pub document_encoder: serde_json::Value,
}

/// The checkpoint directory of `path`: `path` itself when it holds `finetune.json`, else
/// `path/checkpoint`.
pub fn checkpoint_dir(path: &Path) -> PathBuf {
    if path.join(STATE_FILE).is_file() {
        path.to_path_buf()
    } else {
        path.join(CHECKPOINT_DIR)
    }
}

/// Reads `finetune.json` of the checkpoint at (or under) `path`.
pub fn read_state(path: &Path) -> Result<CheckpointState> {
    let file = checkpoint_dir(path).join(STATE_FILE);
    let state: CheckpointState = read_json(&file)?;
    crate::data::check_format(&file, (&state.format, state.version), (FORMAT, VERSION))?;
    Ok(state)
}

/// Refuses a checkpoint trained against another document encoder than `encoder` (the one the
/// index was verified against), or one whose pooling differs from it.
fn check_document_encoder(
    state: &CheckpointState,
    encoder: &DenseEncoder,
    dir: &Path,
) -> Result<()> {
    if &state.document_encoder != encoder.provenance() {
        return Err(RealmError::Invalid(format!(
            "{}: the query tower was trained against document encoder {} but the index was built by {}; \
             fine-tune again against this index",
            dir.display(),
            state.document_encoder,
            encoder.provenance()
        )));
    }
    Ok(())
}

/// Checks that `encoder` can serve as the frozen document tower of a query tower with `pooling`.
fn check_tower_compatible(encoder: &DenseEncoder, pooling: Pooling) -> Result<()> {
    let p = encoder.provenance();
    let expected = format!("{pooling:?}").to_lowercase();
    if p["encoder_pooling"] != serde_json::json!(expected) {
        return Err(RealmError::Invalid(format!(
            "the document encoder pools with {} but the query tower with {expected}",
            p["encoder_pooling"]
        )));
    }
    if p["encoder_projection"] == serde_json::json!(true) {
        return Err(RealmError::Invalid(
            "fine-tuning a query tower for an encoder with a projection is not supported".into(),
        ));
    }
    Ok(())
}

/// A fine-tuned checkpoint opened for answering questions.
pub struct FineTuned {
    /// The fine-tuned query tower as a question encoder.
    pub query: DenseEncoder,
    /// The trained extractive reader.
    pub reader: ExtractiveReader,
    pub state: CheckpointState,
}

/// Opens the checkpoint at (or under) `path` for use with an index whose document encoder is
/// `document_encoder`; refused when the checkpoint was trained against another encoder.
pub fn open_checkpoint(
    path: &Path,
    document_encoder: &DenseEncoder,
    batch_size: usize,
    device: &Device,
) -> Result<FineTuned> {
    let dir = checkpoint_dir(path);
    let state = read_state(&dir)?;
    check_document_encoder(&state, document_encoder, &dir)?;
    let pooling = state.config.validate()?;
    let query = DenseEncoder::load(&dir.join(QUERY_DIR), pooling, batch_size, device)?;
    let reader = ExtractiveReader::load(
        &dir.join(READER_DIR),
        state.config.reader,
        state.config.seed,
        device,
    )?;
    Ok(FineTuned {
        query,
        reader,
        state,
    })
}

/// What one update did.
#[derive(Debug, Clone, Serialize)]
pub struct StepStats {
    /// Mean loss over the questions used (`None` when no question had a matching span).
    pub loss: Option<f64>,
    /// Questions whose passages had a span matching a gold answer.
    pub used: usize,
    /// Questions skipped (no match in their passages).
    pub skipped: usize,
    /// Wordpieces run through the reader and the query tower.
    pub tokens: usize,
    /// Reader learning rate of the update.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Whether this was a warm-start update on gold passages.
    pub gold_only: bool,
}

/// A question prepared for the loss: its passages, reader inputs and matching spans.
struct Prepared {
    question: usize,
    passages: Vec<usize>,
    inputs: Vec<ReaderInput>,
    spans: Vec<Vec<(usize, usize)>>,
    matching: Vec<Vec<u32>>,
}

/// Trains the query tower and the extractive reader against a frozen QA index.
pub struct Trainer<'a> {
    index: &'a QaIndex,
    reader: ExtractiveReader,
    query: QueryTower,
    optimizer: AdamW,
    config: FineTuneConfig,
    document_encoder: serde_json::Value,
    step: usize,
    /// Passages of each source document, for the gold-passage warm start.
    documents: HashMap<String, Vec<usize>>,
}

impl<'a> Trainer<'a> {
    /// Starts from the zero-shot encoder `bert_dir` (both the reader body and the query tower;
    /// the reader head is fresh). `document_encoder` must be the encoder `index` was opened with.
    pub fn new(
        index: &'a QaIndex,
        document_encoder: &DenseEncoder,
        bert_dir: &Path,
        config: FineTuneConfig,
        device: &Device,
    ) -> Result<Self> {
        let pooling = config.validate()?;
        check_tower_compatible(document_encoder, pooling)?;
        let reader = ExtractiveReader::load(bert_dir, config.reader, config.seed, device)?;
        let query = QueryTower::load(bert_dir, pooling, device)?;
        Self::assemble(
            index,
            document_encoder.provenance().clone(),
            reader,
            query,
            config,
            0,
        )
    }

    /// Builds a trainer from already constructed towers (e.g. tiny models in tests).
    pub fn from_parts(
        index: &'a QaIndex,
        document_encoder: &DenseEncoder,
        reader: ExtractiveReader,
        query: QueryTower,
        config: FineTuneConfig,
    ) -> Result<Self> {
        let pooling = config.validate()?;
        check_tower_compatible(document_encoder, pooling)?;
        Self::assemble(
            index,
            document_encoder.provenance().clone(),
            reader,
            query,
            config,
            0,
        )
    }

    /// Continues from the checkpoint at (or under) `path`, optimizer state included;
    /// `total_steps` may be raised to train further.
    pub fn resume(
        index: &'a QaIndex,
        document_encoder: &DenseEncoder,
        path: &Path,
        total_steps: Option<usize>,
        device: &Device,
    ) -> Result<Self> {
        let dir = checkpoint_dir(path);
        let state = read_state(&dir)?;
        check_document_encoder(&state, document_encoder, &dir)?;
        let mut config = state.config.clone();
        if let Some(t) = total_steps {
            config.total_steps = t;
        }
        let pooling = config.validate()?;
        let reader =
            ExtractiveReader::load(&dir.join(READER_DIR), config.reader, config.seed, device)?;
        let query = QueryTower::load(&dir.join(QUERY_DIR), pooling, device)?;
        let mut trainer = Self::assemble(
            index,
            state.document_encoder,
            reader,
            query,
            config,
            state.step,
        )?;
        let opt_path = dir.join(OPTIMIZER_FILE);
        trainer.optimizer.load_file(&opt_path)?;
        Ok(trainer)
    }

    fn assemble(
        index: &'a QaIndex,
        document_encoder: serde_json::Value,
        reader: ExtractiveReader,
        query: QueryTower,
        config: FineTuneConfig,
        step: usize,
    ) -> Result<Self> {
        let adam = AdamWConfig {
            weight_decay: config.weight_decay,
            max_grad_norm: config.max_grad_norm,
            ..AdamWConfig::default()
        };
        let optimizer = AdamW::new(
            &[
                ("reader.", reader.body().varmap(), 1.0),
                ("query.", query.body().varmap(), config.query_lr / config.lr),
            ],
            adam,
        )?;
        let mut documents: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, p) in index.passages().iter().enumerate() {
            documents
                .entry(document_of(&p.id).to_string())
                .or_default()
                .push(i);
        }
        Ok(Self {
            index,
            reader,
            query,
            optimizer,
            config,
            document_encoder,
            step,
            documents,
        })
    }

    /// Updates taken so far.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// The settings.
    pub fn config(&self) -> &FineTuneConfig {
        &self.config
    }

    /// The reader being trained.
    pub fn reader(&self) -> &ExtractiveReader {
        &self.reader
    }

    /// The query tower being trained.
    pub fn query(&self) -> &QueryTower {
        &self.query
    }

    /// Passages each question is read against: the query tower's top-k, or (warm start) the
    /// passages of its gold document.
    fn candidates(&self, batch: &[QaExample], gold_only: bool) -> Result<Vec<Vec<usize>>> {
        if gold_only {
            return Ok(batch
                .iter()
                .map(|ex| {
                    ex.gold_passage
                        .as_deref()
                        .and_then(|g| self.documents.get(g))
                        .cloned()
                        .unwrap_or_default()
                })
                .collect());
        }
        let questions: Vec<&str> = batch.iter().map(|e| e.question.as_str()).collect();
        let q = self
            .query
            .embed(&questions, Mode::Inference)?
            .to_vec2::<f32>()?;
        q.iter()
            .map(|row| {
                Ok(self
                    .index
                    .dense(row, self.config.k)?
                    .into_iter()
                    .map(|(i, _)| i)
                    .collect())
            })
            .collect()
    }

    /// Reader inputs and matching spans of each question; questions without any are dropped.
    fn prepare(&self, batch: &[QaExample], candidates: Vec<Vec<usize>>) -> Result<Vec<Prepared>> {
        let all = self.index.passages();
        let mut out = Vec::new();
        for (question, (ex, passages)) in batch.iter().zip(candidates).enumerate() {
            let matcher = SpanMatcher::for_example(ex);
            let inputs = passages
                .iter()
                .map(|&i| self.reader.prepare(&ex.question, &all[i]))
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&ReaderInput> = inputs.iter().collect();
            let spans = self.reader.spans(&refs);
            let matching: Vec<Vec<u32>> = inputs
                .iter()
                .zip(&passages)
                .zip(&spans)
                .map(|((input, &i), spans)| {
                    spans
                        .iter()
                        .enumerate()
                        .filter(|(_, &s)| matcher.matches(input.span_text(&all[i].text, s)))
                        .map(|(j, _)| j as u32)
                        .collect()
                })
                .collect();
            if matching.iter().any(|m| !m.is_empty()) {
                out.push(Prepared {
                    question,
                    passages,
                    inputs,
                    spans,
                    matching,
                });
            }
        }
        Ok(out)
    }

    /// `log p(z|x)` `[k]` of one question's passages from its query embedding `q` `[dim]`.
    fn log_p_z(&self, q: &Tensor, passages: &[usize]) -> Result<Tensor> {
        let dim = q.dim(0)?;
        let rows: Vec<f32> = passages
            .iter()
            .flat_map(|&i| self.index.vector(i).iter().copied())
            .collect();
        let docs = Tensor::from_vec(rows, (passages.len(), dim), q.device())?;
        let scores = (docs.matmul(&q.unsqueeze(1)?)?.squeeze(1)? * self.config.scale)?;
        Ok(candle_nn::ops::log_softmax(&scores, D::Minus1)?)
    }

    /// The mean loss over `batch` (`None` when no question has a matching span) and the
    /// wordpieces it read. Used by [`step`](Self::step); exposed for checking.
    pub fn loss(
        &self,
        batch: &[QaExample],
        gold_only: bool,
    ) -> Result<(Option<Tensor>, usize, usize)> {
        let candidates = self.candidates(batch, gold_only)?;
        let prepared = self.prepare(batch, candidates)?;
        if prepared.is_empty() {
            return Ok((None, 0, 0));
        }
        let questions: Vec<&str> = prepared
            .iter()
            .map(|p| batch[p.question].question.as_str())
            .collect();
        let q = if gold_only {
            None
        } else {
            Some(self.query.embed(&questions, Mode::Train)?)
        };
        let mut tokens = 0;
        let mut total: Option<Tensor> = None;
        for (j, p) in prepared.iter().enumerate() {
            let log_p_z = match &q {
                Some(q) => self.log_p_z(&q.get(j)?, &p.passages)?,
                None => {
                    let n = p.passages.len();
                    Tensor::full(-(n as f32).ln(), n, self.reader.body().device())?
                }
            };
            let refs: Vec<&ReaderInput> = p.inputs.iter().collect();
            tokens += refs.iter().map(|i| i.ids.len()).sum::<usize>();
            let logits = self.reader.logits(&refs, Mode::Train)?;
            let scores = span_scores(&logits, &refs, &p.spans)?;
            if let Some(l) = marginal_loss(&log_p_z, &scores, &p.matching)? {
                total = Some(match total {
                    Some(t) => (t + l)?,
                    None => l,
                });
            }
        }
        let used = prepared.len();
        let mean = total.map(|t| t / used as f64).transpose()?;
        Ok((mean, used, tokens))
    }

    /// One AdamW update on `batch`.
    pub fn step(&mut self, batch: &[QaExample]) -> Result<StepStats> {
        let gold_only = self.step < self.config.gold_steps;
        let lr = linear_schedule(
            self.step,
            self.config.warmup_steps,
            self.config.total_steps,
            self.config.lr,
        );
        let (loss, used, tokens) = self.loss(batch, gold_only)?;
        let mut stats = StepStats {
            loss: None,
            used,
            skipped: batch.len() - used,
            tokens,
            lr,
            grad_norm: 0.0,
            gold_only,
        };
        if let Some(loss) = loss {
            stats.loss = Some(loss.to_scalar::<f32>()? as f64);
            let grads = loss.backward()?;
            stats.grad_norm = self.optimizer.step(&grads, lr)?;
        }
        self.step += 1;
        Ok(stats)
    }

    /// Writes the checkpoint to `out/checkpoint` atomically (built beside it, then renamed
    /// into place) and returns its path.
    pub fn save(&self, out: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(out).map_err(|e| RealmError::io(out, e))?;
        let dir = out.join(CHECKPOINT_DIR);
        replace_dir(&dir, |tmp| {
            self.reader.save(&tmp.join(READER_DIR))?;
            self.query.save(&tmp.join(QUERY_DIR))?;
            self.optimizer.save_file(&tmp.join(OPTIMIZER_FILE))?;
            let state = CheckpointState {
                format: FORMAT.into(),
                version: VERSION,
                step: self.step,
                config: self.config.clone(),
                document_encoder: self.document_encoder.clone(),
            };
            let bytes = serde_json::to_vec_pretty(&state)
                .map_err(|e| RealmError::Invalid(format!("checkpoint state: {e}")))?;
            write_atomic(&tmp.join(STATE_FILE), |w| {
                std::io::Write::write_all(w, &bytes)
            })
        })?;
        Ok(dir)
    }
}
