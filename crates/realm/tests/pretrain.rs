//! REALM pre-training on tiny random models: the loss against a direct computation (each
//! candidate run alone, f64 softmaxes), a gradient for every parameter of the reader and both
//! towers, the null document, masking and the exclusion of the sentence's own document; index
//! snapshots swapped under concurrent reads, the background refresher, and staleness.

use candle_core::Device;
use ralm_models::bert::{load_tokenizer, BertForMaskedLM, Mode, Pooling};
use ralm_realm::finetune::query::QueryTower;
use ralm_realm::passages::Passage;
use ralm_realm::pretrain::{
    exclude_document, mask_sentence, warm_up_on_evidence, warm_up_reader, EvidenceSource, Example,
    LmReader, MaskedHits, MaskedSentence, PretrainConfig, PretrainStep, Pretrainer, Reader,
    RealmModels, Specials,
};
use ralm_realm::refresh::{DocSnapshot, Refresher, SnapshotSlot, SnapshotStore};
use ralm_realm::retriever::{passage_text, DenseEncoder};
use rand::SeedableRng;
use std::sync::Arc;
use std::time::Instant;

mod common;

const WORDS: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "paris", "is", "the", "capital", "of",
    "france", "berlin", "germany", "rome", "italy", "city", "big", "a", "in", "europe", "##s",
];
const MAX_SEQ: usize = 64;

fn passage(id: &str, title: &str, text: &str) -> Passage {
    Passage {
        id: id.into(),
        title: title.into(),
        text: text.into(),
    }
}

fn models(root: &std::path::Path) -> RealmModels {
    models_reading(root, |config| {
        let reader = BertForMaskedLM::new_random(config, &Device::Cpu).unwrap();
        common::reseed(reader.varmap(), 3, config.initializer_range);
        Reader::Mlm(reader)
    })
}

/// Random towers over [`WORDS`] around the reader `reader` makes from their config.
fn models_reading(
    root: &std::path::Path,
    reader: impl FnOnce(&ralm_models::bert::BertConfig) -> Reader,
) -> RealmModels {
    let (dir, config) = common::tiny_bert(root, WORDS, MAX_SEQ);
    let (tok, path) = load_tokenizer(&dir, MAX_SEQ).unwrap();
    let input = QueryTower::new_random(&config, tok.clone(), &path, Pooling::Mean, 1, &Device::Cpu)
        .unwrap();
    let mut docs =
        QueryTower::new_random(&config, tok.clone(), &path, Pooling::Mean, 2, &Device::Cpu)
            .unwrap();
    docs.set_max_len(MAX_SEQ).unwrap();
    RealmModels {
        reader: reader(&config),
        input,
        docs,
        specials: Specials::of(&tok, 0).unwrap(),
        max_doc_pieces: 20,
        scale: 5.0,
    }
}

fn sentence() -> MaskedSentence {
    let text = "paris is the capital of france.";
    MaskedSentence {
        text: text.into(),
        span: (0, 5),
        document: "paris".into(),
    }
}

fn ln_sum_exp(x: &[f64]) -> f64 {
    let m = x.iter().cloned().fold(f64::MIN, f64::max);
    m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

#[test]
fn loss_matches_each_candidate_run_alone_and_reaches_every_parameter() {
    let tmp = tempfile::tempdir().unwrap();
    let m = models(tmp.path());
    let tok = m.docs.body().tokenizer().clone();
    let x = mask_sentence(&tok, &sentence(), 32, m.specials.mask).unwrap();
    assert_eq!(x.positions, [0]);
    assert_eq!(x.targets, [tok.token_to_id("paris").unwrap()]);
    assert_eq!(x.ids[0], m.specials.mask);
    let docs = [
        passage("wiki:france:0", "France", "paris is the capital of france."),
        passage(
            "wiki:germany:0",
            "Germany",
            "berlin is a big city in europe, the capital of germany.",
        ),
    ];
    let example = Example {
        x: x.clone(),
        docs: docs.iter().collect(),
        lm: None,
    };
    let out = m.sentence_losses(&[example]).unwrap().0.remove(0);
    assert_eq!(out.log_p_z.len(), 3, "two documents and the null document");

    // Direct: every candidate alone (no padding), softmaxes in f64.
    let sp = m.specials;
    let mut query = vec![sp.cls];
    query.extend(&x.ids);
    query.push(sp.sep);
    let qtext = tok.decode(&query, false).unwrap();
    assert!(qtext.contains("[MASK]"), "{qtext}");
    let q: Vec<f32> = {
        let batch = ralm_models::bert::TokenBatch {
            ids: candle_core::Tensor::new(query.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            type_ids: candle_core::Tensor::zeros(
                (1, query.len()),
                candle_core::DType::U32,
                &Device::Cpu,
            )
            .unwrap(),
            mask: candle_core::Tensor::ones(
                (1, query.len()),
                candle_core::DType::F32,
                &Device::Cpu,
            )
            .unwrap(),
            lengths: vec![query.len()],
        };
        m.input
            .embed_batch(&batch, Mode::Train)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let mut texts: Vec<String> = docs.iter().map(passage_text).collect();
    texts.push(String::new());
    let (mut scores, mut log_p_y) = (Vec::new(), Vec::new());
    for text in &texts {
        let d: Vec<f32> = m
            .docs
            .embed(&[text], Mode::Train)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        scores.push(m.scale * q.iter().zip(&d).map(|(a, b)| (a * b) as f64).sum::<f64>());
        let z = tok.encode(text.as_str(), false).unwrap();
        let mut ids = query.clone();
        ids.extend(&z.get_ids()[..z.len().min(m.max_doc_pieces)]);
        ids.push(sp.sep);
        let mut types = vec![0u32; query.len()];
        types.resize(ids.len(), 1);
        let n = ids.len();
        let t = |v: Vec<u32>| {
            candle_core::Tensor::new(v.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap()
        };
        let mask =
            candle_core::Tensor::ones((1, n), candle_core::DType::F32, &Device::Cpu).unwrap();
        let (_, logits) = m
            .reader
            .mlm()
            .unwrap()
            .forward(&t(ids), &t(types), &mask, Mode::Train)
            .unwrap();
        let logits = logits.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let mut lp = 0.0;
        for (&p, &target) in x.positions.iter().zip(&x.targets) {
            let row: Vec<f64> = logits[1 + p].iter().map(|&v| v as f64).collect();
            lp += row[target as usize] - ln_sum_exp(&row);
        }
        log_p_y.push(lp);
    }
    let norm = ln_sum_exp(&scores);
    let terms: Vec<f64> = scores
        .iter()
        .zip(&log_p_y)
        .map(|(s, y)| s - norm + y)
        .collect();
    let direct = -ln_sum_exp(&terms);
    let got = out.loss.to_scalar::<f32>().unwrap() as f64;
    assert!(
        (got - direct).abs() < 1e-4 * direct.abs().max(1.0),
        "{got} vs {direct}"
    );
    for (i, y) in log_p_y.iter().enumerate() {
        assert!((out.log_p_y[i] as f64 - y).abs() < 1e-3, "log p(y|z{i},x)");
    }
    let top = if out.log_p_z[0] >= out.log_p_z[1] {
        0
    } else {
        1
    };
    let ru = out.retrieval_utility().unwrap();
    assert!((ru - (out.log_p_y[top] - out.log_p_y[2])).abs() < 1e-6);

    let grads = out.loss.backward().unwrap();
    for (what, varmap) in [
        ("reader", m.reader.mlm().unwrap().varmap()),
        ("input tower", m.input.body().varmap()),
        ("document tower", m.docs.body().varmap()),
    ] {
        let without = common::without_gradient(varmap, &grads);
        assert!(without.is_empty(), "{what}: no gradient for {without:?}");
    }
}

#[test]
fn a_batch_scores_each_sentence_as_if_it_ran_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let m = models(tmp.path());
    let tok = m.docs.body().tokenizer().clone();
    let docs = [
        passage("wiki:france:0", "France", "paris is the capital of france."),
        passage(
            "wiki:germany:0",
            "Germany",
            "berlin is a big city in europe, the capital of germany.",
        ),
        passage("wiki:italy:0", "Italy", "rome."),
    ];
    // Sentences of different lengths, masked wordpieces and numbers of candidates, so rows
    // are padded differently in the batch than alone.
    let mut two = sentence();
    two.span = (9, 20);
    let long = MaskedSentence {
        text: "berlin is a big city in europe, the capital of germany.".into(),
        span: (0, 6),
        document: "germany".into(),
    };
    let examples = [
        (sentence(), vec![&docs[1], &docs[2]]),
        (two, vec![&docs[0]]),
        (long, vec![]),
    ]
    .map(|(s, docs)| Example {
        x: mask_sentence(&tok, &s, 32, m.specials.mask).unwrap(),
        docs,
        lm: None,
    });
    let (batched, tokens) = m.sentence_losses(&examples).unwrap();
    assert_eq!(batched.len(), 3);
    let mut alone_tokens = 0;
    for (e, b) in examples.iter().zip(&batched) {
        let (mut alone, t) = m.sentence_losses(std::slice::from_ref(e)).unwrap();
        alone_tokens += t;
        let a = alone.remove(0);
        assert_eq!(b.log_p_z.len(), e.docs.len() + 1);
        let (la, lb) = (
            a.loss.to_scalar::<f32>().unwrap(),
            b.loss.to_scalar::<f32>().unwrap(),
        );
        assert!((la - lb).abs() < 1e-4 * la.abs().max(1.0), "{la} vs {lb}");
        for (x, y) in a.log_p_z.iter().zip(&b.log_p_z) {
            assert!((x - y).abs() < 1e-5, "log p(z|x) {x} vs {y}");
        }
        for (x, y) in a.log_p_y.iter().zip(&b.log_p_y) {
            assert!((x - y).abs() < 1e-4, "log p(y|z,x) {x} vs {y}");
        }
    }
    assert_eq!(tokens, alone_tokens);
    let each = m.masked_accuracy(&examples).unwrap();
    assert_eq!(each.len(), examples.len());
    let mut apart = MaskedHits::default();
    for (e, batched) in examples.iter().zip(&each) {
        let alone = m.masked_accuracy(std::slice::from_ref(e)).unwrap();
        let [alone] = alone.as_slice() else {
            panic!("one example gave {} results", alone.len())
        };
        assert_eq!(
            (
                alone.with_retrieval,
                alone.null_only,
                alone.masked,
                alone.sentences
            ),
            (
                batched.with_retrieval,
                batched.null_only,
                batched.masked,
                batched.sentences
            )
        );
        assert!((alone.utility - batched.utility).abs() < 1e-4);
        apart += *alone;
    }
    // Only the second sentence's document holds its span ("the capital"); the first's two do
    // not hold "paris", and the third has none.
    let spans: Vec<_> = each.iter().map(|h| (h.span_top, h.span_found)).collect();
    assert_eq!(spans, [(0, 0), (1, 1), (0, 0)]);
    let together: MaskedHits = each.into_iter().sum();
    assert_eq!(together.masked, 1 + 2 + 1);
    // The sentence without documents has no utility; the others' agree with their losses'.
    assert_eq!((together.sentences, apart.sentences), (2, 2));
    let from_losses: f64 = (batched.iter())
        .filter_map(|b| b.retrieval_utility())
        .map(f64::from)
        .sum();
    for u in [together.utility, apart.utility] {
        assert!((u - from_losses).abs() < 1e-3, "{u} vs {from_losses}");
    }
}

#[test]
fn masking_and_exclusion() {
    let tmp = tempfile::tempdir().unwrap();
    let m = models(tmp.path());
    let tok = m.docs.body().tokenizer().clone();
    // Every wordpiece the span touches is masked: "he capit" touches "the" and "capital".
    let mut s = sentence();
    s.span = (10, 18);
    let x = mask_sentence(&tok, &s, 32, m.specials.mask).unwrap();
    assert_eq!(x.positions, [2, 3]);
    assert_eq!(x.ids[1], tok.token_to_id("is").unwrap());
    // A sentence cut to fewer wordpieces keeps a window with the span in it.
    let cut = mask_sentence(&tok, &s, 2, m.specials.mask).unwrap();
    assert_eq!(cut.positions, [0, 1]);
    assert_eq!(cut.targets, x.targets);
    let one = mask_sentence(&tok, &s, 1, m.specials.mask).unwrap();
    assert_eq!((one.ids.len(), one.positions.as_slice()), (1, &[0][..]));
    assert_eq!(one.targets, x.targets[..1]);
    s.span = (500, 510);
    let outside = mask_sentence(&tok, &s, 32, m.specials.mask)
        .unwrap_err()
        .to_string();
    assert!(outside.contains("covers no wordpiece"), "{outside}");

    let passages = vec![
        passage("wiki:paris:0", "Paris", "paris is big."),
        passage("wiki:france:0", "France", "paris is the capital of france."),
        passage("wiki:paris:1", "Paris", "the seine."),
        passage("wiki:italy:0", "Italy", "rome."),
    ];
    assert_eq!(
        exclude_document(&[0, 1, 2, 3], &passages, "paris", 2),
        [1, 3]
    );
    assert_eq!(
        exclude_document(&[2, 0], &passages, "paris", 2),
        Vec::<usize>::new()
    );
}

fn snapshot(version: u64, step: usize, vectors: &[f32], dim: usize) -> DocSnapshot {
    DocSnapshot::new(version, step, Instant::now(), vectors, dim).unwrap()
}

#[test]
fn swaps_never_mix_snapshots_under_concurrent_reads() {
    // Snapshot v holds every passage at (v + 1) · e0: a search sees one value per snapshot.
    let (n, dim) = (40, 4);
    let make = move |v: u64| {
        let mut rows = vec![0f32; n * dim];
        for i in 0..n {
            rows[i * dim] = (v + 1) as f32;
        }
        snapshot(v, v as usize, &rows, dim)
    };
    let slot = Arc::new(SnapshotSlot::new(make(0)));
    let writer = {
        let slot = slot.clone();
        std::thread::spawn(move || {
            for v in 1..=300 {
                slot.publish(Arc::new(make(v)));
            }
        })
    };
    let mut seen = std::collections::HashSet::new();
    while !writer.is_finished() || seen.len() < 2 {
        let snap = slot.current();
        let hits = snap.search(&[1.0, 0.0, 0.0, 0.0], n).unwrap();
        assert_eq!(hits.len(), n);
        let expect = (snap.version + 1) as f32;
        assert!(
            hits.iter().all(|&(_, s)| s == expect),
            "mixed snapshot {}",
            snap.version
        );
        seen.insert(snap.version);
    }
    writer.join().unwrap();
    assert_eq!(slot.current().version, 300);
    assert!(seen.len() >= 2);
}

#[test]
fn refresher_reembeds_the_corpus_and_the_trainer_reports_staleness() {
    let tmp = tempfile::tempdir().unwrap();
    let m = models(tmp.path());
    let (passages, slot) = capitals(5);
    let dim = 16;
    let corpus = Arc::new(passages.clone());
    let store = Arc::new(SnapshotStore::new(&tmp.path().join("snapshots"), &passages));
    let refresher = Refresher::spawn(
        slot.clone(),
        corpus,
        Pooling::Mean,
        8,
        Device::Cpu,
        Some(store.clone()),
    );
    let config = tiny_config(1e-3, 1e-3, 0, 10);
    let mut trainer = Pretrainer::new(&passages, slot.clone(), m, config).unwrap();
    let batch = vec![
        sentence(),
        MaskedSentence {
            text: "berlin is the capital of germany.".into(),
            span: (0, 6),
            document: "germany".into(),
        },
    ];
    let first = trainer.step(&batch).unwrap();
    assert_eq!((first.snapshot_version, first.staleness_steps), (0, 0));
    assert!(first.loss.is_finite() && first.tokens > 0);

    let tower = tmp.path().join("tower");
    trainer.models().docs.save(&tower).unwrap();
    assert!(refresher.offer(1, Instant::now(), tower.clone()));
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let report = loop {
        if let Some(r) = refresher.finished().pop() {
            break r.unwrap();
        }
        assert!(Instant::now() < deadline, "no refresh within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!((report.version, report.params_step), (1, 1));
    assert!(!refresher.busy());
    let snap = slot.current();
    assert_eq!((snap.version, snap.len()), (1, passages.len()));
    // The new vectors are the saved tower's embeddings of the passages.
    let encoder = DenseEncoder::load(&tower, Pooling::Mean, 8, &Device::Cpu).unwrap();
    let tokens = encoder.tokenize_passages(&passages).unwrap();
    let vectors = encoder.encode_tokenized(&tokens).unwrap();
    for (i, row) in vectors.chunks(dim).enumerate() {
        let hits = snap.search(row, 1).unwrap();
        assert_eq!(hits[0].0, i);
        assert!(
            (hits[0].1 - 1.0).abs() < 1e-4,
            "unit vectors: {}",
            hits[0].1
        );
    }

    let second = trainer.step(&batch).unwrap();
    assert_eq!((second.snapshot_version, second.staleness_steps), (1, 0));
    let third = trainer.step(&batch).unwrap();
    assert_eq!((third.snapshot_version, third.staleness_steps), (1, 1));

    // The refresher kept the snapshot on disk, and a checkpoint names it: a resumed run reads
    // the same vectors, with the same copy time.
    let saved = trainer.save(&tmp.path().join("checkpoint")).unwrap();
    assert_eq!(saved.snapshot_version, 1);
    let back = store.load(1).unwrap();
    assert_eq!((back.version, back.params_step, back.len()), (1, 1, 3));
    let age = |t: Instant| t.elapsed().as_secs_f64();
    assert!((age(back.taken) - age(snap.taken)).abs() < 0.5);
    for (i, row) in vectors.chunks(dim).enumerate() {
        assert_eq!(
            back.search(row, 3).unwrap(),
            snap.search(row, 3).unwrap(),
            "row {i}"
        );
    }
}

#[test]
fn snapshot_store_refuses_another_corpus_or_a_cut_file_and_prunes_old_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let (passages, _) = capitals(5);
    let dir = tmp.path().join("snapshots");
    let store = SnapshotStore::new(&dir, &passages);
    let dim = 4;
    let vectors: Vec<f32> = (0..passages.len() * dim).map(|i| i as f32).collect();
    for v in 1..=3 {
        store
            .save(v, 10 * v as usize, Instant::now(), &vectors, dim)
            .unwrap();
    }
    assert!(store
        .save(4, 40, Instant::now(), &vectors[1..], dim)
        .is_err());
    assert_eq!(store.load(2).unwrap().params_step, 20);

    let other = SnapshotStore::new(&dir, &passages[..2]);
    let err = other.load(2).err().unwrap().to_string();
    assert!(
        err.contains("snapshot.json") && err.contains("corpus"),
        "{err}"
    );
    let mut renamed = passages.clone();
    renamed[0].id = "wiki:elsewhere:0".into();
    assert!(SnapshotStore::new(&dir, &renamed).load(2).is_err());

    let file = dir.join("v2/vectors.f32");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 4]).unwrap();
    let err = store.load(2).err().unwrap().to_string();
    assert!(
        err.contains("vectors.f32") && err.contains("bytes"),
        "{err}"
    );

    store.prune(3).unwrap();
    assert!(!dir.join("v1").exists() && !dir.join("v2").exists());
    assert_eq!(store.load(3).unwrap().version, 3);
}

/// Three capital-city passages and a snapshot of arbitrary vectors (`(i % modulus)`) over them.
fn capitals(modulus: usize) -> (Vec<Passage>, Arc<SnapshotSlot>) {
    let passages = vec![
        passage("wiki:france:0", "France", "paris is the capital of france."),
        passage(
            "wiki:germany:0",
            "Germany",
            "berlin is the capital of germany.",
        ),
        passage("wiki:italy:0", "Italy", "rome is the capital of italy."),
    ];
    let dim = 16;
    let vectors: Vec<f32> = (0..passages.len() * dim)
        .map(|i| (i % modulus) as f32)
        .collect();
    let slot = Arc::new(SnapshotSlot::new(snapshot(0, 0, &vectors, dim)));
    (passages, slot)
}

/// Settings of the tiny trainers: k = 2, no sentence cut.
fn tiny_config(lr: f64, tower_lr: f64, warmup_steps: usize, total_steps: usize) -> PretrainConfig {
    PretrainConfig {
        k: 2,
        lr,
        tower_lr,
        warmup_steps,
        total_steps,
        max_sentence_pieces: 32,
    }
}

/// Resumes the checkpoint `dir` of `trainer`, takes the next update on `batch` with both and
/// checks that their losses agree; returns the resumed trainer and both updates.
fn resume_and_step<'a>(
    trainer: &mut Pretrainer,
    passages: &'a [Passage],
    slot: &Arc<SnapshotSlot>,
    dir: &std::path::Path,
    batch: &[MaskedSentence],
) -> (Pretrainer<'a>, PretrainStep, PretrainStep) {
    let mut resumed = Pretrainer::resume(passages, slot.clone(), dir, &Device::Cpu, None).unwrap();
    assert_eq!(resumed.step_count(), trainer.step_count());
    let next = trainer.step(batch).unwrap();
    let again = resumed.step(batch).unwrap();
    assert!(
        (next.loss - again.loss).abs() < 1e-5,
        "{} vs {}",
        next.loss,
        again.loss
    );
    (resumed, next, again)
}

#[test]
fn resumes_models_optimizer_and_step_from_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (passages, slot) = capitals(3);
    let config = tiny_config(1e-3, 5e-4, 1, 6);
    let batch = vec![sentence()];
    let mut trainer = Pretrainer::new(
        &passages,
        slot.clone(),
        models(&tmp.path().join("a")),
        config,
    )
    .unwrap();
    trainer.step(&batch).unwrap();
    trainer.step(&batch).unwrap();
    let dir = tmp.path().join("checkpoint");
    trainer.save(&dir).unwrap();

    // Everything comes from the checkpoint: models, how they read inputs, optimizer moments.
    let (mut resumed, next, again) = resume_and_step(&mut trainer, &passages, &slot, &dir, &batch);
    assert_eq!(again.step, 3);
    assert!((next.lr - again.lr).abs() < 1e-15);
    assert!((next.grad_norm - again.grad_norm).abs() < 1e-3 * next.grad_norm.max(1.0));
    // The same update from the same moments: the next losses agree too.
    let after = trainer.step(&batch).unwrap();
    let after_resumed = resumed.step(&batch).unwrap();
    assert!((after.loss - after_resumed.loss).abs() < 1e-4);

    std::fs::write(dir.join("pretrain.json"), "{\"format\": \"other\"}").unwrap();
    assert!(Pretrainer::resume(&passages, slot, &dir, &Device::Cpu, None).is_err());
}

#[test]
fn held_out_accuracy_counts_masked_wordpieces_and_rises_as_the_reader_learns() {
    let tmp = tempfile::tempdir().unwrap();
    let (passages, slot) = capitals(5);
    let config = tiny_config(1e-2, 1e-3, 0, 60);
    let mut trainer = Pretrainer::new(&passages, slot, models(tmp.path()), config).unwrap();
    let mut two = sentence();
    two.span = (9, 20); // "the capital": two wordpieces
    let batch = vec![sentence(), two];
    // One result per sentence, in order, whatever the batch; progress after every batch.
    let mut progress = Vec::new();
    let each = trainer.evaluate(&batch, 1, |n| progress.push(n)).unwrap();
    assert_eq!(progress, [1, 2]);
    assert_eq!(each.iter().map(|h| h.masked).collect::<Vec<_>>(), [1, 2]);
    let before: MaskedHits = trainer
        .evaluate(&batch, 2, |_| {})
        .unwrap()
        .into_iter()
        .sum();
    let one_by_one: MaskedHits = each.into_iter().sum();
    let counts = |h: &MaskedHits| (h.with_retrieval, h.null_only, h.masked);
    assert_eq!(counts(&before), counts(&one_by_one));
    assert!(before.with_retrieval <= 3 && before.null_only <= 3);
    for _ in 0..60 {
        trainer.step(&batch).unwrap();
    }
    let after: MaskedHits = trainer
        .evaluate(&batch, 2, |_| {})
        .unwrap()
        .into_iter()
        .sum();
    assert_eq!(after.masked, 3);
    assert_eq!(
        (after.with_retrieval, after.null_only),
        (3, 3),
        "{before:?} -> {after:?}"
    );
}

/// Every variable's values, by name.
fn tensors(v: &candle_nn::VarMap) -> Vec<Vec<f32>> {
    let vars = v.data().lock().unwrap();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    names
        .iter()
        .map(|n| {
            vars[*n]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect()
}

/// Runs `warm_up` (which returns its losses and must report each to its callback) on `m` and
/// checks that its loss halves, that it changes the reader and leaves both towers alone.
fn check_reader_warm_up(
    m: &RealmModels,
    steps: usize,
    warm_up: impl FnOnce(&RealmModels, &mut dyn FnMut(f64)) -> Vec<f64>,
) {
    let (input, docs, reader) = (
        tensors(m.input.body().varmap()),
        tensors(m.docs.body().varmap()),
        tensors(m.reader.mlm().unwrap().varmap()),
    );
    let mut seen = Vec::new();
    let losses = warm_up(m, &mut |l| seen.push(l));
    assert_eq!(losses.len(), steps);
    assert_eq!(seen, losses);
    let first: f64 = losses[..10].iter().sum::<f64>() / 10.0;
    let last: f64 = losses[steps - 10..].iter().sum::<f64>() / 10.0;
    assert!(last < 0.5 * first, "loss {first:.3} -> {last:.3}");
    let unchanged = |now: Vec<Vec<f32>>, before: &Vec<Vec<f32>>, what: &str| {
        assert_eq!(&now, before, "{what} changed");
    };
    unchanged(tensors(m.input.body().varmap()), &input, "input tower");
    unchanged(tensors(m.docs.body().varmap()), &docs, "document tower");
    assert_ne!(
        tensors(m.reader.mlm().unwrap().varmap()),
        reader,
        "reader unchanged"
    );
}

#[test]
fn mlm_warm_up_trains_the_reader_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let first_text = sentence().text;
    let texts = [first_text.as_str(), "berlin is the capital of germany."];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    check_reader_warm_up(&models(tmp.path()), 200, |m, progress| {
        warm_up_reader(m, &texts, (200, 2, 1e-2), &mut rng, progress).unwrap()
    });
}

#[test]
fn evidence_is_a_passage_of_the_chosen_documents_that_the_reader_sees_the_span_in() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut passages, _) = capitals(3);
    passages.push(passage(
        "wiki:europe:0",
        "Europe",
        "paris is a big city in europe.",
    ));
    // "paris" again, but past the reader's 20 wordpieces of a document.
    passages.push(passage(
        "wiki:cities:0",
        "Cities",
        "rome , berlin , rome , berlin , rome , berlin , rome , berlin , rome , berlin paris",
    ));
    let dim = 16;
    let vectors: Vec<f32> = (0..passages.len() * dim).map(|i| (i % 7) as f32).collect();
    let slot = Arc::new(SnapshotSlot::new(snapshot(0, 0, &vectors, dim)));
    let mut config = tiny_config(1e-3, 1e-3, 0, 10);
    config.k = 4;
    let mut trainer = Pretrainer::new(&passages, slot, models(tmp.path()), config).unwrap();
    let rome = MaskedSentence {
        text: "rome is the capital of italy.".into(),
        span: (0, 4),
        document: "italy".into(),
    };
    let mut paris = sentence();
    paris.document = "france".into();
    let tokenizer = trainer.models().docs.body().tokenizer().clone();
    let m = trainer.models();
    let x = |s: &MaskedSentence| mask_sentence(&tokenizer, s, 32, m.specials.mask).unwrap();
    let holds = |s: &MaskedSentence, p: usize| m.holds_span(&x(s), &passages[p]).unwrap();
    assert!(holds(&paris, 0) && holds(&paris, 3) && !holds(&paris, 1));
    assert!(!holds(&paris, 4), "past max_doc_pieces");
    assert!(holds(&rome, 4), "within max_doc_pieces");

    // "paris" of document france: its own passage is excluded, Europe's holds it. "rome" of
    // document italy: only Cities holds it. A span no other passage holds gives no evidence.
    let mut nowhere = paris.clone();
    nowhere.text = "paris is the capital of france in europe.".into();
    nowhere.span = (24, 30);
    let sentences = [paris.clone(), nowhere.clone(), rome.clone()];
    let evidence = |batch, source| trainer.evidence(&sentences, batch, source).unwrap();
    let ids =
        |found: &[Example]| -> Vec<String> { found.iter().map(|e| e.docs[0].id.clone()).collect() };
    let found = evidence(2, EvidenceSource::OtherDocuments);
    assert_eq!(ids(&found), ["wiki:europe:0", "wiki:cities:0"]);
    assert_eq!(found[1].x.targets, x(&rome).targets);
    // From the sentence's own document instead: the passage it came from.
    let own = evidence(3, EvidenceSource::OwnDocument);
    assert_eq!(
        ids(&own),
        ["wiki:france:0", "wiki:france:0", "wiki:italy:0"]
    );

    // With k = 4 every other passage is retrieved: the step counts "paris" (Europe) as found,
    // the span of `nowhere` not.
    let step = trainer.step(&[paris, nowhere]).unwrap();
    assert_eq!(step.span_found, 0.5);

    check_reader_warm_up(trainer.models(), 100, |m, progress| {
        warm_up_on_evidence(m, &found, (100, 2, 1e-2), progress).unwrap()
    });
}

/// The towers of [`models`] around a frozen tiny Llama over [`WORDS`] and `<s>`, and the
/// Llama's directory.
fn lm_models(root: &std::path::Path) -> (RealmModels, std::path::PathBuf) {
    let words: Vec<&str> = WORDS.iter().copied().chain(["<s>"]).collect();
    let dir = common::tiny_llama(root, &words);
    let reader = LmReader::load(&dir, &Device::Cpu).unwrap();
    (models_reading(root, |_| Reader::Lm(reader)), dir)
}

#[test]
fn a_frozen_lm_reader_scores_the_span_after_each_document_and_only_the_towers_train() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, dir) = lm_models(tmp.path());
    let Reader::Lm(lm) = &m.reader else {
        unreachable!()
    };
    let tok = m.docs.body().tokenizer().clone();
    let ids = |text: &str| tok.encode(text, false).unwrap().get_ids().to_vec();
    let s = MaskedSentence {
        text: "the capital of france is paris.".into(),
        span: (25, 30),
        document: "paris".into(),
    };
    let x = lm.sentence(&s, 32).unwrap();
    assert_eq!(x.prefix, ids("the capital of france is"));
    assert_eq!(x.targets, ids("paris"));
    assert_eq!(lm.sentence(&s, 3).unwrap().prefix, ids("france is"));
    let docs = [
        passage("wiki:france:0", "France", "paris is the capital of france."),
        passage("wiki:italy:0", "Italy", "rome is a big city in italy."),
    ];
    let mut two = sentence(); // "paris" first: the null row is `<s>` then the span.
    two.span = (0, 5);
    let examples = [
        Example {
            x: mask_sentence(&tok, &s, 32, m.specials.mask).unwrap(),
            docs: docs.iter().collect(),
            lm: Some(x.clone()),
        },
        Example {
            x: mask_sentence(&tok, &two, 32, m.specials.mask).unwrap(),
            docs: vec![&docs[1]],
            lm: Some(lm.sentence(&two, 32).unwrap()),
        },
    ];
    let (out, _) = m.sentence_losses(&examples).unwrap();

    // Direct: each row alone through the model, the span's log-probability in f64.
    let model = ralm_models::llama::LlamaModel::load(
        &dir,
        ralm_models::llama::WeightMode::F32,
        &Device::Cpu,
    )
    .unwrap();
    let bos = 23; // "<s>", after WORDS
    let direct = |z: Option<&Passage>, x: &ralm_realm::pretrain::LmSentence| -> f64 {
        let mut row = vec![bos];
        if let Some(p) = z {
            row.extend(&ids(&passage_text(p))[..]);
        }
        row.extend(&x.prefix);
        row.extend(&x.targets);
        let input = candle_core::Tensor::new(row.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let hidden = model
            .forward(&input, 0, None)
            .unwrap()
            .hidden
            .squeeze(0)
            .unwrap();
        let logits = model.logits(&hidden).unwrap().to_vec2::<f32>().unwrap();
        let first = row.len() - x.targets.len();
        (x.targets.iter().enumerate())
            .map(|(j, &t)| {
                let l: Vec<f64> = logits[first + j - 1].iter().map(|&v| v as f64).collect();
                l[t as usize] - ln_sum_exp(&l)
            })
            .sum()
    };
    for (e, o) in examples.iter().zip(&out) {
        let x = e.lm.as_ref().unwrap();
        let mut want: Vec<f64> = e.docs.iter().map(|&p| direct(Some(p), x)).collect();
        want.push(direct(None, x));
        assert_eq!(o.log_p_y.len(), want.len());
        for (got, want) in o.log_p_y.iter().zip(&want) {
            assert!((*got as f64 - want).abs() < 1e-4, "{got} vs {want}");
        }
        let terms: Vec<f64> = (o.log_p_z.iter().zip(&o.log_p_y))
            .map(|(z, y)| (z + y) as f64)
            .collect();
        let loss = o.loss.to_scalar::<f32>().unwrap() as f64;
        assert!((loss + ln_sum_exp(&terms)).abs() < 1e-4);
    }

    // The LM is frozen: the loss reaches every parameter of both towers, and nothing else.
    let grads = out[0].loss.backward().unwrap();
    for (what, varmap) in [
        ("input tower", m.input.body().varmap()),
        ("document tower", m.docs.body().varmap()),
    ] {
        let without = common::without_gradient(varmap, &grads);
        assert!(without.is_empty(), "{what}: no gradient for {without:?}");
    }
    assert!(m.reader.mlm().is_none());

    // Accuracy counts the span's LM tokens.
    let hits = m.masked_accuracy(&examples).unwrap();
    assert_eq!(hits.iter().map(|h| h.masked).sum::<usize>(), 2);
    assert!(warm_up_reader(
        &m,
        &["paris"],
        (1, 1, 1e-3),
        &mut rand::rngs::StdRng::seed_from_u64(0),
        |_| {}
    )
    .is_err());
}

#[test]
fn a_run_with_an_lm_reader_checkpoints_the_towers_and_resumes_with_the_same_lm() {
    let tmp = tempfile::tempdir().unwrap();
    let (passages, slot) = capitals(3);
    let (models, lm_dir) = lm_models(tmp.path());
    let mut trainer = Pretrainer::new(
        &passages,
        slot.clone(),
        models,
        tiny_config(1e-3, 1e-3, 0, 4),
    )
    .unwrap();
    let batch = vec![sentence()];
    let first = trainer.step(&batch).unwrap();
    assert!(first.loss.is_finite() && first.grad_norm > 0.0);
    let dir = tmp.path().join("checkpoint");
    let state = trainer.save(&dir).unwrap();
    assert_eq!(state.lm_reader.unwrap().path, lm_dir);
    assert!(!dir.join("reader").exists(), "a frozen LM is not copied");
    let (_, _, again) = resume_and_step(&mut trainer, &passages, &slot, &dir, &batch);
    assert_eq!(again.step, 2);

    // Other weights at the recorded path are refused.
    let weights = lm_dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    let norm = tensors.get_mut("model.norm.weight").unwrap();
    *norm = (&*norm * 2.0).unwrap();
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let err = Pretrainer::resume(&passages, slot, &dir, &Device::Cpu, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("not the one the checkpoint was trained with"),
        "{err}"
    );
}
