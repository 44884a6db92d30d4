//! Answer metrics: SQuAD exact match and token F1, DrQA regex matching, DPR-style
//! `has_answer` for retrieval, recall@k aggregation, and bootstrap intervals of paired
//! differences.

use std::collections::HashMap;
use std::sync::LazyLock;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use regex::{Regex, RegexBuilder};
use tokenizers::NormalizedString;

use crate::data::{AnswerKind, QaExample};
use crate::error::{RealmError, Result};
use crate::passages::Passage;

static ARTICLES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(a|an|the)\b").expect("static regex"));

/// DPR's SimpleTokenizer: runs of letters/digits/marks, or any single other visible character.
static SIMPLE_TOKENS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[\p{L}\p{N}\p{M}]+|[^\p{Z}\p{C}]").expect("static regex"));

/// SQuAD answer normalisation: lowercase, drop ASCII punctuation, drop the articles
/// a/an/the, collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    let no_articles = ARTICLES.replace_all(&no_punct, " ");
    no_articles.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// SQuAD exact match: 1.0 when the normalised prediction equals any normalised gold answer.
pub fn exact_match(prediction: &str, golds: &[String]) -> f64 {
    let pred = normalize_answer(prediction);
    let hit = golds.iter().any(|g| normalize_answer(g) == pred);
    if hit {
        1.0
    } else {
        0.0
    }
}

/// Token F1 between one prediction and one gold answer after SQuAD normalisation.
fn token_f1(prediction: &str, gold: &str) -> f64 {
    let pred = normalize_answer(prediction);
    let gold = normalize_answer(gold);
    let pred_tokens: Vec<&str> = pred.split_whitespace().collect();
    let gold_tokens: Vec<&str> = gold.split_whitespace().collect();
    let mut gold_counts: HashMap<&str, usize> = HashMap::new();
    for t in &gold_tokens {
        *gold_counts.entry(t).or_default() += 1;
    }
    let mut same = 0usize;
    for t in &pred_tokens {
        if let Some(c) = gold_counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / pred_tokens.len() as f64;
    let recall = same as f64 / gold_tokens.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// SQuAD token F1: the maximum over gold answers.
pub fn f1_score(prediction: &str, golds: &[String]) -> f64 {
    golds
        .iter()
        .map(|g| token_f1(prediction, g))
        .fold(0.0, f64::max)
}

/// Python's `re` reads a backslash before a non-ASCII character as that character; the
/// `regex` crate refuses it, so such backslashes are dropped.
fn python_escapes(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(next) if !next.is_ascii() => out.push(next),
            Some(next) => {
                out.push('\\');
                out.push(next);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Compiles a CuratedTREC answer pattern as DrQA does: case-insensitive, multi-line.
pub fn answer_regex(pattern: &str) -> std::result::Result<Regex, regex::Error> {
    RegexBuilder::new(&python_escapes(pattern))
        .case_insensitive(true)
        .multi_line(true)
        .build()
}

/// DrQA regex match: true when `pattern` matches anywhere in `text` (false if it does not compile).
pub fn regex_match(text: &str, pattern: &str) -> bool {
    answer_regex(pattern).is_ok_and(|re| re.is_match(text))
}

/// Unicode NFD, as DPR applies to passages and answers before matching.
fn nfd(s: &str) -> String {
    let mut n = NormalizedString::from(s);
    n.nfd();
    n.get().to_string()
}

/// DPR's uncased SimpleTokenizer words of `s` (after NFD).
fn simple_words(s: &str) -> Vec<String> {
    SIMPLE_TOKENS
        .find_iter(&nfd(s))
        .map(|m| m.as_str().to_lowercase())
        .collect()
}

/// A question's answers prepared for repeated matching against passages.
#[derive(Debug, Clone)]
pub enum AnswerMatcher {
    /// Token sequences; a passage matches when it contains one contiguously.
    Tokens(Vec<Vec<String>>),
    /// Compiled patterns; a passage matches when one is found anywhere in it.
    Regex(Vec<Regex>),
}

impl AnswerMatcher {
    /// Prepares `answers` of the given kind; empty answers and patterns that do not compile never match.
    pub fn new(answers: &[String], kind: AnswerKind) -> Self {
        match kind {
            AnswerKind::Text => Self::Tokens(
                answers
                    .iter()
                    .map(|a| simple_words(a))
                    .filter(|t| !t.is_empty())
                    .collect(),
            ),
            AnswerKind::Regex => Self::Regex(
                answers
                    .iter()
                    .filter_map(|a| answer_regex(&nfd(a)).ok())
                    .collect(),
            ),
        }
    }

    /// Prepares the answers of a dataset question.
    pub fn for_example(ex: &QaExample) -> Self {
        Self::new(&ex.answers, ex.kind)
    }

    /// DPR's `has_answer`: whether `text` contains one of the answers.
    pub fn has_answer(&self, text: &str) -> bool {
        match self {
            Self::Tokens(answers) => {
                let words = simple_words(text);
                answers
                    .iter()
                    .any(|a| words.windows(a.len()).any(|w| w == a.as_slice()))
            }
            Self::Regex(patterns) => {
                let text = nfd(text);
                patterns.iter().any(|re| re.is_match(&text))
            }
        }
    }
}

/// Whether `passage_text` contains one of the literal `answers` (DPR token-sequence containment).
pub fn has_answer(passage_text: &str, answers: &[String]) -> bool {
    AnswerMatcher::new(answers, AnswerKind::Text).has_answer(passage_text)
}

/// Recall@k over questions: the fraction whose first answer-bearing passage ranks within k.
#[derive(Debug, Clone)]
pub struct RecallAtK {
    ks: Vec<usize>,
    hits: Vec<usize>,
    total: usize,
}

impl RecallAtK {
    /// An empty aggregate for the cut-offs `ks`.
    pub fn new(ks: &[usize]) -> Self {
        Self {
            ks: ks.to_vec(),
            hits: vec![0; ks.len()],
            total: 0,
        }
    }

    /// Records one question whose first hit is at 0-based rank `first_hit` (None: no hit).
    pub fn add(&mut self, first_hit: Option<usize>) {
        self.total += 1;
        if let Some(rank) = first_hit {
            for (k, h) in self.ks.iter().zip(&mut self.hits) {
                if rank < *k {
                    *h += 1;
                }
            }
        }
    }

    /// Number of questions recorded.
    pub fn total(&self) -> usize {
        self.total
    }

    /// `(k, recall@k)` for each cut-off; 0 when no question was recorded.
    pub fn recalls(&self) -> Vec<(usize, f64)> {
        self.ks
            .iter()
            .zip(&self.hits)
            .map(|(&k, &h)| (k, h as f64 / self.total.max(1) as f64))
            .collect()
    }
}

/// The 0-based rank of the first of `ranked_texts` that contains an answer.
pub fn first_hit<'a>(
    ranked_texts: impl IntoIterator<Item = &'a str>,
    matcher: &AnswerMatcher,
) -> Option<usize> {
    ranked_texts.into_iter().position(|t| matcher.has_answer(t))
}

/// Recall@k of per-question rankings `(passage index, score)` over `passages`, judged by
/// each question's answers with [`AnswerMatcher::has_answer`] on the passage text.
pub fn rankings_recall(
    questions: &[QaExample],
    rankings: &[Vec<(usize, f32)>],
    passages: &[Passage],
    ks: &[usize],
) -> Result<RecallAtK> {
    if questions.len() != rankings.len() {
        return Err(RealmError::Invalid(format!(
            "{} questions but {} rankings",
            questions.len(),
            rankings.len()
        )));
    }
    let mut recall = RecallAtK::new(ks);
    for (q, ranking) in questions.iter().zip(rankings) {
        let texts = ranking
            .iter()
            .map(|&(i, _)| passages.get(i).map(|p| p.text.as_str()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                RealmError::Invalid(format!(
                    "question {}: ranked a passage beyond the {} passages",
                    q.id,
                    passages.len()
                ))
            })?;
        recall.add(first_hit(texts, &AnswerMatcher::for_example(q)));
    }
    Ok(recall)
}

/// Bootstrap resamples of the intervals ralm reports.
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;

/// A statistic and its bootstrap 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

/// `Σ numerator / Σ denominator` over `items` (one pair per sentence, question, ...) and its
/// 95 % percentile bootstrap interval from `resamples` draws of the items with replacement,
/// seeded; `None` when the denominators sum to zero. With denominators of 1 it is a mean; with
/// paired differences as numerators (`right_b − right_a`, counted tokens as denominators) it is
/// the difference of two accuracies on the same items.
pub fn bootstrap_ratio(items: &[(f64, f64)], resamples: usize, seed: u64) -> Option<Interval> {
    let ratio = |sum: (f64, f64)| (sum.1 != 0.0).then(|| sum.0 / sum.1);
    let add = |a: (f64, f64), b: &(f64, f64)| (a.0 + b.0, a.1 + b.1);
    let estimate = ratio(items.iter().fold((0.0, 0.0), add))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut draws: Vec<f64> = (0..resamples)
        .filter_map(|_| {
            ratio((0..items.len()).fold((0.0, 0.0), |sum, _| {
                add(sum, &items[rng.random_range(0..items.len())])
            }))
        })
        .collect();
    if draws.is_empty() {
        return Some(Interval {
            estimate,
            low: estimate,
            high: estimate,
        });
    }
    draws.sort_by(f64::total_cmp);
    let at = |q: f64| draws[((draws.len() - 1) as f64 * q).round() as usize];
    Some(Interval {
        estimate,
        low: at(0.025),
        high: at(0.975),
    })
}
