//! CoNLL-2003 NER files: one `token TAG` per line (IOB2 tags), sentences separated by blank
//! lines, `-DOCSTART-` lines ignored; and the entity-level scores conlleval reports.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Serialize;

use crate::error::{RealmError, Result};

/// A tagged sentence: words and their IOB2 tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedSentence {
    pub words: Vec<String>,
    pub tags: Vec<String>,
}

/// Reads a CoNLL file; a line that is not `token TAG` (the tag last, other columns ignored) or
/// whose tag is not IOB2 (`O`, `B-X`, `I-X`) is an error naming the line.
pub fn read_conll(path: &Path) -> Result<Vec<TaggedSentence>> {
    let text = std::fs::read_to_string(path).map_err(|e| RealmError::io(path, e))?;
    let mut sentences = Vec::new();
    let mut current = TaggedSentence {
        words: Vec::new(),
        tags: Vec::new(),
    };
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("-DOCSTART-") {
            if !current.words.is_empty() {
                sentences.push(std::mem::replace(
                    &mut current,
                    TaggedSentence {
                        words: Vec::new(),
                        tags: Vec::new(),
                    },
                ));
            }
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 {
            return Err(RealmError::at_line(path, i + 1, "expected `token TAG`"));
        }
        let tag = fields[fields.len() - 1];
        if !is_iob2(tag) {
            return Err(RealmError::at_line(
                path,
                i + 1,
                format!("`{tag}` is not an IOB2 tag (O, B-TYPE or I-TYPE)"),
            ));
        }
        current.words.push(fields[0].to_string());
        current.tags.push(tag.to_string());
    }
    if !current.words.is_empty() {
        sentences.push(current);
    }
    Ok(sentences)
}

fn is_iob2(tag: &str) -> bool {
    tag == "O"
        || ((tag.starts_with("B-") || tag.starts_with("I-"))
            && tag.len() > 2
            && !tag[2..].contains(char::is_whitespace))
}

/// An entity: words `start..end` of type `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entity {
    pub start: usize,
    pub end: usize,
    pub kind: String,
}

/// The entities of a tag sequence, as conlleval reads them: an entity starts at `B-X`, or at
/// `I-X` after anything but `B-X`/`I-X`, and runs over the following `I-X`.
pub fn entities(tags: &[String]) -> Vec<Entity> {
    let mut out: Vec<Entity> = Vec::new();
    let mut open: Option<(usize, &str)> = None;
    for (i, tag) in tags.iter().enumerate() {
        let (prefix, kind) = tag.split_once('-').unwrap_or(("O", ""));
        let continues = prefix == "I" && open.is_some_and(|(_, k)| k == kind);
        if continues {
            continue;
        }
        if let Some((start, k)) = open.take() {
            out.push(Entity {
                start,
                end: i,
                kind: k.to_string(),
            });
        }
        if prefix == "B" || prefix == "I" {
            open = Some((i, kind));
        }
    }
    if let Some((start, k)) = open {
        out.push(Entity {
            start,
            end: tags.len(),
            kind: k.to_string(),
        });
    }
    out
}

/// Precision, recall and F1 of one entity type (or of all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Gold entities.
    pub support: usize,
}

impl Prf {
    fn of(correct: usize, predicted: usize, gold: usize) -> Self {
        let precision = if predicted == 0 {
            0.0
        } else {
            correct as f64 / predicted as f64
        };
        let recall = if gold == 0 {
            0.0
        } else {
            correct as f64 / gold as f64
        };
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        Self {
            precision,
            recall,
            f1,
            support: gold,
        }
    }
}

/// Entity-level scores: micro-averaged over all entities and per type. An entity counts as
/// correct only when its words and type both match a gold one.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EntityScores {
    pub overall: Prf,
    pub by_type: BTreeMap<String, Prf>,
}

/// Scores predicted tag sequences against gold ones (pairwise; lengths must agree).
pub fn entity_scores(gold: &[Vec<String>], predicted: &[Vec<String>]) -> Result<EntityScores> {
    if gold.len() != predicted.len() {
        return Err(RealmError::Invalid(format!(
            "{} gold sentences but {} predicted",
            gold.len(),
            predicted.len()
        )));
    }
    // (correct, predicted, gold) per type.
    let mut counts: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for (i, (g, p)) in gold.iter().zip(predicted).enumerate() {
        if g.len() != p.len() {
            return Err(RealmError::Invalid(format!(
                "sentence {i}: {} gold tags but {} predicted",
                g.len(),
                p.len()
            )));
        }
        let g = entities(g);
        let p = entities(p);
        let gold_set: HashSet<&Entity> = g.iter().collect();
        for e in &g {
            counts.entry(e.kind.clone()).or_default().2 += 1;
        }
        for e in &p {
            let c = counts.entry(e.kind.clone()).or_default();
            c.1 += 1;
            if gold_set.contains(e) {
                c.0 += 1;
            }
        }
    }
    let total = counts
        .values()
        .fold((0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
    Ok(EntityScores {
        overall: Prf::of(total.0, total.1, total.2),
        by_type: counts
            .into_iter()
            .map(|(k, (c, p, g))| (k, Prf::of(c, p, g)))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn reads_entities_as_conlleval() {
        let e = entities(&tags("B-PER I-PER O I-LOC I-LOC B-LOC B-ORG I-PER"));
        let spans: Vec<(usize, usize, &str)> = e
            .iter()
            .map(|e| (e.start, e.end, e.kind.as_str()))
            .collect();
        assert_eq!(
            spans,
            [
                (0, 2, "PER"),
                (3, 5, "LOC"),
                (5, 6, "LOC"),
                (6, 7, "ORG"),
                (7, 8, "PER")
            ]
        );
        assert!(entities(&tags("O O")).is_empty());
    }

    #[test]
    fn scores_entities() {
        let gold = vec![tags("B-PER I-PER O B-LOC"), tags("B-ORG O")];
        // One exact PER, a LOC with the wrong type, an ORG cut short... and a spurious MISC.
        let pred = vec![tags("B-PER I-PER O B-ORG"), tags("B-ORG B-MISC")];
        let s = entity_scores(&gold, &pred).unwrap();
        // Correct: PER and ORG (2 of 4 predicted, 2 of 3 gold).
        assert!((s.overall.precision - 0.5).abs() < 1e-12);
        assert!((s.overall.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.overall.f1 - 4.0 / 7.0).abs() < 1e-12);
        assert_eq!(s.by_type["LOC"].support, 1);
        assert_eq!(s.by_type["LOC"].f1, 0.0);
        assert_eq!(s.by_type["PER"].f1, 1.0);
        assert!(entity_scores(&gold, &pred[..1]).is_err());
    }

    #[test]
    fn reads_conll_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.txt");
        std::fs::write(
            &ok,
            "-DOCSTART- O\n\nEU B-ORG\nrejects O\n\nPeter B-PER\nBlackburn I-PER\n",
        )
        .unwrap();
        let s = read_conll(&ok).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].words, ["Peter", "Blackburn"]);
        assert_eq!(s[1].tags, ["B-PER", "I-PER"]);
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, "EU B-ORG\nrejects\n").unwrap();
        let e = read_conll(&bad).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        std::fs::write(&bad, "EU B-ORG\nrejects X-Y\n").unwrap();
        let e = read_conll(&bad).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("X-Y"), "{e}");
    }
}
