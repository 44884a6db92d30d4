//! `ralm qa index` (passages → dense + BM25 QA index) and `ralm qa eval` (retrieval recall and
//! generative-reader EM/F1 on an open-domain QA dataset).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use ralm_models::bert::Pooling;
use ralm_realm::ask::{retrieve, QaSystem, Reader, RetrieverKind, DEFAULT_SCORE_SCALE};
use ralm_realm::data::{shared_data_dir, split_by_article, ArticleSplit, Dataset, QaExample};
use ralm_realm::finetune::open_checkpoint;
use ralm_realm::generative::GenerativeReader;
use ralm_realm::metrics::{exact_match, f1_score, first_hit, AnswerMatcher, RecallAtK};
use ralm_realm::passages::{read_passages, MAX_PASSAGE_WORDPIECES};
use ralm_realm::prior::{PassagePrior, PriorSample};
use ralm_realm::qa_index::{build_or_reuse, BuildEvent, CorpusSources, Outcome, QaIndex};
use ralm_realm::retriever::DenseEncoder;
use serde_json::json;

/// Open-domain QA indexes and evaluation.
#[derive(Args)]
pub struct QaArgs {
    #[command(subcommand)]
    cmd: QaCommand,
}

#[derive(Subcommand)]
enum QaCommand {
    /// Chunk passages and build the dense (MiniLM) and BM25 indexes.
    Index(IndexArgs),
    /// Retrieval recall@1/5/20 and reader EM/F1 on a QA dataset.
    Eval(EvalArgs),
    /// Paired recall@k changes, with bootstrap intervals, between two `qa eval --json-out`
    /// files on the same questions.
    Compare(crate::qa_compare::CompareArgs),
    /// Fine-tune the query tower and the extractive reader (REALM) on squad-open's train articles.
    Train(crate::qa_train::TrainArgs),
    #[command(flatten)]
    Lexical(crate::qa::QaCommand),
}

/// Where the encoder and reader models are.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// HF BERT directory of the dense encoder.
    #[arg(long, default_value = "models/minilm")]
    pub encoder: PathBuf,
    /// Pooling of the encoder (`mean` as sentence-transformers, or `cls`).
    #[arg(long, default_value = "mean")]
    pub pooling: Pooling,
    /// Sequences per encoder forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
}

impl ModelArgs {
    /// Loads the dense encoder on the selected device.
    pub fn encoder(&self) -> anyhow::Result<DenseEncoder> {
        self.encoder_from(&self.encoder)
    }

    /// Loads the HF BERT directory `dir` as an encoder with these pooling and batch settings.
    pub fn encoder_from(&self, dir: &Path) -> anyhow::Result<DenseEncoder> {
        DenseEncoder::load(dir, self.pooling, self.batch, &crate::device::current())
            .with_context(|| format!("loading encoder {}", dir.display()))
    }
}

/// Default GGUF file of the generative reader.
const SMOLLM2: &str = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Reader and retrieval options of `ask` and `qa eval`.
#[derive(Args, Clone)]
pub struct ReaderArgs {
    /// Reader: `generative` (SmolLM2), a GGUF file, `extractive` (with --checkpoint), or the
    /// output directory of `ralm qa train` (its query tower and extractive reader).
    #[arg(long, default_value = "generative")]
    pub reader: String,
    /// Fine-tuned checkpoint (`ralm qa train --out`): its query tower retrieves; with
    /// `--reader extractive` its reader reads.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// HF BERT directory of a separate question encoder for an index built with --encoder as
    /// its document encoder, e.g. the input tower of `ralm realm pretrain` (`checkpoint/input`)
    /// over an index built with its document tower (`checkpoint/docs`).
    #[arg(long, conflicts_with = "checkpoint")]
    pub query_encoder: Option<PathBuf>,
    /// Passages read per question.
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// Retriever: bm25, dense, hybrid (reciprocal-rank fusion) or weighted (the BM25 and dense
    /// top 100 ranked by p(z|x), i.e. by --scale and --bm25-weight).
    #[arg(long, default_value = "hybrid")]
    pub retriever: RetrieverKind,
    /// Scale of inner products in p(z|x) = softmax(scale · q·d + bm25-weight · BM25).
    #[arg(long, default_value_t = DEFAULT_SCORE_SCALE)]
    pub scale: f64,
    /// Weight of BM25 scores in p(z|x) (0: the dense inner products alone, as REALM).
    #[arg(long, default_value_t = 0.0)]
    pub bm25_weight: f64,
}

/// A QA system and, when a fine-tuned query tower asks the questions, the zero-shot encoder
/// the index was built with.
pub struct Loaded {
    pub system: QaSystem,
    pub zero_shot: Option<DenseEncoder>,
}

impl ReaderArgs {
    /// The GGUF file of a generative reader (`None`: extractive) and the checkpoint, if any.
    fn choice(&self) -> anyhow::Result<(Option<PathBuf>, Option<PathBuf>)> {
        let path = PathBuf::from(&self.reader);
        match self.reader.as_str() {
            "generative" => Ok((Some(PathBuf::from(SMOLLM2)), self.checkpoint.clone())),
            "extractive" => match &self.checkpoint {
                Some(c) => Ok((None, Some(c.clone()))),
                None => anyhow::bail!(
                    "--reader extractive needs --checkpoint (a `ralm qa train` output)"
                ),
            },
            _ if path.is_dir() => match &self.checkpoint {
                Some(c) if c != &path => anyhow::bail!(
                    "--reader {} and --checkpoint {} name different checkpoints",
                    path.display(),
                    c.display()
                ),
                _ => Ok((None, Some(path))),
            },
            _ => Ok((Some(path), self.checkpoint.clone())),
        }
    }

    /// Opens the QA index in `dir` with the models named by `models` and `self`, the reader
    /// only when `read`. A fine-tuned query tower is accepted only when it was trained against
    /// the index's document encoder.
    pub fn system(&self, dir: &Path, models: &ModelArgs, read: bool) -> anyhow::Result<Loaded> {
        let (gguf, checkpoint) = self.choice()?;
        let document = models.encoder()?;
        let index = QaIndex::open(dir, &document)
            .with_context(|| format!("opening QA index {}", dir.display()))?;
        let (encoder, zero_shot, extractive) = match &checkpoint {
            Some(c) => {
                let ft = open_checkpoint(c, &document, models.batch, &crate::device::current())
                    .with_context(|| format!("opening checkpoint {}", c.display()))?;
                (ft.query, Some(document), Some(ft.reader))
            }
            None => match &self.query_encoder {
                Some(q) => (models.encoder_from(q)?, None, None),
                None => (document, None, None),
            },
        };
        let reader = match (gguf, extractive) {
            _ if !read => None,
            (Some(g), _) => Some(Reader::Generative(
                GenerativeReader::load(&g, &crate::device::current())
                    .with_context(|| format!("loading reader {}", g.display()))?,
            )),
            (None, Some(r)) => Some(Reader::Extractive(r)),
            (None, None) => anyhow::bail!("no reader selected"),
        };
        Ok(Loaded {
            system: QaSystem {
                index,
                encoder,
                reader,
                prior: PassagePrior {
                    dense: self.scale,
                    bm25: self.bm25_weight,
                },
            },
            zero_shot,
        })
    }
}

#[derive(Args)]
struct IndexArgs {
    /// Output directory.
    #[arg(long, default_value = "runs/qa/wiki")]
    out: PathBuf,
    /// Wikipedia summaries JSON.
    #[arg(long, default_value = "corpora/wiki/summaries_en-us.json")]
    wiki: PathBuf,
    /// Leave the Wikipedia corpus out (needs --with-squad).
    #[arg(long)]
    no_wiki: bool,
    /// Add the squad-open passages (shared data) before the Wikipedia ones.
    #[arg(long)]
    with_squad: bool,
    /// Most wordpieces per passage (title + text).
    #[arg(long, default_value_t = MAX_PASSAGE_WORDPIECES)]
    max_wordpieces: usize,
    #[command(flatten)]
    models: ModelArgs,
}

#[derive(Args)]
struct EvalArgs {
    /// QA index directory (build it with `ralm qa index`).
    #[arg(long, default_value = "runs/qa/squad")]
    index: PathBuf,
    /// squad-open (eval articles of split_by_article), entityquestions or webquestions.
    #[arg(long, default_value = "squad-open")]
    dataset: Dataset,
    /// Questions for retrieval recall (an evenly spaced sample; 0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Questions answered by the reader (an evenly spaced sample of the recall questions, so
    /// every relation or article of the dataset is read); 0 = none (recall only, no reader
    /// loaded).
    #[arg(long, default_value_t = 200)]
    reader_limit: usize,
    /// Seed of split_by_article (squad-open).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also fit p(z|x)'s dense and BM25 weights for each reader run on this many train-article
    /// questions (squad-open; never the evaluated articles) and score the reader under the
    /// fitted prior beside the one --scale and --bm25-weight give; 0 = no fit.
    #[arg(long, default_value_t = 0)]
    fit_prior: usize,
    /// Write the results as JSON here, with every question's first answer-bearing rank for
    /// each retriever (`ralm qa compare` pairs two such files).
    #[arg(long)]
    json_out: Option<PathBuf>,
    #[command(flatten)]
    models: ModelArgs,
    #[command(flatten)]
    reader: ReaderArgs,
}

/// A progress bar showing position, rate and ETA.
pub fn bar(len: usize, what: &str) -> ProgressBar {
    crate::progress::bar(
        len as u64,
        &format!(
            "{{spinner}} {what:<10} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} {{msg}} ETA {{eta}}"
        ),
    )
}

/// Runs `ralm qa ...`.
pub fn run(args: QaArgs) -> anyhow::Result<()> {
    match args.cmd {
        QaCommand::Index(a) => index(a),
        QaCommand::Eval(a) => eval(a),
        QaCommand::Compare(a) => crate::qa_compare::compare(a),
        QaCommand::Train(a) => crate::qa_train::run(a),
        QaCommand::Lexical(c) => crate::qa::run(c),
    }
}

fn squad_passages_path() -> PathBuf {
    shared_data_dir()
        .join("qa")
        .join("squad-open")
        .join("passages.jsonl")
}

fn index(a: IndexArgs) -> anyhow::Result<()> {
    if a.no_wiki && !a.with_squad {
        anyhow::bail!("--no-wiki leaves no passages: add --with-squad");
    }
    let sources = CorpusSources {
        wiki: (!a.no_wiki).then(|| a.wiki.clone()),
        squad: a.with_squad.then(squad_passages_path),
        tokenizer: a.models.encoder.join("tokenizer.json"),
        max_wordpieces: a.max_wordpieces,
    };
    let encoder = a.models.encoder()?;
    let start = Instant::now();
    let mut bm25_bar: Option<ProgressBar> = None;
    let mut dense_bar: Option<ProgressBar> = None;
    let mut on_event = |e: BuildEvent| match e {
        BuildEvent::Chunked { passages } => eprintln!("chunked into {passages} passages"),
        BuildEvent::Bm25 { done, total } => {
            let pb = bm25_bar.get_or_insert_with(|| bar(total, "bm25"));
            pb.set_position(done as u64);
        }
        BuildEvent::Encoded {
            done,
            total,
            tokens,
        } => {
            if let Some(pb) = bm25_bar.take() {
                pb.finish();
            }
            let pb = dense_bar.get_or_insert_with(|| bar(total, "embed"));
            pb.set_position(done as u64);
            let secs = pb.elapsed().as_secs_f64().max(1e-9);
            pb.set_message(format!("{:.0} tokens/s", tokens as f64 / secs));
        }
    };
    let outcome = build_or_reuse(&a.out, &sources, &encoder, &mut on_event)?;
    if let Some(pb) = dense_bar.take() {
        pb.finish();
    }
    match outcome {
        Outcome::Reused => eprintln!(
            "{}: index already built from the same inputs and encoder; reusing it",
            a.out.display()
        ),
        Outcome::Built => eprintln!(
            "{}: QA index built in {:.1}s",
            a.out.display(),
            start.elapsed().as_secs_f64()
        ),
    }
    Ok(())
}

/// Every `n / limit`-th example (all when `limit` is 0 or at least `n`).
pub fn spread_sample(examples: Vec<QaExample>, limit: usize) -> Vec<QaExample> {
    if limit == 0 || limit >= examples.len() {
        return examples;
    }
    let n = examples.len();
    (0..limit)
        .map(|i| examples[i * n / limit].clone())
        .collect()
}

/// The evaluated questions and `fit` train-article questions of squad-open (spread evenly) to
/// fit priors on, from one load and one split; `fit` > 0 needs squad-open.
fn eval_questions(a: &EvalArgs, fit: usize) -> anyhow::Result<(Vec<QaExample>, Vec<QaExample>)> {
    if fit > 0 && a.dataset != Dataset::SquadOpen {
        anyhow::bail!("--fit-prior needs squad-open, whose train articles the prior is fitted on");
    }
    let data = shared_data_dir();
    let examples = a
        .dataset
        .load(&data)
        .with_context(|| format!("loading {}", a.dataset.path(&data).display()))?;
    let (eval, train) = match a.dataset {
        Dataset::SquadOpen => {
            let split = squad_split(examples, a.seed)?;
            (split.eval, split.train)
        }
        _ => (examples, Vec::new()),
    };
    let fit_on = match fit {
        0 => Vec::new(),
        n => spread_sample(train, n),
    };
    Ok((spread_sample(eval, a.limit), fit_on))
}

/// squad-open questions split by article ([`split_by_article`], seeded).
pub fn squad_split(examples: Vec<QaExample>, seed: u64) -> anyhow::Result<ArticleSplit> {
    let passages = read_passages(&squad_passages_path())?;
    Ok(split_by_article(
        &examples,
        &passages,
        ralm_realm::data::SQUAD_EVAL_ARTICLES,
        seed,
    )?)
}

pub const RECALL_KS: [usize; 3] = [1, 5, 20];

/// The prior that best puts `p(z|x)` on answer-holding passages among the top-`k` that
/// `encoder` and `kind` retrieve for `questions` ([`PassagePrior::fit`]).
fn fit_prior(
    system: &QaSystem,
    encoder: &DenseEncoder,
    questions: &[QaExample],
    k: usize,
    kind: RetrieverKind,
    label: &str,
) -> anyhow::Result<PassagePrior> {
    let pb = bar(questions.len(), &format!("fit {label}"));
    let passages = system.index.passages();
    let mut samples = Vec::with_capacity(questions.len());
    for ex in questions {
        let r = retrieve(&system.index, encoder, &system.prior, &ex.question, k, kind)?;
        let matcher = AnswerMatcher::for_example(ex);
        samples.push(PriorSample {
            dense: r.hits.iter().map(|h| h.1).collect(),
            bm25: r.bm25,
            has_answer: r
                .hits
                .iter()
                .map(|&(i, _)| matcher.has_answer(&passages[i].text))
                .collect(),
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    let prior = PassagePrior::fit(&samples, true);
    let (ll, n) = prior.log_likelihood(&samples);
    let (ll0, _) = system.prior.log_likelihood(&samples);
    println!(
        "{label}: fitted p(z|x) = softmax({} q·d + {} BM25) on {n} of {} train-article questions \
         (mean log-likelihood {ll:.3}, against {ll0:.3} with the given prior)",
        prior.dense,
        prior.bm25,
        questions.len()
    );
    Ok(prior)
}

/// EM/F1 of a reader over some questions.
#[derive(Default)]
pub struct ReaderScores {
    pub em: f64,
    pub f1: f64,
    pub questions_per_s: f64,
    pub predictions: Vec<serde_json::Value>,
}

/// Answers `questions` with `system`, retrieving with `encoder` and `kind`, and scores the
/// answers under each of `priors` (one reading per question serves them all; the first
/// ranks the weighted retriever).
pub fn score_reader(
    system: &QaSystem,
    encoder: &DenseEncoder,
    priors: &[PassagePrior],
    questions: &[QaExample],
    k: usize,
    kind: RetrieverKind,
    label: &str,
) -> anyhow::Result<Vec<ReaderScores>> {
    let pb = bar(questions.len(), label);
    let start = Instant::now();
    let mut scores: Vec<ReaderScores> = priors.iter().map(|_| ReaderScores::default()).collect();
    for (n, ex) in questions.iter().enumerate() {
        let r = retrieve(&system.index, encoder, &priors[0], &ex.question, k, kind)?;
        let reading = system.read(&r)?;
        for (prior, s) in priors.iter().zip(&mut scores) {
            let answer = system.answer(&r, &reading, prior, kind).answer;
            let answer = answer.map(|s| s.text).unwrap_or_default();
            s.em += exact_match(&answer, &ex.answers);
            s.f1 += f1_score(&answer, &ex.answers);
            s.predictions.push(json!({"id": ex.id, "question": ex.question, "prediction": answer, "answers": ex.answers}));
        }
        pb.inc(1);
        let ems: Vec<String> = scores
            .iter()
            .map(|s| format!("{:.1}%", 100.0 * s.em / (n + 1) as f64))
            .collect();
        pb.set_message(format!("EM {}", ems.join(" / ")));
    }
    pb.finish_and_clear();
    let n = questions.len().max(1) as f64;
    let qps = questions.len() as f64 / start.elapsed().as_secs_f64();
    for s in &mut scores {
        s.em /= n;
        s.f1 /= n;
        s.questions_per_s = qps;
    }
    Ok(scores)
}

/// The retrievers compared: `(label, kind, question encoder)`. With a fine-tuned query tower,
/// both it and the zero-shot encoder are compared.
fn retrievers(loaded: &Loaded) -> Vec<(&'static str, RetrieverKind, &DenseEncoder)> {
    let main = &loaded.system.encoder;
    match &loaded.zero_shot {
        None => vec![
            ("bm25", RetrieverKind::Bm25, main),
            ("dense", RetrieverKind::Dense, main),
            ("hybrid", RetrieverKind::Hybrid, main),
            ("weighted", RetrieverKind::Weighted, main),
        ],
        Some(zs) => vec![
            ("bm25", RetrieverKind::Bm25, main),
            ("dense-zero-shot", RetrieverKind::Dense, zs),
            ("hybrid-zero-shot", RetrieverKind::Hybrid, zs),
            ("weighted-zero-shot", RetrieverKind::Weighted, zs),
            ("dense-fine-tuned", RetrieverKind::Dense, main),
            ("hybrid-fine-tuned", RetrieverKind::Hybrid, main),
            ("weighted-fine-tuned", RetrieverKind::Weighted, main),
        ],
    }
}

fn eval(a: EvalArgs) -> anyhow::Result<()> {
    // Priors are fitted only for reader runs.
    let fit = if a.reader_limit > 0 { a.fit_prior } else { 0 };
    let (questions, fit_on) = eval_questions(&a, fit)?;
    let loaded = a.reader.system(&a.index, &a.models, a.reader_limit > 0)?;
    let system = &loaded.system;
    let passages = system.index.passages();
    eprintln!(
        "{} questions, {} passages ({})",
        questions.len(),
        passages.len(),
        a.index.display()
    );
    let mut results = serde_json::Map::new();
    let retrievers = retrievers(&loaded);
    for &(label, kind, encoder) in &retrievers {
        let pb = bar(questions.len(), label);
        let start = Instant::now();
        let mut recall = RecallAtK::new(&RECALL_KS);
        let mut firsts = Vec::with_capacity(questions.len());
        for ex in &questions {
            let r = retrieve(
                &system.index,
                encoder,
                &system.prior,
                &ex.question,
                20,
                kind,
            )?;
            let matcher = AnswerMatcher::for_example(ex);
            let first = first_hit(
                r.hits.iter().map(|&(i, _)| passages[i].text.as_str()),
                &matcher,
            );
            recall.add(first);
            firsts.push(first);
            pb.inc(1);
        }
        pb.finish_and_clear();
        let qps = questions.len() as f64 / start.elapsed().as_secs_f64();
        let recalls = recall.recalls();
        println!(
            "{label}: {} ({qps:.1} questions/s)",
            recalls
                .iter()
                .map(|(k, r)| format!("R@{k} {:.1}%", 100.0 * r))
                .collect::<Vec<_>>()
                .join("  ")
        );
        let recall_json: serde_json::Map<String, serde_json::Value> = recalls
            .iter()
            .map(|(k, r)| (format!("@{k}"), json!(r)))
            .collect();
        results.insert(
            label.to_string(),
            json!({"recall": recall_json, "questions_per_s": qps, "first_hit": firsts}),
        );
    }
    let read = match a.reader_limit {
        0 => Vec::new(),
        n => spread_sample(questions.clone(), n),
    };
    let n_read = read.len();
    // With a checkpoint the reader is compared across BM25, zero-shot dense and weighted, and
    // the fine-tuned retrievers; else the chosen one is used.
    let reader_runs: Vec<(String, RetrieverKind, &DenseEncoder)> = match loaded.zero_shot {
        Some(_) => retrievers
            .iter()
            .filter(|r| r.0 != "hybrid-zero-shot")
            .map(|&(l, k, e)| (format!("reader-{l}"), k, e))
            .collect(),
        None => vec![("reader".into(), a.reader.retriever, &system.encoder)],
    };
    for (label, kind, encoder) in reader_runs.iter().filter(|_| n_read > 0) {
        // The given prior, and with --fit-prior the fitted one as well, from the same readings.
        let mut priors = vec![(label.clone(), system.prior)];
        if !fit_on.is_empty() {
            let fitted = fit_prior(system, encoder, &fit_on, a.reader.k, *kind, label)?;
            priors.push((format!("{label}-fitted-prior"), fitted));
        }
        let only: Vec<PassagePrior> = priors.iter().map(|p| p.1).collect();
        let scores = score_reader(system, encoder, &only, &read, a.reader.k, *kind, label)?;
        for ((name, prior), s) in priors.into_iter().zip(scores) {
            println!(
                "{name} ({kind:?}, k={}, p(z|x) = softmax({} q·d + {} BM25)): EM {:.1}%  F1 {:.1}% \
                 on {n_read} questions ({:.2} questions/s)",
                a.reader.k,
                prior.dense,
                prior.bm25,
                100.0 * s.em,
                100.0 * s.f1,
                s.questions_per_s
            );
            results.insert(
                name,
                json!({"retriever": kind, "k": a.reader.k, "questions": n_read, "prior": prior,
                       "em": s.em, "f1": s.f1, "questions_per_s": s.questions_per_s,
                       "predictions": s.predictions}),
            );
        }
    }
    if let Some(path) = &a.json_out {
        results.insert("dataset".into(), json!(format!("{:?}", a.dataset)));
        results.insert("questions".into(), json!(questions.len()));
        let ids: Vec<&str> = questions.iter().map(|q| q.id.as_str()).collect();
        results.insert("question_ids".into(), json!(ids));
        results.insert("passages".into(), json!(passages.len()));
        let bytes = serde_json::to_vec_pretty(&serde_json::Value::Object(results))?;
        crate::io::write_atomic(path, &bytes)?;
    }
    Ok(())
}
