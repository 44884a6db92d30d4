//! A kNN-LM datastore: keys (hidden states, f16) and values (next-token ids) of every position
//! of a corpus, stored per chunk, indexed by ralm-index and described by `datastore.json`.
//!
//! Directory layout: `datastore.json` (settings, model/tokenizer hashes, corpus fingerprint,
//! chunk plan, count once complete), `chunks/NNNNNN.bin` (one per chunk, atomic), `values.u32`,
//! and `index/` (a ralm-index directory whose provenance repeats the hashes).

use super::chunks::{plan_chunks, score_chunk, Chunk, PassOptions};
use super::corpus::Corpus;
use super::error::{KnnError, Result};
use super::store::{read_chunk, write_atomic, write_chunk, ChunkData};
use ralm_index::{
    open_expecting, AnyIndex, BuildConfig, Expect, FlatIndex, Hits, Index, IndexBuilder, IndexKind,
    IvfPqParams, KeyType, Metric, SearchParams,
};
use ralm_models::bpe::LmTokenizer;
use ralm_models::llama::{KeyKind, LlamaModel};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Name of the datastore manifest.
pub const MANIFEST: &str = "datastore.json";
const FORMAT_VERSION: u32 = 1;

/// Spelling of a key kind in manifests and on the command line.
pub fn key_name(k: KeyKind) -> &'static str {
    match k {
        KeyKind::FinalHidden => "final-norm",
        KeyKind::FfnInput => "ffn-input",
    }
}

/// Parses `final-norm` or `ffn-input`.
pub fn parse_key(s: &str) -> Result<KeyKind> {
    match s {
        "final-norm" => Ok(KeyKind::FinalHidden),
        "ffn-input" => Ok(KeyKind::FfnInput),
        _ => Err(KnnError::Invalid(format!(
            "unknown key {s:?} (expected final-norm or ffn-input)"
        ))),
    }
}

/// The index structure of a datastore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum IndexSpec {
    /// Exact search.
    Flat,
    /// IVF-PQ with `nlist` lists and `m` sub-quantisers.
    IvfPq {
        /// Inverted lists.
        nlist: usize,
        /// PQ sub-quantisers.
        m: usize,
        /// Training seed.
        seed: u64,
    },
}

/// Everything that fixes a datastore's contents; a resumed build must agree on all of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatastoreManifest {
    /// Format of this file.
    pub format_version: u32,
    /// SHA-256 of the model weights.
    pub model_sha256: String,
    /// SHA-256 of the tokenizer.
    pub tokenizer_sha256: String,
    /// Which hidden state the keys are (`final-norm` or `ffn-input`).
    pub key: String,
    /// Layer the key comes from (the number of layers for the final norm output).
    pub layer: usize,
    /// Key dimension.
    pub dim: usize,
    /// Search metric.
    pub metric: Metric,
    /// Longest window of the pass.
    pub context_len: usize,
    /// Distance between window starts.
    pub stride: usize,
    /// Corpus sources (descriptions).
    pub sources: Vec<String>,
    /// Documents read.
    pub documents: usize,
    /// Tokens in the corpus stream.
    pub tokens: usize,
    /// SHA-256 of the corpus token stream.
    pub corpus_fingerprint: String,
    /// Index structure.
    pub index: IndexSpec,
    /// The chunk plan.
    pub chunks: Vec<Chunk>,
    /// Stored entries once the build completed.
    pub count: Option<u64>,
}

/// Reads the manifest of the datastore in `dir` (complete or not).
pub fn read_manifest(dir: &Path) -> Result<DatastoreManifest> {
    DatastoreManifest::read(dir)?
        .ok_or_else(|| KnnError::format(&dir.join(MANIFEST), "missing: not a datastore directory"))
}

impl DatastoreManifest {
    fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(MANIFEST);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| KnnError::format(&path, e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(KnnError::io(&path, e)),
        }
    }

    fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| KnnError::Invalid(format!("serialising manifest: {e}")))?;
        write_atomic(&dir.join(MANIFEST), &json)
    }

    /// Provenance entries the index and every user must agree on.
    fn provenance(&self) -> serde_json::Value {
        serde_json::json!({
            "model_sha256": self.model_sha256,
            "tokenizer_sha256": self.tokenizer_sha256,
            "key": self.key,
            "layer": self.layer,
            "dim": self.dim,
            "corpus_fingerprint": self.corpus_fingerprint,
        })
    }

    /// Total stored entries of the plan.
    pub fn planned_entries(&self) -> usize {
        self.chunks.iter().map(Chunk::targets).sum()
    }
}

/// Settings of a datastore build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Model pass (window, stride, batch, key).
    pub pass: PassOptions,
    /// Search metric.
    pub metric: Metric,
    /// Index structure.
    pub index: IndexSpec,
    /// Target tokens per chunk file.
    pub chunk_tokens: usize,
}

/// How a build call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildOutcome {
    /// All chunks stored and indexed; the number of entries.
    Complete(u64),
    /// Stopped on request after storing this many chunks (of the plan's total).
    Interrupted {
        /// Chunks stored so far.
        done: usize,
        /// Chunks in the plan.
        total: usize,
    },
}

/// Progress of a build, reported after each chunk.
#[derive(Debug, Clone, Copy)]
pub struct BuildProgress {
    /// Targets stored so far (including chunks found from an earlier run).
    pub tokens_done: usize,
    /// Targets in the plan.
    pub tokens_total: usize,
    /// Targets scored by this run so far (for a speed estimate).
    pub tokens_this_run: usize,
}

fn chunk_path(dir: &Path, i: usize) -> PathBuf {
    dir.join("chunks").join(format!("{i:06}.bin"))
}

/// Builds (or resumes building) a datastore in `dir` from `corpus`. `stop` is asked after
/// every chunk; returning true ends the call with [`BuildOutcome::Interrupted`].
pub fn build(
    dir: &Path,
    lm: &LlamaModel,
    tok: &LmTokenizer,
    corpus: &Corpus,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(BuildProgress),
    stop: &dyn Fn() -> bool,
) -> Result<BuildOutcome> {
    let pass = &opts.pass;
    let cfg = lm.config();
    let plan = DatastoreManifest {
        format_version: FORMAT_VERSION,
        model_sha256: lm.model_hash()?,
        tokenizer_sha256: tok.tokenizer_hash()?,
        key: key_name(pass.key).into(),
        layer: match pass.key {
            KeyKind::FinalHidden => cfg.num_hidden_layers,
            KeyKind::FfnInput => cfg.num_hidden_layers - 1,
        },
        dim: cfg.hidden_size,
        metric: opts.metric,
        context_len: pass.context_len,
        stride: pass.stride,
        sources: corpus.sources.clone(),
        documents: corpus.documents,
        tokens: corpus.ids.len(),
        corpus_fingerprint: corpus.fingerprint(),
        index: opts.index,
        chunks: plan_chunks(
            corpus.ids.len(),
            pass.context_len,
            pass.stride,
            opts.chunk_tokens,
        )?,
        count: None,
    };
    if plan.chunks.is_empty() {
        return Err(KnnError::Invalid(
            "the corpus has fewer than two tokens: nothing to store".into(),
        ));
    }
    std::fs::create_dir_all(dir.join("chunks")).map_err(|e| KnnError::io(dir, e))?;
    match DatastoreManifest::read(dir)? {
        Some(old)
            if old.count.is_some()
                && DatastoreManifest {
                    count: None,
                    ..old.clone()
                } == plan =>
        {
            return Ok(BuildOutcome::Complete(old.count.unwrap_or(0)));
        }
        Some(old) if old != plan => {
            return Err(KnnError::mismatch(
                &dir.join(MANIFEST),
                format!(
                    "holds a datastore with different settings ({}); remove it or build elsewhere",
                    differing_fields(&old, &plan)
                ),
            ));
        }
        Some(_) => {}
        None => plan.write(dir)?,
    }

    let total = plan.planned_entries();
    let mut done_tokens = 0;
    let mut this_run = 0;
    for (i, &chunk) in plan.chunks.iter().enumerate() {
        let path = chunk_path(dir, i);
        // A chunk file exists only once fully written (atomic rename), so it is finished.
        if !path.exists() {
            let scored = score_chunk(lm, &corpus.ids, chunk, pass)?;
            write_chunk(
                &path,
                plan.dim,
                &scored.keys,
                &corpus.ids[chunk.first_target..chunk.end],
            )?;
            this_run += chunk.targets();
        }
        done_tokens += chunk.targets();
        progress(BuildProgress {
            tokens_done: done_tokens,
            tokens_total: total,
            tokens_this_run: this_run,
        });
        if i + 1 < plan.chunks.len() && stop() {
            return Ok(BuildOutcome::Interrupted {
                done: i + 1,
                total: plan.chunks.len(),
            });
        }
    }
    finish(dir, plan)
}

fn differing_fields(a: &DatastoreManifest, b: &DatastoreManifest) -> String {
    let (a, b) = (serde_json::json!(a), serde_json::json!(b));
    let mut out = Vec::new();
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (k, v) in a {
            if b.get(k) != Some(v) {
                out.push(k.as_str());
            }
        }
    }
    format!("differs in {}", out.join(", "))
}

/// Indexes the stored chunks, writes the values and marks the manifest complete.
fn finish(dir: &Path, mut m: DatastoreManifest) -> Result<BuildOutcome> {
    let kind = match m.index {
        IndexSpec::Flat => IndexKind::Flat,
        IndexSpec::IvfPq {
            nlist,
            m: subq,
            seed,
        } => IndexKind::IvfPq(IvfPqParams::new(nlist, subq, seed)),
    };
    let index_dir = dir.join("index");
    let mut builder = IndexBuilder::new(
        &index_dir,
        BuildConfig {
            dim: m.dim,
            metric: m.metric,
            key_type: KeyType::F16,
            kind,
            provenance: m.provenance(),
        },
    )?;
    let mut values: Vec<u32> = Vec::with_capacity(m.planned_entries());
    for_each_stored_chunk(dir, &m, &mut |c| {
        let first = values.len() as u64;
        let ids: Vec<u64> = (first..first + c.values.len() as u64).collect();
        builder.add(&c.keys, &ids)?;
        values.extend_from_slice(&c.values);
        Ok(())
    })?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_atomic(&dir.join("values.u32"), &bytes)?;
    builder.finish(&|_, _| {})?;
    m.count = Some(values.len() as u64);
    m.write(dir)?;
    Ok(BuildOutcome::Complete(values.len() as u64))
}

/// Calls `f` with every stored chunk of the datastore in `dir`, in entry order.
pub fn for_each_stored_chunk(
    dir: &Path,
    m: &DatastoreManifest,
    f: &mut dyn FnMut(ChunkData) -> Result<()>,
) -> Result<()> {
    for (i, chunk) in m.chunks.iter().enumerate() {
        let path = chunk_path(dir, i);
        let c = read_chunk(&path)?;
        if c.dim != m.dim || c.values.len() != chunk.targets() {
            return Err(KnnError::format(
                &path,
                format!(
                    "holds {} rows of dim {}, the plan says {} of dim {}",
                    c.values.len(),
                    c.dim,
                    chunk.targets(),
                    m.dim
                ),
            ));
        }
        f(c)?;
    }
    Ok(())
}

/// What a user of a datastore requires: the model and tokenizer it will query with.
#[derive(Debug, Clone)]
pub struct DatastoreExpect {
    /// SHA-256 of the model weights.
    pub model_sha256: String,
    /// SHA-256 of the tokenizer.
    pub tokenizer_sha256: String,
}

impl DatastoreExpect {
    /// The expectation of a loaded model and tokenizer.
    pub fn of(lm: &LlamaModel, tok: &LmTokenizer) -> Result<Self> {
        Ok(Self {
            model_sha256: lm.model_hash()?,
            tokenizer_sha256: tok.tokenizer_hash()?,
        })
    }
}

/// Nearest neighbours of a batch of queries: `n × k` scores and stored next tokens.
#[derive(Debug, Clone, Default)]
pub struct Neighbours {
    /// Neighbours per query.
    pub k: usize,
    /// Scores, higher is closer (`f32::NEG_INFINITY` for padding).
    pub scores: Vec<f32>,
    /// Stored next-token ids (`u32::MAX` for padding).
    pub tokens: Vec<u32>,
}

impl Neighbours {
    /// Scores and tokens of query `i`.
    pub fn row(&self, i: usize) -> (&[f32], &[u32]) {
        let r = i * self.k..(i + 1) * self.k;
        (&self.scores[r.clone()], &self.tokens[r])
    }

    /// Appends another batch with the same `k`.
    pub fn extend(&mut self, other: Neighbours) {
        self.k = other.k;
        self.scores.extend(other.scores);
        self.tokens.extend(other.tokens);
    }
}

/// An opened, complete datastore.
pub struct Datastore {
    dir: PathBuf,
    manifest: DatastoreManifest,
    index: AnyIndex,
    values: Vec<u32>,
}

impl Datastore {
    /// Opens the datastore in `dir`, refusing one built for another model or tokenizer.
    pub fn open(dir: &Path, expect: &DatastoreExpect) -> Result<Self> {
        let mpath = dir.join(MANIFEST);
        let manifest = read_manifest(dir)?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(KnnError::format(
                &mpath,
                format!(
                    "format_version {} is not {FORMAT_VERSION}",
                    manifest.format_version
                ),
            ));
        }
        let count = manifest.count.ok_or_else(|| {
            KnnError::format(
                &mpath,
                "the build did not complete; run the build again to resume",
            )
        })?;
        for (field, have, want) in [
            ("model_sha256", &manifest.model_sha256, &expect.model_sha256),
            (
                "tokenizer_sha256",
                &manifest.tokenizer_sha256,
                &expect.tokenizer_sha256,
            ),
        ] {
            if have != want {
                return Err(KnnError::mismatch(
                    &mpath,
                    format!(
                        "datastore was built with {field} {have}, but the loaded one is {want}"
                    ),
                ));
            }
        }
        let index = open_expecting(
            &dir.join("index"),
            &Expect {
                dim: Some(manifest.dim),
                metric: Some(manifest.metric),
                provenance: manifest.provenance(),
            },
        )?;
        let vpath = dir.join("values.u32");
        let bytes = std::fs::read(&vpath).map_err(|e| KnnError::io(&vpath, e))?;
        if bytes.len() as u64 != count * 4 || index.len() as u64 != count {
            return Err(KnnError::format(
                &vpath,
                format!(
                    "{} bytes and {} indexed keys for {count} entries",
                    bytes.len(),
                    index.len()
                ),
            ));
        }
        let values = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Datastore {
            dir: dir.to_path_buf(),
            manifest,
            index,
            values,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &DatastoreManifest {
        &self.manifest
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Which hidden state the keys are.
    pub fn key_kind(&self) -> Result<KeyKind> {
        parse_key(&self.manifest.key)
    }

    /// Live entries (all, unless restricted).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Next-token id stored with entry `id`.
    pub fn value(&self, id: u64) -> Option<u32> {
        self.values.get(usize::try_from(id).ok()?).copied()
    }

    /// Searches `queries` (`n × dim`) and maps neighbour ids to stored next tokens.
    pub fn search(&self, queries: &[f32], k: usize, params: &SearchParams) -> Result<Neighbours> {
        let Hits { ids, scores, .. } = self.index.search(queries, k, params)?;
        let tokens = ids
            .iter()
            .map(|&id| self.value(id).unwrap_or(u32::MAX))
            .collect();
        Ok(Neighbours { k, scores, tokens })
    }

    /// Keeps only a seeded random subset of about `fraction` of the entries live; subsets of
    /// one seed are nested (every entry of a smaller fraction is in each larger one).
    pub fn restrict(&mut self, fraction: f64, seed: u64) -> usize {
        let drop: Vec<u64> = (0..self.values.len() as u64)
            .filter(|&id| unit_hash(id, seed) >= fraction)
            .collect();
        self.index.delete(&drop)
    }

    /// Calls `f` with every stored chunk's keys and values, in entry order.
    pub fn for_each_chunk(&self, f: &mut dyn FnMut(ChunkData) -> Result<()>) -> Result<()> {
        for_each_stored_chunk(&self.dir, &self.manifest, f)
    }

    /// An exact in-memory index over all stored keys (for exact search on an IVF-PQ datastore).
    pub fn exact_index(&self) -> Result<FlatIndex> {
        let mut idx = FlatIndex::new(self.manifest.dim, self.manifest.metric, KeyType::F16);
        let mut first = 0u64;
        self.for_each_chunk(&mut |c| {
            let n = c.values.len() as u64;
            idx.append(&c.keys, &(first..first + n).collect::<Vec<_>>())?;
            first += n;
            Ok(())
        })?;
        Ok(idx)
    }

    /// Switches the datastore's searches to an exact index over its keys.
    pub fn use_exact_search(&mut self) -> Result<()> {
        if matches!(self.index, AnyIndex::IvfPq(_)) {
            self.index = AnyIndex::Flat(self.exact_index()?);
        }
        Ok(())
    }
}

/// A deterministic pseudo-random number in `[0, 1)` for `id` under `seed` (splitmix64).
fn unit_hash(id: u64, seed: u64) -> f64 {
    let mut z = id
        .wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}
