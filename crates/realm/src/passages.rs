//! Chunking documents into retrieval passages of bounded wordpiece length (as REALM does),
//! passage JSONL files, and the squad-open + Wikipedia corpus builder.

use std::ops::Range;
use std::path::Path;
use std::sync::LazyLock;

use rayon::prelude::*;
use regex::Regex;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::data::{read_jsonl, Document};
use crate::error::{RealmError, Result};

/// REALM's passage length: at most this many wordpieces for title and text together.
pub const MAX_PASSAGE_WORDPIECES: usize = 288;

/// A retrieval unit: a stable id, the document title and a chunk of its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passage {
    pub id: String,
    pub title: String,
    pub text: String,
}

impl From<Passage> for Document {
    fn from(p: Passage) -> Self {
        Document {
            id: p.id,
            title: p.title,
            text: p.text,
        }
    }
}

/// Counts the tokens of a text. The chunker assumes counts add up over whitespace-separated
/// pieces (true of BERT's whitespace-and-punctuation pre-tokenizer) and verifies every chunk.
pub trait TokenCounter: Sync {
    /// Number of tokens in `text`, without special tokens.
    fn count(&self, text: &str) -> Result<usize>;
}

/// Counts BERT wordpieces with a `tokenizer.json`, padding and truncation off.
pub struct WordPieceCounter {
    tokenizer: Tokenizer,
}

impl WordPieceCounter {
    /// Loads `tokenizer.json` and disables its padding and truncation.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| RealmError::format(path, format!("cannot load tokenizer: {e}")))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| RealmError::Tokenizer(e.to_string()))?;
        Ok(Self { tokenizer })
    }
}

impl TokenCounter for WordPieceCounter {
    fn count(&self, text: &str) -> Result<usize> {
        self.tokenizer
            .encode_fast(text, false)
            .map(|e| e.len())
            .map_err(|e| RealmError::Tokenizer(e.to_string()))
    }
}

/// A sentence ends at `.`, `!` or `?` (with any closing quotes or brackets) before whitespace,
/// or at a line break.
static SENTENCE_END: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"[.!?]+["'”’»)\]]*\s+|\n\s*"#).expect("static regex"));

/// The non-empty, whitespace-trimmed parts of `text[range]` between `separators` matches.
fn split_spans(text: &str, range: Range<usize>, separators: &Regex) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut push = |r: Range<usize>| {
        let piece = &text[r.clone()];
        let start = r.start + (piece.len() - piece.trim_start().len());
        let end = r.start + piece.trim_end().len();
        if start < end {
            spans.push(start..end);
        }
    };
    let mut start = range.start;
    for m in separators.find_iter(&text[range.clone()]) {
        let end = range.start + m.end();
        push(start..end);
        start = end;
    }
    push(start..range.end);
    spans
}

static WHITESPACE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\s+").expect("static regex"));

/// Splits documents into passages of at most `max_tokens` tokens (title + text), breaking
/// between sentences where possible, else between words, else inside an over-long word.
pub struct Chunker<C> {
    counter: C,
    max_tokens: usize,
}

/// Greedy packing of spans into chunks that fit a token budget.
struct Packer {
    budget: usize,
    chunks: Vec<Range<usize>>,
    current: Option<(Range<usize>, usize)>,
}

impl Packer {
    fn add(&mut self, span: Range<usize>, count: usize) {
        match &mut self.current {
            Some((range, used)) if *used + count <= self.budget => {
                range.end = span.end;
                *used += count;
            }
            _ => {
                self.flush();
                self.current = Some((span, count));
            }
        }
    }

    fn flush(&mut self) {
        if let Some((range, _)) = self.current.take() {
            self.chunks.push(range);
        }
    }
}

impl<C: TokenCounter> Chunker<C> {
    /// A chunker with REALM's limit of [`MAX_PASSAGE_WORDPIECES`].
    pub fn new(counter: C) -> Self {
        Self::with_max_tokens(counter, MAX_PASSAGE_WORDPIECES)
    }

    /// A chunker with a custom token limit.
    pub fn with_max_tokens(counter: C, max_tokens: usize) -> Self {
        Self {
            counter,
            max_tokens,
        }
    }

    /// The token counter in use.
    pub fn counter(&self) -> &C {
        &self.counter
    }

    /// Chunks one document; passage ids are `<source>:<doc id>:<chunk #>`.
    pub fn chunk(&self, source: &str, doc: &Document) -> Result<Vec<Passage>> {
        let title_tokens = self.counter.count(&doc.title)?;
        if self.max_tokens == 0 || title_tokens * 2 > self.max_tokens {
            return Err(RealmError::Invalid(format!(
                "{source}:{}: title has {title_tokens} tokens, more than half of the {}-token passage limit",
                doc.id, self.max_tokens
            )));
        }
        let budget = self.max_tokens - title_tokens;
        let text = doc.text.as_str();
        let mut packer = Packer {
            budget,
            chunks: Vec::new(),
            current: None,
        };
        for sentence in split_spans(text, 0..text.len(), &SENTENCE_END) {
            let count = self.counter.count(&text[sentence.clone()])?;
            if count <= budget {
                packer.add(sentence, count);
                continue;
            }
            for word in split_spans(text, sentence, &WHITESPACE) {
                let count = self.counter.count(&text[word.clone()])?;
                if count <= budget {
                    packer.add(word, count);
                    continue;
                }
                // A word yields at most one token per character, so `budget`-character
                // pieces fit; each stands alone because pieces do not add up.
                packer.flush();
                let bounds: Vec<usize> = text[word.clone()]
                    .char_indices()
                    .map(|(i, _)| word.start + i)
                    .step_by(budget)
                    .chain([word.end])
                    .collect();
                for piece in bounds.windows(2) {
                    packer.add(piece[0]..piece[1], budget);
                    packer.flush();
                }
            }
        }
        packer.flush();
        packer
            .chunks
            .into_iter()
            .enumerate()
            .map(|(i, range)| {
                let passage = Passage {
                    id: format!("{source}:{}:{i}", doc.id),
                    title: doc.title.clone(),
                    text: text[range].to_string(),
                };
                let total = title_tokens + self.counter.count(&passage.text)?;
                if total > self.max_tokens {
                    return Err(RealmError::Invalid(format!(
                        "{}: {total} tokens after chunking (limit {}); the tokenizer's counts do not add up over whitespace",
                        passage.id, self.max_tokens
                    )));
                }
                Ok(passage)
            })
            .collect()
    }

    /// Chunks many documents in parallel, keeping document order.
    pub fn chunk_all(&self, source: &str, docs: &[Document]) -> Result<Vec<Passage>> {
        let per_doc: Vec<Vec<Passage>> = docs
            .par_iter()
            .map(|d| self.chunk(source, d))
            .collect::<Result<_>>()?;
        Ok(per_doc.into_iter().flatten().collect())
    }
}

/// Builds the open-domain corpus: the squad-open paragraphs (source `squad`) followed by the
/// Wikipedia summaries as distractors (source `wiki`), all chunked to the passage limit.
pub fn build_corpus<C: TokenCounter>(
    chunker: &Chunker<C>,
    squad: Vec<Passage>,
    wiki: &[Document],
) -> Result<Vec<Passage>> {
    let squad_docs: Vec<Document> = squad.into_iter().map(Document::from).collect();
    let mut corpus = chunker.chunk_all("squad", &squad_docs)?;
    corpus.extend(chunker.chunk_all("wiki", wiki)?);
    Ok(corpus)
}

/// Writes passages as JSONL `{id, title, text}` (temporary file, fsync, rename).
pub fn write_passages(path: &Path, passages: &[Passage]) -> Result<()> {
    crate::data::write_jsonl(path, passages)
}

/// Reads a passages JSONL file `{id, title, text}` per line.
pub fn read_passages(path: &Path) -> Result<Vec<Passage>> {
    read_jsonl(path)
}

/// The document id of a passage id `<source>:<document>:<chunk>`.
pub fn document_of(passage_id: &str) -> &str {
    let rest = passage_id.split_once(':').map_or(passage_id, |(_, r)| r);
    rest.rsplit_once(':').map_or(rest, |(d, _)| d)
}
