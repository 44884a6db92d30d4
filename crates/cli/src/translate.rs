//! `ralm translate` and `ralm mt eval`: translation with a Marian model, BLEU/chrF evaluation.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::Tensor;
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use ralm_knn::knnmt::{Pairs, Retrieval};
use ralm_knn::mt_metrics::{corpus_bleu, corpus_chrf};
use ralm_models::marian::{Precision, Translator};

use crate::knnmt::KnnArgs;

/// Options shared by translation commands.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Model directory (Bergamot/Marian with a decoder *.yml, or Hugging Face MarianMT).
    #[arg(long)]
    pub model: PathBuf,
    /// Beam width (default: the model's decoder config; 1 = greedy).
    #[arg(long)]
    pub beam: Option<usize>,
    /// Sentences per batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Round activations to int8 before int8 matrices (emulating Marian's intgemm arithmetic)
    /// instead of running the dequantised weights in float32.
    #[arg(long)]
    int8_activations: bool,
}

impl ModelArgs {
    /// Loads the translator with the batch size set.
    pub fn load(&self) -> anyhow::Result<Translator> {
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
    #[command(flatten)]
    knn: KnnArgs,
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
    #[command(flatten)]
    knn: KnnArgs,
    /// The TSV file.
    #[arg(long)]
    tsv: PathBuf,
    /// Only the first N sentences.
    #[arg(long)]
    limit: Option<usize>,
}

fn progress(n: usize) -> ProgressBar {
    crate::progress::bar(
        n as u64,
        "{bar:40} {pos}/{len} sentences, {per_sec} [{elapsed_precise}]",
    )
}

/// Translates in chunks with a progress bar, mixing in retrieval when given; returns the
/// translations and sentences/second.
pub fn translate_all(
    tr: &Translator,
    sentences: &[String],
    beam: Option<usize>,
    mut retrieval: Option<&mut Retrieval<'_>>,
) -> anyhow::Result<(Vec<String>, f64)> {
    let opts = tr.search_options(beam);
    let pb = progress(sentences.len());
    let start = Instant::now();
    let mut out = Vec::with_capacity(sentences.len());
    // Chunks of several batches keep length-sorting effective while the bar moves.
    for chunk in sentences.chunks(tr.decode.batch_size * 8) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let translated = match retrieval.as_deref_mut() {
            Some(r) => {
                let mut hook = |h: &Tensor, lp: &mut Tensor| r.hook(h, lp);
                tr.translate_with_hook(&refs, &opts, Some(&mut hook))?
            }
            None => tr.translate(&refs, &opts)?,
        };
        out.extend(translated);
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
    let knn = args.knn.open(&args.model.model)?;
    let mut retrieval = knn.as_ref().map(|k| k.retrieval()).transpose()?;
    let (out, rate) = translate_all(&tr, &lines, args.model.beam, retrieval.as_mut())?;
    let mut stdout = std::io::stdout().lock();
    for line in out {
        writeln!(stdout, "{line}")?;
    }
    eprintln!("{} sentences, {rate:.1} sentences/s", lines.len());
    Ok(())
}

/// Runs `ralm mt <command>`.
pub fn run_mt(args: MtArgs) -> anyhow::Result<()> {
    let MtCommand::Eval(args) = args.cmd;
    let pairs = Pairs::read_tsv(&args.tsv, args.limit)?;
    let tr = args.model.load()?;
    let knn = args.knn.open(&args.model.model)?;
    let mut retrieval = knn.as_ref().map(|k| k.retrieval()).transpose()?;
    let (hyps, rate) = translate_all(&tr, &pairs.sources, args.model.beam, retrieval.as_mut())?;
    let bleu = corpus_bleu(&hyps, &pairs.targets);
    let chrf = corpus_chrf(&hyps, &pairs.targets);
    println!("sentences: {}", pairs.len());
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
    if let Some(r) = &retrieval {
        println!("retrieval: {}", crate::knnmt::describe(r));
    }
    Ok(())
}
