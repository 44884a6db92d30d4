//! `ralm realm eval`: a pre-training run's held-out sentences scored one by one (masked tokens
//! right with retrieval and with the null document only, RU of the top document), and paired
//! bootstrap comparisons of such scorings, which `ralm realm compare` prints.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use candle_core::Device;
use clap::Args;
use ralm_models::bert::Pooling;
use ralm_realm::metrics::{bootstrap_ratio, Interval, BOOTSTRAP_RESAMPLES};
use ralm_realm::passages::Passage;
use ralm_realm::pretrain::{read_checkpoint_state, MaskedHits, Pretrainer};
use ralm_realm::qa_index::QaIndex;
use ralm_realm::refresh::{SnapshotSlot, SnapshotStore};
use ralm_realm::retriever::DenseEncoder;
use serde::{Deserialize, Serialize};

use super::{pretrain_config, run_sentences, snapshot_to_read, starting_models, PretrainArgs};
use crate::qa_dense::bar;

/// Per-sentence scores of the checkpoint, in the run's directory.
pub const HELD_OUT_FILE: &str = "held-out.jsonl";
/// Per-sentence scores of the models the run started from, in the run's directory.
pub const HELD_OUT_START_FILE: &str = "held-out-start.jsonl";

/// Options of `ralm realm eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// Output directory of `ralm realm pretrain` (its config.json, checkpoint/ and snapshots/).
    run: PathBuf,
    /// Score the models the run started from, on the index it started from, instead of its
    /// checkpoint (on the index snapshot the checkpoint reads).
    #[arg(long)]
    start: bool,
    /// Held-out sentences scored: this many after the run's training sentences [default: the
    /// run's --eval-sentences].
    #[arg(long)]
    count: Option<usize>,
    /// Sentences per forward pass [default: the run's --batch].
    #[arg(long)]
    batch: Option<usize>,
    /// JSONL file, a line per sentence [default: held-out.jsonl in the run's directory, or
    /// held-out-start.jsonl with --start].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One held-out sentence scored (a line of the file `ralm realm eval` writes).
#[derive(Debug, Serialize, Deserialize)]
pub struct HeldOutSentence {
    /// Its line in the run's masked sentences (from 0).
    pub sentence: usize,
    /// Updates the scored models had taken (0 for the starting models).
    pub step: usize,
    /// Masked tokens, and those predicted right with retrieval and with the null document only.
    pub masked: usize,
    pub with_retrieval: usize,
    pub null_only: usize,
    /// RU of the top document (none when no document was retrieved).
    pub utility: Option<f64>,
    /// Whether the top document (by p(z|x)) holds the span, and whether any retrieved one does.
    pub span_top: bool,
    pub span_found: bool,
}

pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let config = a.run.join("config.json");
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {} (is it a pre-training run?)", config.display()))?;
    let run: PretrainArgs = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not the options of a pre-training run",
            config.display()
        )
    })?;
    let device = crate::device::current();
    let document = DenseEncoder::load(&run.encoder, Pooling::Mean, 32, &device)
        .with_context(|| format!("loading encoder {}", run.encoder.display()))?;
    let index = QaIndex::open(&run.source.index, &document)
        .with_context(|| format!("opening QA index {}", run.source.index.display()))?;
    let (sentences, source) = run_sentences(&run, &index)?;
    let count = a.count.unwrap_or(run.eval_sentences);
    let held_out = sentences
        .get(run.sentences..run.sentences + count)
        .with_context(|| {
            format!(
                "{} {source}: fewer than the run's {} training sentences plus {count} held out",
                sentences.len(),
                run.sentences
            )
        })?;
    if held_out.is_empty() {
        anyhow::bail!("no held-out sentences to score: give --count");
    }
    let corpus = index.passages().to_vec();
    let store = SnapshotStore::new(&a.run.join("snapshots"), &corpus);
    let trainer = scoring_trainer(&a, &run, &corpus, &index, &store, &device)?;
    let pb = bar(held_out.len(), "held-out");
    let each = trainer.evaluate(held_out, a.batch.unwrap_or(run.batch), |n| {
        pb.set_position(n as u64)
    })?;
    pb.finish_and_clear();
    let step = trainer.step_count();
    let scored: Vec<HeldOutSentence> = each
        .iter()
        .enumerate()
        .map(|(i, h)| HeldOutSentence {
            sentence: run.sentences + i,
            step,
            masked: h.masked,
            with_retrieval: h.with_retrieval,
            null_only: h.null_only,
            utility: (h.sentences > 0).then_some(h.utility),
            span_top: h.span_top > 0,
            span_found: h.span_found > 0,
        })
        .collect();
    let out = a.out.unwrap_or_else(|| {
        a.run.join(if a.start {
            HELD_OUT_START_FILE
        } else {
            HELD_OUT_FILE
        })
    });
    let mut bytes = Vec::new();
    for s in &scored {
        serde_json::to_writer(&mut bytes, s)?;
        bytes.push(b'\n');
    }
    crate::io::write_atomic(&out, &bytes)?;
    let total: MaskedHits = each.into_iter().sum();
    eprintln!(
        "update {step}: {} held-out sentences ({} to {} of {source}), {} masked tokens: {:.1}% right \
         with retrieval, {:.1}% with the null document only; RU of the top document {}",
        scored.len(),
        run.sentences + 1,
        run.sentences + scored.len(),
        total.masked,
        100.0 * total.with_retrieval as f64 / total.masked.max(1) as f64,
        100.0 * total.null_only as f64 / total.masked.max(1) as f64,
        show(bootstrap_ratio(&utilities(&scored), BOOTSTRAP_RESAMPLES, 0), 1.0, ""),
    );
    let beats_null: Vec<(f64, f64)> = (scored.iter())
        .map(|s| {
            (
                s.with_retrieval as f64 - s.null_only as f64,
                s.masked as f64,
            )
        })
        .collect();
    eprintln!(
        "retrieval minus the null document: {} points of accuracy; the span is in the top \
         document for {:.1}% of sentences, in one of the {} for {:.1}%; per sentence in {}",
        show(
            bootstrap_ratio(&beats_null, BOOTSTRAP_RESAMPLES, 0),
            100.0,
            ""
        ),
        100.0 * total.span_top as f64 / scored.len() as f64,
        run.k,
        100.0 * total.span_found as f64 / scored.len() as f64,
        out.display()
    );
    Ok(())
}

/// A trainer holding the models to score: the run's checkpoint on the index snapshot it reads,
/// or with `--start` the models and index the run started from.
fn scoring_trainer<'c>(
    a: &EvalArgs,
    run: &PretrainArgs,
    corpus: &'c [Passage],
    index: &QaIndex,
    store: &SnapshotStore,
    device: &Device,
) -> anyhow::Result<Pretrainer<'c>> {
    if a.start {
        let slot = Arc::new(SnapshotSlot::new(snapshot_to_read(0, index, store)?));
        let models = starting_models(run, device)?;
        let total = run.sentences.div_ceil(run.batch.max(1)).max(1);
        return Ok(Pretrainer::new(
            corpus,
            slot,
            models,
            pretrain_config(run, total),
        )?);
    }
    let checkpoint = a.run.join("checkpoint");
    let state = read_checkpoint_state(&checkpoint)
        .with_context(|| format!("no checkpoint in {}", a.run.display()))?;
    let slot = Arc::new(SnapshotSlot::new(snapshot_to_read(
        state.snapshot_version,
        index,
        store,
    )?));
    Ok(Pretrainer::resume(corpus, slot, &checkpoint, device, None)?)
}

/// The RU of every sentence that has one, as bootstrap items.
fn utilities(scored: &[HeldOutSentence]) -> Vec<(f64, f64)> {
    scored
        .iter()
        .filter_map(|s| Some((s.utility?, 1.0)))
        .collect()
}

/// `+1.23 (95 % CI +0.45 to +2.01)`, the values times `scale`, or "none".
fn show(i: Option<Interval>, scale: f64, unit: &str) -> String {
    match i {
        Some(i) => format!(
            "{:+.2}{unit} (95 % CI {:+.2} to {:+.2})",
            i.estimate * scale,
            i.low * scale,
            i.high * scale
        ),
        None => "none".into(),
    }
}

/// Reads a file `ralm realm eval` wrote.
pub fn read_held_out(path: &Path) -> anyhow::Result<Vec<HeldOutSentence>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    (text.lines().enumerate())
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            serde_json::from_str(l).with_context(|| {
                format!("{} line {}: not a held-out sentence", path.display(), n + 1)
            })
        })
        .collect()
}

/// A scoring before and after, of the same held-out sentences.
pub type ScoringPair<'a> = (&'a [HeldOutSentence], &'a [HeldOutSentence]);

/// What changed from each pair's first scoring to its second, averaged over the pairs sentence by
/// sentence (one pair: the plain paired change): the RU of the top document, the accuracy with
/// retrieval and how often the top document holds the span, each with its paired bootstrap
/// interval over sentences, in a line; an error when the scorings are not of the same sentences.
pub fn paired_change<'a>(pairs: &[ScoringPair<'a>]) -> anyhow::Result<String> {
    let Some(&(first, _)) = pairs.first() else {
        anyhow::bail!("no scorings to compare");
    };
    let same = |b: &[HeldOutSentence]| {
        first.len() == b.len()
            && (first.iter().zip(b)).all(|(x, y)| (x.sentence, x.masked) == (y.sentence, y.masked))
    };
    if !pairs.iter().all(|(a, b)| same(a) && same(b)) {
        anyhow::bail!(
            "they scored different held-out sentences (give `ralm realm eval` the same --count)"
        );
    }
    let per_pair = pairs.len() as f64;
    // Sentence i's change, averaged over the pairs, as a bootstrap item; None where a scoring has
    // no value.
    let change = |i: usize, value: &dyn Fn(&HeldOutSentence) -> Option<f64>| -> Option<f64> {
        (pairs.iter())
            .map(|(a, b)| Some(value(&b[i])? - value(&a[i])?))
            .sum::<Option<f64>>()
            .map(|sum| sum / per_pair)
    };
    let flag = |on: bool| f64::from(u8::from(on));
    let sentences = 0..first.len();
    let ru: Vec<(f64, f64)> = (sentences.clone())
        .filter_map(|i| Some((change(i, &|s| s.utility)?, 1.0)))
        .collect();
    let accuracy: Vec<(f64, f64)> = (sentences.clone())
        .filter_map(|i| {
            let right = change(i, &|s| Some(s.with_retrieval as f64))?;
            Some((right, first[i].masked as f64))
        })
        .collect();
    let span_top: Vec<(f64, f64)> = sentences
        .filter_map(|i| Some((change(i, &|s| Some(flag(s.span_top)))?, 1.0)))
        .collect();
    let mean = |items: &[(f64, f64)]| {
        let (n, d) = items.iter().fold((0.0, 0.0), |s, i| (s.0 + i.0, s.1 + i.1));
        n / d.max(1.0)
    };
    // A measure of the pairs' first (or, `after`, second) scorings, averaged over the pairs.
    let side = |(a, b): ScoringPair<'a>, after: bool| if after { b } else { a };
    let over_pairs = |after: bool, measure: &dyn Fn(&[HeldOutSentence]) -> f64| {
        (pairs.iter())
            .map(|&p| measure(side(p, after)))
            .sum::<f64>()
            / per_pair
    };
    let ru_mean = |scored: &[HeldOutSentence]| mean(&utilities(scored));
    let acc = |scored: &[HeldOutSentence]| {
        let items: Vec<(f64, f64)> = (scored.iter())
            .map(|s| (s.with_retrieval as f64, s.masked as f64))
            .collect();
        100.0 * mean(&items)
    };
    let top = |scored: &[HeldOutSentence]| {
        100.0 * scored.iter().filter(|s| s.span_top).count() as f64 / scored.len().max(1) as f64
    };
    let interval = |items: &[(f64, f64)], scale: f64, unit: &str| {
        show(bootstrap_ratio(items, BOOTSTRAP_RESAMPLES, 0), scale, unit)
    };
    let step = |after: bool| side(pairs[0], after).first().map_or(0, |s| s.step);
    Ok(format!(
        "{} sentences{}, updates {} -> {}: RU {:+.3} -> {:+.3}, change {}; accuracy with \
         retrieval {:.1}% -> {:.1}%, change {}; span in the top document {:.1}% -> {:.1}%, \
         change {}",
        first.len(),
        match pairs.len() {
            1 => String::new(),
            n => format!(" (mean of {n} pairs of scorings)"),
        },
        step(false),
        step(true),
        over_pairs(false, &ru_mean),
        over_pairs(true, &ru_mean),
        interval(&ru, 1.0, ""),
        over_pairs(false, &acc),
        over_pairs(true, &acc),
        interval(&accuracy, 100.0, " points"),
        over_pairs(false, &top),
        over_pairs(true, &top),
        interval(&span_top, 100.0, " points"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(step: usize, rows: &[(usize, usize, f64)]) -> Vec<HeldOutSentence> {
        (rows.iter().enumerate())
            .map(|(i, &(masked, right, utility))| HeldOutSentence {
                sentence: 800 + i,
                step,
                masked,
                with_retrieval: right,
                null_only: 0,
                utility: Some(utility),
                span_top: i == 0,
                span_found: true,
            })
            .collect()
    }

    #[test]
    fn paired_change_reports_both_scorings_and_their_difference() {
        let start = scored(0, &[(2, 1, 1.0), (3, 0, 2.0), (1, 1, 0.0)]);
        let end = scored(200, &[(2, 2, 1.5), (3, 1, 2.5), (1, 1, 0.5)]);
        let line = paired_change(&[(&start, &end)]).unwrap();
        // RU 1.000 -> 1.500, every sentence +0.5; accuracy 2/6 -> 4/6.
        assert!(line.starts_with("3 sentences, updates 0 -> 200: RU +1.000 -> +1.500, change +0.50 (95 % CI +0.50 to +0.50)"), "{line}");
        assert!(
            line.contains("accuracy with retrieval 33.3% -> 66.7%, change +33.33 points"),
            "{line}"
        );
        let other = scored(200, &[(2, 2, 1.5), (3, 1, 2.5)]);
        assert!(paired_change(&[(&start, &other)]).is_err());
        assert!(paired_change(&[(&start, &end), (&start, &other)]).is_err());
        assert!(paired_change(&[]).is_err());
    }

    #[test]
    fn paired_change_over_pairs_averages_each_sentence() {
        let a = scored(200, &[(2, 2, 1.0), (2, 0, 3.0)]);
        let b = scored(200, &[(2, 1, 0.0), (2, 0, 3.0)]);
        let c = scored(200, &[(2, 2, 2.0), (2, 1, 2.0)]);
        let d = scored(200, &[(2, 2, 2.0), (2, 0, 1.0)]);
        let line = paired_change(&[(&a, &b), (&c, &d)]).unwrap();
        // RU: sentence 0 changes by -1 and 0 (mean -0.5), sentence 1 by 0 and -1 (mean -0.5);
        // accuracy: -1 and -1 of 4 wordpieces over the pairs, -1/4 on average.
        assert!(
            line.starts_with(
                "2 sentences (mean of 2 pairs of scorings), updates 200 -> 200: RU +2.000 -> \
                 +1.500, change -0.50 (95 % CI -0.50 to -0.50)"
            ),
            "{line}"
        );
        assert!(
            line.contains("accuracy with retrieval 62.5% -> 37.5%, change -25.00 points"),
            "{line}"
        );
    }

    #[test]
    fn held_out_files_round_trip_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HELD_OUT_FILE);
        let rows = scored(5, &[(2, 1, -0.25)]);
        let mut text = serde_json::to_string(&rows[0]).unwrap();
        text.push('\n');
        std::fs::write(&path, &text).unwrap();
        let back = read_held_out(&path).unwrap();
        assert_eq!(
            (back[0].sentence, back[0].step, back[0].utility),
            (800, 5, Some(-0.25))
        );
        text.push_str("{\"sentence\": 1}\n");
        std::fs::write(&path, &text).unwrap();
        let err = format!("{:#}", read_held_out(&path).unwrap_err());
        assert!(err.contains("line 2: not a held-out sentence"), "{err}");
    }
}
