//! Salient-span masking (REALM §3.4): the span masked in a pre-training sentence is a named
//! entity (found by a BERT tagger trained on CoNLL-2003) or a date (patterns), so that
//! predicting it needs world knowledge; a sentence with neither gets a random span.

pub mod conll;
pub mod dates;
pub mod tagger;

use rand::Rng;

use crate::error::Result;
use conll::entities;
use tagger::EntityTagger;

/// Why a span was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanKind {
    /// A named entity of this type (PER, LOC, ORG, MISC).
    Entity(String),
    /// A date expression.
    Date,
    /// No salient span: 1–3 random words.
    Random,
}

/// A span of a text, as a byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalientSpan {
    pub start: usize,
    pub end: usize,
    pub kind: SpanKind,
}

/// Words of `text` as byte ranges, split as CoNLL is: runs of letters, digits and inner
/// apostrophes or hyphens, and every other non-space character on its own.
pub fn words(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (i, &(at, c)) in chars.iter().enumerate() {
        let joiner = (c == '\'' || c == '-')
            && start.is_some()
            && chars.get(i + 1).is_some_and(|&(_, n)| n.is_alphanumeric());
        if c.is_alphanumeric() || joiner {
            start.get_or_insert(at);
            continue;
        }
        if let Some(s) = start.take() {
            out.push((s, at));
        }
        if !c.is_whitespace() {
            out.push((at, at + c.len_utf8()));
        }
    }
    if let Some(s) = start {
        out.push((s, text.len()));
    }
    out
}

/// Finds the salient spans of sentences: entities from an optional tagger plus dates.
pub struct SalientSpans {
    tagger: Option<EntityTagger>,
}

impl SalientSpans {
    /// Entities from `tagger` (none without one) and dates.
    pub fn new(tagger: Option<EntityTagger>) -> Self {
        Self { tagger }
    }

    /// The salient spans of each text, in order and not overlapping (a longer span wins over
    /// one it overlaps; an entity wins a tie with a date).
    pub fn find(&self, texts: &[&str]) -> Result<Vec<Vec<SalientSpan>>> {
        let split: Vec<Vec<(usize, usize)>> = texts.iter().map(|t| words(t)).collect();
        let tags = match &self.tagger {
            Some(tagger) => {
                let sentences: Vec<Vec<String>> = texts
                    .iter()
                    .zip(&split)
                    .map(|(t, w)| w.iter().map(|&(s, e)| t[s..e].to_string()).collect())
                    .collect();
                tagger.predict(&sentences)?
            }
            None => split
                .iter()
                .map(|w| vec!["O".to_string(); w.len()])
                .collect(),
        };
        Ok(texts
            .iter()
            .zip(&split)
            .zip(&tags)
            .map(|((text, words), tags)| {
                let mut spans: Vec<SalientSpan> = entities(tags)
                    .into_iter()
                    .map(|e| SalientSpan {
                        start: words[e.start].0,
                        end: words[e.end - 1].1,
                        kind: SpanKind::Entity(e.kind),
                    })
                    .chain(
                        dates::date_spans(text)
                            .into_iter()
                            .map(|(s, e)| SalientSpan {
                                start: s,
                                end: e,
                                kind: SpanKind::Date,
                            }),
                    )
                    .collect();
                without_overlaps(&mut spans)
            })
            .collect())
    }
}

/// Keeps, longest first (entities before dates on ties), the spans that overlap none kept
/// already; returns them in text order.
fn without_overlaps(spans: &mut [SalientSpan]) -> Vec<SalientSpan> {
    spans.sort_by_key(|s| {
        (
            std::cmp::Reverse(s.end - s.start),
            s.kind == SpanKind::Date,
            s.start,
        )
    });
    let mut kept: Vec<SalientSpan> = Vec::new();
    for s in spans.iter() {
        if kept.iter().all(|k| s.end <= k.start || k.end <= s.start) {
            kept.push(s.clone());
        }
    }
    kept.sort_by_key(|s| s.start);
    kept
}

/// The span to mask in `text`: one of its salient `spans` at random, else a random run of 1–3
/// words that starts and ends on a letter or digit (`None` when the text has no such word).
pub fn choose_span(text: &str, spans: &[SalientSpan], rng: &mut impl Rng) -> Option<SalientSpan> {
    if !spans.is_empty() {
        return Some(spans[rng.random_range(0..spans.len())].clone());
    }
    let words: Vec<(usize, usize)> = words(text)
        .into_iter()
        .filter(|&(s, _)| text[s..].starts_with(char::is_alphanumeric))
        .collect();
    if words.is_empty() {
        return None;
    }
    let first = rng.random_range(0..words.len());
    let len = rng.random_range(1..=3).min(words.len() - first);
    Some(SalientSpan {
        start: words[first].0,
        end: words[first + len - 1].1,
        kind: SpanKind::Random,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn texts_of<'a>(text: &'a str, spans: &[SalientSpan]) -> Vec<&'a str> {
        spans.iter().map(|s| &text[s.start..s.end]).collect()
    }

    #[test]
    fn splits_words_as_conll() {
        let t = "Rock 'n' roll's U.S. tour, mid-1960s.";
        let w: Vec<&str> = words(t).iter().map(|&(s, e)| &t[s..e]).collect();
        assert_eq!(
            w,
            [
                "Rock",
                "'",
                "n",
                "'",
                "roll's",
                "U",
                ".",
                "S",
                ".",
                "tour",
                ",",
                "mid-1960s",
                "."
            ]
        );
    }

    #[test]
    fn finds_dates_without_a_tagger_and_falls_back_to_random_words() {
        let finder = SalientSpans::new(None);
        let texts = [
            "Armstrong walked on the Moon on 21 July 1969.",
            "It rained a lot.",
        ];
        let spans = finder.find(&texts).unwrap();
        assert_eq!(texts_of(texts[0], &spans[0]), ["21 July 1969"]);
        assert!(spans[1].is_empty());
        let mut rng = StdRng::seed_from_u64(0);
        for _ in 0..50 {
            let s = choose_span(texts[1], &spans[1], &mut rng).unwrap();
            assert_eq!(s.kind, SpanKind::Random);
            let words = texts[1][s.start..s.end].split(' ').count();
            assert!((1..=3).contains(&words), "{s:?}");
            assert!(!texts[1][s.start..s.end].ends_with('.'));
        }
        assert!(choose_span("...", &[], &mut rng).is_none());
    }

    #[test]
    fn longer_spans_win_overlaps() {
        let mut spans = vec![
            SalientSpan {
                start: 0,
                end: 4,
                kind: SpanKind::Date,
            },
            SalientSpan {
                start: 0,
                end: 4,
                kind: SpanKind::Entity("MISC".into()),
            },
            SalientSpan {
                start: 2,
                end: 10,
                kind: SpanKind::Entity("ORG".into()),
            },
            SalientSpan {
                start: 10,
                end: 12,
                kind: SpanKind::Date,
            },
        ];
        let kept = without_overlaps(&mut spans);
        assert_eq!(
            kept.iter().map(|s| (s.start, s.end)).collect::<Vec<_>>(),
            [(2, 10), (10, 12)]
        );
        // Same range: the entity wins whichever comes first.
        let date = SalientSpan {
            start: 0,
            end: 4,
            kind: SpanKind::Date,
        };
        let entity = SalientSpan {
            kind: SpanKind::Entity("MISC".into()),
            ..date.clone()
        };
        for mut tie in [
            vec![date.clone(), entity.clone()],
            vec![entity.clone(), date.clone()],
        ] {
            assert_eq!(without_overlaps(&mut tie), std::slice::from_ref(&entity));
        }
    }
}
