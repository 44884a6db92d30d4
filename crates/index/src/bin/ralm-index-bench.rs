//! Index benchmark: exact and IVF-PQ build time, bytes per key, queries/s on 1 and 2 threads and
//! recall@k against exact search, on `.npy` keys and queries; `gen` writes synthetic clustered data.
//!
//! ```text
//! ralm-index-bench gen --n 200000 --nq 1000 --dim 384 --clusters 1000 --seed 1 --out keys.npy --queries q.npy [--f16]
//! ralm-index-bench --keys keys.npy --queries q.npy --metric ip --k 10 --batch 100 \
//!     [--key-type f16] [--ivf 1024,64,8[,4]]... [--rerank 100] [--min-time 2] [--json out.jsonl] \
//!     [--stream DIR] [--max-train N] [--iters 10] [--pq-iters 25]
//! ```
//! `gen` writes the keys as it draws them, and `--stream DIR` memory-maps the keys and builds each
//! index on disk under `DIR` with the streaming builder, so neither holds the keys in memory:
//! 10M × 576 keys fit on a 24 GiB machine. `--max-train`, `--iters` and `--pq-iters` set the
//! training sample and the coarse and codebook k-means iterations of every IVF-PQ index
//! (defaults: `IvfPqParams::new`'s).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ralm_index::npy::{self, MappedMatrix, Matrix};
use ralm_index::rng::Rng;
use ralm_index::{
    AnyIndex, BuildConfig, FlatIndex, Hits, Index, IndexBuilder, IndexKind, IvfPqIndex,
    IvfPqParams, KeyType, Metric, SearchParams,
};

type Res<T> = std::result::Result<T, String>;

/// Parsed `--name value` pairs (repeatable).
struct Args(Vec<(String, String)>);

impl Args {
    fn parse(raw: &[String]) -> Res<Self> {
        let mut out = Vec::new();
        let mut it = raw.iter();
        while let Some(a) = it.next() {
            let name = a
                .strip_prefix("--")
                .ok_or(format!("unexpected argument {a:?}"))?;
            if name == "f16" {
                out.push((name.to_string(), "true".into()));
                continue;
            }
            let v = it.next().ok_or(format!("--{name} needs a value"))?;
            out.push((name.to_string(), v.clone()));
        }
        Ok(Args(out))
    }
    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.all(name).last().copied()
    }
    fn req(&self, name: &str) -> Res<&str> {
        self.get(name).ok_or(format!("missing --{name}"))
    }
    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Res<T> {
        self.get(name).map_or(Ok(default), |v| {
            v.parse().map_err(|_| format!("--{name}: bad number {v:?}"))
        })
    }
}

/// Rows generated and written per chunk by `gen`.
const GEN_CHUNK: usize = 65_536;

fn gen(a: &Args) -> Res<()> {
    let n: usize = a.num("n", 200_000)?;
    let dim: usize = a.num("dim", 384)?;
    let clusters: usize = a.num("clusters", 1000)?;
    let spread: f32 = a.num("spread", 0.5)?;
    let mut rng = Rng::new(a.num("seed", 1)?);
    // Cluster sizes vary (Zipf-like weights), centres are Gaussian, points add isotropic noise.
    let centres: Vec<f32> = (0..clusters * dim).map(|_| rng.normal()).collect();
    let nq: usize = a.num("nq", 1000)?;
    let mut draw = |rows: usize| {
        let mut data = Vec::with_capacity(rows * dim);
        for _ in 0..rows {
            let c = ((rng.uniform().powi(2)) * clusters as f32) as usize % clusters;
            data.extend((0..dim).map(|d| centres[c * dim + d] + spread * rng.normal()));
        }
        data
    };
    let out = PathBuf::from(a.req("out")?);
    let chunks = (0..n)
        .step_by(GEN_CHUNK)
        .map(|r0| draw(GEN_CHUNK.min(n - r0)));
    npy::write_chunks(&out, n, dim, a.get("f16").is_some(), chunks).map_err(|e| e.to_string())?;
    let queries = draw(nq);
    let qout = PathBuf::from(a.req("queries")?);
    npy::write_f32(&qout, nq, dim, &queries).map_err(|e| e.to_string())?;
    eprintln!(
        "wrote {n} × {dim} to {} and {nq} queries to {}",
        out.display(),
        qout.display()
    );
    Ok(())
}

/// How queries/s is measured: hits per query, batch size, and the least time measured over.
struct Timing {
    k: usize,
    batch: usize,
    min_s: f64,
}

/// Queries/s of `idx` on `threads` threads, searching in batches: one untimed pass over the
/// query set (it gives the hits and pages in memory-mapped data), then whole passes repeated
/// until `min_s` seconds have passed.
fn qps(
    idx: &dyn Index,
    q: &[f32],
    dim: usize,
    t: &Timing,
    sp: &SearchParams,
    threads: usize,
) -> Res<(f64, Hits)> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| e.to_string())?;
    pool.install(|| {
        let pass = || -> Res<Hits> {
            let mut all = Hits {
                k: t.k,
                ids: Vec::new(),
                scores: Vec::new(),
            };
            for chunk in q.chunks(t.batch * dim) {
                let h = idx.search(chunk, t.k, sp).map_err(|e| e.to_string())?;
                all.ids.extend(h.ids);
                all.scores.extend(h.scores);
            }
            Ok(all)
        };
        let hits = pass()?;
        let start = Instant::now();
        let mut passes = 0usize;
        while passes == 0 || start.elapsed().as_secs_f64() < t.min_s {
            pass()?;
            passes += 1;
        }
        let n = (passes * q.len() / dim) as f64;
        Ok((n / start.elapsed().as_secs_f64(), hits))
    })
}

fn recall(got: &Hits, want: &Hits) -> f64 {
    let mut hit = 0usize;
    for i in 0..want.len() {
        let g = got.row(i).0;
        hit += want.row(i).0.iter().filter(|id| g.contains(id)).count();
    }
    hit as f64 / want.ids.len().max(1) as f64
}

/// Rows converted and added per step when streaming keys into an index.
const STREAM_CHUNK: usize = 65_536;

/// The keys a benchmark indexes: read into memory, or memory-mapped and streamed into index
/// directories under a scratch folder.
enum KeySource {
    Memory(Matrix),
    Stream { keys: MappedMatrix, dir: PathBuf },
}

impl KeySource {
    fn open(path: &Path, stream: Option<&str>) -> Res<Self> {
        Ok(match stream {
            Some(dir) => KeySource::Stream {
                keys: MappedMatrix::open(path).map_err(|e| e.to_string())?,
                dir: dir.into(),
            },
            None => KeySource::Memory(npy::read(path).map_err(|e| e.to_string())?),
        })
    }

    /// Rows and columns.
    fn shape(&self) -> (usize, usize) {
        match self {
            KeySource::Memory(m) => (m.rows, m.cols),
            KeySource::Stream { keys, .. } => (keys.rows, keys.cols),
        }
    }

    /// Builds an index of `kind` over the keys, ids being row numbers; `name` names its
    /// scratch directory when streaming.
    fn build(
        &self,
        metric: Metric,
        key_type: KeyType,
        kind: IndexKind,
        name: &str,
    ) -> Res<AnyIndex> {
        match self {
            KeySource::Memory(m) => {
                let ids: Vec<u64> = (0..m.rows as u64).collect();
                match kind {
                    IndexKind::Flat => {
                        FlatIndex::from_vectors(m.cols, metric, key_type, &m.data, &ids)
                            .map(AnyIndex::Flat)
                    }
                    IndexKind::IvfPq(p) => {
                        IvfPqIndex::build(m.cols, metric, key_type, &m.data, &ids, &p)
                            .map(AnyIndex::IvfPq)
                    }
                }
                .map_err(|e| e.to_string())
            }
            KeySource::Stream { keys, dir } => {
                let config = BuildConfig {
                    dim: keys.cols,
                    metric,
                    key_type,
                    kind,
                    provenance: serde_json::json!({ "bench": name }),
                };
                stream_build(keys, &dir.join(name), config, name).map_err(|e| e.to_string())
            }
        }
    }

    /// Deletes a streamed index's scratch directory once it has been measured.
    fn discard(&self, name: &str) -> Res<()> {
        match self {
            KeySource::Memory(_) => Ok(()),
            KeySource::Stream { dir, .. } => {
                let d = dir.join(name);
                std::fs::remove_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))
            }
        }
    }
}

/// Builds an index in `dir` from memory-mapped keys, a chunk at a time, with progress on stderr.
fn stream_build(
    keys: &MappedMatrix,
    dir: &Path,
    config: BuildConfig,
    name: &str,
) -> ralm_index::Result<AnyIndex> {
    let mut b = IndexBuilder::new(dir, config)?;
    for r0 in (0..keys.rows).step_by(STREAM_CHUNK) {
        let r1 = (r0 + STREAM_CHUNK).min(keys.rows);
        let ids: Vec<u64> = (r0 as u64..r1 as u64).collect();
        b.add(&keys.rows_f32(r0, r1), &ids)?;
        eprint!("\r{name}: {r1}/{} keys spilled", keys.rows);
    }
    eprintln!();
    let idx = b.finish(&|done, total| eprint!("\r{name}: {done}/{total} encoded"))?;
    eprintln!();
    Ok(idx)
}

fn bench(a: &Args) -> Res<()> {
    let keys = KeySource::open(&PathBuf::from(a.req("keys")?), a.get("stream"))?;
    let queries = npy::read(&PathBuf::from(a.req("queries")?)).map_err(|e| e.to_string())?;
    let (rows, dim) = keys.shape();
    if dim != queries.cols {
        return Err(format!("keys have dim {dim} but queries {}", queries.cols));
    }
    let metric: Metric = a
        .req("metric")?
        .parse()
        .map_err(|e: ralm_index::IndexError| e.to_string())?;
    let key_type: KeyType = a
        .get("key-type")
        .unwrap_or("f32")
        .parse()
        .map_err(|e: ralm_index::IndexError| e.to_string())?;
    let k: usize = a.num("k", 10)?;
    let batch: usize = a.num("batch", 100)?;
    let timing = Timing {
        k,
        batch,
        min_s: a.num("min-time", 2.0)?,
    };
    let rerank: Option<usize> = a
        .get("rerank")
        .map(|v| v.parse())
        .transpose()
        .map_err(|_| "--rerank: bad number")?;
    let mut json = match a.get("json") {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| format!("{p}: {e}"))?),
        None => None,
    };
    let mut emit = |line: serde_json::Value| -> Res<()> {
        println!("{line}");
        if let Some(f) = json.as_mut() {
            writeln!(f, "{line}").map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    let t = Instant::now();
    let flat = keys.build(metric, key_type, IndexKind::Flat, "flat")?;
    let build = t.elapsed().as_secs_f64();
    let sp = SearchParams::default();
    let (q1, exact) = qps(&flat, &queries.data, dim, &timing, &sp, 1)?;
    let (q2, _) = qps(&flat, &queries.data, dim, &timing, &sp, 2)?;
    drop(flat);
    keys.discard("flat")?;
    emit(serde_json::json!({
        "engine": "ralm", "index": "flat", "metric": metric.to_string(), "key_type": key_type.to_string(),
        "n": rows, "dim": dim, "nq": queries.rows, "k": k, "batch": batch,
        "build_s": build, "bytes_per_key": dim * key_type.size(), "qps_1t": q1, "qps_2t": q2, "recall": 1.0,
    }))?;
    for spec in a.all("ivf") {
        let bad = || format!("--ivf {spec:?}: expected nlist,m,nprobe[/nprobe...][,nbits]");
        let fields: Vec<&str> = spec.split(',').collect();
        let num = |x: &str| x.parse::<usize>().map_err(|_| bad());
        let (nlist, m, nprobes, nbits) = match fields[..] {
            [nlist, m, nprobes] => (num(nlist)?, num(m)?, nprobes, 8),
            [nlist, m, nprobes, nbits] => (num(nlist)?, num(m)?, nprobes, num(nbits)?),
            _ => return Err(bad()),
        };
        let nprobes: Vec<usize> = nprobes.split('/').map(num).collect::<Res<_>>()?;
        let name = format!("ivfpq-{nlist}-{m}x{nbits}");
        let t = Instant::now();
        let mut params = IvfPqParams::new(nlist, m, 1).with_nbits(nbits as u32);
        params.iters = a.num("iters", params.iters)?;
        params.max_train = a.num("max-train", params.max_train)?;
        params.pq_iters = a.num("pq-iters", params.pq_iters)?;
        let (iters, max_train, pq_iters) = (params.iters, params.max_train, params.pq_iters);
        let idx = keys.build(metric, key_type, IndexKind::IvfPq(params), &name)?;
        let build = t.elapsed().as_secs_f64();
        let AnyIndex::IvfPq(ivf) = &idx else {
            return Err(format!("{name}: the builder did not make an IVF-PQ index"));
        };
        let bytes_per_key = ivf.code_bytes_per_key();
        for &nprobe in &nprobes {
            for rr in [None, rerank] {
                let sp = SearchParams { nprobe, rerank: rr };
                let (q1, hits) = qps(&idx, &queries.data, dim, &timing, &sp, 1)?;
                let (q2, _) = qps(&idx, &queries.data, dim, &timing, &sp, 2)?;
                emit(serde_json::json!({
                    "engine": "ralm", "index": "ivfpq", "metric": metric.to_string(), "key_type": key_type.to_string(),
                    "n": rows, "dim": dim, "nq": queries.rows, "k": k, "batch": batch,
                    "nlist": nlist, "m": m, "nbits": nbits, "nprobe": nprobe, "rerank": rr,
                    "iters": iters, "pq_iters": pq_iters, "max_train": max_train,
                    "build_s": build, "bytes_per_key": bytes_per_key, "qps_1t": q1, "qps_2t": q2,
                    "recall": recall(&hits, &exact),
                }))?;
                if rerank.is_none() {
                    break;
                }
            }
        }
        drop(idx);
        keys.discard(&name)?;
    }
    Ok(())
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let r = match raw.first().map(String::as_str) {
        Some("gen") => Args::parse(&raw[1..]).and_then(|a| gen(&a)),
        _ => Args::parse(&raw).and_then(|a| bench(&a)),
    };
    if let Err(e) = r {
        eprintln!("ralm-index-bench: {e}");
        std::process::exit(1);
    }
}
