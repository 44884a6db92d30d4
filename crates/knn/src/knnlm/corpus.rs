//! Corpus sources for datastores and evaluation: text files, JSONL with a text field, and the
//! Wikipedia summaries JSON (`{title: {title, extract, ...}}`), optionally cut to a fraction.

use crate::error::{KnnError, Result};
use ralm_models::bpe::LmTokenizer;
use std::path::{Path, PathBuf};

/// One corpus file and the part of it to use.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// The file.
    pub path: PathBuf,
    /// Fraction range `[from, to)` of the file's documents (text files: of its lines).
    pub from: f64,
    /// End of the fraction range.
    pub to: f64,
    /// JSONL field holding the text (JSONL files only).
    pub field: Option<String>,
}

impl Source {
    /// Parses `PATH` or `PATH@FROM:TO` (fractions, e.g. `valid.txt@0:0.5` for the first half).
    pub fn parse(spec: &str, field: Option<&str>) -> Result<Self> {
        let (path, from, to) = match spec.rsplit_once('@') {
            Some((p, range)) => {
                let bad = || {
                    KnnError::Invalid(format!(
                        "corpus source {spec:?}: expected PATH@FROM:TO with fractions 0 <= FROM < TO <= 1"
                    ))
                };
                let (a, b) = range.split_once(':').ok_or_else(bad)?;
                let a: f64 = a.parse().map_err(|_| bad())?;
                let b: f64 = b.parse().map_err(|_| bad())?;
                if !(0.0 <= a && a < b && b <= 1.0) {
                    return Err(bad());
                }
                (p, a, b)
            }
            None => (spec, 0.0, 1.0),
        };
        Ok(Source {
            path: PathBuf::from(path),
            from,
            to,
            field: field.map(str::to_owned),
        })
    }

    /// A short description for manifests: file name and range.
    pub fn describe(&self) -> String {
        let name = self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        if self.from == 0.0 && self.to == 1.0 {
            name
        } else {
            format!("{name}@{}:{}", self.from, self.to)
        }
    }

    /// The documents of this source, in file order.
    pub fn documents(&self) -> Result<Vec<String>> {
        let path = &self.path;
        let text = std::fs::read_to_string(path).map_err(|e| KnnError::io(path, e))?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let docs = match (ext, &self.field) {
            ("jsonl", Some(field)) => jsonl_documents(path, &text, field)?,
            ("jsonl", None) => {
                return Err(KnnError::Invalid(format!(
                    "{}: JSONL corpus needs --field naming the text field",
                    path.display()
                )))
            }
            ("json", _) => wiki_documents(path, &text)?,
            _ => {
                // Text: lines are the units cut by the fraction range, kept as one document.
                let lines: Vec<&str> = text.lines().collect();
                let r = self.cut(lines.len());
                return Ok(vec![lines[r].join("\n")]);
            }
        };
        let r = self.cut(docs.len());
        Ok(docs[r].to_vec())
    }

    fn cut(&self, n: usize) -> std::ops::Range<usize> {
        let at = |f: f64| ((n as f64) * f).round() as usize;
        at(self.from)..at(self.to).min(n)
    }
}

fn jsonl_documents(path: &Path, text: &str, field: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| KnnError::format(path, format!("line {}: {e}", i + 1)))?;
        let s = v.get(field).and_then(|s| s.as_str()).ok_or_else(|| {
            KnnError::format(path, format!("line {}: no string field {field:?}", i + 1))
        })?;
        out.push(s.to_owned());
    }
    Ok(out)
}

/// Documents of the Wikipedia summaries file: "title\n\nextract", in title order.
fn wiki_documents(path: &Path, text: &str) -> Result<Vec<String>> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| KnnError::format(path, e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| KnnError::format(path, "expected a JSON object of articles"))?;
    let mut docs = Vec::with_capacity(obj.len());
    let mut titles: Vec<&String> = obj.keys().collect();
    titles.sort();
    for key in titles {
        let a = &obj[key];
        let extract = a.get("extract").and_then(|s| s.as_str()).ok_or_else(|| {
            KnnError::format(
                path,
                format!("article {key:?}: no string field \"extract\""),
            )
        })?;
        let title = a.get("title").and_then(|s| s.as_str()).unwrap_or(key);
        docs.push(format!("{title}\n\n{extract}"));
    }
    Ok(docs)
}

/// A tokenized corpus: one token stream, documents separated by the end-of-sequence token.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Descriptions of the sources.
    pub sources: Vec<String>,
    /// Number of documents.
    pub documents: usize,
    /// The token stream.
    pub ids: Vec<u32>,
}

impl Corpus {
    /// Reads and tokenizes `sources`, keeping at most `max_tokens` tokens.
    pub fn load(sources: &[Source], tok: &LmTokenizer, max_tokens: Option<usize>) -> Result<Self> {
        let mut ids = Vec::new();
        let mut documents = 0;
        let limit = max_tokens.unwrap_or(usize::MAX);
        'all: for s in sources {
            for doc in s.documents()? {
                if ids.len() >= limit {
                    break 'all;
                }
                ids.extend(tok.encode(&doc)?);
                ids.extend(tok.eos_id());
                documents += 1;
            }
        }
        ids.truncate(limit);
        Ok(Corpus {
            sources: sources.iter().map(Source::describe).collect(),
            documents,
            ids,
        })
    }

    /// SHA-256 (hex) of the token stream, identifying the corpus and its tokenization.
    pub fn fingerprint(&self) -> String {
        let bytes: Vec<u8> = self.ids.iter().flat_map(|t| t.to_le_bytes()).collect();
        ralm_models::hash::sha256_hex(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_and_rejects_bad_ones() {
        let s = Source::parse("a/b.txt@0.5:1", None).unwrap();
        assert_eq!((s.from, s.to), (0.5, 1.0));
        assert_eq!(s.describe(), "b.txt@0.5:1");
        assert_eq!(Source::parse("x.txt", None).unwrap().to, 1.0);
        for bad in ["x@1:0.5", "x@0.2", "x@a:b", "x@0:1.5"] {
            assert!(Source::parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_text_halves_jsonl_and_wiki() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t.txt");
        std::fs::write(&t, "a\nb\nc\nd\n").unwrap();
        let first = Source::parse(&format!("{}@0:0.5", t.display()), None).unwrap();
        let second = Source::parse(&format!("{}@0.5:1", t.display()), None).unwrap();
        assert_eq!(first.documents().unwrap(), vec!["a\nb"]);
        assert_eq!(second.documents().unwrap(), vec!["c\nd"]);

        let j = dir.path().join("d.jsonl");
        std::fs::write(&j, "{\"text\":\"x\"}\n\n{\"text\":\"y\"}\n{\"other\":1}\n").unwrap();
        let err = Source::parse(j.to_str().unwrap(), Some("text"))
            .unwrap()
            .documents()
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 4") && err.contains("d.jsonl"), "{err}");

        let w = dir.path().join("w.json");
        std::fs::write(
            &w,
            r#"{"B":{"title":"B","extract":"bee"},"A":{"title":"A","extract":"ay"}}"#,
        )
        .unwrap();
        let docs = Source::parse(w.to_str().unwrap(), None)
            .unwrap()
            .documents()
            .unwrap();
        assert_eq!(docs, vec!["A\n\nay", "B\n\nbee"]);
    }
}
