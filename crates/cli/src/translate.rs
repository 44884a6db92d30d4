//! `ralm translate` and `ralm mt eval`: translation with a Marian model, BLEU/chrF evaluation.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use ralm_knn::mt_metrics::{corpus_bleu, corpus_chrf};
use ralm_models::marian::{Precision, Translator};

/// Options shared by translation commands.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Model directory (Bergamot/Marian with a decoder *.yml, or Hugging Face MarianMT).
    #[arg(long)]
    model: PathBuf,
    /// Beam width (default: the model's decoder config; 1 = greedy).
    #[arg(long)]
    beam: Option<usize>,
    /// Sentences per batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Round activations to int8 before int8 matrices (emulating Marian's intgemm arithmetic)
    /// instead of running the dequantised weights in float32.
    #[arg(long)]
    int8_activations: bool,
}

impl ModelArgs {
    fn load(&self) -> anyhow::Result<Translator> {
        let precision = if self.int8_activations {
            Precision::Int8Activations
        } else {
            Precision::Float32
        };
        let mut tr = Translator::load(&self.model, precision)
            .with_context(|| format!("loading model from {}", self.model.display()))?;
        tr.decode.batch_size = self.batch.max(1);
        Ok(tr)
    }
}

/// `ralm translate`.
#[derive(Args, Debug)]
pub struct TranslateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Input file with one sentence per line (default: stdin).
    #[arg(long)]
    input: Option<PathBuf>,
}

/// `ralm mt <command>`.
#[derive(Args, Debug)]
pub struct MtArgs {
    #[command(subcommand)]
    cmd: MtCommand,
}

#[derive(Subcommand, Debug)]
enum MtCommand {
    /// Translate a `catalog<TAB>source<TAB>reference` TSV (with header) and print BLEU and chrF.
    Eval(EvalArgs),
}

#[derive(Args, Debug)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The TSV file.
    #[arg(long)]
    tsv: PathBuf,
    /// Only the first N sentences.
    #[arg(long)]
    limit: Option<usize>,
}

fn progress(n: usize) -> ProgressBar {
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} sentences, {per_sec} [{elapsed_precise}]",
        )
        .expect("valid template"),
    );
    pb
}

/// Translates in chunks with a progress bar; returns the translations and sentences/second.
fn translate_all(
    tr: &Translator,
    sentences: &[String],
    beam: Option<usize>,
) -> anyhow::Result<(Vec<String>, f64)> {
    let opts = tr.search_options(beam);
    let pb = progress(sentences.len());
    let start = Instant::now();
    let mut out = Vec::with_capacity(sentences.len());
    // Chunks of several batches keep length-sorting effective while the bar moves.
    for chunk in sentences.chunks(tr.decode.batch_size * 8) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        out.extend(tr.translate(&refs, &opts)?);
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let rate = sentences.len() as f64 / start.elapsed().as_secs_f64().max(1e-9);
    Ok((out, rate))
}

/// Runs `ralm translate`.
pub fn run(args: TranslateArgs) -> anyhow::Result<()> {
    let tr = args.model.load()?;
    let lines: Vec<String> = match &args.input {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading {}", p.display()))?
            .lines()
            .map(str::to_string)
            .collect(),
        None => std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<_, _>>()
            .context("reading stdin")?,
    };
    let (out, rate) = translate_all(&tr, &lines, args.model.beam)?;
    let mut stdout = std::io::stdout().lock();
    for line in out {
        writeln!(stdout, "{line}")?;
    }
    eprintln!("{} sentences, {rate:.1} sentences/s", lines.len());
    Ok(())
}

fn read_tsv(path: &Path, limit: Option<usize>) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (mut src, mut refs) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate().skip(1) {
        if limit.is_some_and(|n| src.len() >= n) {
            break;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let [_, en, reference] = cols[..] else {
            bail!(
                "{}:{}: expected 3 tab-separated columns, found {}",
                path.display(),
                i + 1,
                cols.len()
            );
        };
        src.push(en.to_string());
        refs.push(reference.to_string());
    }
    Ok((src, refs))
}

/// Runs `ralm mt <command>`.
pub fn run_mt(args: MtArgs) -> anyhow::Result<()> {
    let MtCommand::Eval(args) = args.cmd;
    let (src, refs) = read_tsv(&args.tsv, args.limit)?;
    let tr = args.model.load()?;
    let (hyps, rate) = translate_all(&tr, &src, args.model.beam)?;
    let bleu = corpus_bleu(&hyps, &refs);
    let chrf = corpus_chrf(&hyps, &refs);
    println!("sentences: {}", src.len());
    println!(
        "BLEU: {:.2} ({:.1}/{:.1}/{:.1}/{:.1}, BP {:.3}, {}/{} tokens)",
        bleu.score,
        bleu.precisions[0],
        bleu.precisions[1],
        bleu.precisions[2],
        bleu.precisions[3],
        bleu.brevity_penalty,
        bleu.hyp_len,
        bleu.ref_len
    );
    println!("chrF: {chrf:.2}");
    println!("speed: {rate:.1} sentences/s");
    Ok(())
}
