//! Pre-training examples: sentences of the corpus with one salient span to mask, kept in a JSONL
//! file so that runs share them (an ablation and its baseline, a machine without the tagger), and
//! the warm-up text of the reader, which none of them came from.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::for_each_jsonl;
use crate::error::{RealmError, Result};
use crate::passages::{document_of, Passage};
use crate::salient::{choose_span, SalientSpans};

/// A sentence with one span (a byte range) to mask, and the document it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskedSentence {
    pub text: String,
    pub span: (usize, usize),
    /// Its document ([`document_of`] its passage id): passages of it are never retrieved for it.
    pub document: String,
}

/// Sentences of `text`: cut after `.`, `!` or `?` followed by white space and a capital letter.
pub fn split_sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for w in chars.windows(3) {
        let [(_, end), (_, space), (next_at, next)] = [w[0], w[1], w[2]];
        if matches!(end, '.' | '!' | '?') && space.is_whitespace() && next.is_uppercase() {
            let s = text[start..next_at].trim();
            if !s.is_empty() {
                out.push(s);
            }
            start = next_at;
        }
    }
    let s = text[start..].trim();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

/// Pre-training sentences from `passages`: every sentence of `min_words..=max_words` words,
/// its span chosen by [`choose_span`] among the salient spans `finder` finds (batches of
/// `batch`), sentences without any word skipped. `progress(done, total)` follows the tagging.
pub fn masked_sentences(
    passages: &[Passage],
    finder: &SalientSpans,
    words: std::ops::RangeInclusive<usize>,
    batch: usize,
    rng: &mut impl rand::Rng,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<MaskedSentence>> {
    let mut pool: Vec<(&str, &str)> = Vec::new();
    for p in passages {
        for s in split_sentences(&p.text) {
            if words.contains(&s.split_whitespace().count()) {
                pool.push((s, document_of(&p.id)));
            }
        }
    }
    let mut out = Vec::with_capacity(pool.len());
    for (i, chunk) in pool.chunks(batch.max(1)).enumerate() {
        progress(i * batch.max(1), pool.len());
        let texts: Vec<&str> = chunk.iter().map(|(s, _)| *s).collect();
        for ((text, document), spans) in chunk.iter().zip(finder.find(&texts)?) {
            if let Some(span) = choose_span(text, &spans, rng) {
                out.push(MaskedSentence {
                    text: text.to_string(),
                    span: (span.start, span.end),
                    document: document.to_string(),
                });
            }
        }
    }
    progress(pool.len(), pool.len());
    Ok(out)
}

/// Writes `examples` to `path` as JSON lines (`text`, `span`, `document`), atomically.
pub fn write_examples(path: &Path, examples: &[MaskedSentence]) -> Result<()> {
    crate::data::write_jsonl(path, examples)
}

/// Reads examples written by [`write_examples`]; a span that is empty, past the end of its text
/// or not on character boundaries is an error naming the line.
pub fn read_examples(path: &Path) -> Result<Vec<MaskedSentence>> {
    let mut out = Vec::new();
    for_each_jsonl(path, |line, e: MaskedSentence| {
        let (start, end) = e.span;
        if start >= end || !e.text.is_char_boundary(start) || !e.text.is_char_boundary(end) {
            return Err(RealmError::at_line(
                path,
                line,
                format!(
                    "span {start}..{end} is not a non-empty range of the {}-byte text's characters",
                    e.text.len()
                ),
            ));
        }
        out.push(e);
        Ok(())
    })?;
    if out.is_empty() {
        return Err(RealmError::format(path, "no examples"));
    }
    Ok(out)
}

/// The passages whose document gave none of `examples`: the reader's warm-up text, so that it
/// never reads the sentences it will have to fill in from retrieved documents.
pub fn warm_up_passages<'p>(
    passages: &'p [Passage],
    examples: &[MaskedSentence],
) -> Vec<&'p Passage> {
    let used: HashSet<&str> = examples.iter().map(|e| e.document.as_str()).collect();
    passages
        .iter()
        .filter(|p| !used.contains(document_of(&p.id)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn splits_sentences_at_terminal_punctuation_before_a_capital() {
        assert_eq!(
            split_sentences("Paris is big. It has 2.1 million people! Is it old? yes. Done"),
            [
                "Paris is big.",
                "It has 2.1 million people!",
                "Is it old? yes.",
                "Done"
            ]
        );
        assert!(split_sentences("  ").is_empty());
    }

    #[test]
    fn masked_sentences_keep_their_document_and_prefer_dates() {
        let passages = vec![
            Passage {
                id: "wiki:Apollo 17:0".into(),
                title: "Apollo 17".into(),
                text: "Apollo 17 landed on the Moon on 11 December 1972. It was the last of the \
                       crewed landings. Short one."
                    .into(),
            },
            Passage {
                id: "squad:squad-3-1:2".into(),
                title: "Rhine".into(),
                text: "The Rhine flows from the Alps to the North Sea in the Netherlands.".into(),
            },
        ];
        let finder = SalientSpans::new(None);
        let mut rng = StdRng::seed_from_u64(0);
        let s = masked_sentences(&passages, &finder, 6..=60, 2, &mut rng, |_, _| {}).unwrap();
        assert_eq!(s.len(), 3, "the two-word sentence is too short");
        assert_eq!(&s[0].text[s[0].span.0..s[0].span.1], "11 December 1972");
        assert_eq!(s[0].document, "Apollo 17");
        assert_eq!(s[2].document, "squad-3-1");
        for m in &s {
            assert!(m.span.0 < m.span.1 && m.span.1 <= m.text.len());
        }
    }

    #[test]
    fn examples_round_trip_and_bad_spans_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("examples.jsonl");
        let examples = vec![
            MaskedSentence {
                text: "Zürich lies on the Limmat.".into(),
                span: (0, 7),
                document: "Zürich".into(),
            },
            MaskedSentence {
                text: "It rained in 1999.".into(),
                span: (13, 17),
                document: "weather".into(),
            },
        ];
        write_examples(&path, &examples).unwrap();
        assert_eq!(read_examples(&path).unwrap(), examples);
        // Byte 1 falls inside "ü".
        std::fs::write(
            &path,
            "{\"text\":\"ok text\",\"span\":[0,2],\"document\":\"d\"}\n\
             {\"text\":\"Zürich\",\"span\":[0,2],\"document\":\"d\"}\n",
        )
        .unwrap();
        let err = read_examples(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("span 0..2"), "{err}");
        std::fs::write(&path, "").unwrap();
        assert!(read_examples(&path)
            .unwrap_err()
            .to_string()
            .contains("no examples"));
    }

    #[test]
    fn warm_up_passages_leave_out_every_document_that_gave_an_example() {
        let passage = |id: &str, text: &str| Passage {
            id: id.into(),
            title: String::new(),
            text: text.into(),
        };
        let passages = vec![
            passage("squad:art-1:0", "first part of article one"),
            passage("squad:art-1:1", "second part of article one"),
            passage("squad:art-2:0", "article two"),
            passage("wiki:Rhine:0", "the rhine"),
        ];
        let example = MaskedSentence {
            text: "a sentence of article one".into(),
            span: (0, 1),
            document: "art-1".into(),
        };
        let texts: Vec<&str> = warm_up_passages(&passages, &[example])
            .iter()
            .map(|p| p.text.as_str())
            .collect();
        assert_eq!(texts, ["article two", "the rhine"]);
    }
}
