//! `ralm qa compare`: paired recall@k changes between two `ralm qa eval --json-out` files on the
//! same questions, each with a bootstrap 95 % interval over the questions.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use ralm_realm::metrics::{bootstrap_ratio, BOOTSTRAP_RESAMPLES};
use serde_json::Value;

use crate::qa_dense::RECALL_KS;

/// Options of `ralm qa compare`.
#[derive(Args)]
pub struct CompareArgs {
    /// The baseline: a `ralm qa eval --json-out` file.
    baseline: PathBuf,
    /// The file compared with it, of the same questions.
    other: PathBuf,
}

/// One `qa eval` file: its question ids and each retriever's first answer-bearing ranks.
struct Evaluated {
    ids: Vec<String>,
    retrievers: Vec<(String, Vec<Option<usize>>)>,
}

fn read(path: &Path) -> anyhow::Result<Evaluated> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Map<String, Value> = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a `ralm qa eval --json-out` file", path.display()))?;
    let ids = json
        .get("question_ids")
        .context("no question_ids")
        .and_then(|v| Ok(serde_json::from_value(v.clone())?))
        .with_context(|| {
            format!(
                "{}: no per-question results (written before `qa eval` recorded them?)",
                path.display()
            )
        })?;
    let mut retrievers = Vec::new();
    for (label, result) in &json {
        if let Some(firsts) = result.get("first_hit") {
            let firsts = serde_json::from_value(firsts.clone())
                .with_context(|| format!("{}: {label}.first_hit", path.display()))?;
            retrievers.push((label.clone(), firsts));
        }
    }
    Ok(Evaluated { ids, retrievers })
}

/// Recall@k of first answer-bearing ranks, as 0/1 per question.
fn hits(firsts: &[Option<usize>], k: usize) -> impl Iterator<Item = f64> + '_ {
    firsts
        .iter()
        .map(move |f| f64::from(u8::from(f.is_some_and(|r| r < k))))
}

/// `other − baseline` recall@k of each retriever both files scored, with intervals, a line per
/// retriever and k.
fn changes(baseline: &Evaluated, other: &Evaluated) -> anyhow::Result<Vec<String>> {
    if baseline.ids != other.ids {
        anyhow::bail!("the two files scored different questions");
    }
    let n = baseline.ids.len().max(1) as f64;
    let mut lines = Vec::new();
    for (label, base) in &baseline.retrievers {
        let Some((_, theirs)) = other.retrievers.iter().find(|(l, _)| l == label) else {
            continue;
        };
        if base.len() != baseline.ids.len() || theirs.len() != base.len() {
            anyhow::bail!("{label}: not one result per question");
        }
        for k in RECALL_KS {
            let items: Vec<(f64, f64)> = (hits(theirs, k).zip(hits(base, k)))
                .map(|(t, b)| (t - b, 1.0))
                .collect();
            let Some(change) = bootstrap_ratio(&items, BOOTSTRAP_RESAMPLES, 0) else {
                continue;
            };
            lines.push(format!(
                "{label}: R@{k} {:.1}% -> {:.1}%, change {:+.1} points (95 % CI {:+.1} to {:+.1})",
                100.0 * hits(base, k).sum::<f64>() / n,
                100.0 * hits(theirs, k).sum::<f64>() / n,
                100.0 * change.estimate,
                100.0 * change.low,
                100.0 * change.high
            ));
        }
    }
    Ok(lines)
}

pub fn compare(a: CompareArgs) -> anyhow::Result<()> {
    let (baseline, other) = (read(&a.baseline)?, read(&a.other)?);
    let lines = changes(&baseline, &other)
        .with_context(|| format!("{} against {}", a.other.display(), a.baseline.display()))?;
    if lines.is_empty() {
        anyhow::bail!("the two files have no retriever in common");
    }
    println!(
        "{} questions: {} against {}",
        baseline.ids.len(),
        a.other.display(),
        a.baseline.display()
    );
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evaluated(ids: &[&str], dense: &[Option<usize>]) -> Evaluated {
        Evaluated {
            ids: ids.iter().map(|s| s.to_string()).collect(),
            retrievers: vec![("dense".into(), dense.to_vec())],
        }
    }

    #[test]
    fn changes_pair_questions_and_refuse_other_questions() {
        let ids = ["q1", "q2", "q3", "q4"];
        let base = evaluated(&ids, &[Some(0), Some(6), None, Some(2)]);
        let other = evaluated(&ids, &[Some(0), Some(3), Some(30), Some(2)]);
        let lines = changes(&base, &other).unwrap();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with(
                "dense: R@1 25.0% -> 25.0%, change +0.0 points (95 % CI +0.0 to +0.0)"
            ),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("dense: R@5 50.0% -> 75.0%, change +25.0 points"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].starts_with("dense: R@20 75.0% -> 75.0%"),
            "{}",
            lines[2]
        );
        let shuffled = evaluated(&["q2", "q1", "q3", "q4"], &[None; 4]);
        assert!(changes(&base, &shuffled).is_err());
    }

    #[test]
    fn files_without_per_question_results_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.json");
        std::fs::write(&path, r#"{"dense": {"recall": {"@5": 0.9}}}"#).unwrap();
        let err = format!("{:#}", read(&path).err().unwrap());
        assert!(err.contains("old.json: no per-question results"), "{err}");
    }
}
