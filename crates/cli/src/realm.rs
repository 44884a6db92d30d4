//! `ralm realm ...`: REALM pre-training as built so far — the named-entity tagger of
//! salient-span masking (trained and scored on CoNLL-2003), the salient spans of a text, and
//! pre-training with the asynchronous index refresh.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Subcommand};
use ralm_models::bert::{BertForMaskedLM, Pooling};
use ralm_realm::data::shared_data_dir;
use ralm_realm::passages::{Passage, MAX_PASSAGE_WORDPIECES};
use ralm_realm::pretrain::{
    masked_sentences, read_checkpoint_state, read_examples, warm_up_on_evidence, warm_up_passages,
    warm_up_reader, write_examples, EvidenceSource, LmReader, MaskedHits, MaskedSentence,
    PretrainConfig, Pretrainer, Reader, RealmModels,
};
use ralm_realm::qa_index::QaIndex;
use ralm_realm::refresh::{DocSnapshot, Refresher, SnapshotSlot, SnapshotStore};
use ralm_realm::retriever::{DenseEncoder, MAX_QUESTION_WORDPIECES};
use ralm_realm::salient::conll::{entity_scores, read_conll, EntityScores, TaggedSentence};
use ralm_realm::salient::tagger::{EntityTagger, TaggerTrainer, CONLL_LABELS};
use ralm_realm::salient::{choose_span, SalientSpans, SpanKind};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;

use crate::plot::{loss_curve, running_mean, Chart, Series};
use crate::qa_dense::bar;

mod eval;

/// Sentences per forward pass when tagging.
const PREDICT_BATCH: usize = 64;

/// REALM pre-training commands.
#[derive(Subcommand)]
pub enum RealmCommand {
    /// Train the named-entity tagger of salient-span masking on CoNLL-2003.
    NerTrain(NerTrainArgs),
    /// Entity-level precision, recall and F1 of a tagger on a CoNLL-2003 split.
    NerEval(NerEvalArgs),
    /// Show the salient spans of texts and the span REALM would mask.
    Spans(SpansArgs),
    /// Write the masked sentences pre-training would draw from an index (JSONL), so that runs
    /// share them and a machine without the tagger can train on them (`pretrain --examples`).
    Examples(ExamplesArgs),
    /// Pre-train the knowledge-augmented encoder and both retriever towers on salient-span
    /// masked sentences, retrieving from a QA index that a background builder refreshes.
    Pretrain(PretrainArgs),
    /// Score a pre-training run's held-out sentences one by one (its checkpoint, or with
    /// --start the models it started from): masked tokens right with retrieval and with the null
    /// document only, RU of the top document, with bootstrap intervals; `compare` pairs them.
    Eval(eval::EvalArgs),
    /// Charts comparing pre-training runs (an ablation and its baseline): running means of the
    /// loss and of the retrieval utility, and held-out accuracy, one line per run.
    Compare(CompareArgs),
}

/// Options of `ralm realm ner-train`.
#[derive(Args)]
pub struct NerTrainArgs {
    /// HF BERT directory to start from.
    #[arg(long, default_value = "models/minilm")]
    encoder: PathBuf,
    /// Output directory: tagger/ (HF BERT directory + classifier head), train.jsonl,
    /// loss.svg, eval.json.
    #[arg(long, default_value = "runs/ner")]
    out: PathBuf,
    /// CoNLL-2003 directory (train.txt, dev.txt).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Training sentences used (a seeded sample of train.txt; 0 = all 14,041).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Passes over the training sentences.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Sentences per update.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Warmup updates (linear), then linear decay to 0.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Save the tagger every N updates (and at the end).
    #[arg(long, default_value_t = 200)]
    checkpoint_every: usize,
    /// Dev sentences scored at the end (0 = all 3,250).
    #[arg(long, default_value_t = 0)]
    dev_limit: usize,
    /// Seed of the head's initialisation and the sentence order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Options of `ralm realm ner-eval`.
#[derive(Args)]
pub struct NerEvalArgs {
    /// Tagger directory (`ralm realm ner-train --out DIR` writes DIR/tagger).
    #[arg(long, default_value = "runs/ner/tagger")]
    tagger: PathBuf,
    /// CoNLL-2003 directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Split: train, dev or test.
    #[arg(long, default_value = "test")]
    split: String,
    /// Write the scores as JSON here.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// Options of `ralm realm spans`.
#[derive(Args)]
pub struct SpansArgs {
    /// Tagger directory; without one only dates are found.
    #[arg(long)]
    tagger: Option<PathBuf>,
    /// Seed of the span choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Texts (sentences).
    #[arg(required = true)]
    texts: Vec<String>,
}

/// Runs `ralm realm ...`; `matches` are the whole command line's.
pub fn run(cmd: RealmCommand, matches: &ArgMatches) -> anyhow::Result<()> {
    match cmd {
        RealmCommand::NerTrain(a) => ner_train(a),
        RealmCommand::NerEval(a) => ner_eval(a),
        RealmCommand::Spans(a) => spans(a),
        RealmCommand::Examples(a) => examples(a),
        RealmCommand::Eval(a) => eval::eval(a),
        RealmCommand::Compare(a) => compare(a),
        RealmCommand::Pretrain(a) => {
            let given = matches
                .subcommand_matches("realm")
                .and_then(|m| m.subcommand_matches("pretrain"));
            let a = match (a.config.clone(), given) {
                (Some(file), Some(given)) => with_config(a, &file, given)?,
                _ => a,
            };
            pretrain(a)
        }
    }
}

/// `args` with the options of the JSON object in `file` (named like the long options, `_` or
/// `-` between words) in place of those not given on the command line.
fn with_config(
    args: PretrainArgs,
    file: &std::path::Path,
    given: &ArgMatches,
) -> anyhow::Result<PretrainArgs> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let options: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a JSON object of options", file.display()))?;
    let serde_json::Value::Object(mut merged) = serde_json::to_value(&args)? else {
        anyhow::bail!("the options do not serialize as a JSON object");
    };
    for (name, value) in options {
        let key = name.replace('-', "_");
        if !merged.contains_key(&key) {
            anyhow::bail!(
                "{}: unknown option {name:?} (the options are those of `ralm realm pretrain --help`)",
                file.display()
            );
        }
        if given.value_source(&key) != Some(ValueSource::CommandLine) {
            merged.insert(key, value);
        }
    }
    let mut merged: PretrainArgs = serde_json::from_value(serde_json::Value::Object(merged))
        .with_context(|| {
            format!(
                "{}: an option has a value of the wrong type",
                file.display()
            )
        })?;
    (merged.config, merged.resume) = (args.config, args.resume);
    Ok(merged)
}

fn conll_file(data: &Option<PathBuf>, split: &str) -> anyhow::Result<Vec<TaggedSentence>> {
    if !["train", "dev", "test"].contains(&split) {
        anyhow::bail!("--split must be train, dev or test, not `{split}`");
    }
    let dir = data
        .clone()
        .unwrap_or_else(|| shared_data_dir().join("ner/conll2003"));
    let path = dir.join(format!("{split}.txt"));
    read_conll(&path).with_context(|| format!("reading CoNLL-2003 {split} split"))
}

/// Tags `sentences` in batches with a progress bar and scores them against their gold tags.
fn score(tagger: &EntityTagger, sentences: &[TaggedSentence]) -> anyhow::Result<EntityScores> {
    let pb = bar(sentences.len(), "tag");
    let mut predicted = Vec::with_capacity(sentences.len());
    for chunk in sentences.chunks(PREDICT_BATCH) {
        let words: Vec<Vec<String>> = chunk.iter().map(|s| s.words.clone()).collect();
        predicted.extend(tagger.predict(&words)?);
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let gold: Vec<Vec<String>> = sentences.iter().map(|s| s.tags.clone()).collect();
    Ok(entity_scores(&gold, &predicted)?)
}

fn print_scores(what: &str, s: &EntityScores) {
    println!(
        "{what}: entity F1 {:.2}% (precision {:.2}%, recall {:.2}%, {} entities)",
        100.0 * s.overall.f1,
        100.0 * s.overall.precision,
        100.0 * s.overall.recall,
        s.overall.support
    );
    for (kind, p) in &s.by_type {
        println!(
            "  {kind:<5} F1 {:.2}%  P {:.2}%  R {:.2}%  ({} entities)",
            100.0 * p.f1,
            100.0 * p.precision,
            100.0 * p.recall,
            p.support
        );
    }
}

fn ner_train(a: NerTrainArgs) -> anyhow::Result<()> {
    let mut train = conll_file(&a.data, "train")?;
    let mut rng = StdRng::seed_from_u64(a.seed);
    train.shuffle(&mut rng);
    if a.limit > 0 {
        train.truncate(a.limit);
    }
    let mut dev = conll_file(&a.data, "dev")?;
    if a.dev_limit > 0 {
        dev.truncate(a.dev_limit);
    }
    let batch = a.batch.max(1);
    let per_epoch = train.len().div_ceil(batch);
    let total = per_epoch * a.epochs.max(1);
    let device = crate::device::current();
    let tagger = EntityTagger::load(&a.encoder, &CONLL_LABELS, a.seed, &device)
        .with_context(|| format!("loading {}", a.encoder.display()))?;
    let mut trainer = TaggerTrainer::new(tagger, a.lr, a.warmup, total)?;
    crate::seed::dropout(a.seed, 0);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let log_path = a.out.join("train.jsonl");
    let mut log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let tagger_dir = a.out.join("tagger");
    eprintln!(
        "{} training sentences, {total} updates of {batch}, {} dev sentences",
        train.len(),
        dev.len()
    );
    let pb = bar(total * batch, "train");
    let started = Instant::now();
    let mut losses = Vec::new();
    let (mut tokens, mut recent) = (0usize, 0.0f64);
    for epoch in 0..a.epochs.max(1) {
        if epoch > 0 {
            train.shuffle(&mut rng);
        }
        for chunk in train.chunks(batch) {
            let refs: Vec<&TaggedSentence> = chunk.iter().collect();
            let s = trainer.step(&refs)?;
            tokens += s.tokens;
            recent = if s.step == 1 {
                s.loss
            } else {
                0.95 * recent + 0.05 * s.loss
            };
            let secs = started.elapsed().as_secs_f64();
            writeln!(
                log,
                "{}",
                json!({"step": s.step, "epoch": epoch, "loss": s.loss, "lr": s.lr,
                "grad_norm": s.grad_norm, "tokens": s.tokens, "elapsed_s": secs,
                "tokens_per_s": tokens as f64 / secs})
            )?;
            losses.push((s.step as f64, s.loss));
            pb.set_message(format!(
                "loss {recent:.3} ({:.0} tok/s)",
                tokens as f64 / secs
            ));
            pb.inc(chunk.len() as u64);
            if s.step % a.checkpoint_every.max(1) == 0 {
                trainer.tagger().save(&tagger_dir)?;
                loss_curve(
                    "Entity tagger (CoNLL-2003): cross-entropy",
                    losses.clone(),
                    20,
                )
                .save(&a.out.join("loss.svg"))?;
            }
        }
    }
    pb.finish_and_clear();
    log.flush()?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{total} updates in {secs:.0}s ({:.0} tokens/s)",
        tokens as f64 / secs
    );
    trainer.tagger().save(&tagger_dir)?;
    loss_curve("Entity tagger (CoNLL-2003): cross-entropy", losses, 20)
        .save(&a.out.join("loss.svg"))?;
    let scores = score(trainer.tagger(), &dev)?;
    print_scores("dev", &scores);
    crate::io::write_atomic(
        &a.out.join("eval.json"),
        serde_json::to_string_pretty(&json!({"split": "dev", "sentences": dev.len(),
            "scores": scores, "train_sentences": train.len(), "updates": total,
            "tokens_per_s": tokens as f64 / secs}))?
        .as_bytes(),
    )?;
    eprintln!("tagger in {}", tagger_dir.display());
    Ok(())
}

/// A trained tagger (`ralm realm ner-train`): a plain BERT directory would load with a random
/// head, so one without `tagger.json` is refused before anything is loaded.
fn load_tagger(dir: &std::path::Path) -> anyhow::Result<EntityTagger> {
    if !dir.join("tagger.json").is_file() {
        anyhow::bail!(
            "{} is not a trained tagger (no tagger.json): train one with `ralm realm ner-train`",
            dir.display()
        );
    }
    EntityTagger::load(dir, &CONLL_LABELS, 0, &crate::device::current())
        .with_context(|| format!("loading tagger {}", dir.display()))
}

fn ner_eval(a: NerEvalArgs) -> anyhow::Result<()> {
    let sentences = conll_file(&a.data, &a.split)?;
    let tagger = load_tagger(&a.tagger)?;
    let started = Instant::now();
    let scores = score(&tagger, &sentences)?;
    print_scores(&a.split, &scores);
    eprintln!(
        "{} sentences in {:.1}s",
        sentences.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &a.json_out {
        crate::io::write_atomic(
            path,
            serde_json::to_string_pretty(&json!({"split": a.split, "sentences": sentences.len(),
                "scores": scores}))?
            .as_bytes(),
        )?;
    }
    Ok(())
}

fn spans(a: SpansArgs) -> anyhow::Result<()> {
    let tagger = a.tagger.as_deref().map(load_tagger).transpose()?;
    let finder = SalientSpans::new(tagger);
    let texts: Vec<&str> = a.texts.iter().map(String::as_str).collect();
    let found = finder.find(&texts)?;
    let mut rng = StdRng::seed_from_u64(a.seed);
    for (text, spans) in texts.iter().zip(&found) {
        println!("{text}");
        for s in spans {
            let kind = match &s.kind {
                SpanKind::Entity(t) => t.as_str(),
                SpanKind::Date => "DATE",
                SpanKind::Random => "RANDOM",
            };
            println!("  {kind:<6} {}", &text[s.start..s.end]);
        }
        match choose_span(text, spans, &mut rng) {
            Some(m) => println!("  masked: {}[MASK]{}", &text[..m.start], &text[m.end..]),
            None => println!("  masked: nothing to mask"),
        }
    }
    Ok(())
}

/// The QA index whose passages give pre-training's sentences (and are its knowledge corpus), and
/// the tagger of their salient spans.
#[derive(Args, serde::Serialize, serde::Deserialize)]
pub struct SentenceSource {
    /// QA index whose passages are the knowledge corpus and give the sentences (`ralm qa index`).
    #[arg(long, default_value = "runs/qa/squad")]
    index: PathBuf,
    /// Entity tagger for salient spans (`ralm realm ner-train`); without one, dates only.
    #[arg(long)]
    tagger: Option<PathBuf>,
}

/// Options of `ralm realm examples`.
#[derive(Args)]
pub struct ExamplesArgs {
    #[command(flatten)]
    source: SentenceSource,
    /// Sentences to write: pre-training's --sentences plus --eval-sentences.
    #[arg(long, default_value_t = 240)]
    sentences: usize,
    /// Seed of the passage sample and the span choice (pre-training's --seed draws the same).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file (JSON lines: text, span as a byte range, document).
    #[arg(long)]
    out: PathBuf,
}

fn examples(a: ExamplesArgs) -> anyhow::Result<()> {
    let passages = QaIndex::read_passages(&a.source.index).with_context(|| {
        format!(
            "reading the passages of QA index {}",
            a.source.index.display()
        )
    })?;
    let all: Vec<&Passage> = passages.iter().collect();
    let mut examples = sample_examples(&all, a.source.tagger.as_deref(), a.sentences, a.seed)?;
    examples.truncate(a.sentences);
    write_examples(&a.out, &examples)?;
    eprintln!("{} masked sentences in {}", examples.len(), a.out.display());
    Ok(())
}

/// Masked sentences from a seeded sample of `passages`, enough for `wanted` of them (most
/// passages give more than two), their spans found with the tagger in `tagger` (dates only
/// without one), in sample order.
fn sample_examples(
    passages: &[&Passage],
    tagger: Option<&std::path::Path>,
    wanted: usize,
    seed: u64,
) -> anyhow::Result<Vec<MaskedSentence>> {
    let tagger = tagger.map(load_tagger).transpose()?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order = passages.to_vec();
    order.shuffle(&mut rng);
    order.truncate(wanted.div_ceil(2).max(1));
    let passages: Vec<Passage> = order.into_iter().cloned().collect();
    let finder = SalientSpans::new(tagger);
    let tagging = bar(0, "spans");
    let found = masked_sentences(
        &passages,
        &finder,
        6..=60,
        PREDICT_BATCH,
        &mut rng,
        |done, total| {
            tagging.set_length(total as u64);
            tagging.set_position(done as u64);
        },
    )?;
    tagging.finish_and_clear();
    Ok(found)
}

/// Options of `ralm realm pretrain`.
#[derive(Args, serde::Serialize, serde::Deserialize)]
pub struct PretrainArgs {
    /// JSON file of options (`{"sentences": 2000, "refresh_every": 10}`, named like the long
    /// options); options given on the command line win. Every run writes the options it used
    /// to config.json in --out.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    source: SentenceSource,
    /// The index's document encoder; the reader and both towers start from it.
    #[arg(long, default_value = "models/minilm")]
    encoder: PathBuf,
    /// Masked sentences from `ralm realm examples` to train on instead of tagging a sample of
    /// the index's passages here: the first --sentences train, the next --eval-sentences are
    /// held out.
    #[arg(long)]
    examples: Option<PathBuf>,
    /// Output directory: config.json, checkpoint/, snapshots/ (the index snapshots a resumed
    /// run reads), train.jsonl, loss.svg, utility.svg, accuracy.svg, staleness.svg.
    #[arg(long, default_value = "runs/realm-pretrain")]
    out: PathBuf,
    /// Training sentences (from a seeded sample of the index's passages).
    #[arg(long, default_value_t = 200)]
    sentences: usize,
    /// Sentences per update.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Documents retrieved per sentence (plus the null document).
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// Peak learning rate of the knowledge-augmented encoder.
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    /// Peak learning rate of the input and document towers.
    #[arg(long, default_value_t = 1e-5)]
    tower_lr: f64,
    /// Warmup updates.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Most wordpieces of a retrieved document in the reader's input.
    #[arg(long, default_value_t = 128)]
    max_doc_pieces: usize,
    /// Scale of inner products in p(z|x).
    #[arg(long, default_value_t = ralm_realm::ask::DEFAULT_SCORE_SCALE)]
    scale: f64,
    /// Save a checkpoint every N updates (and at the end).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Offer the document tower to the background index refresher every N updates (it is
    /// skipped while a refresh is under way); 0 keeps the starting index (the stale-index
    /// ablation).
    #[arg(long, default_value_t = 20)]
    refresh_every: usize,
    /// Seed of the passage sample and the span choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Plain-MLM updates (of --batch passages, their first 128 wordpieces) that warm the fresh
    /// MLM head up before pre-training, on the passages of documents that gave no sentence, so
    /// the reader never reads the sentences it must fill in (not when resuming).
    #[arg(long, default_value_t = 50)]
    mlm_warmup: usize,
    /// Peak learning rate of the MLM and evidence warm-ups (the head starts fresh, so higher
    /// than --lr).
    #[arg(long, default_value_t = 1e-4)]
    mlm_lr: f64,
    /// Copy warm-up updates (of --batch, after the MLM warm-up): the reader is trained to fill a
    /// masked span given the passage the sentence came from, on sentences of the documents that
    /// gave no training or held-out sentence (tagged with --tagger). MiniLM with a fresh head
    /// did not learn to copy this way (docs/realm-pretraining.md).
    #[arg(long, default_value_t = 0)]
    copy_warmup: usize,
    /// Evidence warm-up updates (of --batch, after the copy warm-up): the same, from a retrieved
    /// passage of another document that holds the span. The reader with all warm-ups is saved
    /// to warm-reader/ in --out (not when resuming).
    #[arg(long, default_value_t = 0)]
    evidence_warmup: usize,
    /// The knowledge-augmented encoder starts from this HF BertForMaskedLM directory (a BERT
    /// with its MLM head, or another run's warm-reader/) instead of --encoder with a fresh head.
    #[arg(long)]
    reader: Option<PathBuf>,
    /// A causal LM (GGUF file or HF Llama directory, e.g. models/smollm2) as a frozen reader
    /// instead of BERT: p(y|z,x) is its probability of the span after the document and the
    /// sentence's words before the span, and only the two towers train. No warm-up applies.
    #[arg(long, conflicts_with = "reader")]
    lm_reader: Option<PathBuf>,
    /// Held-out sentences (after the training ones) whose masked wordpieces are predicted at the
    /// start and at every checkpoint, with retrieval and with the null document only.
    #[arg(long, default_value_t = 40)]
    eval_sentences: usize,
    /// Continue from the checkpoint in --out: its models, optimizer state, updates taken, k,
    /// learning rates and input settings replace those given here. Give the same --seed,
    /// --batch and --sentences (or more, to train further): the same sentences are rebuilt and
    /// the run goes on with the next batch.
    #[arg(long)]
    #[serde(skip)]
    resume: bool,
}

fn pretrain(a: PretrainArgs) -> anyhow::Result<()> {
    if a.lm_reader.is_some() && a.copy_warmup + a.evidence_warmup > 0 {
        anyhow::bail!("--lm-reader is frozen: --copy-warmup and --evidence-warmup do not apply");
    }
    let device = crate::device::current();
    let document = DenseEncoder::load(&a.encoder, Pooling::Mean, 32, &device)
        .with_context(|| format!("loading encoder {}", a.encoder.display()))?;
    let index = QaIndex::open(&a.source.index, &document)
        .with_context(|| format!("opening QA index {}", a.source.index.display()))?;
    if let Some(file) = &a.examples {
        if a.source.tagger.is_some() && a.copy_warmup + a.evidence_warmup == 0 {
            anyhow::bail!(
                "--tagger is not used with --examples {} and no copy or evidence warm-up: its \
                 spans were found when it was written",
                file.display()
            )
        }
    }
    let (mut sentences, source) = run_sentences(&a, &index)?;
    // The training sentences, and at least one held-out sentence when any are asked for.
    if sentences.len() < a.sentences + usize::from(a.eval_sentences > 0) {
        anyhow::bail!(
            "{} {source}: fewer than --sentences {} plus held-out ones",
            sentences.len(),
            a.sentences
        );
    }
    // The reader warms up on the passages of documents that gave no sentence.
    let warm_up_passages = warm_up_passages(index.passages(), &sentences);
    let mut rng = StdRng::seed_from_u64(a.seed.wrapping_add(1));
    let held_out: Vec<_> = sentences
        .split_off(a.sentences)
        .into_iter()
        .take(a.eval_sentences)
        .collect();
    let batch = a.batch.max(1);
    let total = sentences.len().div_ceil(batch);
    let corpus = Arc::new(index.passages().to_vec());
    let store = Arc::new(SnapshotStore::new(&a.out.join("snapshots"), &corpus));
    let checkpoint = a.out.join("checkpoint");
    let resumed = if a.resume {
        Some(
            read_checkpoint_state(&checkpoint)
                .with_context(|| format!("--resume: no checkpoint in {}", a.out.display()))?,
        )
    } else if checkpoint.exists() {
        anyhow::bail!(
            "{} already holds a checkpoint: pass --resume to continue it, or choose another --out",
            a.out.display()
        );
    } else {
        None
    };
    let first = snapshot_to_read(
        resumed.as_ref().map_or(0, |s| s.snapshot_version),
        &index,
        &store,
    )?;
    let slot = Arc::new(SnapshotSlot::new(first));
    let refresher = (a.refresh_every > 0).then(|| {
        Refresher::spawn(
            slot.clone(),
            corpus.clone(),
            Pooling::Mean,
            32,
            device.clone(),
            Some(store.clone()),
        )
    });
    let tower_copy = a.out.join("refresh-tower");
    let mut trainer = if resumed.is_some() {
        Pretrainer::resume(&corpus, slot, &checkpoint, &device, Some(total))?
    } else {
        Pretrainer::new(
            &corpus,
            slot,
            starting_models(&a, &device)?,
            pretrain_config(&a, total),
        )?
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    crate::io::write_atomic(&a.out.join("config.json"), &serde_json::to_vec_pretty(&a)?)?;
    let log_path = a.out.join("train.jsonl");
    let mut log = crate::io::open_training_log(&log_path, trainer.step_count())?;
    let done = trainer.step_count();
    crate::seed::dropout(a.seed, done);
    if done >= total {
        eprintln!("{} already took all {total} updates", checkpoint.display());
        return Ok(());
    }
    if let Some(r) = &refresher {
        // The index the run starts from predates the resumed document tower.
        if done > 0 {
            trainer.models().docs.save(&tower_copy)?;
            r.offer(done, Instant::now(), tower_copy.clone());
        }
    }
    eprintln!(
        "{} sentences, {total} updates of {batch} ({done} done), k = {} plus the null document, {} passages",
        sentences.len(),
        a.k,
        index.passages().len()
    );
    let pb = crate::progress::bar(
        (total * batch) as u64,
        "{spinner} pretrain   [{bar:30}] {pos}/{len} {msg}",
    );
    let started = Instant::now();
    let evaluate = |trainer: &Pretrainer, log: &mut std::fs::File| -> anyhow::Result<()> {
        if held_out.is_empty() {
            return Ok(());
        }
        let h: MaskedHits = trainer
            .evaluate(&held_out, batch, |_| {})?
            .into_iter()
            .sum();
        let (with, null_only) = (
            h.with_retrieval as f64 / h.masked.max(1) as f64,
            h.null_only as f64 / h.masked.max(1) as f64,
        );
        eprintln!(
            "update {}: held-out masked tokens right {:.1}% with retrieval, {:.1}% with the null document only ({} tokens); RU of the top document {:+.3}",
            trainer.step_count(),
            100.0 * with,
            100.0 * null_only,
            h.masked,
            h.mean_utility()
        );
        writeln!(
            log,
            "{}",
            json!({"step": trainer.step_count(), "eval_accuracy": with,
                "eval_null_accuracy": null_only, "eval_masked": h.masked,
                "eval_utility": h.mean_utility()})
        )?;
        Ok(())
    };
    // A frozen LM reader has nothing to warm up.
    let mlm_warmup = if a.lm_reader.is_some() {
        0
    } else {
        a.mlm_warmup
    };
    if done == 0 {
        if mlm_warmup > 0 {
            let texts: Vec<&str> = warm_up_passages.iter().map(|p| p.text.as_str()).collect();
            if texts.is_empty() {
                anyhow::bail!(
                    "every document of the index gave a sentence, so none is left for the MLM \
                     warm-up: use a larger index, fewer sentences or --mlm-warmup 0"
                );
            }
            let warming = bar(mlm_warmup, "MLM warm-up");
            let t0 = Instant::now();
            let losses = warm_up_reader(
                trainer.models(),
                &texts,
                (mlm_warmup, batch, a.mlm_lr),
                &mut rng,
                |loss| {
                    warming.set_message(format!("loss {loss:.2}"));
                    warming.inc(1);
                },
            )?;
            warming.finish_and_clear();
            log_warm_up(&mut log, "mlm", &losses, t0)?;
        }
        if a.copy_warmup + a.evidence_warmup > 0 {
            // Sentences of the warm-up documents, a few per update, since about a third have a
            // passage of another document among their top ones that holds the span.
            let wanted = a.copy_warmup.max(a.evidence_warmup) * batch * 3;
            let drawn = sample_examples(
                &warm_up_passages,
                a.source.tagger.as_deref(),
                wanted,
                a.seed.wrapping_add(2),
            )?;
            for (kind, steps, source) in [
                ("copy", a.copy_warmup, EvidenceSource::OwnDocument),
                (
                    "evidence",
                    a.evidence_warmup,
                    EvidenceSource::OtherDocuments,
                ),
            ] {
                if steps == 0 {
                    continue;
                }
                let evidence = trainer.evidence(&drawn, batch * 8, source)?;
                eprintln!(
                    "{kind} warm-up: {} of {} sentences have a passage ({source:?}) that holds their span",
                    evidence.len(),
                    drawn.len()
                );
                let warming = bar(steps, &format!("{kind} warm-up"));
                let t0 = Instant::now();
                let losses = warm_up_on_evidence(
                    trainer.models(),
                    &evidence,
                    (steps, batch, a.mlm_lr),
                    |loss| {
                        warming.set_message(format!("loss {loss:.2}"));
                        warming.inc(1);
                    },
                )?;
                warming.finish_and_clear();
                log_warm_up(&mut log, kind, &losses, t0)?;
            }
        }
        if mlm_warmup + a.copy_warmup + a.evidence_warmup > 0 {
            let warm = a.out.join("warm-reader");
            trainer.models().save_reader(&warm)?;
        }
        evaluate(&trainer, &mut log)?;
    }
    pb.set_position((done * batch) as u64);
    let mut tokens = 0usize;
    for chunk in sentences.chunks(batch).skip(done) {
        let s = trainer.step(chunk)?;
        tokens += s.tokens;
        let secs = started.elapsed().as_secs_f64();
        writeln!(
            log,
            "{}",
            json!({"step": s.step, "loss": s.loss,
            "retrieval_utility": s.retrieval_utility, "null_probability": s.null_probability,
            "span_found": s.span_found,
            "lr": s.lr, "tower_lr": s.tower_lr, "grad_norm": s.grad_norm, "tokens": s.tokens,
            "elapsed_s": secs,
            "tokens_per_s": tokens as f64 / secs, "snapshot": s.snapshot_version,
            "staleness_steps": s.staleness_steps, "staleness_s": s.staleness_seconds})
        )?;
        if let Some(r) = &refresher {
            for done in r.finished() {
                let done = done.context("index refresh")?;
                pb.println(format!(
                    "index snapshot {} (document tower of update {}) swapped in after {:.0}s",
                    done.version, done.params_step, done.seconds
                ));
                writeln!(
                    log,
                    "{}",
                    json!({"step": s.step, "refresh_version": done.version,
                        "refresh_params_step": done.params_step, "refresh_s": done.seconds})
                )?;
            }
            if s.step % a.refresh_every == 0 && !r.busy() {
                trainer.models().docs.save(&tower_copy)?;
                r.offer(s.step, Instant::now(), tower_copy.clone());
            }
        }
        let per_update = secs / (s.step - done) as f64;
        let left = per_update * (total - s.step) as f64;
        pb.set_message(format!(
            "loss {:.2} RU {:+.2} ({:.0} tok/s, {:.0}s per update) ETA {}",
            s.loss,
            s.retrieval_utility,
            tokens as f64 / secs,
            per_update,
            indicatif::HumanDuration(std::time::Duration::from_secs_f64(left))
        ));
        pb.inc(chunk.len() as u64);
        if s.step % a.checkpoint_every.max(1) == 0 || s.step == total {
            let saved = trainer.save(&checkpoint)?;
            store.prune(saved.snapshot_version)?;
            pb.suspend(|| evaluate(&trainer, &mut log))?;
            log.flush()?;
            plot_pretraining(&a.out)?;
        }
    }
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{} updates in {secs:.0}s ({:.0} tokens/s, {:.2} s per update); checkpoint in {}",
        total - done,
        tokens as f64 / secs,
        secs / (total - done) as f64,
        checkpoint.display()
    );
    Ok(())
}

/// The masked sentences of a run, the training ones first, and where they come from: its
/// `--examples` file, or sentences of a seeded sample of the index's passages.
fn run_sentences(
    a: &PretrainArgs,
    index: &QaIndex,
) -> anyhow::Result<(Vec<MaskedSentence>, String)> {
    Ok(match &a.examples {
        Some(file) => (
            read_examples(file)?,
            format!("masked sentences in {}", file.display()),
        ),
        None => (
            sample_examples(
                &index.passages().iter().collect::<Vec<_>>(),
                a.source.tagger.as_deref(),
                a.sentences + a.eval_sentences,
                a.seed,
            )?,
            "sentences of 6 to 60 words in the sampled passages".to_string(),
        ),
    })
}

/// The training settings of a run of `total` updates.
fn pretrain_config(a: &PretrainArgs, total: usize) -> PretrainConfig {
    PretrainConfig {
        k: a.k,
        lr: a.lr,
        tower_lr: a.tower_lr,
        warmup_steps: a.warmup,
        total_steps: total,
        max_sentence_pieces: MAX_QUESTION_WORDPIECES - 2,
    }
}

/// The models a run starts from: both towers from `--encoder`, the reader from `--lm-reader`,
/// `--reader` or `--encoder` with a fresh MLM head.
fn starting_models(a: &PretrainArgs, device: &Device) -> anyhow::Result<RealmModels> {
    let encoder = a.encoder.as_path();
    let reader = match &a.lm_reader {
        Some(lm) => Reader::Lm(
            LmReader::load(lm, device)
                .with_context(|| format!("loading the LM reader {}", lm.display()))?,
        ),
        None => Reader::Mlm(BertForMaskedLM::load(
            a.reader.as_deref().unwrap_or(encoder),
            device,
        )?),
    };
    Ok(RealmModels::load(
        reader,
        [encoder, encoder],
        Pooling::Mean,
        MAX_PASSAGE_WORDPIECES,
        a.max_doc_pieces,
        a.scale,
    )?)
}

/// The index snapshot `version` that a checkpoint reads (from `store`), or for version 0 the QA
/// index the run starts from.
fn snapshot_to_read(
    version: u64,
    index: &QaIndex,
    store: &SnapshotStore,
) -> anyhow::Result<DocSnapshot> {
    Ok(match version {
        0 => {
            let (vectors, dim) = index.vectors();
            DocSnapshot::new(0, 0, Instant::now(), vectors, dim)?
        }
        v => store
            .load(v)
            .with_context(|| format!("loading the index snapshot {v} of the checkpoint"))?,
    })
}

/// Writes the losses of a warm-up (`kind` mlm, copy or evidence) to the training log and says how it
/// went.
fn log_warm_up(
    log: &mut std::fs::File,
    kind: &str,
    losses: &[f64],
    started: Instant,
) -> anyhow::Result<()> {
    for (i, l) in losses.iter().enumerate() {
        writeln!(
            log,
            "{}",
            json!({"step": 0, "warmup": kind, "warmup_update": i + 1, "warmup_loss": l})
        )?;
    }
    eprintln!(
        "{kind} warm-up: {} updates in {:.0}s, loss {:.2} -> {:.2}",
        losses.len(),
        started.elapsed().as_secs_f64(),
        losses.first().copied().unwrap_or(f64::NAN),
        losses.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

/// Options of `ralm realm compare`.
#[derive(Args)]
pub struct CompareArgs {
    /// Output directories of `ralm realm pretrain`; each run is named by its directory's name.
    #[arg(required = true, num_args = 2..)]
    runs: Vec<PathBuf>,
    /// Updates in each running mean.
    #[arg(long, default_value_t = 50)]
    window: usize,
    /// Directory for loss.svg, utility.svg and accuracy.svg.
    #[arg(long)]
    out: PathBuf,
    /// The runs come in pairs, a run then its control (a refreshed run, then its stale-index
    /// twin): also give each pair's held-out change and the change averaged over the pairs,
    /// sentence by sentence.
    #[arg(long)]
    pairs: bool,
}

fn compare(a: CompareArgs) -> anyhow::Result<()> {
    if a.pairs && a.runs.len() % 2 == 1 {
        anyhow::bail!(
            "--pairs takes the runs two by two (a run, then its control): {} runs given",
            a.runs.len()
        );
    }
    let mut runs = Vec::new();
    for dir in &a.runs {
        runs.push((run_name(dir), PretrainLog::read(dir)?));
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let means = |pick: fn(&PretrainLog) -> &Vec<(f64, f64)>| -> Vec<Series> {
        runs.iter()
            .map(|(name, log)| Series {
                name: name.clone(),
                points: running_mean(pick(log), a.window),
            })
            .collect()
    };
    let mut accuracy = Vec::new();
    for (name, log) in &runs {
        accuracy.push(Series {
            name: format!("{name}: retrieval"),
            points: log.with_retrieval.clone(),
        });
        accuracy.push(Series {
            name: format!("{name}: null only"),
            points: log.null_only.clone(),
        });
    }
    let line = |title: &str, y: &str, series| Chart {
        title: format!("{title} (mean of {} updates)", a.window),
        x_label: "update".into(),
        y_label: y.into(),
        log_x: false,
        series,
    };
    line(
        "Pre-training loss",
        "−log Σ p(z|x) p(y|z,x)",
        means(|l| &l.loss),
    )
    .save(&a.out.join("loss.svg"))?;
    line(
        "Retrieval utility of the top document",
        "log p(y|z,x) − log p(y|∅,x)",
        means(|l| &l.utility),
    )
    .save(&a.out.join("utility.svg"))?;
    line(SPAN_FOUND_TITLE, "% of sentences", means(|l| &l.span_found))
        .save(&a.out.join("span-found.svg"))?;
    accuracy_chart(accuracy).save(&a.out.join("accuracy.svg"))?;
    for (name, log) in &runs {
        let mean = |p: &[(f64, f64)]| p.iter().map(|p| p.1).sum::<f64>() / p.len().max(1) as f64;
        let half = log.utility.len() / 2;
        let found = log.span_found.len() / 2;
        eprintln!(
            "{name}: {} updates, RU {:+.3} in the first half and {:+.3} in the second, span \
             retrieved for {:.1}% and {:.1}% of sentences, held-out accuracy {}{}",
            log.utility.len(),
            mean(&log.utility[..half]),
            mean(&log.utility[half..]),
            mean(&log.span_found[..found]),
            mean(&log.span_found[found..]),
            log.with_retrieval
                .iter()
                .zip(&log.null_only)
                .map(|(r, n)| format!("{:.1}/{:.1}% at {}", r.1, n.1, r.0))
                .collect::<Vec<_>>()
                .join(", "),
            if log.held_out_utility.is_empty() {
                String::new()
            } else {
                let at: Vec<String> = (log.held_out_utility.iter())
                    .map(|(step, u)| format!("{u:+.3} at {step}"))
                    .collect();
                format!(", held-out RU {}", at.join(", "))
            }
        );
    }
    compare_held_out(&a.runs, a.pairs)?;
    eprintln!("charts in {}", a.out.display());
    Ok(())
}

/// A run's name in comparisons: its directory's name.
fn run_name(dir: &std::path::Path) -> String {
    dir.file_name()
        .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into())
}

/// Paired comparisons of the held-out scorings `ralm realm eval` left in the runs: each run's
/// checkpoint against its start, and every other run's checkpoint against the first run's; with
/// `pairs`, each control against its run and the mean change over the pairs.
fn compare_held_out(runs: &[PathBuf], pairs: bool) -> anyhow::Result<()> {
    let read = |dir: &PathBuf, file: &str| -> anyhow::Result<Option<Vec<eval::HeldOutSentence>>> {
        let path = dir.join(file);
        path.exists()
            .then(|| eval::read_held_out(&path))
            .transpose()
    };
    let say = |what: String, change: anyhow::Result<String>| match change {
        Ok(line) => eprintln!("{what}: {line}"),
        Err(e) => eprintln!("{what}: not compared, {e}"),
    };
    let mut ends = Vec::new();
    for dir in runs {
        ends.push(read(dir, eval::HELD_OUT_FILE)?);
    }
    for (i, (dir, end)) in runs.iter().zip(&ends).enumerate() {
        let Some(end) = end else {
            continue;
        };
        if let Some(start) = read(dir, eval::HELD_OUT_START_FILE)? {
            say(
                format!("{}, held out, start to checkpoint", run_name(dir)),
                eval::paired_change(&[(&start, end)]),
            );
        }
        if let (Some(first), true) = (&ends[0], i > 0) {
            say(
                format!("held out, {} to {}", run_name(&runs[0]), run_name(dir)),
                eval::paired_change(&[(first, end)]),
            );
        }
    }
    if !pairs {
        return Ok(());
    }
    let mut scored = Vec::new();
    for (p, (names, scorings)) in runs.chunks(2).zip(ends.chunks(2)).enumerate() {
        let name = format!("{} to {}", run_name(&names[0]), run_name(&names[1]));
        match scorings {
            [Some(run), Some(control)] => {
                // The first pair's change is the first run's to the second, given above.
                if p > 0 {
                    say(
                        format!("held out, {name}"),
                        eval::paired_change(&[(run, control)]),
                    );
                }
                scored.push((name, (&run[..], &control[..])));
            }
            _ => eprintln!(
                "held out, {name}: not compared, a run has no {}",
                eval::HELD_OUT_FILE
            ),
        }
    }
    if scored.len() > 1 {
        let names: Vec<&str> = scored.iter().map(|(n, _)| n.as_str()).collect();
        let pairs: Vec<eval::ScoringPair> = scored.iter().map(|(_, p)| *p).collect();
        say(
            format!("held out, mean over {}", names.join("; ")),
            eval::paired_change(&pairs),
        );
    }
    Ok(())
}

/// The curves of a pre-training log (`train.jsonl`), against the update.
#[derive(Default)]
struct PretrainLog {
    loss: Vec<(f64, f64)>,
    utility: Vec<(f64, f64)>,
    staleness: Vec<(f64, f64)>,
    /// Share (%) of each update's sentences with a retrieved document that holds the span.
    span_found: Vec<(f64, f64)>,
    /// Held-out accuracy (%) with retrieval and with the null document only.
    with_retrieval: Vec<(f64, f64)>,
    null_only: Vec<(f64, f64)>,
    /// Held-out mean RU of the top document (logs from before it was measured have none).
    held_out_utility: Vec<(f64, f64)>,
}

impl PretrainLog {
    /// Reads `dir/train.jsonl`.
    fn read(dir: &std::path::Path) -> anyhow::Result<Self> {
        let path = dir.join("train.jsonl");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut log = Self::default();
        for v in text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            let step = v["step"].as_f64().unwrap_or(0.0);
            if let (Some(l), Some(u)) = (v["loss"].as_f64(), v["retrieval_utility"].as_f64()) {
                log.loss.push((step, l));
                log.utility.push((step, u));
            }
            if let Some(st) = v["staleness_steps"].as_f64() {
                log.staleness.push((step, st));
            }
            if let Some(f) = v["span_found"].as_f64() {
                log.span_found.push((step, 100.0 * f));
            }
            if let (Some(r), Some(n)) = (
                v["eval_accuracy"].as_f64(),
                v["eval_null_accuracy"].as_f64(),
            ) {
                log.with_retrieval.push((step, 100.0 * r));
                log.null_only.push((step, 100.0 * n));
            }
            if let Some(u) = v["eval_utility"].as_f64() {
                log.held_out_utility.push((step, u));
            }
        }
        Ok(log)
    }
}

/// Title of the charts of how often the retrieved documents hold the masked span.
const SPAN_FOUND_TITLE: &str = "Sentences whose retrieved documents hold the masked span";

/// The chart of held-out accuracy, one line per series.
fn accuracy_chart(series: Vec<Series>) -> Chart {
    Chart {
        title: "Held-out masked wordpieces predicted right".into(),
        x_label: "update".into(),
        y_label: "%".into(),
        log_x: false,
        series,
    }
}

/// The loss, retrieval-utility, held-out accuracy and staleness charts of a pre-training run,
/// from its whole log.
fn plot_pretraining(out: &std::path::Path) -> anyhow::Result<()> {
    let PretrainLog {
        loss: losses,
        utility,
        staleness,
        span_found,
        with_retrieval,
        null_only,
        held_out_utility: _, // printed by `realm compare`
    } = PretrainLog::read(out)?;
    if !with_retrieval.is_empty() {
        accuracy_chart(vec![
            Series {
                name: "with retrieval".into(),
                points: with_retrieval,
            },
            Series {
                name: "null document only".into(),
                points: null_only,
            },
        ])
        .save(&out.join("accuracy.svg"))?;
    }
    loss_curve("REALM pre-training: −log Σ p(z|x) p(y|z,x)", losses, 10)
        .save(&out.join("loss.svg"))?;
    let mut ru = loss_curve("Retrieval utility of the top document", utility, 10);
    ru.y_label = "log p(y|z,x) − log p(y|∅,x)".into();
    ru.save(&out.join("utility.svg"))?;
    if !span_found.is_empty() {
        let mut found = loss_curve(SPAN_FOUND_TITLE, span_found, 10);
        found.y_label = "% of sentences".into();
        found.save(&out.join("span-found.svg"))?;
    }
    Chart {
        title: "Index staleness: updates since the snapshot's document tower".into(),
        x_label: "update".into(),
        y_label: "updates".into(),
        log_x: false,
        series: vec![Series {
            name: "staleness".into(),
            points: staleness,
        }],
    }
    .save(&out.join("staleness.svg"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Command, FromArgMatches};

    fn parse(args: &[&str]) -> (PretrainArgs, ArgMatches) {
        let matches = PretrainArgs::augment_args(Command::new("pretrain"))
            .try_get_matches_from(std::iter::once("pretrain").chain(args.iter().copied()))
            .unwrap();
        (PretrainArgs::from_arg_matches(&matches).unwrap(), matches)
    }

    #[test]
    fn a_config_file_sets_the_options_not_given_on_the_command_line() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("run.json");
        std::fs::write(
            &file,
            r#"{"sentences": 2000, "refresh-every": 7, "k": 8, "out": "runs/x", "lr": 1e-4,
                "index": "runs/i", "tagger": "runs/t"}"#,
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let (args, given) = parse(&["--config", path, "--k", "2", "--resume", "--index", "x"]);
        let a = with_config(args, &file, &given).unwrap();
        assert_eq!(a.source.index.to_str(), Some("x"), "the command line wins");
        assert_eq!(
            a.source.tagger.as_deref(),
            Some(std::path::Path::new("runs/t"))
        );
        assert_eq!((a.sentences, a.refresh_every, a.k), (2000, 7, 2));
        assert_eq!((a.out.to_str(), a.lr), (Some("runs/x"), 1e-4));
        assert_eq!((a.batch, a.mlm_warmup), (4, 50), "defaults stay");
        assert!(a.resume && a.config.as_deref() == Some(file.as_path()));

        for (text, expect) in [
            (r#"{"sentence": 10}"#, "unknown option \"sentence\""),
            (r#"{"k": "four"}"#, "wrong type"),
            (r#"[1, 2]"#, "not a JSON object"),
        ] {
            std::fs::write(&file, text).unwrap();
            let (args, given) = parse(&["--config", path]);
            let err = format!("{:#}", with_config(args, &file, &given).err().unwrap());
            assert!(err.contains(expect) && err.contains("run.json"), "{err}");
        }
    }
}
