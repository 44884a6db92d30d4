//! The extractive reader (REALM's): BERT over `[CLS] question [SEP] title [SEP] passage [SEP]`
//! with a linear start/end head; an answer is a span of at most `max_span_len` wordpieces of
//! the passage, scored `start[s] + end[e]`, and `p(s|z,x)` is the softmax over all valid spans.

pub mod spans;

use std::path::Path;

use candle_core::{Device, Module, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};
use ralm_models::bert::{BertConfig, Mode, TokenBatch};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::data::read_json;
use crate::error::{RealmError, Result};
use crate::fsutil::write_atomic;
use crate::passages::Passage;
use crate::trainable::TrainableBert;
pub use spans::{ReaderInput, SpanMatcher, SpecialIds};

/// Name of the start/end head's tensors (as in HF `BertForQuestionAnswering`).
const HEAD: &str = "qa_outputs";
/// The reader's own settings, stored beside the BERT files.
const READER_FILE: &str = "reader.json";
/// Spans per passage kept as answer candidates at inference.
pub const SPANS_PER_PASSAGE: usize = 20;

/// Input and span limits of the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderOptions {
    /// Most tokens of `[CLS] question [SEP] title [SEP] passage [SEP]`.
    pub max_seq_len: usize,
    /// Most wordpieces of an answer span.
    pub max_span_len: usize,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        Self {
            max_seq_len: 320,
            max_span_len: 16,
        }
    }
}

/// Start and end logits `[b, t]` of a batch of reader inputs.
pub struct SpanLogits {
    pub start: Tensor,
    pub end: Tensor,
}

/// One passage's best answer spans, with `p(s|z,x)`, best first.
#[derive(Debug, Clone)]
pub struct PassageAnswers {
    pub spans: Vec<(String, f64)>,
}

/// BERT plus a linear start/end head, trainable.
pub struct ExtractiveReader {
    body: TrainableBert,
    head: Linear,
    special: SpecialIds,
    options: ReaderOptions,
}

fn head(cfg: &BertConfig) -> impl FnOnce(VarBuilder) -> candle_core::Result<Linear> + '_ {
    move |vb| {
        let vb = vb.pp(HEAD);
        let w = vb.get_with_hints((2, cfg.hidden_size), "weight", Init::Const(0.0))?;
        let b = vb.get_with_hints(2, "bias", Init::Const(0.0))?;
        Ok(Linear::new(w, Some(b)))
    }
}

impl ExtractiveReader {
    /// A reader on a randomly initialised body (seeded), e.g. a tiny model for tests.
    pub fn new_random(
        config: &BertConfig,
        tokenizer: Tokenizer,
        tokenizer_path: &Path,
        options: ReaderOptions,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let (body, head) = TrainableBert::build(
            config,
            tokenizer,
            tokenizer_path.to_path_buf(),
            device,
            head(config),
        )?;
        body.reinit(seed, |_| true)?;
        Self::assemble(body, head, options)
    }

    /// Loads `dir`: a reader checkpoint (its head and `reader.json` are used), or a plain HF
    /// BERT directory such as MiniLM (fresh head drawn with `seed`, `options` used).
    pub fn load(dir: &Path, options: ReaderOptions, seed: u64, device: &Device) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join(ralm_models::bert::checkpoint::CONFIG_FILE))?;
        let (body, head, head_loaded) =
            TrainableBert::load(dir, device, Some(&format!("{HEAD}.")), head(&config))?;
        let options = if head_loaded {
            read_json(&dir.join(READER_FILE))?
        } else {
            body.reinit(seed, |n| n.starts_with(HEAD))?;
            options
        };
        Self::assemble(body, head, options)
    }

    fn assemble(body: TrainableBert, head: Linear, options: ReaderOptions) -> Result<Self> {
        if options.max_span_len == 0 {
            return Err(RealmError::Invalid(
                "max_span_len must be at least 1".into(),
            ));
        }
        let max_pos = body.bert().config().max_position_embeddings;
        if options.max_seq_len > max_pos || options.max_seq_len < spans::MIN_SEQ_LEN {
            return Err(RealmError::Invalid(format!(
                "max_seq_len {} must be in [{}, {max_pos}]",
                options.max_seq_len,
                spans::MIN_SEQ_LEN
            )));
        }
        Ok(Self {
            special: SpecialIds::of(body.tokenizer())?,
            body,
            head,
            options,
        })
    }

    /// Writes the reader as an HF BERT directory plus `qa_outputs.*` and `reader.json`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.body.save(dir)?;
        let bytes = serde_json::to_vec_pretty(&self.options)
            .map_err(|e| RealmError::Invalid(format!("reader options: {e}")))?;
        write_atomic(&dir.join(READER_FILE), |out| {
            std::io::Write::write_all(out, &bytes)
        })
    }

    /// The trainable body (its `VarMap` holds the head too).
    pub fn body(&self) -> &TrainableBert {
        &self.body
    }

    /// Input and span limits.
    pub fn options(&self) -> ReaderOptions {
        self.options
    }

    /// Tokenizes `question` with `passage` into one reader input.
    pub fn prepare(&self, question: &str, passage: &Passage) -> Result<ReaderInput> {
        ReaderInput::new(
            self.body.tokenizer(),
            self.special,
            question,
            &passage.title,
            &passage.text,
            self.options.max_seq_len,
        )
    }

    /// Start and end logits `[b, t]` for `inputs` (padded to the longest).
    pub fn logits(&self, inputs: &[&ReaderInput], mode: Mode) -> Result<SpanLogits> {
        let batch = pad(
            inputs,
            self.body.bert().config().pad_token_id,
            self.body.device(),
        )?;
        let (hidden, _) = self.body.hidden_states_of(&batch, mode)?;
        let logits = self.head.forward(&hidden)?;
        Ok(SpanLogits {
            start: logits.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?,
            end: logits.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?,
        })
    }

    /// Valid answer spans of each input, in the order span scores are laid out.
    pub fn spans(&self, inputs: &[&ReaderInput]) -> Vec<Vec<(usize, usize)>> {
        inputs
            .iter()
            .map(|i| i.valid_spans(self.options.max_span_len))
            .collect()
    }

    /// Reads each passage (inference mode): its [`SPANS_PER_PASSAGE`] best spans with
    /// `p(s|z,x)` = softmax over all of the passage's valid spans.
    pub fn read(&self, question: &str, passages: &[&Passage]) -> Result<Vec<PassageAnswers>> {
        if passages.is_empty() {
            return Ok(Vec::new());
        }
        let inputs = passages
            .iter()
            .map(|p| self.prepare(question, p))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&ReaderInput> = inputs.iter().collect();
        let logits = self.logits(&refs, Mode::Inference)?;
        let spans = self.spans(&refs);
        let scores = span_scores(&logits, &refs, &spans)?;
        passages
            .iter()
            .zip(&inputs)
            .zip(spans.iter().zip(scores))
            .map(|((p, input), (spans, scores))| {
                let scores: Vec<f32> = scores.to_vec1()?;
                Ok(best_spans(input, &p.text, spans, &scores))
            })
            .collect()
    }
}

/// The [`SPANS_PER_PASSAGE`] best spans of one passage with their softmax probabilities.
fn best_spans(
    input: &ReaderInput,
    text: &str,
    spans: &[(usize, usize)],
    scores: &[f32],
) -> PassageAnswers {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = scores.iter().map(|&s| (s as f64 - max).exp()).sum();
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    PassageAnswers {
        spans: order
            .into_iter()
            .take(SPANS_PER_PASSAGE)
            .map(|i| {
                let p = (scores[i] as f64 - max).exp() / z;
                (input.span_text(text, spans[i]).to_string(), p)
            })
            .collect(),
    }
}

/// Pads reader inputs into one batch.
fn pad(inputs: &[&ReaderInput], pad_id: u32, device: &Device) -> Result<TokenBatch> {
    let rows: Vec<(&[u32], &[u32])> = inputs
        .iter()
        .map(|i| (i.ids.as_slice(), i.type_ids.as_slice()))
        .collect();
    pad_rows(&rows, pad_id, device)
}

/// A batch of `(token ids, token types)` rows padded to the longest with `pad_id`.
pub(crate) fn pad_rows(
    rows: &[(&[u32], &[u32])],
    pad_id: u32,
    device: &Device,
) -> Result<TokenBatch> {
    let b = rows.len();
    let t = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    if b == 0 || t == 0 {
        return Err(RealmError::Invalid("no token rows to batch".into()));
    }
    let mut ids = vec![pad_id; b * t];
    let mut types = vec![0u32; b * t];
    let mut mask = vec![0f32; b * t];
    for (row, (row_ids, row_types)) in rows.iter().enumerate() {
        let r = row * t..row * t + row_ids.len();
        ids[r.clone()].copy_from_slice(row_ids);
        types[r.clone()].copy_from_slice(row_types);
        mask[r].fill(1.0);
    }
    Ok(TokenBatch {
        ids: Tensor::from_vec(ids, (b, t), device)?,
        type_ids: Tensor::from_vec(types, (b, t), device)?,
        mask: Tensor::from_vec(mask, (b, t), device)?,
        lengths: rows.iter().map(|r| r.0.len()).collect(),
    })
}

/// `start[s] + end[e]` for every span of every input: one 1-D tensor per input (differentiable).
pub fn span_scores(
    logits: &SpanLogits,
    inputs: &[&ReaderInput],
    spans: &[Vec<(usize, usize)>],
) -> Result<Vec<Tensor>> {
    let (_, t) = logits.start.dims2()?;
    let (mut starts, mut ends) = (Vec::new(), Vec::new());
    for (row, (input, spans)) in inputs.iter().zip(spans).enumerate() {
        let base = (row * t + input.passage_start) as u32;
        for &(s, e) in spans {
            starts.push(base + s as u32);
            ends.push(base + e as u32);
        }
    }
    let device = logits.start.device();
    let pick = |flat: &Tensor, idx: Vec<u32>| -> Result<Tensor> {
        let n = idx.len();
        Ok(flat.index_select(&Tensor::from_vec(idx, n, device)?, 0)?)
    };
    let all =
        (pick(&logits.start.flatten_all()?, starts)? + pick(&logits.end.flatten_all()?, ends)?)?;
    let mut out = Vec::with_capacity(spans.len());
    let mut at = 0;
    for s in spans {
        out.push(all.narrow(0, at, s.len())?);
        at += s.len();
    }
    Ok(out)
}
