//! Readers for the QA datasets and document corpora, and the by-article split of squad-open.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{RealmError, Result};
use crate::fsutil::write_atomic;
use crate::passages::Passage;

/// A document before chunking: an id unique within its source, a title and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub id: String,
    pub title: String,
    pub text: String,
}

/// How a question's answers are matched against predictions and passages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// Answers are literal strings (SQuAD normalisation applies).
    Text,
    /// Answers are case-insensitive regular expressions (CuratedTREC).
    Regex,
}

/// One open-domain question with its gold answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaExample {
    pub id: String,
    pub question: String,
    pub answers: Vec<String>,
    pub kind: AnswerKind,
    /// The id of the passage the question was written from, where the dataset has one.
    pub gold_passage: Option<String>,
}

/// The repository root, located from this crate's manifest directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

/// The read-only shared datasets directory: `$RALM_DATA_DIR` when set (a binary used away
/// from its source tree), else `<repo root>/../shared/data`.
pub fn shared_data_dir() -> PathBuf {
    std::env::var_os("RALM_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("..").join("shared").join("data"))
}

/// The open-domain QA datasets this crate can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    /// SQuAD v1.1 dev questions asked against all dev paragraphs.
    SquadOpen,
    /// EntityQuestions dev (all relations).
    EntityQuestions,
    /// WebQuestions validation split.
    WebQuestions,
    /// CuratedTREC large2470 train (regex answers).
    CuratedTrec,
}

impl FromStr for Dataset {
    type Err = RealmError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "squad-open" => Ok(Self::SquadOpen),
            "entityquestions" => Ok(Self::EntityQuestions),
            "webquestions" => Ok(Self::WebQuestions),
            "curatedtrec" => Ok(Self::CuratedTrec),
            _ => Err(RealmError::Invalid(format!(
                "unknown dataset {s:?} (expected squad-open, entityquestions, webquestions or curatedtrec)"
            ))),
        }
    }
}

impl Dataset {
    /// The dataset's question file (or directory) under the shared data directory.
    pub fn path(self, data_dir: &Path) -> PathBuf {
        let qa = data_dir.join("qa");
        match self {
            Self::SquadOpen => qa.join("squad-open").join("dev.jsonl"),
            Self::EntityQuestions => qa.join("entityquestions").join("dev"),
            Self::WebQuestions => qa.join("webquestions").join("val.json"),
            Self::CuratedTrec => qa.join("curatedtrec").join("large2470-train.tsv"),
        }
    }

    /// Reads the dataset's questions from under `data_dir`.
    pub fn load(self, data_dir: &Path) -> Result<Vec<QaExample>> {
        let path = self.path(data_dir);
        match self {
            Self::SquadOpen => read_squad_dev(&path),
            Self::EntityQuestions => read_entity_questions(&path),
            Self::WebQuestions => read_webquestions(&path),
            Self::CuratedTrec => read_curatedtrec(&path),
        }
    }
}

fn open(path: &Path) -> Result<BufReader<File>> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| RealmError::io(path, e))
}

/// serde_json's message without its trailing " at line L column C".
fn json_message(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.rsplit_once(" at line ") {
        Some((head, _)) => head.to_string(),
        None => msg,
    }
}

/// Parses a whole JSON file, reporting the line and column of a syntax or shape error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_reader(open(path)?).map_err(|e| {
        RealmError::at_line(
            path,
            e.line(),
            format!("column {}: {}", e.column(), json_message(&e)),
        )
    })
}

/// Parses every non-blank line of a JSONL file, calling `each(line_number, record)`.
pub fn for_each_jsonl<T: DeserializeOwned>(
    path: &Path,
    mut each: impl FnMut(usize, T) -> Result<()>,
) -> Result<()> {
    for (i, line) in open(path)?.lines().enumerate() {
        let line = line.map_err(|e| RealmError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|e| {
            RealmError::at_line(
                path,
                i + 1,
                format!("column {}: {}", e.column(), json_message(&e)),
            )
        })?;
        each(i + 1, record)?;
    }
    Ok(())
}

/// Parses every non-blank line of a JSONL file.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for_each_jsonl(path, |_, record| {
        out.push(record);
        Ok(())
    })?;
    Ok(out)
}

/// Writes `records` to `path` as JSON lines (temporary file, fsync, rename).
pub fn write_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<()> {
    write_atomic(path, |out| {
        for r in records {
            serde_json::to_writer(&mut *out, r)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Reads the string `field` of every record of a generic JSONL file.
pub fn read_jsonl_field(path: &Path, field: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for_each_jsonl(path, |line, record: serde_json::Value| {
        match record.get(field).and_then(|v| v.as_str()) {
            Some(s) => out.push(s.to_string()),
            None => {
                return Err(RealmError::at_line(
                    path,
                    line,
                    format!("no string field {field:?}"),
                ))
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Reads a plain-text file as one document titled by its file stem.
pub fn read_text_document(path: &Path) -> Result<Document> {
    let text = std::fs::read_to_string(path).map_err(|e| RealmError::io(path, e))?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Document {
        id: stem.clone(),
        title: stem,
        text,
    })
}

#[derive(Deserialize)]
struct WikiEntry {
    title: String,
    extract: String,
}

/// Reads the Wikipedia summaries corpus `{key: {title, extract, description, topic}}`,
/// one document per entry keyed by its JSON key, in key order.
pub fn read_wiki_summaries(path: &Path) -> Result<Vec<Document>> {
    let entries: BTreeMap<String, WikiEntry> = read_json(path)?;
    Ok(entries
        .into_iter()
        .map(|(key, e)| Document {
            id: key,
            title: e.title,
            text: e.extract,
        })
        .collect())
}

#[derive(Deserialize)]
struct SquadQuestion {
    id: String,
    question: String,
    answers: Vec<String>,
    gold_passage: String,
}

/// Reads squad-open `dev.jsonl`: `{id, question, answers[], gold_passage}` per line.
pub fn read_squad_dev(path: &Path) -> Result<Vec<QaExample>> {
    let rows: Vec<SquadQuestion> = read_jsonl(path)?;
    Ok(rows
        .into_iter()
        .map(|q| QaExample {
            id: q.id,
            question: q.question,
            answers: q.answers,
            kind: AnswerKind::Text,
            gold_passage: Some(q.gold_passage),
        })
        .collect())
}

#[derive(Deserialize)]
struct PlainQuestion {
    question: String,
    answers: Vec<String>,
}

/// Reads every `P*.jsonl` file of an EntityQuestions split directory, in file-name order;
/// question ids are `<relation>:<line>`.
pub fn read_entity_questions(dir: &Path) -> Result<Vec<QaExample>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| RealmError::io(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with('P') && name.ends_with(".jsonl")
        })
        .collect();
    if files.is_empty() {
        return Err(RealmError::format(dir, "no P*.jsonl files"));
    }
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let relation = name.split('.').next().unwrap_or_default().to_string();
        for_each_jsonl(&file, |line, q: PlainQuestion| {
            out.push(QaExample {
                id: format!("{relation}:{line}"),
                question: q.question,
                answers: q.answers,
                kind: AnswerKind::Text,
                gold_passage: None,
            });
            Ok(())
        })?;
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WebQuestion {
    q_id: String,
    q_text: String,
    answers: Vec<String>,
}

/// Reads a WebQuestions JSON array of `{qId, qText, answers}`.
pub fn read_webquestions(path: &Path) -> Result<Vec<QaExample>> {
    let rows: Vec<WebQuestion> = read_json(path)?;
    Ok(rows
        .into_iter()
        .map(|q| QaExample {
            id: q.q_id,
            question: q.q_text,
            answers: q.answers,
            kind: AnswerKind::Text,
            gold_passage: None,
        })
        .collect())
}

/// Reads CuratedTREC TSV lines `id<TAB>type<TAB>question<TAB>answer-regex`; each regex must compile.
pub fn read_curatedtrec(path: &Path) -> Result<Vec<QaExample>> {
    let mut out = Vec::new();
    for (i, line) in open(path)?.lines().enumerate() {
        let line = line.map_err(|e| RealmError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let &[id, _kind, question, pattern] = fields.as_slice() else {
            return Err(RealmError::at_line(
                path,
                i + 1,
                format!("expected 4 tab-separated fields, found {}", fields.len()),
            ));
        };
        crate::metrics::answer_regex(pattern).map_err(|e| RealmError::at_line(path, i + 1, e))?;
        out.push(QaExample {
            id: id.to_string(),
            question: question.to_string(),
            answers: vec![pattern.to_string()],
            kind: AnswerKind::Regex,
            gold_passage: None,
        });
    }
    Ok(out)
}

/// A split of questions into disjoint sets of articles.
#[derive(Debug, Clone)]
pub struct ArticleSplit {
    pub train_articles: Vec<String>,
    pub eval_articles: Vec<String>,
    pub train: Vec<QaExample>,
    pub eval: Vec<QaExample>,
}

/// Default number of squad-open articles held out for evaluation (of 24).
pub const SQUAD_EVAL_ARTICLES: usize = 8;

/// Splits questions by the article (title) of their gold passage, looked up in `passages`:
/// the sorted articles are shuffled with `seed` and the first `n_eval` go to evaluation.
pub fn split_by_article(
    examples: &[QaExample],
    passages: &[Passage],
    n_eval: usize,
    seed: u64,
) -> Result<ArticleSplit> {
    let title_of: HashMap<&str, &str> = passages
        .iter()
        .map(|p| (p.id.as_str(), p.title.as_str()))
        .collect();
    let mut article_of = Vec::with_capacity(examples.len());
    for ex in examples {
        let gold = ex.gold_passage.as_deref().ok_or_else(|| {
            RealmError::Invalid(format!("question {} has no gold passage", ex.id))
        })?;
        let title = title_of.get(gold).ok_or_else(|| {
            RealmError::Invalid(format!(
                "question {}: gold passage {gold:?} is not in the passages file",
                ex.id
            ))
        })?;
        article_of.push(*title);
    }
    let mut articles: Vec<&str> = article_of
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if n_eval == 0 || n_eval >= articles.len() {
        return Err(RealmError::Invalid(format!(
            "cannot hold out {n_eval} of {} articles",
            articles.len()
        )));
    }
    shuffle(&mut articles, seed);
    let eval_set: BTreeSet<&str> = articles[..n_eval].iter().copied().collect();
    let mut split = ArticleSplit {
        train_articles: articles[n_eval..].iter().map(|s| s.to_string()).collect(),
        eval_articles: articles[..n_eval].iter().map(|s| s.to_string()).collect(),
        train: Vec::new(),
        eval: Vec::new(),
    };
    for (ex, article) in examples.iter().zip(article_of) {
        if eval_set.contains(article) {
            split.eval.push(ex.clone());
        } else {
            split.train.push(ex.clone());
        }
    }
    Ok(split)
}

/// Fisher-Yates shuffle driven by splitmix64, so a seed gives the same order on every platform.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = ralm_index::rng::Rng::new(seed);
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// Refuses a file whose recorded `(format, version)` is not `expected`, naming both.
pub(crate) fn check_format(file: &Path, found: (&str, u32), expected: (&str, u32)) -> Result<()> {
    if found != expected {
        return Err(RealmError::format(
            file,
            format!(
                "format {} version {} (this build reads {} version {})",
                found.0, found.1, expected.0, expected.1
            ),
        ));
    }
    Ok(())
}
