//! `ralm bench search`: exact batched nearest-neighbour search throughput — `FlatIndex` on the
//! CPU, `GpuFlatIndex` with `--device cuda[:N]` — against PyTorch on an H100, checked against
//! exact CPU search on the same f16-rounded keys.

use anyhow::{bail, ensure};
use candle_core::DeviceLocation;
use clap::Args;
use half::f16;
use ralm_index::rng::splitmix64;
use ralm_index::{FlatIndex, Hits, Index, KeyType, Metric, SearchParams};
use rayon::prelude::*;
use std::collections::HashSet;
use std::time::Instant;

/// PyTorch exact L2 search on one H100 (f16 keys of dim 576, 1,024 queries per call, k = 32),
/// queries/s, measured elsewhere: 1M keys...
const PYTORCH_H100_QPS_1M: f64 = 44_800.0;
/// ...and 10M keys.
const PYTORCH_H100_QPS_10M: f64 = 4_500.0;
/// Recall@k below which the check fails (f16 near-ties may swap a neighbour now and then).
const MIN_RECALL: f64 = 0.98;
/// Largest score difference allowed, relative to the largest reference score magnitude.
const MAX_REL_ERR: f64 = 1e-3;
/// What `--device cuda` says in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
const NO_CUDA: &str = "this ralm was built without CUDA; build with scripts/build-cuda.sh";

/// Arguments of `ralm bench search` (the device is the global `--device`: cpu, cuda or cuda:N).
#[derive(Args)]
pub struct SearchArgs {
    /// Keys in the index.
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Vector dimension.
    #[arg(long, default_value_t = 576)]
    dim: usize,
    /// Queries per search call.
    #[arg(long, default_value_t = 1024)]
    queries: usize,
    /// Neighbours per query (at most 64 on the GPU).
    #[arg(long, default_value_t = 32)]
    k: usize,
    /// Metric: l2, ip or cos.
    #[arg(long, default_value = "l2")]
    metric: String,
    /// Timed search calls (after one warm-up call).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Queries whose results are checked against exact CPU search (0: no check).
    #[arg(long, default_value_t = 64)]
    check: usize,
    /// Seed of the generated keys and queries.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Where the benchmarked index lives.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// `FlatIndex` with f16 keys.
    Cpu,
    /// `GpuFlatIndex` on GPU `ordinal`, with a score budget in bytes (`None`: the default).
    Cuda {
        ordinal: usize,
        // Only the GPU engine reads it: a build without CUDA refuses this target.
        #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
        score_budget: Option<usize>,
    },
}

impl Target {
    /// The target of the global `--device`.
    fn selected() -> anyhow::Result<Target> {
        match crate::device::current().location() {
            DeviceLocation::Cpu => Ok(Target::Cpu),
            DeviceLocation::Cuda { gpu_id } => Ok(Target::Cuda {
                ordinal: gpu_id,
                score_budget: None,
            }),
            other => bail!("bench search runs on cpu or cuda, not {other:?}"),
        }
    }

    /// This target with GPU score budget `bytes` (the CPU has none).
    fn with_budget(self, bytes: Option<usize>) -> Target {
        match self {
            Target::Cuda { ordinal, .. } => Target::Cuda {
                ordinal,
                score_budget: bytes,
            },
            Target::Cpu => Target::Cpu,
        }
    }

    /// `cpu` or `cuda:N`.
    fn name(self) -> String {
        match self {
            Target::Cpu => "cpu".into(),
            Target::Cuda { ordinal, .. } => format!("cuda:{ordinal}"),
        }
    }
}

/// The index under test.
enum Engine {
    /// Exact CPU search.
    Cpu(FlatIndex),
    /// Exact GPU search.
    #[cfg(feature = "cuda")]
    Gpu(ralm_index::GpuFlatIndex),
}

impl Engine {
    /// Indexes `keys` (`n × dim`) with `ids` on `target`.
    fn build(
        target: Target,
        dim: usize,
        metric: Metric,
        keys: &[f32],
        ids: &[u64],
    ) -> anyhow::Result<Engine> {
        match target {
            Target::Cpu => Ok(Engine::Cpu(FlatIndex::from_vectors(
                dim,
                metric,
                KeyType::F16,
                keys,
                ids,
            )?)),
            #[cfg(feature = "cuda")]
            Target::Cuda {
                ordinal,
                score_budget,
            } => {
                let mut index =
                    ralm_index::GpuFlatIndex::from_vectors(keys, dim, metric, ids, ordinal)?;
                if let Some(bytes) = score_budget {
                    index.set_score_budget(bytes);
                }
                Ok(Engine::Gpu(index))
            }
            #[cfg(not(feature = "cuda"))]
            Target::Cuda { .. } => bail!(NO_CUDA),
        }
    }

    /// Top-`k` of each query.
    fn search(&self, queries: &[f32], k: usize) -> anyhow::Result<Hits> {
        Ok(match self {
            Engine::Cpu(index) => index.search(queries, k, &SearchParams::default())?,
            #[cfg(feature = "cuda")]
            Engine::Gpu(index) => index.search(queries, k)?,
        })
    }
}

/// `n × dim` deterministic values loosely like hidden states: each a sum of four uniforms
/// (near-gaussian), scaled per dimension by 0.25–2, rounded to f16 so GPU and CPU see the same
/// keys.
fn generate(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    const BLOCK: usize = 1 << 16;
    let base = splitmix64(seed);
    let mut v = vec![0.0f32; n * dim];
    v.par_chunks_mut(BLOCK).enumerate().for_each(|(b, out)| {
        for (i, x) in out.iter_mut().enumerate() {
            let at = b * BLOCK + i;
            let h = splitmix64(base ^ at as u64);
            let u = (h & 0xffff) + ((h >> 16) & 0xffff) + ((h >> 32) & 0xffff) + (h >> 48);
            let g = (u as f32 / 65536.0 - 2.0) * 3f32.sqrt();
            let scale = 0.25 + 1.75 * ((at % dim * 37) % 101) as f32 / 100.0;
            *x = f16::from_f32(g * scale).to_f32();
        }
    });
    v
}

/// Ids that are not row numbers, so the id mapping is exercised too.
fn make_ids(n: usize) -> Vec<u64> {
    (0..n as u64).map(|i| i * 3 + 7).collect()
}

/// How results compare with the exact reference.
struct Agreement {
    /// Reference ids found, over reference ids (padding excluded).
    recall: f64,
    /// Largest |score difference| at equal rank over the largest |reference score|.
    rel_err: f64,
    /// Whether every query has as many padded slots as in the reference.
    padding: bool,
}

impl Agreement {
    /// Compares `got` with `want` (same queries and `k`).
    fn of(got: &Hits, want: &Hits) -> Agreement {
        let (mut found, mut total) = (0usize, 0usize);
        let (mut max_diff, mut scale) = (0f64, 0f64);
        let mut padding = got.k == want.k && got.len() == want.len();
        for q in 0..want.len().min(got.len()) {
            let ((gi, gs), (wi, ws)) = (got.row(q), want.row(q));
            let real: HashSet<u64> = wi.iter().copied().filter(|&id| id != u64::MAX).collect();
            total += real.len();
            found += gi.iter().filter(|id| real.contains(id)).count();
            let pads = |ids: &[u64]| ids.iter().filter(|&&id| id == u64::MAX).count();
            padding &= pads(gi) == pads(wi);
            for (&a, &b) in gs.iter().zip(ws) {
                if a.is_finite() && b.is_finite() {
                    max_diff = max_diff.max((a as f64 - b as f64).abs());
                    scale = scale.max((b as f64).abs());
                }
            }
        }
        Agreement {
            recall: if total == 0 {
                1.0
            } else {
                found as f64 / total as f64
            },
            rel_err: max_diff / scale.max(f64::MIN_POSITIVE),
            padding,
        }
    }

    /// Whether the results pass.
    fn pass(&self) -> bool {
        self.padding && self.recall >= MIN_RECALL && self.rel_err <= MAX_REL_ERR
    }

    /// One line: verdict and numbers.
    fn describe(&self, k: usize) -> String {
        format!(
            "{} recall@{k}={:.4} max|dscore|/scale={:.2e} padding {}",
            if self.pass() { "PASS" } else { "FAIL" },
            self.recall,
            self.rel_err,
            if self.padding { "ok" } else { "WRONG" }
        )
    }
}

/// Exact reference: `FlatIndex` with f32 storage of the same (f16-rounded) keys.
fn reference(
    dim: usize,
    metric: Metric,
    keys: &[f32],
    ids: &[u64],
    queries: &[f32],
    k: usize,
) -> anyhow::Result<Hits> {
    let index = FlatIndex::from_vectors(dim, metric, KeyType::F32, keys, ids)?;
    Ok(index.search(queries, k, &SearchParams::default())?)
}

/// Small shapes that stress the edges of the GPU plan (dims not a multiple of 8, one query,
/// k = 64, k > keys, several query batches and key blocks, a partial last block), each checked
/// against the reference. Returns an error naming the first failure.
fn edge_cases(target: Target) -> anyhow::Result<()> {
    // (keys, dim, queries, k, metric, GPU score budget in bytes)
    let cases: [(usize, usize, usize, usize, Metric, Option<usize>); 6] = [
        (1000, 37, 3, 5, Metric::L2, None),
        (1000, 64, 1, 64, Metric::InnerProduct, None),
        (50, 8, 4, 64, Metric::Cosine, None),
        (5000, 20, 1500, 10, Metric::L2, Some(64 << 10)),
        (3001, 576, 17, 32, Metric::L2, Some(17 * 1000 * 4)),
        (1, 3, 2, 3, Metric::InnerProduct, None),
    ];
    for (i, &(n, dim, nq, k, metric, budget)) in cases.iter().enumerate() {
        let seed = 1000 + 2 * i as u64;
        let (keys, queries, ids) = (
            generate(n, dim, seed),
            generate(nq, dim, seed + 1),
            make_ids(n),
        );
        let engine = Engine::build(target.with_budget(budget), dim, metric, &keys, &ids)?;
        let got = engine.search(&queries, k)?;
        let agreement = Agreement::of(&got, &reference(dim, metric, &keys, &ids, &queries, k)?);
        let line = format!(
            "edge case {n} keys x dim {dim}, {nq} queries, k={k}, {metric}: {}",
            agreement.describe(k)
        );
        println!("{line}");
        ensure!(agreement.pass(), "search check failed: {line}");
    }
    Ok(())
}

/// The PyTorch H100 queries/s this run compares with, and how it was obtained.
fn pytorch_reference(keys: usize) -> (f64, String) {
    match keys {
        1_000_000 => (PYTORCH_H100_QPS_1M, "measured at 1M keys".into()),
        10_000_000 => (PYTORCH_H100_QPS_10M, "measured at 10M keys".into()),
        n => (
            PYTORCH_H100_QPS_1M * 1e6 / n.max(1) as f64,
            format!("the 1M-key number scaled by 1M/{n} keys"),
        ),
    }
}

/// Runs `ralm bench search` on the global `--device`.
pub fn run(args: SearchArgs) -> anyhow::Result<()> {
    run_on(args, Target::selected()?)
}

/// Runs the benchmark on `target`.
fn run_on(args: SearchArgs, target: Target) -> anyhow::Result<()> {
    let metric: Metric = args.metric.parse()?;
    let (n, dim, nq, k) = (args.keys, args.dim, args.queries, args.k);
    ensure!(
        n > 0 && dim > 0 && nq > 0 && k > 0 && args.iters > 0,
        "need --keys, --dim, --queries, --k and --iters >= 1"
    );
    let check = args.check.min(nq);
    let device = target.name();
    println!(
        "search bench on {device}: {n} keys x dim {dim} ({metric}), {nq} queries per call, k={k}"
    );
    if check > 0 {
        edge_cases(target)?;
    }

    let t = Instant::now();
    let keys = generate(n, dim, 2 * args.seed);
    let queries = generate(nq, dim, 2 * args.seed + 1);
    let ids = make_ids(n);
    println!(
        "generated keys and queries in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let engine = Engine::build(target, dim, metric, &keys, &ids)?;
    let build = t.elapsed().as_secs_f64();
    println!(
        "built the index in {build:.2} s ({:.2} GB of f16 keys, {:.2} GB/s from f32 rows)",
        (n * dim * 2) as f64 / 1e9,
        (n * dim * 4) as f64 / 1e9 / build.max(1e-9)
    );

    let mut hits = engine.search(&queries, k)?;
    let t = Instant::now();
    for _ in 0..args.iters {
        hits = engine.search(&queries, k)?;
    }
    let wall = t.elapsed().as_secs_f64();
    let qps = (nq * args.iters) as f64 / wall;
    let (reference_qps, how) = pytorch_reference(n);
    println!(
        "search: {qps:.0} queries/s ({} calls of {nq} queries in {wall:.3} s, {:.2} ms per call); \
         PyTorch H100 reference {reference_qps:.0} queries/s ({how}): {:.2}x",
        args.iters,
        wall * 1e3 / args.iters as f64,
        qps / reference_qps
    );

    let recall = if check > 0 {
        let got = Hits {
            k,
            ids: hits.ids[..check * k].to_vec(),
            scores: hits.scores[..check * k].to_vec(),
        };
        drop(engine);
        let t = Instant::now();
        let want = reference(dim, metric, &keys, &ids, &queries[..check * dim], k)?;
        let agreement = Agreement::of(&got, &want);
        println!(
            "search check: {} over {check} queries (exact CPU search in {:.1} s)",
            agreement.describe(k),
            t.elapsed().as_secs_f64()
        );
        if !agreement.pass() {
            bail!("search check failed: {}", agreement.describe(k));
        }
        format!("{:.4}", agreement.recall)
    } else {
        "na".into()
    };
    println!(
        "RESULT search device={device} keys={n} dim={dim} queries={nq} k={k} metric={metric} \
         qps={qps:.0} ref={reference_qps:.0} ratio={:.3} recall={recall}",
        qps / reference_qps
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_search_bench_passes_its_check() {
        let args = SearchArgs {
            keys: 3000,
            dim: 24,
            queries: 16,
            k: 8,
            metric: "l2".into(),
            iters: 1,
            check: 16,
            seed: 3,
        };
        run_on(args, Target::Cpu).unwrap();
    }

    #[test]
    fn agreement_counts_recall_padding_and_error() {
        let want = Hits {
            k: 2,
            ids: vec![1, 2, 3, u64::MAX],
            scores: vec![2.0, 1.0, 4.0, f32::NEG_INFINITY],
        };
        assert!(Agreement::of(&want, &want).pass());
        let swapped = Hits {
            ids: vec![1, 9, 3, u64::MAX],
            scores: vec![2.0, 1.0, 4.002, f32::NEG_INFINITY],
            ..want.clone()
        };
        let a = Agreement::of(&swapped, &want);
        assert_eq!(a.recall, 2.0 / 3.0);
        assert!((a.rel_err - 0.0005).abs() < 1e-6 && a.padding && !a.pass());
        let unpadded = Hits {
            ids: vec![1, 2, 3, 4],
            scores: vec![2.0, 1.0, 4.0, 0.0],
            ..want.clone()
        };
        assert!(!Agreement::of(&unpadded, &want).padding);
    }

    #[test]
    fn generated_values_are_deterministic_and_f16() {
        let a = generate(10, 7, 5);
        assert_eq!(a, generate(10, 7, 5));
        assert_ne!(a, generate(10, 7, 6));
        assert!(a
            .iter()
            .all(|&x| f16::from_f32(x).to_f32() == x && x.abs() < 8.0));
    }
}
