//! `ralm knnlm`: build a datastore, evaluate perplexity with a λ×T sweep, export keys.

use crate::plot::{Chart, Series};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use ralm_index::{Metric, SearchParams};
use ralm_knn::knnlm::chunks::PassOptions;
use ralm_knn::knnlm::corpus::{Corpus, Source};
use ralm_knn::knnlm::datastore::{
    for_each_stored_chunk, parse_key, read_manifest, replicate, BuildProgress,
};
use ralm_knn::knnlm::sweep::{best, NeighbourCache, SweepPoint};
use ralm_knn::knnlm::{
    build, BuildOptions, BuildOutcome, Datastore, DatastoreExpect, IndexSpec, KnnLm, KnnParams,
};
use ralm_models::bpe::LmTokenizer;
use ralm_models::llama::{resolve_model_path, LlamaModel, WeightMode};
use std::path::{Path, PathBuf};

/// kNN-LM subcommands.
#[derive(Subcommand)]
pub enum KnnlmCommand {
    /// Run the LM over a corpus and store (key, next token) for every position.
    Build(BuildArgs),
    /// Perplexity of the base LM and the kNN-LM on a text, with a λ × T sweep.
    Eval(EvalArgs),
    /// Write the datastore keys (and held-out query positions) as .npy for index benchmarks.
    ExportKeys(ExportArgs),
    /// Repeat a datastore's entries N times into a new, re-indexed datastore, to measure
    /// search speed at a larger size (its perplexities mean nothing).
    Replicate(ReplicateArgs),
}

/// The model every kNN-LM command loads.
#[derive(Args)]
pub struct ModelArgs {
    /// GGUF file (or a directory holding one) or HF directory of the causal LM.
    #[arg(long)]
    pub model: PathBuf,
    /// Load matrices in f32 instead of keeping GGUF quantized weights (implied when the
    /// datastore used was built in f32).
    #[arg(long)]
    pub f32: bool,
}

impl ModelArgs {
    /// Loads the model and its tokenizer on the CPU.
    pub fn load(&self) -> anyhow::Result<(LlamaModel, LmTokenizer)> {
        self.load_as(self.f32)
    }

    /// Loads the model in the weight mode the datastore in `dir` was built with, so its keys
    /// match (a datastore that records no mode gets the mode the flags ask for).
    pub fn load_for(&self, dir: &Path) -> anyhow::Result<(LlamaModel, LmTokenizer)> {
        let built_f32 = read_manifest(dir)?.weights.as_deref() == Some(WeightMode::F32.name());
        if built_f32 && !self.f32 {
            eprintln!(
                "{}: built with f32 weights, so the model runs in f32",
                dir.display()
            );
        }
        self.load_as(self.f32 || built_f32)
    }

    fn load_as(&self, f32: bool) -> anyhow::Result<(LlamaModel, LmTokenizer)> {
        let model = resolve_model_path(&self.model)?;
        let mode = if f32 || model.is_dir() {
            WeightMode::F32
        } else {
            WeightMode::Quantized
        };
        let lm = LlamaModel::load(&model, mode, &crate::device::current())
            .with_context(|| format!("loading {}", model.display()))?;
        let tok = LmTokenizer::for_model(&model)?;
        Ok((lm, tok))
    }
}

#[derive(Args)]
pub struct BuildArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Datastore directory (an unfinished build there is resumed).
    #[arg(long)]
    out: PathBuf,
    /// Corpus source: text file, .jsonl (with --field) or the Wikipedia summaries .json;
    /// `PATH@FROM:TO` keeps a fraction range. Repeatable.
    #[arg(long, required = true)]
    corpus: Vec<String>,
    /// Text field of JSONL sources.
    #[arg(long)]
    field: Option<String>,
    /// Keep at most this many corpus tokens.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Window length (left context plus scored tokens).
    #[arg(long, default_value_t = 512)]
    context: usize,
    /// Distance between window starts: every token has at least context − stride tokens of context.
    #[arg(long, default_value_t = 256)]
    stride: usize,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Key: final-norm (hidden state after the final norm) or ffn-input (last layer).
    #[arg(long, default_value = "final-norm")]
    key: String,
    /// Metric: l2, ip or cos.
    #[arg(long, default_value = "l2")]
    metric: String,
    /// Index: flat (exact) or ivfpq.
    #[arg(long, default_value = "ivfpq")]
    index: String,
    /// IVF lists.
    #[arg(long, default_value_t = 1024)]
    nlist: usize,
    /// PQ sub-quantisers (must divide the key dimension).
    #[arg(long, default_value_t = 64)]
    m: usize,
    /// Bits per PQ code: 8, or 4 (even m) for the faster byte-table scan.
    #[arg(long, default_value_t = 8)]
    nbits: u32,
    /// Targets per chunk file (the unit of resumption).
    #[arg(long, default_value_t = 8192)]
    chunk_tokens: usize,
    /// Stop after storing this many chunks in this run (to exercise resumption).
    #[arg(long)]
    stop_after_chunks: Option<usize>,
}

/// A progress bar over `total` datastore entries.
pub(crate) fn bar(total: usize) -> ProgressBar {
    crate::progress::bar(
        total as u64,
        "{bar:40} {pos}/{len} tokens {msg} elapsed {elapsed_precise} ETA {eta_precise}",
    )
}

fn sources(specs: &[String], field: Option<&str>) -> anyhow::Result<Vec<Source>> {
    Ok(specs
        .iter()
        .map(|s| Source::parse(s, field))
        .collect::<Result<_, _>>()?)
}

/// The index structure named on the command line (`flat` or `ivfpq`).
pub(crate) fn index_spec(
    kind: &str,
    nlist: usize,
    m: usize,
    nbits: u32,
) -> anyhow::Result<IndexSpec> {
    Ok(match kind {
        "flat" => IndexSpec::Flat,
        "ivfpq" => IndexSpec::IvfPq {
            nlist,
            m,
            nbits,
            seed: 0,
        },
        other => bail!("unknown --index {other:?} (expected flat or ivfpq)"),
    })
}

fn run_build(a: &BuildArgs) -> anyhow::Result<()> {
    let (lm, tok) = a.model.load()?;
    let corpus = Corpus::load(&sources(&a.corpus, a.field.as_deref())?, &tok, a.max_tokens)?;
    eprintln!(
        "corpus: {} documents, {} tokens from {}",
        corpus.documents,
        corpus.ids.len(),
        corpus.sources.join(", ")
    );
    let index = index_spec(&a.index, a.nlist, a.m, a.nbits)?;
    let opts = BuildOptions {
        pass: PassOptions {
            context_len: a.context,
            stride: a.stride,
            batch: a.batch,
            key: parse_key(&a.key)?,
        },
        metric: a.metric.parse::<Metric>()?,
        index,
        chunk_tokens: a.chunk_tokens,
    };
    let pb = bar(corpus.ids.len().saturating_sub(1));
    let start = std::time::Instant::now();
    let chunks_done = std::cell::Cell::new(0usize);
    let mut progress = |p: BuildProgress| {
        pb.set_position(p.tokens_done as u64);
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let rate = p.tokens_this_run as f64 / secs;
        pb.set_message(format!("{rate:.0} tok/s"));
        if rate > 0.0 {
            let left = (p.tokens_total - p.tokens_done) as f64 / rate;
            pb.set_message(format!("{rate:.0} tok/s, ~{left:.0}s left"));
        }
        chunks_done.set(chunks_done.get() + 1);
    };
    let stop = || a.stop_after_chunks.is_some_and(|n| chunks_done.get() >= n);
    let outcome = build(&a.out, &lm, &tok, &corpus, &opts, &mut progress, &stop)?;
    pb.finish();
    report_build(&a.out, &outcome, start);
    Ok(())
}

/// Says how a datastore build ended: its size and time, or how to resume it.
pub(crate) fn report_build(out: &Path, outcome: &BuildOutcome, start: std::time::Instant) {
    match outcome {
        BuildOutcome::Complete(n) => eprintln!(
            "datastore {}: {n} entries, {:.1}s",
            out.display(),
            start.elapsed().as_secs_f64()
        ),
        BuildOutcome::Interrupted { done, total } => eprintln!(
            "stopped after {done} of {total} chunks; run the same command again to resume"
        ),
    }
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Datastore directory.
    #[arg(long)]
    datastore: PathBuf,
    /// Evaluation text (`PATH@FROM:TO` for a fraction of its lines).
    #[arg(long)]
    text: String,
    /// Keep at most this many evaluation tokens.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Neighbours per position.
    #[arg(long, default_value_t = 32)]
    k: usize,
    /// λ values of the sweep.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,0.05,0.1,0.15,0.2,0.25,0.3,0.4,0.5,0.7,1"
    )]
    lambdas: Vec<f32>,
    /// Temperatures of the sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,3,10,30,100")]
    temperatures: Vec<f32>,
    /// Leading fraction of positions used to tune λ and T; the rest is the test part.
    #[arg(long, default_value_t = 0.3)]
    tune_fraction: f64,
    /// IVF lists probed per query.
    #[arg(long, default_value_t = 32)]
    nprobe: usize,
    /// Re-rank a shortlist of this many candidates with the full f16 keys.
    #[arg(long)]
    rerank: Option<usize>,
    /// Exact search over all stored keys instead of the datastore's IVF-PQ index.
    #[arg(long)]
    exact: bool,
    /// Window length (default: the datastore's).
    #[arg(long)]
    context: Option<usize>,
    /// Window stride (default: the datastore's).
    #[arg(long)]
    stride: Option<usize>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Targets per pipelined chunk (one batched search each).
    #[arg(long, default_value_t = 1024)]
    chunk_tokens: usize,
    /// Also time the base LM alone over the same text and report the speed fraction.
    #[arg(long)]
    speed: bool,
    /// Datastore fractions (nested random subsets) to evaluate at the tuned setting, e.g. 0.01,0.1,0.3,1.
    #[arg(long, value_delimiter = ',')]
    subsets: Vec<f64>,
    /// SVG plot of perplexity against λ (one line per T).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// SVG plot of test perplexity against datastore size (with --subsets).
    #[arg(long)]
    size_plot: Option<PathBuf>,
    /// JSON report.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Test perplexities at one datastore size.
#[derive(serde::Serialize)]
struct SizePoint {
    fraction: f64,
    entries: usize,
    tuned: SweepPoint,
    test_perplexity: f64,
}

fn tuned_on(cache: &NeighbourCache, cut: usize, a: &EvalArgs) -> anyhow::Result<(SweepPoint, f64)> {
    let n = cache.len();
    let tune = cache.sweep(0..cut, &a.lambdas, &a.temperatures);
    let t = best(&tune).context("empty sweep")?;
    Ok((t, cache.perplexity(cut..n, t.lambda, t.temperature)))
}

fn run_eval(a: &EvalArgs) -> anyhow::Result<()> {
    let (lm, tok) = a.model.load_for(&a.datastore)?;
    if !(0.0 < a.tune_fraction && a.tune_fraction < 1.0) {
        bail!("--tune-fraction must lie strictly between 0 and 1");
    }
    let expect = DatastoreExpect::of(&lm, &tok)?;
    let mut ds = Datastore::open(&a.datastore, &expect)?;
    if let Some(n) = ds.manifest().replicas {
        eprintln!(
            "{}: every entry is stored {n} times (made by `knnlm replicate`): its speed is that \
             of a datastore {n}× larger, its perplexities are not",
            a.datastore.display()
        );
    }
    if a.exact {
        ds.use_exact_search()?;
    }
    let source = Source::parse(&a.text, None)?;
    let corpus = Corpus::load(std::slice::from_ref(&source), &tok, a.max_tokens)?;
    let ids = corpus.ids;
    eprintln!(
        "eval text: {} tokens; datastore: {} entries",
        ids.len(),
        ds.len()
    );
    let knn = KnnLm {
        lm,
        tokenizer: tok,
        datastore: ds,
        params: KnnParams {
            k: a.k,
            search: SearchParams {
                nprobe: a.nprobe,
                rerank: a.rerank,
            },
            ..KnnParams::default()
        },
    };
    let mut opts = knn.default_scoring(a.batch, a.chunk_tokens);
    opts.context_len = a.context.unwrap_or(opts.context_len);
    opts.stride = a.stride.unwrap_or(opts.stride);

    let pb = bar(ids.len().saturating_sub(1));
    let keep_keys = !a.subsets.is_empty();
    let scored = knn.score_ids(&ids, &opts, keep_keys, &mut |d, _| {
        pb.set_position(d as u64)
    })?;
    pb.finish_and_clear();
    let n = scored.cache.len();
    let knn_tps = n as f64 / scored.seconds;
    eprintln!(
        "kNN-LM pass: {n} tokens in {:.1}s ({knn_tps:.1} tok/s)",
        scored.seconds
    );
    let base_speed = if a.speed {
        let pb = bar(n);
        let (secs, _) = knn.score_base(&ids, &opts, &mut |d, _| pb.set_position(d as u64))?;
        pb.finish_and_clear();
        let tps = n as f64 / secs;
        eprintln!("base LM pass: {n} tokens in {secs:.1}s ({tps:.1} tok/s); kNN-LM speed = {:.1}% of base", 100.0 * knn_tps / tps);
        Some(tps)
    } else {
        None
    };

    let cut = ((n as f64) * a.tune_fraction).round() as usize;
    if cut == 0 || cut >= n {
        bail!(
            "{n} positions leave no tuning or test part with --tune-fraction {}",
            a.tune_fraction
        );
    }
    let cache = &scored.cache;
    let tune = cache.sweep(0..cut, &a.lambdas, &a.temperatures);
    let test = cache.sweep(cut..n, &a.lambdas, &a.temperatures);
    println!(
        "{:>8} {:>8} {:>12} {:>12}",
        "lambda", "T", "tune ppl", "test ppl"
    );
    for (t, s) in tune.iter().zip(&test) {
        println!(
            "{:>8} {:>8} {:>12.3} {:>12.3}",
            t.lambda, t.temperature, t.perplexity, s.perplexity
        );
    }
    let (tuned, test_ppl) = tuned_on(cache, cut, a)?;
    let base_test = cache.perplexity(cut..n, 0.0, 1.0);
    println!(
        "test part ({} tokens): base LM perplexity {base_test:.3}; kNN-LM {test_ppl:.3} at λ={} T={} (tuned on the first {cut} tokens)",
        n - cut,
        tuned.lambda,
        tuned.temperature
    );
    if let Some(path) = &a.plot {
        sweep_chart(&tune, &a.temperatures, "tuning part").save(path)?;
        eprintln!("wrote {}", path.display());
    }

    let mut sizes = Vec::new();
    if !a.subsets.is_empty() {
        let mut fr = a.subsets.clone();
        fr.sort_by(|x, y| y.total_cmp(x));
        let KnnLm {
            mut datastore,
            params,
            ..
        } = knn;
        for f in fr {
            datastore.restrict(f, 1);
            let nb = datastore.search(&scored.keys, params.k, &params.search)?;
            let c = cache.with_neighbours(nb.k, nb.scores, nb.tokens);
            let (t, ppl) = tuned_on(&c, cut, a)?;
            println!(
                "datastore {:>6.2}% ({} entries): test perplexity {ppl:.3} at λ={} T={}",
                100.0 * f,
                datastore.len(),
                t.lambda,
                t.temperature
            );
            sizes.push(SizePoint {
                fraction: f,
                entries: datastore.len(),
                tuned: t,
                test_perplexity: ppl,
            });
        }
        if let Some(path) = &a.size_plot {
            size_chart(&sizes, base_test).save(path)?;
            eprintln!("wrote {}", path.display());
        }
    }
    if let Some(path) = &a.json {
        let report = serde_json::json!({
            "eval_tokens": n, "tune_tokens": cut, "k": a.k,
            "base_test_perplexity": base_test,
            "tuned": tuned, "knn_test_perplexity": test_ppl,
            "knn_tokens_per_s": knn_tps, "base_tokens_per_s": base_speed,
            "sweep_tune": tune, "sweep_test": test, "sizes": sizes,
        });
        crate::io::write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    Ok(())
}

fn sweep_chart(points: &[SweepPoint], temperatures: &[f32], part: &str) -> Chart {
    Chart {
        title: format!("kNN-LM perplexity against λ ({part})"),
        x_label: "λ".into(),
        y_label: "perplexity".into(),
        log_x: false,
        series: temperatures
            .iter()
            .map(|&t| Series {
                name: format!("T = {t}"),
                points: points
                    .iter()
                    .filter(|p| p.temperature == t)
                    .map(|p| (p.lambda as f64, p.perplexity))
                    .collect(),
            })
            .collect(),
    }
}

fn size_chart(sizes: &[SizePoint], base: f64) -> Chart {
    let xs: Vec<f64> = sizes.iter().map(|s| s.entries as f64).collect();
    Chart {
        title: "kNN-LM test perplexity against datastore size".into(),
        x_label: "datastore entries".into(),
        y_label: "perplexity".into(),
        log_x: true,
        series: vec![
            Series {
                name: "kNN-LM (tuned)".into(),
                points: sizes
                    .iter()
                    .map(|s| (s.entries as f64, s.test_perplexity))
                    .collect(),
            },
            Series {
                name: "base LM".into(),
                points: xs.iter().map(|&x| (x, base)).collect(),
            },
        ],
    }
}

#[derive(Args)]
pub struct ExportArgs {
    /// Datastore directory.
    dir: PathBuf,
    /// Output .npy of the datastore keys (f16), without the held-out query rows.
    #[arg(long)]
    out: PathBuf,
    /// Number of random stored positions held out as queries.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Output .npy of the queries (default: OUT with extension .queries.npy).
    #[arg(long)]
    queries_out: Option<PathBuf>,
    /// Seed of the held-out choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn run_export(a: &ExportArgs) -> anyhow::Result<()> {
    let m = read_manifest(&a.dir)?;
    let total = m.planned_entries();
    if a.queries >= total {
        bail!(
            "--queries {} must be below the {total} stored positions",
            a.queries
        );
    }
    let held = ralm_index::rng::Rng::new(a.seed).sample(total, a.queries);
    let mut is_query = vec![false; total];
    held.iter().for_each(|&i| is_query[i] = true);
    let (mut keys, mut queries) = (Vec::new(), Vec::new());
    let mut row = 0;
    for_each_stored_chunk(&a.dir, &m, &mut |c| {
        for key in c.keys.chunks_exact(m.dim) {
            if is_query[row] {
                &mut queries
            } else {
                &mut keys
            }
            .extend_from_slice(key);
            row += 1;
        }
        Ok(())
    })?;
    let qpath = a
        .queries_out
        .clone()
        .unwrap_or_else(|| a.out.with_extension("queries.npy"));
    ralm_index::npy::write_f16(&a.out, total - a.queries, m.dim, &keys)?;
    ralm_index::npy::write_f32(&qpath, a.queries, m.dim, &queries)?;
    eprintln!(
        "wrote {} ({} keys) and {} ({} queries), dim {}, metric {}",
        a.out.display(),
        total - a.queries,
        qpath.display(),
        a.queries,
        m.dim,
        m.metric
    );
    Ok(())
}

#[derive(Args)]
pub struct ReplicateArgs {
    /// Complete datastore directory to repeat.
    dir: PathBuf,
    /// New datastore directory (an unfinished one there is resumed).
    #[arg(long)]
    out: PathBuf,
    /// How many copies of every entry the new datastore holds.
    #[arg(long)]
    times: usize,
    /// Index of the new datastore: flat (exact) or ivfpq.
    #[arg(long, default_value = "ivfpq")]
    index: String,
    /// IVF lists.
    #[arg(long, default_value_t = 4096)]
    nlist: usize,
    /// PQ sub-quantisers (must divide the key dimension).
    #[arg(long, default_value_t = 64)]
    m: usize,
    /// Bits per PQ code: 8, or 4 (even m) for the faster byte-table scan.
    #[arg(long, default_value_t = 8)]
    nbits: u32,
}

fn run_replicate(a: &ReplicateArgs) -> anyhow::Result<()> {
    let index = index_spec(&a.index, a.nlist, a.m, a.nbits)?;
    let entries = read_manifest(&a.dir)?.planned_entries();
    let pb = bar(entries * a.times);
    let start = std::time::Instant::now();
    let mut progress = |p: BuildProgress| {
        pb.set_position(p.tokens_done as u64);
        if p.tokens_done == p.tokens_total {
            pb.set_message("indexing");
        }
    };
    let outcome = replicate(&a.dir, &a.out, a.times, index, &mut progress, &|| false)?;
    pb.finish();
    report_build(&a.out, &outcome, start);
    Ok(())
}

/// Runs a kNN-LM subcommand.
pub fn run(cmd: &KnnlmCommand) -> anyhow::Result<()> {
    match cmd {
        KnnlmCommand::Build(a) => run_build(a),
        KnnlmCommand::Eval(a) => run_eval(a),
        KnnlmCommand::ExportKeys(a) => run_export(a),
        KnnlmCommand::Replicate(a) => run_replicate(a),
    }
}

/// Opens a datastore for a loaded model and tokenizer.
pub fn open_datastore(dir: &Path, lm: &LlamaModel, tok: &LmTokenizer) -> anyhow::Result<Datastore> {
    Ok(Datastore::open(dir, &DatastoreExpect::of(lm, tok)?)?)
}
