//! REALM's pre-training objective: a masked sentence `x` (one salient span masked), the top-k
//! documents `z` retrieved for it plus the null document, and
//! `−log Σ_z p(z|x) p(y|z,x)`, where `p(z|x)` is the softmax of `scale · Embed_input(x) ·
//! Embed_doc(z)` over the candidates (both towers recomputed, so gradients reach them) and
//! `p(y|z,x)` is the product, over the masked wordpieces, of the knowledge-augmented encoder's
//! probability of the original token given `[CLS] x [SEP] z [SEP]`.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor, D};
use ralm_models::bert::{BertForMaskedLM, Mode, Pooling, TokenBatch};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::error::{RealmError, Result};
use crate::finetune::adamw::{linear_schedule, AdamW, AdamWConfig};
use crate::finetune::loss::logsumexp;
use crate::finetune::query::QueryTower;
use crate::fsutil::{replace_dir, write_atomic};
use crate::passages::{document_of, Passage, MAX_PASSAGE_WORDPIECES};
use crate::reader::spans::vocab_id;
use crate::reader::{pad_rows, SpecialIds};
use crate::refresh::{DocSnapshot, SnapshotSlot};
use crate::retriever::passage_text;

mod examples;
mod lm_reader;

pub use lm_reader::{LmReader, LmSentence};

pub use examples::{
    masked_sentences, read_examples, split_sentences, warm_up_passages, write_examples,
    MaskedSentence,
};

/// A masked sentence tokenized: wordpieces with the span's pieces replaced by `[MASK]`, and
/// the masked positions with their original ids.
#[derive(Debug, Clone)]
pub struct MaskedTokens {
    /// Wordpieces of the sentence (no special tokens), masked.
    pub ids: Vec<u32>,
    /// Positions in `ids` that are masked.
    pub positions: Vec<usize>,
    /// Original ids at those positions.
    pub targets: Vec<u32>,
}

/// Token ids the pre-training inputs are built with.
#[derive(Debug, Clone, Copy)]
pub struct Specials {
    pub cls: u32,
    pub sep: u32,
    pub mask: u32,
    pub pad: u32,
}

impl Specials {
    /// Looks `[CLS]`, `[SEP]` and `[MASK]` up in `tokenizer`; `pad` is the model's padding id.
    pub fn of(tokenizer: &Tokenizer, pad: u32) -> Result<Self> {
        let SpecialIds { cls, sep } = SpecialIds::of(tokenizer)?;
        Ok(Self {
            cls,
            sep,
            mask: vocab_id(tokenizer, "[MASK]")?,
            pad,
        })
    }
}

/// Tokenizes `s` and masks every wordpiece that overlaps its span. A sentence longer than
/// `max_pieces` wordpieces is cut to a window of that many that keeps the span (its start when
/// the span itself is longer); an error when the span covers no wordpiece at all.
pub fn mask_sentence(
    tokenizer: &Tokenizer,
    s: &MaskedSentence,
    max_pieces: usize,
    mask: u32,
) -> Result<MaskedTokens> {
    let enc = tokenizer
        .encode(s.text.as_str(), false)
        .map_err(|e| RealmError::Tokenizer(e.to_string()))?;
    let covered: Vec<usize> = (enc.get_offsets().iter().enumerate())
        .filter(|(_, &(a, b))| a < s.span.1 && s.span.0 < b)
        .map(|(i, _)| i)
        .collect();
    let (Some(&first), Some(&last)) = (covered.first(), covered.last()) else {
        return Err(RealmError::Invalid(format!(
            "the span {:?} of {:?} covers no wordpiece",
            s.span, s.text
        )));
    };
    let start = (last + 1).saturating_sub(max_pieces).min(first);
    let end = enc.len().min(start + max_pieces);
    let mut ids = enc.get_ids()[start..end].to_vec();
    let (mut positions, mut targets) = (Vec::new(), Vec::new());
    for i in covered.into_iter().filter(|&i| i < end) {
        positions.push(i - start);
        targets.push(ids[i - start]);
        ids[i - start] = mask;
    }
    Ok(MaskedTokens {
        ids,
        positions,
        targets,
    })
}

/// The knowledge-augmented encoder.
#[allow(clippy::large_enum_variant)] // one per run: boxing would only add an indirection
pub enum Reader {
    /// BERT with an MLM head over `[CLS] x [SEP] z [SEP]`, trained with the towers.
    Mlm(BertForMaskedLM),
    /// A frozen causal LM over `z`, then `x` up to the span: only the towers train.
    Lm(LmReader),
}

impl Reader {
    /// The BERT MLM reader (`None` for a frozen LM).
    pub fn mlm(&self) -> Option<&BertForMaskedLM> {
        match self {
            Reader::Mlm(m) => Some(m),
            Reader::Lm(_) => None,
        }
    }

    /// The BERT MLM reader, or an error saying that `what` needs one.
    fn trainable(&self, what: &str) -> Result<&BertForMaskedLM> {
        self.mlm().ok_or_else(|| {
            RealmError::Invalid(format!("{what} needs a BERT MLM reader, not a frozen LM"))
        })
    }
}

/// The three models REALM pre-trains (two when the reader is a frozen LM), and how their inputs
/// are built.
pub struct RealmModels {
    /// The knowledge-augmented encoder.
    pub reader: Reader,
    /// Embeds masked sentences.
    pub input: QueryTower,
    /// Embeds documents (the index is built from a snapshot of it).
    pub docs: QueryTower,
    pub specials: Specials,
    /// Most wordpieces (tokens, for an LM reader) of a document in the reader's input.
    pub max_doc_pieces: usize,
    /// Scale of inner products in `p(z|x)`.
    pub scale: f64,
}

/// A masked sentence with the documents retrieved for it (the null document is added to them).
pub struct Example<'p> {
    pub x: MaskedTokens,
    pub docs: Vec<&'p Passage>,
    /// The sentence as an [`LmReader`] reads it (needed with one).
    pub lm: Option<LmSentence>,
}

/// The pieces of one sentence's loss, for logging and checking.
pub struct SentenceLoss {
    /// `−log Σ_z p(z|x) p(y|z,x)` (differentiable).
    pub loss: Tensor,
    /// `log p(z|x)` of the candidates, the null document last.
    pub log_p_z: Vec<f32>,
    /// `log p(y|z,x)` of the candidates, the null document last.
    pub log_p_y: Vec<f32>,
}

impl SentenceLoss {
    /// Retrieval utility of the top document: `log p(y|z_top,x) − log p(y|∅,x)`, with `z_top`
    /// the candidate of highest `p(z|x)` other than the null document (`None` without one).
    pub fn retrieval_utility(&self) -> Option<f32> {
        top_utility(&self.log_p_z, &self.log_p_y)
    }
}

/// `log p(y|z_top,x) − log p(y|∅,x)` of candidates scored `log p(z|x)` and `log p(y|z,x)`, the
/// null document last (`None` without another candidate).
fn top_utility(log_p_z: &[f32], log_p_y: &[f32]) -> Option<f32> {
    let null = log_p_y.len() - 1;
    let top = top_candidate(log_p_z)?;
    Some(log_p_y[top] - log_p_y[null])
}

/// The candidate of highest `p(z|x)` other than the null document (last), `None` without one.
fn top_candidate(log_p_z: &[f32]) -> Option<usize> {
    let null = log_p_z.len().checked_sub(1)?;
    (0..null).max_by(|&a, &b| log_p_z[a].total_cmp(&log_p_z[b]))
}

/// One sentence's candidates scored: `log p(z|x)` `[n]` and the reader's log-probabilities
/// `[n, masked, vocab]` at its masked tokens, the null document last, and those tokens' ids.
struct Scored {
    log_p_z: Tensor,
    log_probs: Tensor,
    targets: Vec<u32>,
}

impl Scored {
    /// `log p(y|z,x)` `[n]` of every candidate: the sum of its targets' log-probabilities.
    fn log_p_y(&self) -> Result<Tensor> {
        let (n, m, _) = self.log_probs.dims3()?;
        let targets: Vec<u32> = (0..n).flat_map(|_| self.targets.iter().copied()).collect();
        let gold = self
            .log_probs
            .reshape((n * m, ()))?
            .gather(
                &Tensor::new(targets.as_slice(), self.log_probs.device())?.unsqueeze(1)?,
                1,
            )?
            .reshape((n, m))?;
        Ok(gold.sum(D::Minus1)?)
    }
}

impl RealmModels {
    /// The models around `reader` (a BERT MLM, its head fresh when the directory has none, or a
    /// frozen LM): the input and document towers from HF BERT directories `dirs`, pooled with
    /// `pooling`, documents cut to `doc_max_len` wordpieces for the document tower and to
    /// `max_doc_pieces` for the reader.
    pub fn load(
        reader: Reader,
        dirs: [&Path; 2],
        pooling: Pooling,
        doc_max_len: usize,
        max_doc_pieces: usize,
        scale: f64,
    ) -> Result<Self> {
        let [input, docs] = dirs;
        let device = match &reader {
            Reader::Mlm(m) => m.bert().word_embeddings().device().clone(),
            Reader::Lm(lm) => lm.device().clone(),
        };
        let mut docs = QueryTower::load(docs, pooling, &device)?;
        docs.set_max_len(doc_max_len)?;
        let pad = docs.body().bert().config().pad_token_id;
        Ok(Self {
            specials: Specials::of(docs.body().tokenizer(), pad)?,
            reader,
            input: QueryTower::load(input, pooling, &device)?,
            docs,
            max_doc_pieces,
            scale,
        })
    }

    /// Writes the reader to `dir` (replaced whole) as an HF `BertForMaskedLM` directory.
    pub fn save_reader(&self, dir: &Path) -> Result<()> {
        let reader = self.reader.trainable("saving the reader")?;
        replace_dir(dir, |tmp| Ok(reader.save(tmp)?))
    }

    /// Wordpieces the document tower reads of a document (its tokenizer's truncation).
    fn doc_max_len(&self) -> usize {
        self.docs
            .body()
            .tokenizer()
            .get_truncation()
            .map_or(MAX_PASSAGE_WORDPIECES, |t| t.max_length)
    }

    fn device(&self) -> &Device {
        self.docs.body().device()
    }

    /// `[CLS] x [SEP]`: the input tower's and the reader's view of masked sentence `x`.
    fn query_ids(&self, x: &MaskedTokens) -> Vec<u32> {
        let mut query = Vec::with_capacity(x.ids.len() + 2);
        query.push(self.specials.cls);
        query.extend(&x.ids);
        query.push(self.specials.sep);
        query
    }

    /// `[CLS] x [SEP] z [SEP]` with token types 0 then 1: the reader's input for `query`
    /// (`[CLS] x [SEP]`) and the wordpieces `z` of a document, cut to `max_doc_pieces`.
    fn reader_row(&self, query: &[u32], z: &[u32]) -> (Vec<u32>, Vec<u32>) {
        let z = &z[..z.len().min(self.max_doc_pieces)];
        let mut ids = query.to_vec();
        ids.extend(z);
        ids.push(self.specials.sep);
        let mut types = vec![0u32; query.len()];
        types.resize(ids.len(), 1);
        (ids, types)
    }

    /// Whether the reader, reading `passage`, sees the masked wordpieces of `x` in it: their
    /// original ids, in order, within the passage's first `max_doc_pieces` wordpieces.
    pub fn holds_span(&self, x: &MaskedTokens, passage: &Passage) -> Result<bool> {
        let enc = self
            .docs
            .body()
            .tokenizer()
            .encode(passage_text(passage), false)
            .map_err(|e| RealmError::Tokenizer(e.to_string()))?;
        let ids = enc.get_ids();
        let seen = &ids[..ids.len().min(self.max_doc_pieces)];
        Ok(!x.targets.is_empty() && seen.windows(x.targets.len()).any(|w| w == x.targets))
    }

    /// Whether each of the example's documents [holds its span](Self::holds_span).
    fn span_holders(&self, e: &Example) -> Result<Vec<bool>> {
        e.docs.iter().map(|p| self.holds_span(&e.x, p)).collect()
    }

    /// The input tower's unit vectors `[n, dim]` of `queries` (ids), in one forward pass.
    fn embed_queries(&self, queries: &[Vec<u32>], mode: Mode) -> Result<Tensor> {
        let zeros: Vec<Vec<u32>> = queries.iter().map(|q| vec![0u32; q.len()]).collect();
        let rows: Vec<(&[u32], &[u32])> = queries
            .iter()
            .zip(&zeros)
            .map(|(q, z)| (q.as_slice(), z.as_slice()))
            .collect();
        self.input
            .embed_batch(&pad_rows(&rows, self.specials.pad, self.device())?, mode)
    }

    /// Every example's candidates (its documents, then the null document) scored, with one
    /// forward pass of each model over the whole batch, and the wordpieces read. `mode` sets
    /// dropout and differentiable ops for all three models.
    fn distributions(&self, examples: &[Example], mode: Mode) -> Result<(Vec<Scored>, usize)> {
        let sp = self.specials;
        let device = self.device().clone();
        // p(z|x): each masked sentence against its candidates and the empty document.
        let queries: Vec<Vec<u32>> = examples.iter().map(|e| self.query_ids(&e.x)).collect();
        let q = self.embed_queries(&queries, mode)?;
        let (mut texts, mut owner) = (Vec::new(), Vec::new());
        for (i, e) in examples.iter().enumerate() {
            texts.extend(e.docs.iter().map(|p| passage_text(p)));
            texts.push(String::new());
            owner.extend(std::iter::repeat_n(i, e.docs.len() + 1));
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        // One tokenization serves both: `[CLS] z [SEP]` for the document tower, its inner
        // wordpieces for the reader.
        let doc_enc = self
            .docs
            .body()
            .tokenizer()
            .encode_batch(refs, true)
            .map_err(|e| RealmError::Tokenizer(e.to_string()))?;
        let grouping = Grouping {
            heads: self.docs.body().bert().config().num_attention_heads,
            budget: attention_budget(&device),
            pad: sp.pad,
            device: &device,
        };
        let doc_rows: Vec<(Vec<u32>, Vec<u32>)> = doc_enc
            .iter()
            .map(|e| (e.get_ids().to_vec(), e.get_type_ids().to_vec()))
            .collect();
        let d = grouped_forward(
            &doc_rows,
            &vec![1; doc_rows.len()],
            &grouping,
            |batch, _| self.docs.embed_batch(batch, mode),
        )?;
        let owners: Vec<u32> = owner.iter().map(|&i| i as u32).collect();
        let q_rows = q.index_select(&Tensor::new(owners.as_slice(), &device)?, 0)?;
        let scores = ((d * q_rows)?.sum(1)? * self.scale)?;

        let (log_probs, targets, reader_tokens) = match &self.reader {
            Reader::Mlm(bert) => {
                self.mlm_log_probs(bert, examples, &queries, &doc_enc, &owner, &grouping, mode)?
            }
            Reader::Lm(lm) => self.lm_log_probs(lm, examples, &grouping)?,
        };
        let v = log_probs.dim(1)?;
        let (mut row, mut at) = (0, 0);
        let mut scored = Vec::with_capacity(examples.len());
        for (e, targets) in examples.iter().zip(targets) {
            let (n, m) = (e.docs.len() + 1, targets.len());
            scored.push(Scored {
                log_p_z: candle_nn::ops::log_softmax(&scores.narrow(0, row, n)?, D::Minus1)?,
                log_probs: log_probs.narrow(0, at, n * m)?.reshape((n, m, v))?,
                targets,
            });
            row += n;
            at += n * m;
        }
        // Input tower, reader rows, document tower.
        let tokens = queries.iter().map(Vec::len).sum::<usize>()
            + reader_tokens
            + doc_enc.iter().map(|e| e.len()).sum::<usize>();
        Ok((scored, tokens))
    }

    /// The BERT reader's log-probabilities `[Σ candidates × masked, vocab]` over `[CLS] x [SEP]
    /// z [SEP]` for every candidate (`doc_enc`, the null document's empty, of sentence
    /// `owner[row]`), each sentence's masked wordpieces, and the tokens read.
    #[allow(clippy::too_many_arguments)]
    fn mlm_log_probs(
        &self,
        bert: &BertForMaskedLM,
        examples: &[Example],
        queries: &[Vec<u32>],
        doc_enc: &[tokenizers::Encoding],
        owner: &[usize],
        grouping: &Grouping,
        mode: Mode,
    ) -> Result<(Tensor, Vec<Vec<u32>>, usize)> {
        let rows: Vec<(Vec<u32>, Vec<u32>)> = doc_enc
            .iter()
            .zip(owner)
            .map(|(e, &i)| self.reader_row(&queries[i], &e.get_ids()[1..e.len() - 1]))
            .collect();
        let masked: Vec<usize> = owner
            .iter()
            .map(|&i| examples[i].x.positions.len())
            .collect();
        let device = self.device();
        let picked = grouped_forward(&rows, &masked, grouping, |batch, group| {
            // A sentence's masked wordpieces sit at 1 + position in each of its rows.
            let t = batch.ids.dim(1)?;
            let mut flat = Vec::new();
            for (at, &row) in group.iter().enumerate() {
                let x = &examples[owner[row]].x;
                flat.extend(x.positions.iter().map(|&p| (at * t + 1 + p) as u32));
            }
            Ok(bert.logits_at(
                &batch.ids,
                &batch.type_ids,
                &batch.mask,
                &Tensor::new(flat.as_slice(), device)?,
                mode,
            )?)
        })?;
        let targets = examples.iter().map(|e| e.x.targets.clone()).collect();
        let tokens = rows.iter().map(|r| r.0.len()).sum();
        Ok((
            candle_nn::ops::log_softmax(&picked, D::Minus1)?,
            targets,
            tokens,
        ))
    }

    /// The frozen LM's log-probabilities `[Σ candidates × span tokens, vocab]` of every
    /// example's span after each of its documents and after none, the span's tokens, and the
    /// tokens read.
    fn lm_log_probs(
        &self,
        lm: &LmReader,
        examples: &[Example],
        grouping: &Grouping,
    ) -> Result<(Tensor, Vec<Vec<u32>>, usize)> {
        // Rows with all-zero token types, the form `grouped_forward` pads.
        let typed = |row: Vec<u32>| {
            let types = vec![0; row.len()];
            (row, types)
        };
        let (mut rows, mut outputs, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for e in examples {
            let x = e.lm.as_ref().ok_or_else(|| {
                RealmError::Invalid("an example without the LM reader's view of it".into())
            })?;
            for p in &e.docs {
                let z = lm.document(&passage_text(p), self.max_doc_pieces)?;
                rows.push(typed(lm.row(Some(&z), x)));
            }
            rows.push(typed(lm.row(None, x)));
            outputs.extend(std::iter::repeat_n(x.targets.len(), e.docs.len() + 1));
            targets.push(x.targets.clone());
        }
        let grouping = Grouping {
            heads: lm.heads(),
            ..*grouping
        };
        let log_probs = grouped_forward(&rows, &outputs, &grouping, |batch, group| {
            let m: Vec<usize> = group.iter().map(|&r| outputs[r]).collect();
            lm.target_log_probs(&batch.ids, &batch.lengths, &m)
        })?;
        let tokens = rows.iter().map(|r| r.0.len()).sum();
        Ok((log_probs, targets, tokens))
    }

    /// The loss of every example (the null document added last to its candidates), in training
    /// mode and one batch, and the tokens run through the models.
    pub fn sentence_losses(&self, examples: &[Example]) -> Result<(Vec<SentenceLoss>, usize)> {
        let (scored, tokens) = self.distributions(examples, Mode::Train)?;
        let mut losses = Vec::with_capacity(examples.len());
        for s in scored {
            let log_p_y = s.log_p_y()?;
            let loss = logsumexp(&(&s.log_p_z + &log_p_y)?)?.neg()?;
            losses.push(SentenceLoss {
                loss,
                log_p_z: s.log_p_z.to_vec1()?,
                log_p_y: log_p_y.to_vec1()?,
            });
        }
        Ok((losses, tokens))
    }

    /// Masked wordpieces (span tokens, for an LM reader) of each example predicted right, its
    /// top document's retrieval utility and whether its documents hold the span, one
    /// [`MaskedHits`] per example (inference mode; the LM
    /// reads the span's earlier tokens): by the most likely token under
    /// `Σ_z p(z|x) p(token|z,x)` over its documents and the null document, and by the null
    /// document alone.
    pub fn masked_accuracy(&self, examples: &[Example]) -> Result<Vec<MaskedHits>> {
        let (scored, _) = self.distributions(examples, Mode::Inference)?;
        let mut hits = Vec::with_capacity(scored.len());
        for (s, e) in scored.into_iter().zip(examples) {
            let n = s.log_probs.dim(0)?;
            let marginal = s
                .log_probs
                .exp()?
                .broadcast_mul(&s.log_p_z.exp()?.reshape((n, 1, 1))?)?
                .sum(0)?
                .argmax(D::Minus1)?
                .to_vec1::<u32>()?;
            let null = s
                .log_probs
                .get(n - 1)?
                .argmax(D::Minus1)?
                .to_vec1::<u32>()?;
            let right = |pred: &[u32]| pred.iter().zip(&s.targets).filter(|(a, b)| a == b).count();
            let log_p_z: Vec<f32> = s.log_p_z.to_vec1()?;
            let utility = top_utility(&log_p_z, &s.log_p_y()?.to_vec1()?);
            let holding = self.span_holders(e)?;
            hits.push(MaskedHits {
                span_top: usize::from(top_candidate(&log_p_z).is_some_and(|t| holding[t])),
                span_found: usize::from(holding.contains(&true)),
                with_retrieval: right(&marginal),
                null_only: right(&null),
                masked: s.targets.len(),
                utility: utility.unwrap_or(0.0) as f64,
                sentences: usize::from(utility.is_some()),
            });
        }
        Ok(hits)
    }
}

/// Bytes of one attention-score tensor `[rows, heads, len, len]` a forward pass may allocate.
/// glibc serves larger blocks with fresh `mmap`s, whose page faults cost more than the
/// arithmetic: a fifth of a step went to them with 20 documents of 288 wordpieces in one pass.
/// On a GPU, whose memory has no such cost, larger groups mean fewer kernel launches.
const ATTENTION_BYTES: usize = 24 << 20;

/// [`ATTENTION_BYTES`] on the CPU; 1 GiB on a GPU.
fn attention_budget(device: &Device) -> usize {
    if device.is_cpu() {
        ATTENTION_BYTES
    } else {
        1 << 30
    }
}

/// How [`grouped_forward`] batches rows.
struct Grouping<'d> {
    heads: usize,
    /// Most bytes of a group's attention scores (one row may exceed it alone).
    budget: usize,
    pad: u32,
    device: &'d Device,
}

/// Rows grouped for forward passes: longest first (little padding), each group's attention
/// scores `[rows, heads, len, len]` (f32) within `budget` bytes.
fn length_groups(lengths: &[usize], heads: usize, budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match groups.last_mut() {
            Some(g) if (g.len() + 1) * heads * lengths[g[0]].pow(2) * 4 <= budget => g.push(i),
            _ => groups.push(vec![i]),
        }
    }
    groups
}

/// Runs `forward` over `rows` (ids, type ids) in [`length_groups`]: it gets a group padded and
/// its row numbers, and returns `outputs[r]` leading rows for each row `r` of the group in
/// order. The results come back concatenated in the order of `rows`.
fn grouped_forward(
    rows: &[(Vec<u32>, Vec<u32>)],
    outputs: &[usize],
    how: &Grouping,
    forward: impl Fn(&TokenBatch, &[usize]) -> Result<Tensor>,
) -> Result<Tensor> {
    let lengths: Vec<usize> = rows.iter().map(|r| r.0.len()).collect();
    let (mut parts, mut start, mut at) = (Vec::new(), vec![0; rows.len()], 0);
    for group in length_groups(&lengths, how.heads, how.budget) {
        let refs: Vec<(&[u32], &[u32])> = group
            .iter()
            .map(|&r| (rows[r].0.as_slice(), rows[r].1.as_slice()))
            .collect();
        let part = forward(&pad_rows(&refs, how.pad, how.device)?, &group)?;
        for &r in &group {
            start[r] = at;
            at += outputs[r];
        }
        parts.push(part);
    }
    let order: Vec<u32> = (0..rows.len())
        .flat_map(|r| (start[r]..start[r] + outputs[r]).map(|i| i as u32))
        .collect();
    let all = Tensor::cat(&parts, 0)?;
    Ok(all.index_select(&Tensor::new(order.as_slice(), how.device)?, 0)?)
}

/// Masked wordpieces predicted right with retrieval and with the null document only, the
/// retrieval utility of the top document summed over the sentences that have one, and how many
/// sentences' documents hold their span.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MaskedHits {
    pub with_retrieval: usize,
    pub null_only: usize,
    pub masked: usize,
    pub utility: f64,
    /// Sentences with a retrieved document (those `utility` sums over).
    pub sentences: usize,
    /// Sentences whose top document (by `p(z|x)`) holds the masked wordpieces, and those with
    /// any retrieved document that does (as in [`RealmModels::holds_span`]).
    pub span_top: usize,
    pub span_found: usize,
}

impl MaskedHits {
    /// Mean retrieval utility of the top document (0 without any).
    pub fn mean_utility(&self) -> f64 {
        self.utility / self.sentences.max(1) as f64
    }
}

impl std::iter::Sum for MaskedHits {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |mut total, h| {
            total += h;
            total
        })
    }
}

impl std::ops::AddAssign for MaskedHits {
    fn add_assign(&mut self, other: Self) {
        self.with_retrieval += other.with_retrieval;
        self.null_only += other.null_only;
        self.masked += other.masked;
        self.utility += other.utility;
        self.sentences += other.sentences;
        self.span_top += other.span_top;
        self.span_found += other.span_found;
    }
}

/// The first `k` of `ranked` passages that do not come from `document` (REALM excludes the
/// sentence's own document, which would make retrieval trivial).
pub fn exclude_document(
    ranked: &[usize],
    passages: &[Passage],
    document: &str,
    k: usize,
) -> Vec<usize> {
    ranked
        .iter()
        .copied()
        .filter(|&i| document_of(&passages[i].id) != document)
        .take(k)
        .collect()
}

/// Pre-training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    /// Documents retrieved per sentence (the null document comes on top).
    pub k: usize,
    /// Peak learning rate of the knowledge-augmented encoder.
    pub lr: f64,
    /// Peak learning rate of the input and document towers.
    pub tower_lr: f64,
    /// Linear warmup updates, then linear decay to 0 at `total_steps`.
    pub warmup_steps: usize,
    pub total_steps: usize,
    /// Most wordpieces of a sentence.
    pub max_sentence_pieces: usize,
}

/// What one update did.
#[derive(Debug, Clone, Serialize)]
pub struct PretrainStep {
    pub step: usize,
    /// Mean loss over the batch.
    pub loss: f64,
    /// Mean retrieval utility of the top document over the batch.
    pub retrieval_utility: f64,
    /// Mean `p(∅|x)`.
    pub null_probability: f64,
    /// Share of the batch's sentences with a retrieved document that
    /// [holds the span](RealmModels::holds_span).
    pub span_found: f64,
    /// Learning rate of the reader (unused with a frozen LM)...
    pub lr: f64,
    /// ...and of the towers.
    pub tower_lr: f64,
    pub grad_norm: f64,
    /// Tokens run through the models (wordpieces; LM tokens for an LM reader's rows).
    pub tokens: usize,
    /// Version of the index snapshot the batch retrieved from.
    pub snapshot_version: u64,
    /// Updates taken since that snapshot's document-tower parameters were copied...
    pub staleness_steps: usize,
    /// ...and seconds.
    pub staleness_seconds: f64,
}

/// Trains the reader and both towers on masked sentences; `passages` are the knowledge corpus
/// and the current snapshot in `slot` (replaced by a [`Refresher`](crate::refresh::Refresher)
/// or fixed) chooses their top-k.
pub struct Pretrainer<'a> {
    passages: &'a [Passage],
    slot: Arc<SnapshotSlot>,
    models: RealmModels,
    optimizer: AdamW,
    config: PretrainConfig,
}

/// Extra candidates asked of the index so that `k` remain after dropping the sentence's own
/// document (a SQuAD article has up to about 50 paragraphs).
const EXCLUSION_MARGIN: usize = 64;

/// Passages (of the chosen [`EvidenceSource`]) [`Pretrainer::evidence`] looks through for one
/// that holds a sentence's span.
pub const EVIDENCE_DEPTH: usize = 16;

/// Where [`Pretrainer::evidence`] looks for a passage that holds a sentence's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvidenceSource {
    /// The sentence's own document, which holds the sentence itself: the easiest copy, the
    /// same words around the span.
    OwnDocument,
    /// Every other document, as in training (REALM's exclusion of trivial retrieval).
    OtherDocuments,
}

impl<'a> Pretrainer<'a> {
    /// A trainer over `passages`, retrieving from `slot` (whose snapshots cover `passages`).
    pub fn new(
        passages: &'a [Passage],
        slot: Arc<SnapshotSlot>,
        models: RealmModels,
        config: PretrainConfig,
    ) -> Result<Self> {
        if slot.current().len() != passages.len() {
            return Err(RealmError::Invalid(format!(
                "the index snapshot holds {} passages but the corpus {}",
                slot.current().len(),
                passages.len()
            )));
        }
        if config.k == 0 || config.total_steps == 0 || config.lr <= 0.0 || config.tower_lr < 0.0 {
            return Err(RealmError::Invalid(
                "k and total steps must be at least 1, lr positive and tower_lr not negative"
                    .into(),
            ));
        }
        let ratio = config.tower_lr / config.lr;
        let mut groups = vec![
            ("input.", models.input.body().varmap(), ratio),
            ("docs.", models.docs.body().varmap(), ratio),
        ];
        if let Some(reader) = models.reader.mlm() {
            groups.insert(0, ("reader.", reader.varmap(), 1.0));
        }
        let optimizer = AdamW::new(&groups, AdamWConfig::default())?;
        Ok(Self {
            passages,
            slot,
            models,
            optimizer,
            config,
        })
    }

    /// The models being trained.
    pub fn models(&self) -> &RealmModels {
        &self.models
    }

    /// Updates taken so far.
    pub fn step_count(&self) -> usize {
        self.optimizer.steps()
    }

    /// The sentences masked, each with its top-`k` passages from `snapshot` by the input tower
    /// (inference mode, one forward pass), passages of its own document excluded.
    ///
    /// The loss embeds the queries again, with dropout and gradient: the search needs the
    /// dropout-free vector, and the second pass over a few short sentences is a small share of
    /// the step next to the reader's `k + 1` long rows per sentence.
    fn prepare(
        &self,
        snapshot: &DocSnapshot,
        batch: &[MaskedSentence],
    ) -> Result<Vec<Example<'a>>> {
        let k = self.config.k;
        self.ranked(snapshot, batch, k + EXCLUSION_MARGIN)?
            .into_iter()
            .zip(batch)
            .map(|((x, ranked), s)| {
                let lm = match &self.models.reader {
                    Reader::Lm(lm) => Some(lm.sentence(s, self.config.max_sentence_pieces)?),
                    Reader::Mlm(_) => None,
                };
                Ok(Example {
                    x,
                    docs: (exclude_document(&ranked, self.passages, &s.document, k).iter())
                        .map(|&i| &self.passages[i])
                        .collect(),
                    lm,
                })
            })
            .collect()
    }

    /// The sentences masked, each with the rows of its top `n` passages in `snapshot` by the
    /// input tower (inference mode, one forward pass).
    fn ranked(
        &self,
        snapshot: &DocSnapshot,
        batch: &[MaskedSentence],
        n: usize,
    ) -> Result<Vec<(MaskedTokens, Vec<usize>)>> {
        let m = &self.models;
        let masked = batch
            .iter()
            .map(|s| {
                mask_sentence(
                    m.docs.body().tokenizer(),
                    s,
                    self.config.max_sentence_pieces,
                    m.specials.mask,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let queries: Vec<Vec<u32>> = masked.iter().map(|x| m.query_ids(x)).collect();
        let q = m
            .embed_queries(&queries, Mode::Inference)?
            .to_vec2::<f32>()?;
        masked
            .into_iter()
            .zip(&q)
            .map(|(x, q)| {
                let rows = snapshot.search(q, n)?.into_iter().map(|(i, _)| i);
                Ok((x, rows.collect()))
            })
            .collect()
    }

    /// Evidence for the reader's warm-up ([`warm_up_on_evidence`]): each sentence that has
    /// one, masked, with the first of its top [`EVIDENCE_DEPTH`] passages from `source` that
    /// [holds its span](RealmModels::holds_span). Searches the current snapshot `batch`
    /// sentences at a time.
    pub fn evidence(
        &self,
        sentences: &[MaskedSentence],
        batch: usize,
        source: EvidenceSource,
    ) -> Result<Vec<Example<'a>>> {
        let snapshot = self.slot.current();
        let own = source == EvidenceSource::OwnDocument;
        let mut out = Vec::new();
        for chunk in sentences.chunks(batch.max(1)) {
            let ranked = self.ranked(&snapshot, chunk, EVIDENCE_DEPTH + EXCLUSION_MARGIN)?;
            for ((x, rows), s) in ranked.into_iter().zip(chunk) {
                let candidates = (rows.iter())
                    .map(|&i| &self.passages[i])
                    .filter(|p| (document_of(&p.id) == s.document) == own)
                    .take(EVIDENCE_DEPTH);
                let mut found = None;
                for p in candidates {
                    if self.models.holds_span(&x, p)? {
                        found = Some(p);
                        break;
                    }
                }
                if let Some(p) = found {
                    out.push(Example {
                        x,
                        docs: vec![p],
                        lm: None,
                    });
                }
            }
        }
        Ok(out)
    }

    /// One update on `batch`: the mean of the sentences' losses.
    pub fn step(&mut self, batch: &[MaskedSentence]) -> Result<PretrainStep> {
        if batch.is_empty() {
            return Err(RealmError::Invalid("an empty batch".into()));
        }
        // One snapshot for the whole batch, however often the refresher swaps meanwhile.
        let snapshot = self.slot.current();
        let examples = self.prepare(&snapshot, batch)?;
        let mut found = 0;
        for e in &examples {
            found += usize::from(self.models.span_holders(e)?.contains(&true));
        }
        let (out, tokens) = self.models.sentence_losses(&examples)?;
        let n = batch.len() as f64;
        let ru: f64 = out
            .iter()
            .map(|o| o.retrieval_utility().unwrap_or(0.0) as f64)
            .sum();
        let null_p: f64 = out
            .iter()
            .map(|o| o.log_p_z.last().map_or(0.0, |l| l.exp()) as f64)
            .sum();
        let losses: Vec<&Tensor> = out.iter().map(|o| &o.loss).collect();
        let loss = (Tensor::stack(&losses, 0)?.sum_all()? / n)?;
        let grads = loss.backward()?;
        let step = self.optimizer.steps();
        let c = &self.config;
        let lr = linear_schedule(step, c.warmup_steps, c.total_steps, c.lr);
        let grad_norm = self.optimizer.step(&grads, lr)?;
        Ok(PretrainStep {
            step: step + 1,
            loss: loss.to_scalar::<f32>()? as f64,
            retrieval_utility: ru / n,
            null_probability: null_p / n,
            span_found: found as f64 / n,
            lr,
            tower_lr: lr * c.tower_lr / c.lr,
            grad_norm,
            tokens,
            snapshot_version: snapshot.version,
            staleness_steps: step.saturating_sub(snapshot.params_step),
            staleness_seconds: snapshot.taken.elapsed().as_secs_f64(),
        })
    }

    /// Masked tokens of each held-out sentence predicted right with retrieval (the current
    /// snapshot's top-k and the null document) and with the null document alone, and its top
    /// document's utility, one [`MaskedHits`] per sentence in order, `batch` sentences per
    /// forward pass; `done` is called with the sentences evaluated so far.
    pub fn evaluate(
        &self,
        sentences: &[MaskedSentence],
        batch: usize,
        mut done: impl FnMut(usize),
    ) -> Result<Vec<MaskedHits>> {
        let snapshot = self.slot.current();
        let mut each = Vec::with_capacity(sentences.len());
        for chunk in sentences.chunks(batch.max(1)) {
            each.extend(
                self.models
                    .masked_accuracy(&self.prepare(&snapshot, chunk)?)?,
            );
            done(each.len());
        }
        Ok(each)
    }

    /// Writes `dir` (replaced whole): `reader/` (HF `BertForMaskedLM`), `input/` and `docs/`
    /// (HF BERT directories), `optimizer.safetensors` (AdamW moments and step) and
    /// `pretrain.json` (format, settings, updates taken, the index snapshot being read), and
    /// returns what `pretrain.json` says.
    pub fn save(&self, dir: &Path) -> Result<CheckpointState> {
        let m = &self.models;
        let state = CheckpointState {
            format: FORMAT.into(),
            version: VERSION,
            step: self.step_count(),
            config: self.config.clone(),
            pooling: format!("{:?}", m.docs.pooling()).to_lowercase(),
            doc_max_len: m.doc_max_len(),
            max_doc_pieces: m.max_doc_pieces,
            scale: m.scale,
            snapshot_version: self.slot.current().version,
            lm_reader: match &m.reader {
                Reader::Lm(lm) => Some(LmReaderFile {
                    path: lm.path().to_path_buf(),
                    sha256: lm.sha256().to_string(),
                }),
                Reader::Mlm(_) => None,
            },
        };
        let bytes = serde_json::to_vec_pretty(&state)
            .map_err(|e| RealmError::Invalid(format!("pre-training state: {e}")))?;
        replace_dir(dir, |tmp| {
            if let Reader::Mlm(reader) = &self.models.reader {
                reader.save(&tmp.join(READER_DIR))?;
            }
            self.models.input.save(&tmp.join(INPUT_DIR))?;
            self.models.docs.save(&tmp.join(DOCS_DIR))?;
            self.optimizer.save_file(&tmp.join(OPTIMIZER_FILE))?;
            write_atomic(&tmp.join(STATE_FILE), |w| {
                std::io::Write::write_all(w, &bytes)
            })
        })?;
        Ok(state)
    }

    /// Continues from the checkpoint `dir`: the models and how they read their inputs, the
    /// optimizer moments, the settings and the updates taken; `total_steps` may be raised to
    /// train further.
    pub fn resume(
        passages: &'a [Passage],
        slot: Arc<SnapshotSlot>,
        dir: &Path,
        device: &Device,
        total_steps: Option<usize>,
    ) -> Result<Self> {
        let state = read_checkpoint_state(dir)?;
        let pooling: Pooling = state.pooling.parse().map_err(|e: String| {
            RealmError::format(&dir.join(STATE_FILE), format!("pooling: {e}"))
        })?;
        let reader = match &state.lm_reader {
            Some(file) => {
                let lm = LmReader::load(&file.path, device)?;
                if lm.sha256() != file.sha256 {
                    return Err(RealmError::format(
                        &dir.join(STATE_FILE),
                        format!(
                            "the LM reader {} is not the one the checkpoint was trained with (SHA-256 differs)",
                            file.path.display()
                        ),
                    ));
                }
                Reader::Lm(lm)
            }
            None => Reader::Mlm(BertForMaskedLM::load(&dir.join(READER_DIR), device)?),
        };
        let models = RealmModels::load(
            reader,
            [&dir.join(INPUT_DIR), &dir.join(DOCS_DIR)],
            pooling,
            state.doc_max_len,
            state.max_doc_pieces,
            state.scale,
        )?;
        let mut config = state.config;
        if let Some(t) = total_steps {
            config.total_steps = t;
        }
        let mut trainer = Self::new(passages, slot, models, config)?;
        let path = dir.join(OPTIMIZER_FILE);
        trainer.optimizer.load_file(&path)?;
        if trainer.step_count() != state.step {
            return Err(RealmError::format(
                &path,
                format!(
                    "holds {} updates but {STATE_FILE} says {}",
                    trainer.step_count(),
                    state.step
                ),
            ));
        }
        Ok(trainer)
    }
}

/// What `pretrain.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    pub format: String,
    pub version: u32,
    /// Updates taken.
    pub step: usize,
    pub config: PretrainConfig,
    /// Pooling of both towers (`mean` or `cls`).
    pub pooling: String,
    /// Wordpieces the document tower reads of a document.
    pub doc_max_len: usize,
    /// Most wordpieces of a document in the reader's input.
    pub max_doc_pieces: usize,
    /// Scale of inner products in `p(z|x)`.
    pub scale: f64,
    /// Version of the index snapshot the trainer was reading (0: the run's starting index;
    /// also what checkpoints written before snapshots were kept say).
    #[serde(default)]
    pub snapshot_version: u64,
    /// The frozen LM reader's model, read again on resuming (`None`: the BERT reader in
    /// `reader/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lm_reader: Option<LmReaderFile>,
}

/// Where a checkpoint's frozen LM reader is, and the SHA-256 of its weights (a changed file is
/// refused on resuming).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LmReaderFile {
    pub path: std::path::PathBuf,
    pub sha256: String,
}

const FORMAT: &str = "ralm-realm-pretrain";
const VERSION: u32 = 2;
const STATE_FILE: &str = "pretrain.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const READER_DIR: &str = "reader";
const INPUT_DIR: &str = "input";
const DOCS_DIR: &str = "docs";

/// Reads `pretrain.json` of the checkpoint `dir`, refusing another format or version.
pub fn read_checkpoint_state(dir: &Path) -> Result<CheckpointState> {
    let file = dir.join(STATE_FILE);
    let state: CheckpointState = crate::data::read_json(&file)?;
    crate::data::check_format(&file, (&state.format, state.version), (FORMAT, VERSION))?;
    Ok(state)
}

/// Share of a sentence's wordpieces masked by the plain-MLM warm-up (BERT's 15 %).
const WARMUP_MASK_RATE: f64 = 0.15;

/// Most wordpieces of a warm-up row, `[CLS]` and `[SEP]` included.
pub const WARMUP_WORDPIECES: usize = 128;

/// Warms the fresh MLM head (and the reader's body) up with plain masked-language modelling on
/// `texts` (for example the texts of [`warm_up_passages`]) before pre-training: `[CLS] x [SEP]`, `x` a text's
/// first [`WARMUP_WORDPIECES`] wordpieces with 15 % of them (at least one) masked at random, no
/// document, `steps` AdamW updates of `batch` texts at learning rate `lr` (linear decay). The
/// towers are untouched. Returns the loss of every update, which `progress` also gets as it
/// goes.
pub fn warm_up_reader(
    models: &RealmModels,
    texts: &[&str],
    (steps, batch, lr): (usize, usize, f64),
    rng: &mut impl rand::Rng,
    progress: impl FnMut(f64),
) -> Result<Vec<f64>> {
    if texts.is_empty() || batch == 0 {
        return Err(RealmError::Invalid("the MLM warm-up needs texts".into()));
    }
    let tokenizer = models.docs.body().tokenizer();
    let sp = models.specials;
    let mut at = 0;
    reader_updates(models, (steps, lr), progress, || {
        let mut rows = Vec::with_capacity(batch);
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        for i in 0..batch {
            let text = texts[at % texts.len()];
            at += 1;
            let enc = tokenizer
                .encode(text, false)
                .map_err(|e| RealmError::Tokenizer(e.to_string()))?;
            let mut ids = vec![sp.cls];
            ids.extend(&enc.get_ids()[..enc.len().min(WARMUP_WORDPIECES - 2)]);
            ids.push(sp.sep);
            let inner = 1..ids.len() - 1;
            let mut chosen: Vec<usize> = inner
                .clone()
                .filter(|_| rng.random_bool(WARMUP_MASK_RATE))
                .collect();
            if chosen.is_empty() && !inner.is_empty() {
                chosen.push(rng.random_range(inner));
            }
            for p in chosen {
                targets.push(ids[p]);
                ids[p] = sp.mask;
                positions.push((i, p));
            }
            let types = vec![0; ids.len()];
            rows.push((ids, types));
        }
        Ok(ReaderBatch {
            rows,
            positions,
            targets,
        })
    })
}

/// Trains the reader to read its document before pre-training: `steps` AdamW updates
/// (learning rate `lr`, linear decay) of `batch` of `evidence` (cycled; each a masked sentence
/// with one passage that holds its span, from [`Pretrainer::evidence`]) on
/// `[CLS] x [SEP] z [SEP]`, the loss the cross-entropy of the masked wordpieces. Meant to teach
/// a reader that fills spans from its own weights to copy them from `z`; MiniLM with a fresh
/// head did not learn that in hundreds of updates (`docs/realm-pretraining.md`). The towers are
/// untouched. Returns the loss of every update, which `progress` also gets.
pub fn warm_up_on_evidence(
    models: &RealmModels,
    evidence: &[Example],
    (steps, batch, lr): (usize, usize, f64),
    progress: impl FnMut(f64),
) -> Result<Vec<f64>> {
    if evidence.is_empty() || batch == 0 {
        return Err(RealmError::Invalid(
            "the evidence warm-up found no sentence with a passage that holds its span".into(),
        ));
    }
    let tokenizer = models.docs.body().tokenizer();
    let mut at = 0;
    reader_updates(models, (steps, lr), progress, || {
        let mut b = ReaderBatch::default();
        for i in 0..batch {
            let e = &evidence[at % evidence.len()];
            at += 1;
            let z = tokenizer
                .encode(passage_text(e.docs[0]), false)
                .map_err(|e| RealmError::Tokenizer(e.to_string()))?;
            b.rows
                .push(models.reader_row(&models.query_ids(&e.x), z.get_ids()));
            b.positions
                .extend(e.x.positions.iter().map(|&p| (i, 1 + p)));
            b.targets.extend(&e.x.targets);
        }
        Ok(b)
    })
}

/// Rows for the reader alone (ids, token types), the `(row, position)` of every masked
/// wordpiece and its original id.
#[derive(Default)]
struct ReaderBatch {
    rows: Vec<(Vec<u32>, Vec<u32>)>,
    positions: Vec<(usize, usize)>,
    targets: Vec<u32>,
}

/// `steps` AdamW updates of the reader alone (its own optimizer, learning rate `lr` decaying
/// linearly to 0) on the masked-wordpiece cross-entropy of the batches `next` makes; the loss of
/// each update goes to `progress` and is returned.
fn reader_updates(
    models: &RealmModels,
    (steps, lr): (usize, f64),
    mut progress: impl FnMut(f64),
    mut next: impl FnMut() -> Result<ReaderBatch>,
) -> Result<Vec<f64>> {
    let reader = models.reader.trainable("a reader warm-up")?;
    let mut optimizer = AdamW::new(&[("reader.", reader.varmap(), 1.0)], AdamWConfig::default())?;
    let device = models.device().clone();
    let mut losses = Vec::with_capacity(steps);
    for step in 0..steps {
        let b = next()?;
        if b.targets.is_empty() {
            continue;
        }
        let refs: Vec<(&[u32], &[u32])> = b
            .rows
            .iter()
            .map(|(ids, t)| (ids.as_slice(), t.as_slice()))
            .collect();
        let padded = pad_rows(&refs, models.specials.pad, &device)?;
        let t = padded.ids.dim(1)?;
        // Flat positions in the padded batch, in the order of the targets.
        let flat: Vec<u32> = (b.positions.iter())
            .map(|&(row, p)| (row * t + p) as u32)
            .collect();
        let logits = reader.logits_at(
            &padded.ids,
            &padded.type_ids,
            &padded.mask,
            &Tensor::new(flat.as_slice(), &device)?,
            Mode::Train,
        )?;
        let loss =
            BertForMaskedLM::masked_lm_loss(&logits, &Tensor::new(b.targets.as_slice(), &device)?)?;
        let grads = loss.backward()?;
        optimizer.step(&grads, linear_schedule(step, 0, steps, lr))?;
        let loss = loss.to_scalar::<f32>()? as f64;
        progress(loss);
        losses.push(loss);
    }
    Ok(losses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_forward_batches_by_length_and_restores_the_row_order() {
        let lengths = [3, 9, 1, 9, 4];
        // 2 heads of f32: a row of 9 takes 648 bytes, so two of them fill a budget of 1,300.
        assert_eq!(
            length_groups(&lengths, 2, 1_300),
            [vec![1, 3], vec![4, 0, 2]]
        );
        assert_eq!(length_groups(&lengths, 2, 100), [[1], [3], [4], [0], [2]]);
        let rows: Vec<(Vec<u32>, Vec<u32>)> = lengths
            .iter()
            .enumerate()
            .map(|(r, &n)| (vec![r as u32; n], vec![0; n]))
            .collect();
        let outputs = [2, 1, 3, 0, 1];
        let device = Device::Cpu;
        for (budget, padded) in [
            (100, [3., 3., 9., 1., 1., 1., 4.]),
            (1_300, [4., 4., 9., 4., 4., 4., 4.]),
            (1 << 20, [9.; 7]),
        ] {
            let how = Grouping {
                heads: 2,
                budget,
                pad: 99,
                device: &device,
            };
            let got = grouped_forward(&rows, &outputs, &how, |batch, group| {
                // Each row's outputs: its first id, then its padded length in this group.
                let ids = batch.ids.to_vec2::<u32>()?;
                let mut out = Vec::new();
                for (at, &r) in group.iter().enumerate() {
                    assert_eq!(ids[at][0], r as u32);
                    assert_eq!(batch.lengths[at], lengths[r]);
                    for _ in 0..outputs[r] {
                        out.extend([ids[at][0] as f32, ids[at].len() as f32]);
                    }
                }
                Ok(Tensor::from_vec(out.clone(), (out.len() / 2, 2), &device)?)
            })
            .unwrap();
            let got = got.to_vec2::<f32>().unwrap();
            let first: Vec<f32> = got.iter().map(|r| r[0]).collect();
            assert_eq!(first, [0., 0., 1., 2., 2., 2., 4.], "budget {budget}");
            let second: Vec<f32> = got.iter().map(|r| r[1]).collect();
            assert_eq!(second, padded, "budget {budget}");
        }
    }
}
