//! The extractive reader and REALM fine-tuning on a tiny random BERT: reader inputs and span
//! text, the span-marginalisation loss against a hand and a brute-force computation,
//! gradients (query tower and reader: all non-zero; document tower and index: untouched),
//! checkpoint provenance and resuming with the optimizer state.

use std::collections::HashSet;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use ralm_models::bert::{load_tokenizer, BertConfig, Mode, Pooling};
use ralm_realm::ask::{QaSystem, Reader, RetrieverKind};
use ralm_realm::data::{AnswerKind, QaExample};
use ralm_realm::finetune::loss::marginal_loss;
use ralm_realm::finetune::query::QueryTower;
use ralm_realm::finetune::{open_checkpoint, FineTuneConfig, Trainer};
use ralm_realm::metrics::normalize_answer;
use ralm_realm::prior::PassagePrior;
use ralm_realm::qa_index::{build_or_reuse, CorpusSources, QaIndex};
use ralm_realm::reader::{ExtractiveReader, ReaderInput, ReaderOptions, SpanMatcher, SpecialIds};
use ralm_realm::retriever::DenseEncoder;
use tokenizers::Tokenizer;

mod common;

const WORDS: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", ",", "what", "is", "the", "capital",
    "of", "france", "paris", "city", "a", "in", "europe", "big", "berlin", "germany", "river",
    "seine", "flows", "through", "which", "country", "has", "and", "lyon", "second", "##s",
    "largest", "rome", "italy", "tower", "eiffel",
];

const CORPUS: &[(&str, &str)] = &[
    (
        "France",
        "Paris is the capital of France. Lyon is the second largest city of France.",
    ),
    (
        "Paris",
        "The Seine flows through Paris, a big city in Europe.",
    ),
    ("Germany", "Berlin is the capital of Germany."),
    ("Italy", "Rome is the capital of Italy."),
];

const MAX_SEQ: usize = 128;

struct Tiny {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: BertConfig,
}

impl Tiny {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, config) = common::tiny_bert(tmp.path(), WORDS, MAX_SEQ);
        Self {
            _tmp: tmp,
            dir,
            config,
        }
    }

    fn tokenizer(&self) -> (Tokenizer, PathBuf) {
        load_tokenizer(&self.dir, MAX_SEQ).unwrap()
    }

    fn reader(&self, seed: u64) -> ExtractiveReader {
        let (tok, path) = self.tokenizer();
        let options = ReaderOptions {
            max_seq_len: MAX_SEQ,
            max_span_len: 4,
        };
        ExtractiveReader::new_random(&self.config, tok, &path, options, seed, &Device::Cpu).unwrap()
    }

    fn tower(&self, seed: u64) -> QueryTower {
        let (tok, path) = self.tokenizer();
        QueryTower::new_random(&self.config, tok, &path, Pooling::Mean, seed, &Device::Cpu).unwrap()
    }

    /// A document encoder saved as an HF directory from a random tower with `seed`.
    fn document_encoder(&self, seed: u64, name: &str) -> DenseEncoder {
        let dir = self.dir.parent().unwrap().join(name);
        self.tower(seed).save(&dir).unwrap();
        DenseEncoder::load(&dir, Pooling::Mean, 8, &Device::Cpu).unwrap()
    }

    /// A QA index over [`CORPUS`] built with `encoder`.
    fn index(&self, encoder: &DenseEncoder, name: &str) -> PathBuf {
        let root = self.dir.parent().unwrap();
        let map: serde_json::Map<String, serde_json::Value> = CORPUS
            .iter()
            .map(|(t, x)| (t.to_string(), serde_json::json!({"title": t, "extract": x})))
            .collect();
        let wiki = root.join("wiki.json");
        std::fs::write(&wiki, serde_json::to_vec(&map).unwrap()).unwrap();
        let out = root.join(name);
        let sources = CorpusSources {
            wiki: Some(wiki),
            squad: None,
            tokenizer: self.dir.join("tokenizer.json"),
            max_wordpieces: 64,
        };
        build_or_reuse(&out, &sources, encoder, &mut |_| {}).unwrap();
        out
    }
}

fn config(k: usize) -> FineTuneConfig {
    FineTuneConfig {
        k,
        scale: 20.0,
        batch_size: 2,
        total_steps: 10,
        warmup_steps: 2,
        lr: 1e-3,
        query_lr: 5e-4,
        weight_decay: 0.01,
        max_grad_norm: 1.0,
        gold_steps: 0,
        reader: ReaderOptions {
            max_seq_len: MAX_SEQ,
            max_span_len: 4,
        },
        pooling: "mean".into(),
        seed: 7,
    }
}

fn question(q: &str, answers: &[&str]) -> QaExample {
    QaExample {
        id: q.into(),
        question: q.into(),
        answers: answers.iter().map(|a| a.to_string()).collect(),
        kind: AnswerKind::Text,
        gold_passage: None,
    }
}

fn ln_sum_exp(xs: &[f64]) -> f64 {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

#[test]
fn loss_matches_a_hand_computed_value() {
    let dev = Device::Cpu;
    let p_z = [0.5f64, 0.3, 0.2];
    let log_p_z = Tensor::new(&p_z.map(|p| p.ln() as f32), &dev).unwrap();
    let scores = vec![
        Tensor::new(&[1f32, 2.0, 0.0], &dev).unwrap(),
        Tensor::new(&[0f32, 0.0], &dev).unwrap(),
        Tensor::new(&[3f32, 1.0, 1.0], &dev).unwrap(),
    ];
    let matching = vec![vec![1u32], vec![], vec![0, 2]];
    let got = marginal_loss(&log_p_z, &scores, &matching)
        .unwrap()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let e = std::f64::consts::E;
    let p0 = e * e / (e + e * e + 1.0);
    let p2 = (e.powi(3) + e) / (e.powi(3) + 2.0 * e);
    let want = -(0.5 * p0 + 0.2 * p2).ln();
    assert!(
        (got - want).abs() < 1e-5,
        "loss {got} vs hand-computed {want}"
    );
    // No passage with a matching span: the question contributes nothing.
    let none = marginal_loss(&log_p_z, &scores, &[vec![], vec![], vec![]]).unwrap();
    assert!(none.is_none());
}

#[test]
fn reader_input_layout_truncation_and_span_text() {
    let tiny = Tiny::new();
    let (tok, _) = tiny.tokenizer();
    let special = SpecialIds::of(&tok).unwrap();
    let passage = "Paris is the capital of France. Lyon is the second largest city of France.";
    let input = ReaderInput::new(
        &tok,
        special,
        "what is the capital of france?",
        "France",
        passage,
        MAX_SEQ,
    )
    .unwrap();
    // [CLS] 7 question pieces [SEP] title [SEP] passage [SEP]
    assert_eq!(input.ids[0], special.cls);
    assert_eq!(input.passage_start, 1 + 7 + 1 + 1 + 1);
    assert_eq!(input.type_ids[8], 0);
    assert_eq!(input.type_ids[9], 1);
    assert_eq!(*input.ids.last().unwrap(), special.sep);
    assert!(!input.question_truncated);
    let texts: HashSet<&str> = input
        .valid_spans(4)
        .into_iter()
        .map(|s| input.span_text(passage, s))
        .collect();
    for want in ["Paris", "the capital", "France", "second largest city of"] {
        assert!(texts.contains(want), "span {want:?} offered");
    }
    assert!(
        !texts.contains("second largest city of France"),
        "longer than 4 wordpieces"
    );
    assert!(texts.iter().all(|t| passage.contains(t)));

    // An over-long question is capped (never a panic), and the passage gives way to fit.
    let long_q = "what is the capital of france ".repeat(40);
    let long_p = "the seine flows through paris . ".repeat(40);
    let input = ReaderInput::new(&tok, special, &long_q, "Paris", &long_p, MAX_SEQ).unwrap();
    assert!(input.question_truncated);
    assert_eq!(input.ids.len(), MAX_SEQ);
    assert_eq!(input.passage_start, 1 + 62 + 1 + 1 + 1);
    assert_eq!(input.passage_len(), MAX_SEQ - input.passage_start - 1);
}

#[test]
fn regex_answers_match_whole_spans_only() {
    let m = SpanMatcher::new(&["Paris|Lyon".to_string()], AnswerKind::Regex);
    assert!(m.matches("Lyon"));
    assert!(m.matches("paris"));
    assert!(!m.matches("Paris is the capital"));
    let t = SpanMatcher::new(&["The Eiffel Tower".to_string()], AnswerKind::Text);
    assert!(t.matches("eiffel tower."));
    assert!(!t.matches("Eiffel"));
}

#[test]
fn loss_equals_brute_force_and_gradients_reach_exactly_the_trained_towers() {
    let tiny = Tiny::new();
    let doc_tower = tiny.tower(1);
    let doc_dir = tiny.dir.parent().unwrap().join("doc");
    doc_tower.save(&doc_dir).unwrap();
    let doc = DenseEncoder::load(&doc_dir, Pooling::Mean, 8, &Device::Cpu).unwrap();
    let index_dir = tiny.index(&doc, "qa");
    let index = QaIndex::open(&index_dir, &doc).unwrap();
    let k = CORPUS.len();
    let trainer =
        Trainer::from_parts(&index, &doc, tiny.reader(2), tiny.tower(3), config(k)).unwrap();
    let batch = vec![
        question("what is the capital of france?", &["Paris"]),
        question("which city has the eiffel tower?", &["eiffel"]),
        question("what is the capital of italy?", &["Rome", "the rome"]),
    ];
    let (loss, used, _) = trainer.loss(&batch, false).unwrap();
    let loss = loss.expect("some question has a matching span");

    // Brute force, in f64 from the towers' raw outputs.
    let passages = index.passages();
    let mut total = 0.0;
    let mut counted = 0;
    for ex in &batch {
        let q_inf = trainer
            .query()
            .embed(&[&ex.question], Mode::Inference)
            .unwrap();
        let hits = index
            .dense(&q_inf.flatten_all().unwrap().to_vec1::<f32>().unwrap(), k)
            .unwrap();
        let q: Vec<f32> = trainer
            .query()
            .embed(&[&ex.question], Mode::Train)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let dots: Vec<f32> = hits.iter().map(|&(i, _)| index.score(&q, i)).collect();
        let p_z = PassagePrior::default().posterior(&dots, &vec![0.0; dots.len()]);
        let golds: HashSet<String> = ex.answers.iter().map(|a| normalize_answer(a)).collect();
        let mut terms = Vec::new();
        for (&(i, _), pz) in hits.iter().zip(&p_z) {
            let input = trainer
                .reader()
                .prepare(&ex.question, &passages[i])
                .unwrap();
            let logits = trainer.reader().logits(&[&input], Mode::Train).unwrap();
            let start: Vec<f32> = logits.start.flatten_all().unwrap().to_vec1().unwrap();
            let end: Vec<f32> = logits.end.flatten_all().unwrap().to_vec1().unwrap();
            let (mut all, mut hit) = (Vec::new(), Vec::new());
            let n = input.passage_len();
            for s in 0..n {
                for e in s..n {
                    if e - s >= 4 || !input.word_start[s] || !input.word_end[e] {
                        continue;
                    }
                    let score =
                        (start[input.passage_start + s] + end[input.passage_start + e]) as f64;
                    all.push(score);
                    let text = input.span_text(&passages[i].text, (s, e));
                    if golds.contains(&normalize_answer(text)) {
                        hit.push(score);
                    }
                }
            }
            if !hit.is_empty() {
                terms.push(pz.ln() + ln_sum_exp(&hit) - ln_sum_exp(&all));
            }
        }
        if !terms.is_empty() {
            total += -ln_sum_exp(&terms);
            counted += 1;
        }
    }
    assert_eq!(counted, used);
    assert_eq!(
        used, 2,
        "the eiffel question has no matching span in its passages"
    );
    let want = total / counted as f64;
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    assert!(
        (got - want).abs() < 1e-4 * want.abs().max(1.0),
        "loss {got} vs brute force {want}"
    );

    // Gradients: every variable of the reader and of the query tower, none of the document tower.
    let grads = loss.backward().unwrap();
    for (tower, varmap) in [
        ("reader", trainer.reader().body().varmap()),
        ("query", trainer.query().body().varmap()),
    ] {
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{tower} {name}: no gradient"));
            let norm = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{tower} {name}: zero gradient");
        }
    }
    for (name, var) in doc_tower.body().varmap().data().lock().unwrap().iter() {
        assert!(
            grads.get(var.as_tensor()).is_none(),
            "document tower {name} got a gradient"
        );
    }
}

fn reader_weights(t: &Trainer) -> Vec<f32> {
    let tensors = t.reader().body().tensors().unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| tensors[*n].flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

#[test]
fn training_leaves_the_index_alone_checkpoints_resume_and_provenance_is_checked() {
    let tiny = Tiny::new();
    let doc = tiny.document_encoder(1, "doc");
    let index_dir = tiny.index(&doc, "qa");
    let index = QaIndex::open(&index_dir, &doc).unwrap();
    let vectors_before: Vec<f32> = (0..index.passages().len())
        .flat_map(|i| index.vector(i).to_vec())
        .collect();
    let batch = vec![
        question("what is the capital of france?", &["Paris"]),
        question("what is the capital of italy?", &["Rome"]),
    ];
    let mut a = Trainer::from_parts(
        &index,
        &doc,
        tiny.reader(2),
        tiny.tower(3),
        config(CORPUS.len()),
    )
    .unwrap();
    let before = reader_weights(&a);
    let s = a.step(&batch).unwrap();
    assert!(s.loss.is_some() && s.used == 2 && s.grad_norm > 0.0);
    assert_ne!(before, reader_weights(&a), "the reader was updated");
    let out = tiny.dir.parent().unwrap().join("ft");
    a.save(&out).unwrap();
    a.step(&batch).unwrap();

    // Resuming (weights and optimizer moments) reproduces the next update exactly.
    let mut b = Trainer::resume(&index, &doc, &out, None, &Device::Cpu).unwrap();
    assert_eq!(b.step_count(), 1);
    b.step(&batch).unwrap();
    let (wa, wb) = (reader_weights(&a), reader_weights(&b));
    let diff = wa
        .iter()
        .zip(&wb)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-6, "resumed update differs by {diff}");

    // The index vectors are untouched (the document tower is frozen).
    let reopened = QaIndex::open(&index_dir, &doc).unwrap();
    let vectors_after: Vec<f32> = (0..reopened.passages().len())
        .flat_map(|i| reopened.vector(i).to_vec())
        .collect();
    assert_eq!(vectors_before, vectors_after);

    // The checkpoint is accepted with the document encoder it was trained against ...
    let ft = open_checkpoint(&out, &doc, 8, &Device::Cpu).unwrap();
    assert_eq!(ft.state.step, 1);
    // ... its query tower is refused by the index on its own (the manifest names the document
    // encoder) ...
    assert!(QaIndex::open(&index_dir, &ft.query).is_err());
    // ... and a checkpoint is refused with an index built by another document encoder.
    let other = tiny.document_encoder(9, "other");
    let err = open_checkpoint(&out, &other, 8, &Device::Cpu)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("trained against"), "{err}");
    assert!(Trainer::resume(&index, &other, &out, None, &Device::Cpu).is_err());

    // The fine-tuned system answers with a span of a retrieved passage.
    let system = QaSystem {
        index,
        encoder: ft.query,
        reader: Some(Reader::Extractive(ft.reader)),
        prior: PassagePrior::default(),
    };
    let r = system
        .ask("what is the capital of france?", 2, RetrieverKind::Dense)
        .unwrap();
    let answer = r.answer.expect("an answer");
    assert!(answer.prob > 0.0 && answer.prob <= 1.0 + 1e-9);
    assert!(r.evidence.iter().any(|e| e.text.contains(&answer.text)));
    let total: f64 = r.answers.iter().map(|a| a.prob).sum();
    assert!(total <= 1.0 + 1e-6, "answer probabilities sum to {total}");
}

#[test]
fn minilm_reader_gets_a_seeded_head_and_reads_spans_of_the_passage() {
    let dir = ralm_realm::data::repo_root().join("models").join("minilm");
    if !dir.join("model.safetensors").is_file() {
        eprintln!(
            "skipping: {} is absent (run scripts/setup.sh)",
            dir.display()
        );
        return;
    }
    let options = ReaderOptions::default();
    let load = |seed| ExtractiveReader::load(&dir, options, seed, &Device::Cpu).unwrap();
    let passage = ralm_realm::passages::Passage {
        id: "wiki:Paris:0".into(),
        title: "Paris".into(),
        text: "Paris is the capital and most populous city of France, on the Seine.".into(),
    };
    let read = |r: &ExtractiveReader| {
        r.read("What river flows through Paris?", &[&passage])
            .unwrap()
    };
    let (a, b, c) = (read(&load(5)), read(&load(5)), read(&load(6)));
    assert_eq!(a[0].spans, b[0].spans, "same seed, same head");
    assert_ne!(a[0].spans, c[0].spans, "another seed, another head");
    assert!(a[0]
        .spans
        .iter()
        .all(|(t, p)| passage.text.contains(t.as_str()) && *p > 0.0));
}
