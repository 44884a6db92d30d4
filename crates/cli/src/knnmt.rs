//! `ralm knnmt`: build a kNN-MT datastore, tune and evaluate it (base vs kNN-MT vs adaptive
//! gate, BLEU against datastore size), and measure how much general-domain output changes.

use crate::knnlm::{bar, index_spec};
use crate::plot::{Chart, Series};
use crate::translate::{translate_all, ModelArgs};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ralm_index::{Metric, SearchParams};
use ralm_knn::datastore::build::BuildProgress;
use ralm_knn::datastore::IndexSpec;
use ralm_knn::knnmt::mixer::{read_tuned, write_tuned, TUNED_FILE};
use ralm_knn::knnmt::tune::ForcedNeighbours;
use ralm_knn::knnmt::{
    build, Gate, GateConfig, GateExamples, KnnMtParams, MtBuildOptions, MtDatastore, MtExpect,
    MtMixer, Pairs, ParamOverrides, Retrieval, TokenPairs, TrainOptions,
};
use ralm_knn::mt_metrics::{corpus_bleu, corpus_chrf};
use ralm_models::marian::Translator;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// kNN-MT subcommands.
#[derive(Subcommand)]
pub enum KnnmtCommand {
    /// Teacher-force a parallel corpus and store (decoder state, target token) per position.
    Build(BuildArgs),
    /// Tune λ/k/T and the adaptive gate on the first half of a dev TSV, report the second half.
    Eval(EvalArgs),
    /// Translate general-domain text with and without a datastore (plain λ and adaptive gate)
    /// and report how much the output changes.
    Compare(CompareArgs),
    /// BLEU against decoding speed: the test half of a dev TSV decoded plainly and with each
    /// datastore at its tuned setting, IVF-PQ ones at every --nprobes value.
    Speed(SpeedArgs),
}

/// Retrieval options of `ralm translate` and `ralm mt eval`.
#[derive(Args, Debug)]
pub struct KnnArgs {
    /// kNN-MT datastore directory (from `ralm knnmt build`); without it, plain decoding.
    #[arg(long)]
    pub datastore: Option<PathBuf>,
    /// Weight of p_kNN (default: the datastore's tuned.json, else 0.5).
    #[arg(long)]
    pub lambda: Option<f32>,
    /// Neighbours per step (default: tuned.json, else 8).
    #[arg(long)]
    pub k: Option<usize>,
    /// Temperature over neighbour scores (default: tuned.json, else 10).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Pick λ per step with the gate trained by `ralm knnmt eval` (k and T as it was trained).
    #[arg(long)]
    pub adaptive: bool,
    #[command(flatten)]
    pub search: SearchArgs,
}

fn open_datastore(dir: &Path, model_dir: &Path) -> anyhow::Result<MtDatastore> {
    let expect = MtExpect::of_model_dir(model_dir)?;
    let ds = MtDatastore::open(dir, &expect)
        .with_context(|| format!("opening datastore {}", dir.display()))?;
    eprintln!("datastore {}: {} entries", dir.display(), ds.len());
    Ok(ds)
}

/// Approximate-search knobs of IVF-PQ datastores.
#[derive(Args, Debug, Clone)]
pub struct SearchArgs {
    /// Inverted lists probed per query.
    #[arg(long, default_value_t = 16)]
    pub nprobe: usize,
    /// Re-score a shortlist of this many PQ candidates with the full f16 keys.
    #[arg(long)]
    pub rerank: Option<usize>,
}

impl SearchArgs {
    fn params(&self) -> SearchParams {
        SearchParams {
            nprobe: self.nprobe,
            rerank: self.rerank,
        }
    }
}

impl KnnArgs {
    /// Opens the datastore (and gate) when one is named.
    pub fn open(&self, model_dir: &Path) -> anyhow::Result<Option<MtMixer>> {
        let overrides = ParamOverrides {
            k: self.k,
            lambda: self.lambda,
            temperature: self.temperature,
        };
        let Some(dir) = &self.datastore else {
            if self.adaptive || overrides.any() {
                bail!("--lambda, --k, --temperature and --adaptive need --datastore");
            }
            return Ok(None);
        };
        let mixer = MtMixer::open(
            dir,
            model_dir,
            self.adaptive,
            overrides,
            self.search.params(),
        )
        .with_context(|| format!("opening datastore {}", dir.display()))?;
        eprintln!(
            "datastore {}: {} entries",
            dir.display(),
            mixer.datastore().len()
        );
        Ok(Some(mixer))
    }
}

/// One line about a finished retrieval run: searches, time, mean λ.
pub fn describe(r: &Retrieval<'_>) -> String {
    format!(
        "{} steps, {} queries, {:.1}s search+mixing, mean λ {:.3}",
        r.steps,
        r.queries,
        r.seconds,
        r.mean_lambda()
    )
}

#[derive(Args)]
pub struct BuildArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Parallel corpus: `catalog<TAB>source<TAB>target` TSV with a header.
    #[arg(long)]
    pairs: PathBuf,
    /// Datastore directory (an unfinished build there is resumed).
    #[arg(long)]
    out: PathBuf,
    /// Only the first N pairs (prefixes give nested datastores for the size plot).
    #[arg(long)]
    limit: Option<usize>,
    /// Metric: l2, ip or cos.
    #[arg(long, default_value = "l2")]
    metric: String,
    /// Index: flat (exact) or ivfpq.
    #[arg(long, default_value = "flat")]
    index: String,
    /// IVF lists (ivfpq).
    #[arg(long, default_value_t = 256)]
    nlist: usize,
    /// PQ sub-quantisers (ivfpq; must divide the key dimension).
    #[arg(long, default_value_t = 32)]
    m: usize,
    /// Bits per PQ code: 8, or 4 (ivfpq; even m) for the faster byte-table scan.
    #[arg(long, default_value_t = 8)]
    nbits: u32,
    /// Pairs per chunk file (the unit of resumption).
    #[arg(long, default_value_t = 1000)]
    pairs_per_chunk: usize,
    /// Stop after storing this many chunks in this run (to exercise resumption).
    #[arg(long)]
    stop_after_chunks: Option<usize>,
}

fn run_build(a: &BuildArgs) -> anyhow::Result<()> {
    let tr = a.model.load()?;
    let expect = MtExpect::of_model_dir(&a.model.model)?;
    let pairs = Pairs::read_tsv(&a.pairs, a.limit)?;
    let tokens = TokenPairs::encode(&tr, &pairs.sources, &pairs.targets)?;
    let source = a.pairs.file_name().map_or_else(
        || a.pairs.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    eprintln!(
        "{} pairs, {} target tokens from {source}",
        tokens.targets.len(),
        tokens.target_tokens()
    );
    let opts = MtBuildOptions {
        metric: a.metric.parse::<Metric>()?,
        index: index_spec(&a.index, a.nlist, a.m, a.nbits)?,
        pairs_per_chunk: a.pairs_per_chunk,
        batch: a.model.batch,
    };
    let pb = bar(tokens.target_tokens());
    let start = std::time::Instant::now();
    let chunks_done = std::cell::Cell::new(0usize);
    let mut progress = |p: BuildProgress| {
        pb.set_position(p.tokens_done as u64);
        let rate = p.tokens_this_run as f64 / start.elapsed().as_secs_f64().max(1e-9);
        pb.set_message(format!("{rate:.0} tok/s"));
        chunks_done.set(chunks_done.get() + 1);
    };
    let stop = || a.stop_after_chunks.is_some_and(|n| chunks_done.get() >= n);
    let outcome = build(
        &a.out,
        &tr.model,
        &expect,
        &tokens,
        &source,
        &opts,
        &mut progress,
        &stop,
    )?;
    pb.finish();
    crate::knnlm::report_build(&a.out, &outcome, start);
    Ok(())
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Datastore directory (tuned.json and the gate are written there).
    #[arg(long)]
    datastore: PathBuf,
    /// Dev TSV: the first half tunes, the second half is reported.
    #[arg(long)]
    tsv: PathBuf,
    /// Only the first N pairs of the TSV.
    #[arg(long)]
    limit: Option<usize>,
    /// k values of the teacher-forced perplexity sweep.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32")]
    ks: Vec<usize>,
    /// λ values of the perplexity sweep.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8"
    )]
    lambdas: Vec<f32>,
    /// Temperatures of the perplexity sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,3,10,30,100,300")]
    temperatures: Vec<f32>,
    /// λ values decoded on the tuning half (BLEU decides among them, at the best k and T).
    #[arg(long, value_delimiter = ',', default_value = "0.2,0.35,0.5,0.65,0.8")]
    bleu_lambdas: Vec<f32>,
    /// Neighbours whose distances and value counts feed the gate.
    #[arg(long, default_value_t = 8)]
    gate_k: usize,
    /// Hidden units of the gate.
    #[arg(long, default_value_t = 16)]
    gate_hidden: usize,
    /// Training steps of the gate.
    #[arg(long, default_value_t = 400)]
    gate_steps: usize,
    /// Smaller (nested) datastores evaluated at the tuned setting for the size plot.
    #[arg(long)]
    size_datastore: Vec<PathBuf>,
    /// SVG plot of test BLEU against datastore size.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// JSON report of every number.
    #[arg(long)]
    report: Option<PathBuf>,
    #[command(flatten)]
    search: SearchArgs,
}

/// Scores of one decoding run.
#[derive(Debug, Clone, Serialize)]
struct Run {
    name: String,
    bleu: f64,
    chrf: f64,
    sentences_per_s: f64,
    mean_lambda: Option<f64>,
    search_seconds: Option<f64>,
}

/// Decodes `pairs` (plain when `retrieval` is `None`) and scores against the references.
fn scored_run(
    name: &str,
    tr: &Translator,
    beam: Option<usize>,
    pairs: &Pairs,
    mut retrieval: Option<Retrieval<'_>>,
) -> anyhow::Result<(Run, Vec<String>)> {
    let (hyps, rate) = translate_all(tr, &pairs.sources, beam, retrieval.as_mut())?;
    let run = Run {
        name: name.into(),
        bleu: corpus_bleu(&hyps, &pairs.targets).score,
        chrf: corpus_chrf(&hyps, &pairs.targets),
        sentences_per_s: rate,
        mean_lambda: retrieval.as_ref().map(Retrieval::mean_lambda),
        search_seconds: retrieval.as_ref().map(|r| r.seconds),
    };
    eprintln!(
        "{name}: BLEU {:.2}, chrF {:.2}, {rate:.1} sentences/s{}",
        run.bleu,
        run.chrf,
        retrieval
            .as_ref()
            .map_or_else(String::new, |r| format!(" ({})", describe(r)))
    );
    Ok((run, hyps))
}

#[derive(Serialize)]
struct EvalReport {
    datastore_entries: usize,
    tune_pairs: usize,
    test_pairs: usize,
    perplexity_base: f64,
    perplexity_best: ralm_knn::knnmt::tune::GridPoint,
    tune_bleu: Vec<Run>,
    tuned: KnnMtParams,
    gate: GateConfig,
    gate_parameters: usize,
    gate_loss: [f64; 2],
    fixed_loss: f64,
    test: Vec<Run>,
    knn_speed_fraction: f64,
    adaptive_speed_fraction: f64,
    sizes: Vec<(usize, f64)>,
}

fn run_eval(a: &EvalArgs) -> anyhow::Result<()> {
    let tr = a.model.load()?;
    let beam = a.model.beam;
    let ds = open_datastore(&a.datastore, &a.model.model)?;
    let search = a.search.params();
    let all = Pairs::read_tsv(&a.tsv, a.limit)?;
    let (tune, test) = all.halves();
    eprintln!("tuning on {} pairs, testing on {}", tune.len(), test.len());

    // 1. Teacher-forced neighbours of the tuning half, searched once: k × λ × T perplexity grid.
    let k_max = a.ks.iter().copied().chain([a.gate_k]).max().unwrap_or(8);
    let tokens = TokenPairs::encode(&tr, &tune.sources, &tune.targets)?;
    let t0 = std::time::Instant::now();
    let forced = ForcedNeighbours::compute(&tr.model, &ds, &tokens, k_max, &search, a.model.batch)?;
    eprintln!(
        "teacher-forced {} positions, searched k={k_max} in {:.1}s",
        forced.targets.len(),
        t0.elapsed().as_secs_f64()
    );
    let grid = forced.sweep(&a.ks, &a.lambdas, &a.temperatures)?;
    let base_ppl = forced
        .cache(1)?
        .perplexity(0..forced.targets.len(), 0.0, 1.0);
    let best = *grid
        .iter()
        .min_by(|x, y| x.point.perplexity.total_cmp(&y.point.perplexity))
        .context("empty sweep grid")?;
    eprintln!(
        "reference perplexity: base {base_ppl:.3}, best {:.3} at k={} λ={} T={}",
        best.point.perplexity, best.k, best.point.lambda, best.point.temperature
    );

    // 2. BLEU on the tuning half over λ at the best k and T.
    let mut tune_runs = vec![scored_run("tune base", &tr, beam, &tune, None)?.0];
    let mut tuned = KnnMtParams {
        k: best.k,
        lambda: best.point.lambda,
        temperature: best.point.temperature,
    };
    let mut best_bleu = f64::NEG_INFINITY;
    for &lambda in &a.bleu_lambdas {
        let p = KnnMtParams { lambda, ..tuned };
        let r = Retrieval::new(&ds, p, search.clone(), None)?;
        let (run, _) = scored_run(&format!("tune λ={lambda}"), &tr, beam, &tune, Some(r))?;
        if run.bleu > best_bleu {
            best_bleu = run.bleu;
            tuned.lambda = lambda;
        }
        tune_runs.push(run);
    }
    write_tuned(&a.datastore, &tuned)?;
    eprintln!("tuned: {tuned:?} (saved to {TUNED_FILE})");

    // 3. The adaptive gate, trained on the cached neighbours of the tuning half.
    let (examples, scale) = GateExamples::new(
        &forced.neighbours,
        &forced.targets,
        &forced.log_probs,
        a.gate_k,
        tuned,
    )?;
    let config = GateConfig {
        feature_k: a.gate_k,
        hidden: a.gate_hidden,
        distance_scale: scale,
        knn: tuned,
    };
    let opts = TrainOptions {
        steps: a.gate_steps,
        ..TrainOptions::default()
    };
    let (gate, loss) = Gate::train(&examples, config, opts)?;
    let fixed_loss = examples.fixed_loss(tuned.lambda);
    gate.save(&a.datastore)?;
    eprintln!(
        "gate ({} parameters): loss {:.4} -> {:.4} (fixed λ={}: {fixed_loss:.4}; λ=0: {:.4})",
        config.parameters(),
        loss[0],
        loss[1],
        tuned.lambda,
        examples.fixed_loss(0.0)
    );

    // 4. The test half: base, kNN-MT, adaptive.
    let (base, _) = scored_run("test base", &tr, beam, &test, None)?;
    let r = Retrieval::new(&ds, tuned, search.clone(), None)?;
    let (knn, _) = scored_run("test kNN-MT", &tr, beam, &test, Some(r))?;
    let r = Retrieval::new(&ds, tuned, search.clone(), Some(&gate))?;
    let (adaptive, _) = scored_run("test adaptive", &tr, beam, &test, Some(r))?;
    let knn_speed_fraction = knn.sentences_per_s / base.sentences_per_s;
    let adaptive_speed_fraction = adaptive.sentences_per_s / base.sentences_per_s;
    eprintln!(
        "speed as a fraction of base: kNN-MT {knn_speed_fraction:.2}, adaptive {adaptive_speed_fraction:.2}"
    );

    // 5. BLEU against datastore size (smaller nested datastores at the tuned setting).
    let mut sizes = vec![(0usize, base.bleu), (ds.len(), knn.bleu)];
    for dir in &a.size_datastore {
        let small = open_datastore(dir, &a.model.model)?;
        let r = Retrieval::new(&small, tuned, search.clone(), None)?;
        let (run, _) = scored_run(
            &format!("test kNN-MT {} entries", small.len()),
            &tr,
            beam,
            &test,
            Some(r),
        )?;
        sizes.push((small.len(), run.bleu));
    }
    sizes.sort_by_key(|s| s.0);
    if let Some(path) = &a.plot {
        size_chart(&sizes, base.bleu).save(path)?;
        eprintln!("plot: {}", path.display());
    }
    let report = EvalReport {
        datastore_entries: ds.len(),
        tune_pairs: tune.len(),
        test_pairs: test.len(),
        perplexity_base: base_ppl,
        perplexity_best: best,
        tune_bleu: tune_runs,
        tuned,
        gate: config,
        gate_parameters: config.parameters(),
        gate_loss: loss,
        fixed_loss,
        test: vec![base, knn, adaptive],
        knn_speed_fraction,
        adaptive_speed_fraction,
        sizes,
    };
    print_report(&report, a.report.as_deref())
}

/// Test BLEU against datastore entries (log x), with the base model as a flat line.
fn size_chart(sizes: &[(usize, f64)], base: f64) -> Chart {
    let with_store: Vec<(f64, f64)> = sizes
        .iter()
        .filter(|s| s.0 > 0)
        .map(|&(n, b)| (n as f64, b))
        .collect();
    let span = (
        with_store.first().map_or(1.0, |p| p.0),
        with_store.last().map_or(1.0, |p| p.0),
    );
    Chart {
        title: "kNN-MT: test BLEU against datastore size".into(),
        x_label: "datastore entries (target tokens)".into(),
        y_label: "BLEU".into(),
        log_x: true,
        series: vec![
            Series {
                name: "kNN-MT".into(),
                points: with_store,
            },
            Series {
                name: "base".into(),
                points: vec![(span.0, base), (span.1, base)],
            },
        ],
    }
}

#[derive(Args)]
pub struct CompareArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Datastore directory with tuned.json and the gate (from `ralm knnmt eval`).
    #[arg(long)]
    datastore: PathBuf,
    /// Sentences, one per line.
    #[arg(long)]
    input: PathBuf,
    /// Only the first N sentences.
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    search: SearchArgs,
    /// JSON report.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Serialize)]
struct Change {
    name: String,
    changed: usize,
    chrf_to_base: f64,
    bleu_to_base: f64,
    mean_lambda: f64,
    sentences_per_s: f64,
}

fn run_compare(a: &CompareArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.input)
        .with_context(|| format!("reading {}", a.input.display()))?;
    let lines: Vec<String> = text
        .lines()
        .take(a.limit.unwrap_or(usize::MAX))
        .map(str::to_string)
        .collect();
    let tr = a.model.load()?;
    let ds = open_datastore(&a.datastore, &a.model.model)?;
    let tuned: KnnMtParams = read_tuned(&a.datastore)?.with_context(|| {
        format!(
            "{} missing: run `ralm knnmt eval` first",
            a.datastore.join(TUNED_FILE).display()
        )
    })?;
    let gate = Gate::load(&a.datastore)?;
    let search = a.search.params();
    let (base, base_rate) = translate_all(&tr, &lines, a.model.beam, None)?;
    eprintln!("base: {base_rate:.1} sentences/s");
    let mut changes = Vec::new();
    for (name, g) in [("kNN-MT", None), ("adaptive", Some(&gate))] {
        let mut r = Retrieval::new(&ds, tuned, search.clone(), g)?;
        let (out, rate) = translate_all(&tr, &lines, a.model.beam, Some(&mut r))?;
        let change = Change {
            name: name.into(),
            changed: out.iter().zip(&base).filter(|(x, y)| x != y).count(),
            chrf_to_base: corpus_chrf(&out, &base),
            bleu_to_base: corpus_bleu(&out, &base).score,
            mean_lambda: r.mean_lambda(),
            sentences_per_s: rate,
        };
        eprintln!(
            "{name}: {} of {} outputs change, chrF to base {:.2}, mean λ {:.3}",
            change.changed,
            lines.len(),
            change.chrf_to_base,
            change.mean_lambda
        );
        changes.push(change);
    }
    print_report(
        &serde_json::json!({
            "sentences": lines.len(),
            "tuned": tuned,
            "base_sentences_per_s": base_rate,
            "runs": changes,
        }),
        a.report.as_deref(),
    )
}

#[derive(Args)]
pub struct SpeedArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Datastore directory with tuned.json (from `ralm knnmt eval`); repeatable, one series each.
    #[arg(long, required = true)]
    datastore: Vec<PathBuf>,
    /// Dev TSV: its second half is decoded (the half `ralm knnmt eval` reports).
    #[arg(long)]
    tsv: PathBuf,
    /// Only the first N pairs of the TSV.
    #[arg(long)]
    limit: Option<usize>,
    /// Inverted lists probed, one decoding run each (IVF-PQ datastores).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
    nprobes: Vec<usize>,
    /// Re-score this many PQ candidates with the full f16 keys (IVF-PQ datastores).
    #[arg(long)]
    rerank: Option<usize>,
    /// SVG plot of BLEU against sentences/s.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// JSON report of every run.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// One datastore's runs in `ralm knnmt speed`.
#[derive(Serialize)]
struct SpeedSeries {
    datastore: PathBuf,
    entries: usize,
    tuned: KnnMtParams,
    /// (nprobe, run); nprobe is `None` for an exact index.
    runs: Vec<(Option<usize>, Run)>,
}

fn run_speed(a: &SpeedArgs) -> anyhow::Result<()> {
    let tr = a.model.load()?;
    let (_, test) = Pairs::read_tsv(&a.tsv, a.limit)?.halves();
    eprintln!("decoding the {} test pairs", test.len());
    let (base, _) = scored_run("base", &tr, a.model.beam, &test, None)?;
    let mut series = Vec::new();
    for dir in &a.datastore {
        let ds = open_datastore(dir, &a.model.model)?;
        let tuned = read_tuned(dir)?.with_context(|| {
            format!(
                "{} missing: run `ralm knnmt eval` first",
                dir.join(TUNED_FILE).display()
            )
        })?;
        let probes: Vec<Option<usize>> = match ds.manifest().index {
            IndexSpec::Flat => vec![None],
            IndexSpec::IvfPq { .. } => a.nprobes.iter().map(|&n| Some(n)).collect(),
        };
        let mut runs = Vec::new();
        for nprobe in probes {
            let search = SearchParams {
                nprobe: nprobe.unwrap_or(1),
                rerank: a.rerank,
            };
            let name = match nprobe {
                Some(n) => format!("{} nprobe {n}", dir.display()),
                None => format!("{} exact", dir.display()),
            };
            let r = Retrieval::new(&ds, tuned, search, None)?;
            runs.push((
                nprobe,
                scored_run(&name, &tr, a.model.beam, &test, Some(r))?.0,
            ));
        }
        series.push(SpeedSeries {
            datastore: dir.clone(),
            entries: ds.len(),
            tuned,
            runs,
        });
    }
    if let Some(path) = &a.plot {
        speed_chart(&base, &series).save(path)?;
        eprintln!("plot: {}", path.display());
    }
    print_report(
        &serde_json::json!({
            "test_pairs": test.len(),
            "rerank": a.rerank,
            "base": base,
            "datastores": series,
        }),
        a.report.as_deref(),
    )
}

/// Test BLEU against sentences/s: one line per datastore (its nprobe sweep), base as a point.
fn speed_chart(base: &Run, series: &[SpeedSeries]) -> Chart {
    let mut lines: Vec<Series> = series
        .iter()
        .map(|s| {
            let name = s
                .datastore
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            let probes: Vec<String> = s
                .runs
                .iter()
                .filter_map(|(n, _)| n.map(|n| n.to_string()))
                .collect();
            Series {
                name: if probes.is_empty() {
                    format!("kNN-MT {name} (exact)")
                } else {
                    format!("kNN-MT {name} (nprobe {})", probes.join(","))
                },
                points: s
                    .runs
                    .iter()
                    .map(|(_, r)| (r.sentences_per_s, r.bleu))
                    .collect(),
            }
        })
        .collect();
    lines.push(Series {
        name: "base (no retrieval)".into(),
        points: vec![(base.sentences_per_s, base.bleu)],
    });
    Chart {
        title: "kNN-MT: test BLEU against decoding speed".into(),
        x_label: "sentences per second".into(),
        y_label: "BLEU".into(),
        log_x: false,
        series: lines,
    }
}

/// Prints `report` as pretty JSON and also writes it to `path` when given.
fn print_report(report: &impl Serialize, path: Option<&Path>) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    println!("{json}");
    if let Some(path) = path {
        crate::io::write_atomic(path, json.as_bytes())?;
    }
    Ok(())
}

/// Runs a `ralm knnmt` subcommand.
pub fn run(cmd: &KnnmtCommand) -> anyhow::Result<()> {
    match cmd {
        KnnmtCommand::Build(a) => run_build(a),
        KnnmtCommand::Eval(a) => run_eval(a),
        KnnmtCommand::Compare(a) => run_compare(a),
        KnnmtCommand::Speed(a) => run_speed(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bleu: f64, sentences_per_s: f64) -> Run {
        Run {
            name: String::new(),
            bleu,
            chrf: 0.0,
            sentences_per_s,
            mean_lambda: None,
            search_seconds: None,
        }
    }

    #[test]
    fn speed_chart_has_a_line_per_datastore_and_base_as_a_point() {
        let tuned = KnnMtParams {
            k: 32,
            lambda: 0.5,
            temperature: 30.0,
        };
        let series = [
            SpeedSeries {
                datastore: "runs/knnmt/software-ivf".into(),
                entries: 10,
                tuned,
                runs: vec![(Some(1), run(52.0, 56.0)), (Some(64), run(55.0, 35.0))],
            },
            SpeedSeries {
                datastore: "runs/knnmt/software".into(),
                entries: 10,
                tuned,
                runs: vec![(None, run(55.0, 11.0))],
            },
        ];
        let chart = speed_chart(&run(44.7, 76.0), &series);
        let names: Vec<&str> = chart.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "kNN-MT software-ivf (nprobe 1,64)",
                "kNN-MT software (exact)",
                "base (no retrieval)"
            ]
        );
        assert_eq!(chart.series[0].points, [(56.0, 52.0), (35.0, 55.0)]);
        assert_eq!(chart.series[2].points, [(76.0, 44.7)]);
    }
}
