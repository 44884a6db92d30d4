//! `ralm qa train`: REALM fine-tuning of the query tower and the extractive reader on the train
//! articles of squad-open, against a frozen QA index. Writes `train.jsonl` (one line per update
//! and per evaluation), `checkpoint/` (atomically, every N updates and at the end),
//! `loss.svg` and `eval.svg`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use ralm_realm::ask::{QaSystem, Reader, RetrieverKind, DEFAULT_SCORE_SCALE};
use ralm_realm::data::{shared_data_dir, Dataset, QaExample};
use ralm_realm::finetune::{
    checkpoint_dir, open_checkpoint, read_state, FineTuneConfig, Trainer, CHECKPOINT_DIR,
};
use ralm_realm::prior::PassagePrior;
use ralm_realm::qa_index::QaIndex;
use ralm_realm::reader::ReaderOptions;
use ralm_realm::retriever::DenseEncoder;
use serde_json::json;

use crate::plot::{loss_curve, Chart, Series};
use crate::qa_dense::{bar, score_reader, spread_sample, squad_split, ModelArgs};

const LOG_FILE: &str = "train.jsonl";

/// Options of `ralm qa train`.
#[derive(Args)]
pub struct TrainArgs {
    /// QA index directory (its vectors stay frozen).
    #[arg(long, default_value = "runs/qa/squad")]
    index: PathBuf,
    /// Training questions: squad-open (the train articles of split_by_article).
    #[arg(long, default_value = "squad-open")]
    dataset: Dataset,
    /// Output directory: train.jsonl, checkpoint/, loss.svg, eval.svg.
    #[arg(long, default_value = "runs/qa/ft")]
    out: PathBuf,
    /// Continue from the checkpoint in --out (weights, optimizer state and step).
    #[arg(long)]
    resume: bool,
    /// Training questions used (an evenly spaced sample of the train articles; 0 = all).
    #[arg(long, default_value_t = 0)]
    questions: usize,
    /// Passes over the training questions (sets the number of updates).
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Questions per update.
    #[arg(long, default_value_t = 4)]
    batch_questions: usize,
    /// Passages retrieved per question.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// Peak learning rate of the reader.
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    /// Peak learning rate of the query tower.
    #[arg(long, default_value_t = 1e-5)]
    query_lr: f64,
    /// Warmup updates (linear), then linear decay to 0.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Warm start: the first N updates train the reader on the gold passage only.
    #[arg(long, default_value_t = 0)]
    gold_steps: usize,
    /// Most tokens of a reader input (passages are truncated to fit).
    #[arg(long, default_value_t = 256)]
    max_seq_len: usize,
    /// Most wordpieces of an answer span.
    #[arg(long, default_value_t = 16)]
    max_span_len: usize,
    /// Scale of inner products in p(z|x) = softmax(scale · q·d).
    #[arg(long, default_value_t = DEFAULT_SCORE_SCALE)]
    scale: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Seed of the reader head and of the question order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write a checkpoint every N updates (and at the end).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// At every checkpoint, EM/F1 on this many eval-article questions (0 = none).
    #[arg(long, default_value_t = 40)]
    eval_questions: usize,
    #[command(flatten)]
    models: ModelArgs,
}

/// The training questions in a seeded order (sorted by a hash of seed and id).
fn training_questions(a: &TrainArgs) -> anyhow::Result<(Vec<QaExample>, Vec<QaExample>)> {
    if a.dataset != Dataset::SquadOpen {
        anyhow::bail!("only squad-open has train/eval articles to fine-tune on");
    }
    let data = shared_data_dir();
    let examples = a
        .dataset
        .load(&data)
        .with_context(|| format!("loading {}", a.dataset.path(&data).display()))?;
    let split = squad_split(examples, 0)?;
    let mut train = spread_sample(split.train, a.questions);
    train.sort_by_cached_key(|ex| {
        ralm_models::hash::sha256_hex(format!("{}:{}", a.seed, ex.id).as_bytes())
    });
    Ok((train, eval_sample(split.eval, a.eval_questions)))
}

/// The eval questions used at checkpoints: `n` spread over `eval`, none when `n` is 0 (unlike
/// [`spread_sample`], where 0 means all).
fn eval_sample(eval: Vec<QaExample>, n: usize) -> Vec<QaExample> {
    if n == 0 {
        Vec::new()
    } else {
        spread_sample(eval, n)
    }
}

/// The training-loss and evaluation charts from the log.
fn plot(out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(out.join(LOG_FILE))?;
    let (mut loss, mut em, mut f1) = (Vec::new(), Vec::new(), Vec::new());
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let step = v["step"].as_f64().unwrap_or(0.0);
        if let Some(l) = v["loss"].as_f64() {
            loss.push((step, l));
        }
        if let (Some(e), Some(f)) = (v["eval_em"].as_f64(), v["eval_f1"].as_f64()) {
            em.push((step, 100.0 * e));
            f1.push((step, 100.0 * f));
        }
    }
    loss_curve("REALM fine-tuning: marginal-likelihood loss", loss, 10)
        .save(&out.join("loss.svg"))?;
    if !em.is_empty() {
        Chart {
            title: "Held-out articles: extractive reader, fine-tuned retriever".into(),
            x_label: "update".into(),
            y_label: "%".into(),
            log_x: false,
            series: vec![
                Series {
                    name: "EM".into(),
                    points: em,
                },
                Series {
                    name: "F1".into(),
                    points: f1,
                },
            ],
        }
        .save(&out.join("eval.svg"))?;
    }
    Ok(())
}

/// Appends one JSON line to the log.
fn log_line(log: &mut std::fs::File, value: serde_json::Value) -> anyhow::Result<()> {
    writeln!(log, "{value}")?;
    log.flush()?;
    Ok(())
}

/// EM/F1 of the checkpoint in `out` on `questions` (dense retrieval with its query tower).
fn evaluate(
    a: &TrainArgs,
    document: &DenseEncoder,
    questions: &[QaExample],
) -> anyhow::Result<(f64, f64)> {
    let ft = open_checkpoint(&a.out, document, a.models.batch, &crate::device::current())?;
    let system = QaSystem {
        index: QaIndex::open(&a.index, document)?,
        encoder: ft.query,
        reader: Some(Reader::Extractive(ft.reader)),
        prior: PassagePrior {
            dense: a.scale,
            bm25: 0.0,
        },
    };
    let s = score_reader(
        &system,
        &system.encoder,
        &[system.prior],
        questions,
        a.k,
        RetrieverKind::Dense,
        "eval",
    )?;
    Ok((s[0].em, s[0].f1))
}

/// Runs `ralm qa train`.
pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let (train, eval_qs) = training_questions(&a)?;
    if train.is_empty() {
        anyhow::bail!("no training questions");
    }
    let document = a.models.encoder()?;
    let index = QaIndex::open(&a.index, &document)
        .with_context(|| format!("opening QA index {}", a.index.display()))?;
    let steps_per_epoch = train.len().div_ceil(a.batch_questions.max(1));
    let total_steps = steps_per_epoch * a.epochs;
    let device = crate::device::current();
    let mut trainer = if a.resume {
        let dir = checkpoint_dir(&a.out);
        read_state(&dir)
            .with_context(|| format!("--resume: no checkpoint in {}", a.out.display()))?;
        Trainer::resume(&index, &document, &dir, Some(total_steps), &device)?
    } else {
        if a.out.join(CHECKPOINT_DIR).exists() {
            anyhow::bail!(
                "{} already holds a checkpoint: pass --resume to continue it, or choose another --out",
                a.out.display()
            );
        }
        let config = FineTuneConfig {
            k: a.k,
            scale: a.scale,
            batch_size: a.batch_questions,
            total_steps,
            warmup_steps: a.warmup,
            lr: a.lr,
            query_lr: a.query_lr,
            weight_decay: a.weight_decay,
            max_grad_norm: 1.0,
            gold_steps: a.gold_steps,
            reader: ReaderOptions {
                max_seq_len: a.max_seq_len,
                max_span_len: a.max_span_len,
            },
            pooling: format!("{:?}", a.models.pooling).to_lowercase(),
            seed: a.seed,
        };
        Trainer::new(&index, &document, &a.models.encoder, config, &device)?
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let log_path = a.out.join(LOG_FILE);
    crate::seed::dropout(a.seed, trainer.step_count());
    let mut log = crate::io::open_training_log(&log_path, trainer.step_count())?;
    eprintln!(
        "{} training questions ({} updates of {}), {} eval questions, {} passages",
        train.len(),
        total_steps,
        a.batch_questions,
        eval_qs.len(),
        index.passages().len()
    );
    let checkpoint = |trainer: &Trainer, log: &mut std::fs::File| -> anyhow::Result<()> {
        trainer.save(&a.out)?;
        if !eval_qs.is_empty() {
            let (em, f1) = evaluate(&a, &document, &eval_qs)?;
            eprintln!(
                "step {}: eval EM {:.1}%  F1 {:.1}%",
                trainer.step_count(),
                100.0 * em,
                100.0 * f1
            );
            log_line(
                log,
                json!({"step": trainer.step_count(), "eval_em": em, "eval_f1": f1,
                                 "eval_questions": eval_qs.len()}),
            )?;
        }
        plot(&a.out)
    };
    if trainer.step_count() == 0 {
        checkpoint(&trainer, &mut log)?;
    }
    let b = a.batch_questions;
    let pb = bar(
        (total_steps - trainer.step_count().min(total_steps)) * b,
        "train",
    );
    let started = Instant::now();
    let mut questions_done = 0usize;
    while trainer.step_count() < total_steps {
        let step = trainer.step_count();
        let batch: Vec<QaExample> = (0..b)
            .map(|i| train[(step * b + i) % train.len()].clone())
            .collect();
        let t0 = Instant::now();
        let s = trainer.step(&batch)?;
        let secs = t0.elapsed().as_secs_f64();
        questions_done += b;
        log_line(
            &mut log,
            json!({"step": trainer.step_count(), "loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm,
                   "used": s.used, "skipped": s.skipped, "gold_only": s.gold_only,
                   "tokens": s.tokens, "tokens_per_s": s.tokens as f64 / secs,
                   "questions_per_s": b as f64 / secs,
                   "elapsed_s": started.elapsed().as_secs_f64()}),
        )?;
        pb.inc(b as u64);
        pb.set_message(format!(
            "loss {} ({:.0} tok/s)",
            s.loss.map_or("-".into(), |l| format!("{l:.3}")),
            s.tokens as f64 / secs
        ));
        let n = trainer.step_count();
        if n % a.checkpoint_every.max(1) == 0 || n == total_steps {
            pb.suspend(|| checkpoint(&trainer, &mut log))?;
        }
    }
    pb.finish_and_clear();
    eprintln!(
        "{questions_done} questions in {:.0}s ({:.2} questions/s); checkpoint in {}",
        started.elapsed().as_secs_f64(),
        questions_done as f64 / started.elapsed().as_secs_f64().max(1e-9),
        a.out.join(CHECKPOINT_DIR).display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ralm_realm::data::AnswerKind;

    #[test]
    fn zero_eval_questions_means_none() {
        let examples: Vec<QaExample> = (0..10)
            .map(|i| QaExample {
                id: format!("q{i}"),
                question: format!("question {i}?"),
                answers: vec!["a".into()],
                kind: AnswerKind::Text,
                gold_passage: None,
            })
            .collect();
        assert!(eval_sample(examples.clone(), 0).is_empty());
        let four: Vec<String> = eval_sample(examples.clone(), 4)
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(four, ["q0", "q2", "q5", "q7"]);
        assert_eq!(eval_sample(examples, 50).len(), 10);
    }
}
