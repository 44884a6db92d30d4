//! Reader inputs `[CLS] question [SEP] title [SEP] passage [SEP]`, the candidate answer spans
//! inside the passage, and matching spans against gold answers.

use std::collections::HashSet;

use regex::Regex;
use tokenizers::{Encoding, Tokenizer};

use crate::data::{AnswerKind, QaExample};
use crate::error::{RealmError, Result};
use crate::metrics::{answer_regex, normalize_answer};
use crate::retriever::MAX_QUESTION_WORDPIECES;

/// Most wordpieces of the title kept in a reader input.
pub const MAX_TITLE_WORDPIECES: usize = 32;
/// Special tokens in a reader input: `[CLS]` and three `[SEP]`.
const SPECIALS: usize = 4;
/// Most question wordpieces (the retriever's cap, less its `[CLS]` and `[SEP]`).
pub const MAX_QUESTION_PIECES: usize = MAX_QUESTION_WORDPIECES - 2;
/// The shortest `max_seq_len` that leaves room for a full question, title and some passage.
pub const MIN_SEQ_LEN: usize = SPECIALS + MAX_QUESTION_PIECES + MAX_TITLE_WORDPIECES + 16;

/// The special-token ids a reader input is assembled with.
#[derive(Debug, Clone, Copy)]
pub struct SpecialIds {
    pub cls: u32,
    pub sep: u32,
}

impl SpecialIds {
    /// Looks `[CLS]` and `[SEP]` up in `tokenizer`.
    pub fn of(tokenizer: &Tokenizer) -> Result<Self> {
        Ok(Self {
            cls: vocab_id(tokenizer, "[CLS]")?,
            sep: vocab_id(tokenizer, "[SEP]")?,
        })
    }
}

/// The id of `token` in `tokenizer`'s vocabulary; an error naming it when absent.
pub fn vocab_id(tokenizer: &Tokenizer, token: &str) -> Result<u32> {
    tokenizer
        .token_to_id(token)
        .ok_or_else(|| RealmError::Tokenizer(format!("{token} is not in the vocabulary")))
}

/// One tokenized question–passage pair, with what is needed to map spans back to text.
#[derive(Debug, Clone)]
pub struct ReaderInput {
    /// Token ids of the whole sequence.
    pub ids: Vec<u32>,
    /// Token types: 0 for `[CLS] question [SEP]`, 1 for the rest.
    pub type_ids: Vec<u32>,
    /// Position of the first passage token in `ids`.
    pub passage_start: usize,
    /// Byte range in the passage text of each kept passage token.
    pub offsets: Vec<(usize, usize)>,
    /// Whether each kept passage token starts a word.
    pub word_start: Vec<bool>,
    /// Whether each kept passage token ends a word.
    pub word_end: Vec<bool>,
    /// Whether the question was cut to [`MAX_QUESTION_PIECES`].
    pub question_truncated: bool,
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Encoding> {
    tokenizer
        .encode(text, false)
        .map_err(|e| RealmError::Tokenizer(e.to_string()))
}

/// Word-boundary flags `(starts a word, ends a word)` of each token of `enc`.
fn word_bounds(enc: &Encoding) -> (Vec<bool>, Vec<bool>) {
    let words = enc.get_word_ids();
    let n = words.len();
    let start = (0..n)
        .map(|i| i == 0 || words[i].is_none() || words[i] != words[i - 1])
        .collect();
    let end = (0..n)
        .map(|i| i + 1 == n || words[i].is_none() || words[i] != words[i + 1])
        .collect();
    (start, end)
}

impl ReaderInput {
    /// Assembles `[CLS] question [SEP] title [SEP] passage [SEP]` in at most `max_seq_len`
    /// tokens: the question is capped at [`MAX_QUESTION_PIECES`] and the title at
    /// [`MAX_TITLE_WORDPIECES`]; the passage is truncated to what is left.
    pub fn new(
        tokenizer: &Tokenizer,
        special: SpecialIds,
        question: &str,
        title: &str,
        passage: &str,
        max_seq_len: usize,
    ) -> Result<Self> {
        if max_seq_len < MIN_SEQ_LEN {
            return Err(RealmError::Invalid(format!(
                "max_seq_len {max_seq_len} is below the minimum {MIN_SEQ_LEN}"
            )));
        }
        let q = encode(tokenizer, question)?;
        let t = encode(tokenizer, title)?;
        let p = encode(tokenizer, passage)?;
        let q_ids = &q.get_ids()[..q.len().min(MAX_QUESTION_PIECES)];
        let t_ids = &t.get_ids()[..t.len().min(MAX_TITLE_WORDPIECES)];
        let budget = max_seq_len - SPECIALS - q_ids.len() - t_ids.len();
        let n = p.len().min(budget);
        let (word_start, word_end) = word_bounds(&p);
        let mut ids = Vec::with_capacity(SPECIALS + q_ids.len() + t_ids.len() + n);
        ids.push(special.cls);
        ids.extend_from_slice(q_ids);
        ids.push(special.sep);
        let first_segment = ids.len();
        ids.extend_from_slice(t_ids);
        ids.push(special.sep);
        let passage_start = ids.len();
        ids.extend_from_slice(&p.get_ids()[..n]);
        ids.push(special.sep);
        let type_ids = (0..ids.len())
            .map(|i| u32::from(i >= first_segment))
            .collect();
        Ok(Self {
            ids,
            type_ids,
            passage_start,
            offsets: p.get_offsets()[..n].to_vec(),
            word_start: word_start[..n].to_vec(),
            word_end: word_end[..n].to_vec(),
            question_truncated: q.len() > MAX_QUESTION_PIECES,
        })
    }

    /// Number of kept passage tokens.
    pub fn passage_len(&self) -> usize {
        self.offsets.len()
    }

    /// Every answer span `(first, last)` (passage-token indices, inclusive) that starts and
    /// ends on word boundaries and is at most `max_span_len` tokens long.
    pub fn valid_spans(&self, max_span_len: usize) -> Vec<(usize, usize)> {
        let n = self.passage_len();
        let mut spans = Vec::new();
        for s in (0..n).filter(|&s| self.word_start[s]) {
            for e in s..n.min(s + max_span_len) {
                if self.word_end[e] {
                    spans.push((s, e));
                }
            }
        }
        spans
    }

    /// The passage text of span `(first, last)`.
    pub fn span_text<'a>(&self, passage: &'a str, span: (usize, usize)) -> &'a str {
        let (from, to) = (self.offsets[span.0].0, self.offsets[span.1].1);
        passage.get(from..to).unwrap_or("")
    }
}

/// A question's gold answers, prepared for matching answer spans.
#[derive(Debug, Clone)]
pub enum SpanMatcher {
    /// Normalised answers (SQuAD normalisation); a span matches when its normalised text is one.
    Text {
        answers: HashSet<String>,
        /// Longest answer in bytes, to skip spans that cannot normalise to an answer cheaply.
        longest: usize,
    },
    /// Anchored patterns; a span matches when a pattern matches all of it (CuratedTREC).
    Regex(Vec<Regex>),
}

impl SpanMatcher {
    /// Prepares `answers` of `kind`; empty answers and patterns that do not compile never match.
    pub fn new(answers: &[String], kind: AnswerKind) -> Self {
        match kind {
            AnswerKind::Text => {
                let answers: HashSet<String> = answers
                    .iter()
                    .map(|a| normalize_answer(a))
                    .filter(|a| !a.is_empty())
                    .collect();
                let longest = answers.iter().map(String::len).max().unwrap_or(0);
                Self::Text { answers, longest }
            }
            AnswerKind::Regex => Self::Regex(
                answers
                    .iter()
                    .filter_map(|a| answer_regex(&format!("^(?:{a})$")).ok())
                    .collect(),
            ),
        }
    }

    /// Prepares the answers of a dataset question.
    pub fn for_example(ex: &QaExample) -> Self {
        Self::new(&ex.answers, ex.kind)
    }

    /// Whether the span text `text` is a gold answer.
    pub fn matches(&self, text: &str) -> bool {
        match self {
            // A span many times longer than every answer cannot normalise to one.
            Self::Text { answers, longest } => {
                text.len() <= 4 * longest + 16 && answers.contains(&normalize_answer(text))
            }
            Self::Regex(patterns) => patterns.iter().any(|re| re.is_match(text.trim())),
        }
    }
}
