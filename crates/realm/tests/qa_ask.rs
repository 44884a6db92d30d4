//! End-to-end QA on a tiny corpus with the real MiniLM encoder and SmolLM2 reader: index build
//! and reuse, encoder mismatch refusal, dense retrieval, question truncation, `ask`.

use std::path::{Path, PathBuf};

use candle_core::Device;
use ralm_models::bert::Pooling;
use ralm_realm::ask::{retrieve, QaSystem, Reader, RetrieverKind};
use ralm_realm::data::repo_root;
use ralm_realm::generative::GenerativeReader;
use ralm_realm::metrics::normalize_answer;
use ralm_realm::prior::PassagePrior;
use ralm_realm::qa_index::{build_or_reuse, CorpusSources, Outcome, QaIndex};
use ralm_realm::retriever::DenseEncoder;

fn minilm() -> Option<PathBuf> {
    let dir = repo_root().join("models").join("minilm");
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: {} is absent (run scripts/setup.sh)",
            dir.display()
        );
        None
    }
}

fn smollm2() -> Option<PathBuf> {
    let path = repo_root()
        .join("models")
        .join("smollm2")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipping: {} is absent (run scripts/setup.sh)",
            path.display()
        );
        None
    }
}

const CORPUS: &[(&str, &str)] = &[
    ("Paris", "Paris is the capital and most populous city of France. It is home to the Eiffel Tower and the Louvre museum."),
    ("Photosynthesis", "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make glucose and release oxygen."),
    ("Mount Everest", "Mount Everest is Earth's highest mountain above sea level, located in the Himalayas on the border between Nepal and China."),
    ("Johann Sebastian Bach", "Johann Sebastian Bach was a German composer of the Baroque period, known for the Brandenburg Concertos and the Mass in B minor."),
    ("Python (programming language)", "Python is a high-level programming language created by Guido van Rossum and first released in 1991."),
];

/// Writes the corpus in the Wikipedia summaries format.
fn write_corpus(dir: &Path, entries: &[(&str, &str)]) -> PathBuf {
    let map: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(t, x)| {
            (
                t.to_string(),
                serde_json::json!({"title": t, "extract": x, "description": "", "topic": ""}),
            )
        })
        .collect();
    let path = dir.join("summaries.json");
    std::fs::write(&path, serde_json::to_vec(&map).unwrap()).unwrap();
    path
}

fn sources(model: &Path, wiki: PathBuf) -> CorpusSources {
    CorpusSources {
        wiki: Some(wiki),
        squad: None,
        tokenizer: model.join("tokenizer.json"),
        max_wordpieces: 288,
    }
}

fn encoder(model: &Path, pooling: Pooling) -> DenseEncoder {
    DenseEncoder::load(model, pooling, 8, &Device::Cpu).unwrap()
}

#[test]
fn index_is_reused_refused_for_another_encoder_and_retrieves_the_obvious_passage() {
    let Some(model) = minilm() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let wiki = write_corpus(tmp.path(), CORPUS);
    let out = tmp.path().join("qa");
    let enc = encoder(&model, Pooling::Mean);
    let src = sources(&model, wiki.clone());
    let mut events = 0;
    let built = build_or_reuse(&out, &src, &enc, &mut |_| events += 1).unwrap();
    assert_eq!(built, Outcome::Built);
    assert!(events >= 3, "progress was reported");
    assert_eq!(
        build_or_reuse(&out, &src, &enc, &mut |_| {}).unwrap(),
        Outcome::Reused
    );

    // A different encoder (CLS pooling of the same weights) is refused at query time ...
    let cls = encoder(&model, Pooling::Cls);
    let err = QaIndex::open(&out, &cls).err().expect("mismatch refused");
    assert!(err.to_string().contains("encoder_pooling"), "{err}");
    // ... and rebuilding with it does not reuse the old vectors.
    assert_eq!(
        build_or_reuse(&out, &src, &cls, &mut |_| {}).unwrap(),
        Outcome::Built
    );
    assert!(QaIndex::open(&out, &enc).is_err());
    assert_eq!(
        build_or_reuse(&out, &src, &enc, &mut |_| {}).unwrap(),
        Outcome::Built
    );

    let index = QaIndex::open(&out, &enc).unwrap();
    assert_eq!(index.passages().len(), CORPUS.len());
    for (question, title) in [
        (
            "Which is the tallest mountain in the world?",
            "Mount Everest",
        ),
        (
            "Who wrote the Brandenburg Concertos?",
            "Johann Sebastian Bach",
        ),
        ("How do plants make sugar from light?", "Photosynthesis"),
    ] {
        let prior = PassagePrior::default();
        for kind in [
            RetrieverKind::Dense,
            RetrieverKind::Hybrid,
            RetrieverKind::Weighted,
        ] {
            let r = retrieve(&index, &enc, &prior, question, 3, kind).unwrap();
            let top = &index.passages()[r.hits[0].0];
            assert_eq!(top.title, title, "{kind:?}: {question}");
            // Dense hits come by inner product; hybrid ones by fused rank (scores stay q·d).
            if kind != RetrieverKind::Hybrid {
                assert!(r.hits.windows(2).all(|w| w[0].1 >= w[1].1));
            }
            let distinct: std::collections::HashSet<usize> = r.hits.iter().map(|h| h.0).collect();
            assert_eq!(distinct.len(), r.hits.len(), "{kind:?}: repeated passages");
            assert!(r.warnings.is_empty());
            // Each hit carries its BM25 score (0 where BM25 did not match it: this corpus is
            // smaller than the depth searched).
            let bm25 = index.bm25(question, index.passages().len()).unwrap();
            assert_eq!(r.bm25.len(), r.hits.len());
            for (&(i, _), &s) in r.hits.iter().zip(&r.bm25) {
                let want = bm25.iter().find(|h| h.0 == i).map_or(0.0, |h| h.1);
                assert_eq!(s, want, "{kind:?}: {question}");
            }
        }
    }

    // The weighted retriever ranks by the prior's logit: the dense order with REALM's prior,
    // BM25's with BM25 alone.
    let question = "Who wrote the Brandenburg Concertos?";
    let ids = |hits: Vec<(usize, f32)>| hits.into_iter().map(|h| h.0).collect::<Vec<_>>();
    let query = enc.encode_questions(&[question]).unwrap();
    let dense = ids(index.dense(&query, 4).unwrap());
    let realm = PassagePrior::default();
    let ranking = index.bm25_ranking(question, 4).unwrap();
    assert_eq!(
        ids(index.weighted(&ranking, &query, 4, &realm).unwrap()),
        dense
    );
    let lexical = PassagePrior {
        dense: 0.0,
        bm25: 1.0,
    };
    // (BM25 matches only some passages; the others follow, tied at 0.)
    let bm25 = ids(index.bm25(question, 4).unwrap());
    assert!(!bm25.is_empty());
    let weighted = ids(index.weighted(&ranking, &query, 4, &lexical).unwrap());
    assert_eq!(weighted.len(), 4);
    assert_eq!(weighted[..bm25.len()], bm25[..]);

    // A changed corpus is rebuilt.
    let wiki2 = write_corpus(tmp.path(), &CORPUS[..3]);
    assert_eq!(
        build_or_reuse(&out, &sources(&model, wiki2), &enc, &mut |_| {}).unwrap(),
        Outcome::Built
    );
    assert_eq!(QaIndex::open(&out, &enc).unwrap().passages().len(), 3);
}

#[test]
fn over_long_question_is_truncated_with_a_warning() {
    let Some(model) = minilm() else { return };
    let enc = encoder(&model, Pooling::Mean);
    let long = format!(
        "Which mountain is the highest {}?",
        "and the most famous one ".repeat(200)
    );
    let q = enc.check_question(&long).unwrap();
    let warning = q.warning.expect("a warning");
    assert!(warning.contains("truncated"), "{warning}");
    assert!(q.text.len() < long.len() && long.starts_with(&q.text));
    assert!(q.text.starts_with("Which mountain is the highest"));
    let short = enc.check_question("Who wrote Hamlet?").unwrap();
    assert_eq!(short.text, "Who wrote Hamlet?");
    assert!(short.warning.is_none());
}

#[test]
fn ask_answers_from_the_retrieved_passage() {
    let (Some(model), Some(reader)) = (minilm(), smollm2()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let wiki = write_corpus(tmp.path(), CORPUS);
    let out = tmp.path().join("qa");
    let enc = encoder(&model, Pooling::Mean);
    build_or_reuse(&out, &sources(&model, wiki), &enc, &mut |_| {}).unwrap();
    let system = QaSystem {
        index: QaIndex::open(&out, &enc).unwrap(),
        encoder: enc,
        reader: Some(Reader::Generative(
            GenerativeReader::load(&reader, &Device::Cpu).unwrap(),
        )),
        prior: PassagePrior::default(),
    };
    let long = format!("What is the capital of France? {}", "Please. ".repeat(100));
    let r = system.ask(&long, 2, RetrieverKind::Dense).unwrap();
    assert_eq!(r.warnings.len(), 1, "over-long question warned about");
    assert_eq!(r.evidence[0].title, "Paris");
    let answer = r.answer.expect("an answer");
    assert!(
        normalize_answer(&answer.text).contains("paris"),
        "{answer:?}"
    );
    let total: f64 = r.evidence.iter().map(|e| e.prob).sum();
    assert!((total - 1.0).abs() < 1e-9);
    assert!(answer.prob > 0.0 && answer.prob <= 1.0);
    assert!(r.answers.windows(2).all(|w| w[0].prob >= w[1].prob));
}
