//! Dataset readers (real files when present) and the squad-open split by article.

mod common;

use std::collections::HashSet;

use ralm_realm::data::{
    read_curatedtrec, read_json, read_jsonl_field, read_squad_dev, read_wiki_summaries,
    split_by_article, AnswerKind, Dataset, QaExample, SQUAD_EVAL_ARTICLES,
};
use ralm_realm::passages::{read_passages, Passage};

#[test]
fn real_datasets_load_with_expected_sizes() {
    let Some(data) = common::shared("qa") else {
        return;
    };
    let data = data.parent().unwrap();
    for (dataset, n) in [
        (Dataset::SquadOpen, 5165),
        (Dataset::EntityQuestions, 22068),
        (Dataset::WebQuestions, 755),
        (Dataset::CuratedTrec, 1704),
    ] {
        let qs = dataset.load(data).unwrap();
        assert_eq!(qs.len(), n, "{dataset:?}");
        let ids: HashSet<&str> = qs.iter().map(|q| q.id.as_str()).collect();
        assert_eq!(ids.len(), n, "{dataset:?} ids not unique");
        assert!(qs
            .iter()
            .all(|q| !q.question.is_empty() && !q.answers.is_empty()));
        let kind = if dataset == Dataset::CuratedTrec {
            AnswerKind::Regex
        } else {
            AnswerKind::Text
        };
        assert!(qs.iter().all(|q| q.kind == kind));
    }
    let Some(wiki) = common::in_repo("corpora/wiki/summaries_en-us.json") else {
        return;
    };
    let docs = read_wiki_summaries(&wiki).unwrap();
    assert_eq!(docs.len(), 10033);
    assert!(docs.windows(2).all(|w| w[0].id < w[1].id));
}

#[test]
fn squad_open_splits_by_article() {
    let (Some(dev), Some(passages)) = (
        common::shared("qa/squad-open/dev.jsonl"),
        common::shared("qa/squad-open/passages.jsonl"),
    ) else {
        return;
    };
    let qs = read_squad_dev(&dev).unwrap();
    let ps = read_passages(&passages).unwrap();
    let s = split_by_article(&qs, &ps, SQUAD_EVAL_ARTICLES, 0).unwrap();
    assert_eq!((s.train_articles.len(), s.eval_articles.len()), (16, 8));
    let train: HashSet<&String> = s.train_articles.iter().collect();
    assert!(s.eval_articles.iter().all(|a| !train.contains(a)));
    assert_eq!(s.train.len() + s.eval.len(), qs.len());
    let all_ids: HashSet<&str> = s
        .train
        .iter()
        .chain(&s.eval)
        .map(|q| q.id.as_str())
        .collect();
    assert_eq!(all_ids.len(), qs.len());
    let title_of: std::collections::HashMap<&str, &str> = ps
        .iter()
        .map(|p| (p.id.as_str(), p.title.as_str()))
        .collect();
    let article = |q: &QaExample| title_of[q.gold_passage.as_deref().unwrap()].to_string();
    assert!(s.eval.iter().all(|q| s.eval_articles.contains(&article(q))));
    assert!(s
        .train
        .iter()
        .all(|q| s.train_articles.contains(&article(q))));

    let again = split_by_article(&qs, &ps, SQUAD_EVAL_ARTICLES, 0).unwrap();
    assert_eq!(again.eval_articles, s.eval_articles);
    assert_eq!(again.eval, s.eval);
    let other = split_by_article(&qs, &ps, SQUAD_EVAL_ARTICLES, 1).unwrap();
    assert_ne!(other.eval_articles, s.eval_articles);
}

fn passage(id: &str, title: &str) -> Passage {
    Passage {
        id: id.into(),
        title: title.into(),
        text: String::new(),
    }
}

fn question(id: &str, gold: &str) -> QaExample {
    QaExample {
        id: id.into(),
        question: "q?".into(),
        answers: vec!["a".into()],
        kind: AnswerKind::Text,
        gold_passage: Some(gold.into()),
    }
}

#[test]
fn split_rejects_unknown_gold_passages_and_impossible_sizes() {
    let ps = vec![passage("p0", "A"), passage("p1", "B"), passage("p2", "C")];
    let qs = vec![
        question("q0", "p0"),
        question("q1", "p1"),
        question("q2", "p2"),
    ];
    let s = split_by_article(&qs, &ps, 1, 7).unwrap();
    assert_eq!((s.train.len(), s.eval.len()), (2, 1));
    let err = split_by_article(&qs, &ps, 3, 7).unwrap_err().to_string();
    assert!(err.contains("3 of 3"), "{err}");
    let bad = vec![question("q9", "missing")];
    let err = split_by_article(&bad, &ps, 1, 0).unwrap_err().to_string();
    assert!(err.contains("q9") && err.contains("missing"), "{err}");
}

#[test]
fn bad_files_are_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("wiki.json");
    std::fs::write(
        &json,
        "{\n \"A\": {\"title\": \"A\", \"extract\": \"x\"},\n \"B\": {\"title\": 3}\n}",
    )
    .unwrap();
    let err = read_wiki_summaries(&json).unwrap_err().to_string();
    assert!(err.contains("wiki.json") && err.contains("line 3"), "{err}");
    let err = read_json::<serde_json::Value>(&dir.path().join("absent.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.json"), "{err}");

    let jsonl = dir.path().join("docs.jsonl");
    std::fs::write(&jsonl, "{\"body\": \"one\"}\n\n{\"body\": 2}\n").unwrap();
    let err = read_jsonl_field(&jsonl, "body").unwrap_err().to_string();
    assert!(
        err.contains("docs.jsonl") && err.contains("line 3") && err.contains("body"),
        "{err}"
    );
    std::fs::write(&jsonl, "{\"body\": \"one\"}\n{\"body\": \"two\"}\n").unwrap();
    assert_eq!(read_jsonl_field(&jsonl, "body").unwrap(), ["one", "two"]);

    let dev = dir.path().join("dev.jsonl");
    std::fs::write(&dev, "{\"id\": \"1\", \"question\": \"q\", \"answers\": [\"a\"], \"gold_passage\": \"p\"}\n{oops\n").unwrap();
    let err = read_squad_dev(&dev).unwrap_err().to_string();
    assert!(err.contains("dev.jsonl") && err.contains("line 2"), "{err}");

    let tsv = dir.path().join("trec.tsv");
    std::fs::write(&tsv, "1\tfactoid\tWho?\tBob\n2\tfactoid\tWhen?\n").unwrap();
    let err = read_curatedtrec(&tsv).unwrap_err().to_string();
    assert!(
        err.contains("trec.tsv") && err.contains("line 2") && err.contains("4"),
        "{err}"
    );
    std::fs::write(&tsv, "1\tfactoid\tWho?\t(Bob\n").unwrap();
    let err = read_curatedtrec(&tsv).unwrap_err().to_string();
    assert!(err.contains("line 1"), "{err}");
}
