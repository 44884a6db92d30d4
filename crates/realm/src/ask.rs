//! Open-domain question answering end to end: retrieve the top-k passages, read each with the
//! generative or the extractive reader, and marginalise the answers over the passages:
//! `score(a) = Σ_z p(z|x) · p(a|x,z)`.

use std::collections::HashSet;
use std::str::FromStr;

use serde::Serialize;

use crate::error::{RealmError, Result};
use crate::generative::GenerativeReader;
use crate::metrics::normalize_answer;
use crate::passages::Passage;
use crate::prior::PassagePrior;
use crate::qa_index::{Bm25Ranking, QaIndex};
use crate::reader::ExtractiveReader;
use crate::retriever::DenseEncoder;

/// Default scale of inner products in `p(z|x) = softmax(scale · q·d)`: the 20 that
/// sentence-transformers trains MiniLM's cosine similarities with.
pub const DEFAULT_SCORE_SCALE: f64 = 20.0;

/// Which retriever picks the passages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RetrieverKind {
    Bm25,
    Dense,
    /// Reciprocal-rank fusion of the BM25 and dense rankings ([`QaIndex::hybrid`]).
    Hybrid,
    /// The BM25 and dense top 100 ranked by the prior's logit ([`QaIndex::weighted`]): the
    /// passages with the highest `p(z|x)`.
    Weighted,
}

impl FromStr for RetrieverKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "bm25" => Ok(Self::Bm25),
            "dense" => Ok(Self::Dense),
            "hybrid" => Ok(Self::Hybrid),
            "weighted" => Ok(Self::Weighted),
            _ => Err(format!(
                "unknown retriever `{s}` (expected bm25, dense, hybrid or weighted)"
            )),
        }
    }
}

/// Candidate answers grouped by their normalised form; each group is represented by the
/// text of its first member. Answers that normalise to nothing are dropped.
pub fn group_answers(answers: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for a in answers {
        let key = normalize_answer(a);
        if !key.is_empty() && seen.insert(key) {
            out.push(a.clone());
        }
    }
    out
}

/// An answer with its marginal probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoredAnswer {
    pub text: String,
    /// `Σ_z p(z|x) · p(a|x,z)`.
    pub prob: f64,
}

/// `Σ_z p_z[z] · exp(logp[a][z])` for each candidate `a`, most probable first.
pub fn marginalize(p_z: &[f64], candidates: &[String], logp: &[Vec<f64>]) -> Vec<ScoredAnswer> {
    let mut out: Vec<ScoredAnswer> = candidates
        .iter()
        .zip(logp)
        .map(|(text, lp)| ScoredAnswer {
            text: text.clone(),
            prob: p_z.iter().zip(lp).map(|(p, l)| p * l.exp()).sum(),
        })
        .collect();
    out.sort_by(|a, b| b.prob.total_cmp(&a.prob));
    out
}

/// A retrieved passage as evidence for the answer.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub id: String,
    pub title: String,
    pub text: String,
    /// Dense inner product with the question.
    pub score: f32,
    /// BM25 score ([`Bm25Ranking::score`]).
    pub bm25: f32,
    /// `p(z|x)`.
    pub prob: f64,
    /// What the reader answered from this passage alone.
    pub reader_answer: String,
}

/// Everything `ask` found.
#[derive(Debug, Clone, Serialize)]
pub struct AskResult {
    pub question: String,
    pub retriever: RetrieverKind,
    /// The best answer (`None` when no passage yielded one).
    pub answer: Option<ScoredAnswer>,
    /// All candidate answers, most probable first.
    pub answers: Vec<ScoredAnswer>,
    pub evidence: Vec<Evidence>,
    pub warnings: Vec<String>,
}

/// The reader of a [`QaSystem`].
pub enum Reader {
    /// SmolLM2 writes an answer per passage; every candidate is scored under every passage.
    Generative(GenerativeReader),
    /// A trained span extractor; `p(a|x,z)` sums `p(s|z,x)` over the spans that read as `a`.
    Extractive(ExtractiveReader),
}

/// Candidate answers, and what the reader answered from each passage alone: what a reader
/// makes of the retrieved passages before `p(z|x)` weighs them.
pub struct Reading {
    candidates: Vec<String>,
    /// `log p(a|x,z)`, `[candidate][passage]`.
    logp: Vec<Vec<f64>>,
    per_passage: Vec<String>,
}

impl Reader {
    fn read(&self, question: &str, passages: &[&Passage]) -> Result<Reading> {
        match self {
            Reader::Generative(reader) => {
                let primed = passages
                    .iter()
                    .map(|p| reader.prime(question, p))
                    .collect::<Result<Vec<_>>>()?;
                let per_passage = primed
                    .iter()
                    .map(|p| reader.generate(p))
                    .collect::<Result<Vec<_>>>()?;
                let candidates = group_answers(&per_passage);
                let logp = candidates
                    .iter()
                    .map(|a| {
                        primed
                            .iter()
                            .map(|p| reader.score(p, a))
                            .collect::<Result<Vec<_>>>()
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Reading {
                    candidates,
                    logp,
                    per_passage,
                })
            }
            Reader::Extractive(reader) => {
                let read = reader.read(question, passages)?;
                let all: Vec<String> = read
                    .iter()
                    .flat_map(|r| r.spans.iter().map(|(t, _)| t.clone()))
                    .collect();
                let candidates = group_answers(&all);
                let logp = candidates
                    .iter()
                    .map(|a| {
                        let key = normalize_answer(a);
                        read.iter()
                            .map(|r| {
                                r.spans
                                    .iter()
                                    .filter(|(t, _)| normalize_answer(t) == key)
                                    .map(|(_, p)| p)
                                    .sum::<f64>()
                                    .ln()
                            })
                            .collect()
                    })
                    .collect();
                let per_passage = read
                    .iter()
                    .map(|r| r.spans.first().map(|s| s.0.clone()).unwrap_or_default())
                    .collect();
                Ok(Reading {
                    candidates,
                    logp,
                    per_passage,
                })
            }
        }
    }
}

/// A QA index, the question encoder that matches it, and a reader.
pub struct QaSystem {
    pub index: QaIndex,
    /// The question encoder: the zero-shot encoder the index was built with, or a query tower
    /// fine-tuned against it.
    pub encoder: DenseEncoder,
    /// None for retrieval alone (recall measurements); asking then fails.
    pub reader: Option<Reader>,
    /// How `p(z|x)` weighs the retrieved passages.
    pub prior: PassagePrior,
}

/// Passages retrieved for one question: `(passage index, dense inner product)`, best first.
pub struct Retrieved {
    pub question: String,
    pub hits: Vec<(usize, f32)>,
    /// The BM25 score of each hit ([`Bm25Ranking::score`]).
    pub bm25: Vec<f32>,
    pub warnings: Vec<String>,
}

/// The top-`k` passages of `kind` for `question` (already checked) and its encoding `query`,
/// best first, each with its dense inner product (BM25 hits keep BM25's order); `prior` ranks
/// [`RetrieverKind::Weighted`].
pub fn search(
    index: &QaIndex,
    kind: RetrieverKind,
    question: &str,
    query: &[f32],
    k: usize,
    prior: &PassagePrior,
) -> Result<Vec<(usize, f32)>> {
    match kind {
        RetrieverKind::Dense => index.dense(query, k),
        _ => search_ranked(
            index,
            kind,
            &index.bm25_ranking(question, k)?,
            query,
            k,
            prior,
        ),
    }
}

/// [`search`] with `question`'s BM25 ranking already made.
fn search_ranked(
    index: &QaIndex,
    kind: RetrieverKind,
    bm25: &Bm25Ranking,
    query: &[f32],
    k: usize,
    prior: &PassagePrior,
) -> Result<Vec<(usize, f32)>> {
    Ok(match kind {
        RetrieverKind::Dense => index.dense(query, k)?,
        RetrieverKind::Hybrid => index.hybrid(bm25, query, k)?,
        RetrieverKind::Weighted => index.weighted(bm25, query, k, prior)?,
        RetrieverKind::Bm25 => (bm25.hits().iter().take(k))
            .map(|&(i, _)| (i, index.score(query, i)))
            .collect(),
    })
}

/// Retrieves the top-`k` passages for `question` with `kind` ([`search`]), with the BM25
/// score of each (one BM25 search serves both).
pub fn retrieve(
    index: &QaIndex,
    encoder: &DenseEncoder,
    prior: &PassagePrior,
    question: &str,
    k: usize,
    kind: RetrieverKind,
) -> Result<Retrieved> {
    if k == 0 {
        return Err(RealmError::Invalid("k must be at least 1".into()));
    }
    let q = encoder.check_question(question)?;
    let query = encoder.encode_questions(&[&q.text])?;
    let ranking = index.bm25_ranking(&q.text, k)?;
    let hits = search_ranked(index, kind, &ranking, &query, k, prior)?;
    let bm25 = hits.iter().map(|h| ranking.score(h.0)).collect();
    Ok(Retrieved {
        question: q.text,
        hits,
        bm25,
        warnings: q.warning.into_iter().collect(),
    })
}

impl QaSystem {
    /// Answers `question` from its top-`k` passages.
    pub fn ask(&self, question: &str, k: usize, kind: RetrieverKind) -> Result<AskResult> {
        self.ask_with(&self.encoder, &self.prior, question, k, kind)
    }

    /// [`ask`](Self::ask) with another question encoder for the index (e.g. the zero-shot one
    /// beside a fine-tuned query tower) and another prior.
    pub fn ask_with(
        &self,
        encoder: &DenseEncoder,
        prior: &PassagePrior,
        question: &str,
        k: usize,
        kind: RetrieverKind,
    ) -> Result<AskResult> {
        let r = retrieve(&self.index, encoder, prior, question, k, kind)?;
        let reading = self.read(&r)?;
        Ok(self.answer(&r, &reading, prior, kind))
    }

    /// Reads the retrieved passages (the costly part of answering, independent of the prior).
    pub fn read(&self, r: &Retrieved) -> Result<Reading> {
        let passages = self.index.passages();
        let hits: Vec<&Passage> = r.hits.iter().map(|&(i, _)| &passages[i]).collect();
        let reader = self.reader.as_ref().ok_or_else(|| {
            RealmError::Invalid("this QA system has no reader: it only retrieves".into())
        })?;
        reader.read(&r.question, &hits)
    }

    /// The answers of `reading` marginalised over the passages of `r` with `prior`.
    pub fn answer(
        &self,
        r: &Retrieved,
        reading: &Reading,
        prior: &PassagePrior,
        kind: RetrieverKind,
    ) -> AskResult {
        let scores: Vec<f32> = r.hits.iter().map(|h| h.1).collect();
        let p_z = prior.posterior(&scores, &r.bm25);
        let passages = self.index.passages();
        let answers = marginalize(&p_z, &reading.candidates, &reading.logp);
        let evidence = r
            .hits
            .iter()
            .zip(&r.bm25)
            .zip(&p_z)
            .zip(&reading.per_passage)
            .map(|(((&(i, score), &bm25), &prob), reader_answer)| Evidence {
                id: passages[i].id.clone(),
                title: passages[i].title.clone(),
                text: passages[i].text.clone(),
                score,
                bm25,
                prob,
                reader_answer: reader_answer.clone(),
            })
            .collect();
        AskResult {
            question: r.question.clone(),
            retriever: kind,
            answer: answers.first().cloned(),
            answers,
            evidence,
            warnings: r.warnings.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marginalisation_sums_over_passages() {
        // Two passages with p(z|x) = 0.75 / 0.25; answer A has p = 0.5 under z1 and 0.1 under
        // z2, answer B 0.2 and 0.9: A = 0.375 + 0.025 = 0.4, B = 0.15 + 0.225 = 0.375.
        let p_z = [0.75, 0.25];
        let cands = vec!["A".to_string(), "B".to_string()];
        let logp = vec![
            vec![0.5f64.ln(), 0.1f64.ln()],
            vec![0.2f64.ln(), 0.9f64.ln()],
        ];
        let got = marginalize(&p_z, &cands, &logp);
        assert_eq!(got[0].text, "A");
        assert!((got[0].prob - 0.4).abs() < 1e-12);
        assert!((got[1].prob - 0.375).abs() < 1e-12);
        // Weights swapped: B = 0.25·0.2 + 0.75·0.9 = 0.725 wins, A = 0.25·0.5 + 0.75·0.1 = 0.2.
        let got = marginalize(&[0.25, 0.75], &cands, &logp);
        assert_eq!(got[0].text, "B");
        assert!((got[1].prob - 0.2).abs() < 1e-12);
    }

    #[test]
    fn identical_normalised_answers_form_one_group() {
        let answers = ["The Eiffel Tower", "eiffel tower.", "Paris", "", "the"]
            .map(String::from)
            .to_vec();
        assert_eq!(group_answers(&answers), vec!["The Eiffel Tower", "Paris"]);
    }
}
