//! A kNN-LM datastore: keys (hidden states, f16) and values (next-token ids) of every position
//! of a corpus, stored per chunk, indexed by ralm-index and described by `datastore.json`.
//!
//! Directory layout: `datastore.json` (settings, model/tokenizer hashes, corpus fingerprint,
//! chunk plan, count once complete), `chunks/NNNNNN.bin` (one per chunk, atomic), `values.u32`,
//! and `index/` (a ralm-index directory whose provenance repeats the hashes).

use super::chunks::{plan_chunks, score_chunk, Chunk, PassOptions};
use super::corpus::Corpus;
use crate::datastore::build::{run_build, BuildPlan};
use crate::datastore::store::{read_chunk, ChunkData};
use crate::datastore::{read_json, require_equal, KeyValues, Layout};
use crate::error::{KnnError, Result};
use ralm_index::{FlatIndex, Metric, SearchParams};
use ralm_models::bpe::LmTokenizer;
use ralm_models::llama::{KeyKind, LlamaModel};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub use crate::datastore::build::{BuildOutcome, BuildProgress};
pub use crate::datastore::{IndexSpec, Neighbours};

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

/// Everything that fixes a datastore's contents; a resumed build must agree on all of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatastoreManifest {
    /// Format of this file.
    pub format_version: u32,
    /// SHA-256 of the model weights.
    pub model_sha256: String,
    /// SHA-256 of the tokenizer.
    pub tokenizer_sha256: String,
    /// How the model's weights were run (`f32`, `quantized`, `bf16`): keys differ between
    /// modes. Absent in manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
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
    /// Set on a datastore made by [`replicate`]: every entry of the corpus is stored this many
    /// times, so it has the size of a larger datastore (for speed measurements; its neighbours
    /// are copies, so its perplexities mean nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
}

/// Reads the manifest of the datastore in `dir` (complete or not).
pub fn read_manifest(dir: &Path) -> Result<DatastoreManifest> {
    DatastoreManifest::read(dir)?
        .ok_or_else(|| KnnError::format(&dir.join(MANIFEST), "missing: not a datastore directory"))
}

impl DatastoreManifest {
    fn read(dir: &Path) -> Result<Option<Self>> {
        read_json(&dir.join(MANIFEST))
    }

    /// Total stored entries of the plan.
    pub fn planned_entries(&self) -> usize {
        self.chunks.iter().map(Chunk::targets).sum()
    }
}

impl BuildPlan for DatastoreManifest {
    fn count(&self) -> Option<u64> {
        self.count
    }

    fn with_count(&self, count: Option<u64>) -> Self {
        Self {
            count,
            ..self.clone()
        }
    }

    fn layout(&self, dir: &Path) -> Layout {
        Layout {
            dir: dir.to_path_buf(),
            dim: self.dim,
            metric: self.metric,
            rows: self.chunks.iter().map(Chunk::targets).collect(),
        }
    }

    fn index_spec(&self) -> IndexSpec {
        self.index
    }

    fn with_index(&self, index: IndexSpec) -> Self {
        Self {
            index,
            ..self.clone()
        }
    }

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
        weights: Some(lm.mode().name().into()),
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
        replicas: None,
    };
    if plan.chunks.is_empty() {
        return Err(KnnError::Invalid(
            "the corpus has fewer than two tokens: nothing to store".into(),
        ));
    }
    let mut produce = |i: usize| -> Result<(Vec<f32>, Vec<u32>)> {
        let chunk = plan.chunks[i];
        let scored = score_chunk(lm, &corpus.ids, chunk, pass)?;
        Ok((
            scored.keys,
            corpus.ids[chunk.first_target..chunk.end].to_vec(),
        ))
    };
    run_build(dir, MANIFEST, plan.clone(), &mut produce, progress, stop)
}

/// Builds in `dst` a datastore holding the entries of the complete datastore in `src`
/// repeated `times` times, indexed by `index`: a datastore of a larger size for measuring
/// search speed (see [`DatastoreManifest::replicas`]). Chunk files are hard-linked where the
/// file system allows and copied otherwise; an interrupted call resumes like a build.
pub fn replicate(
    src: &Path,
    dst: &Path,
    times: usize,
    index: IndexSpec,
    progress: &mut dyn FnMut(BuildProgress),
    stop: &dyn Fn() -> bool,
) -> Result<BuildOutcome> {
    let m = read_manifest(src)?;
    if m.count.is_none() {
        return Err(KnnError::format(
            &src.join(MANIFEST),
            "the build did not complete; finish it before replicating",
        ));
    }
    if times < 2 {
        return Err(KnnError::Invalid(format!(
            "replicating {times} times makes no larger datastore (use at least 2)"
        )));
    }
    let n = m.chunks.len();
    let plan = DatastoreManifest {
        chunks: m.chunks.repeat(times),
        index,
        count: None,
        replicas: Some(m.replicas.unwrap_or(1) * times),
        ..m.clone()
    };
    let (from, to) = (m.layout(src), plan.layout(dst));
    if DatastoreManifest::read(dst)?.is_none() {
        to.create_dirs()?;
        for i in 0..plan.chunks.len() {
            // A failed link (another file system) leaves the chunk to be copied below.
            let _ = std::fs::hard_link(from.chunk_path(i % n), to.chunk_path(i));
        }
    }
    let mut produce = |i: usize| -> Result<(Vec<f32>, Vec<u32>)> {
        let c = read_chunk(&from.chunk_path(i % n))?;
        Ok((c.keys, c.values))
    };
    run_build(dst, MANIFEST, plan, &mut produce, progress, stop)
}

/// Calls `f` with every stored chunk of the datastore in `dir`, in entry order.
pub fn for_each_stored_chunk(
    dir: &Path,
    m: &DatastoreManifest,
    f: &mut dyn FnMut(ChunkData) -> Result<()>,
) -> Result<()> {
    m.layout(dir).for_each_chunk(f)
}

/// What a user of a datastore requires: the model and tokenizer it will query with.
#[derive(Debug, Clone)]
pub struct DatastoreExpect {
    /// SHA-256 of the model weights.
    pub model_sha256: String,
    /// SHA-256 of the tokenizer.
    pub tokenizer_sha256: String,
    /// How the model's weights are run (`f32`, `quantized`, `bf16`).
    pub weights: String,
}

impl DatastoreExpect {
    /// The expectation of a loaded model and tokenizer.
    pub fn of(lm: &LlamaModel, tok: &LmTokenizer) -> Result<Self> {
        Ok(Self {
            model_sha256: lm.model_hash()?,
            tokenizer_sha256: tok.tokenizer_hash()?,
            weights: lm.mode().name().into(),
        })
    }
}

/// An opened, complete datastore.
pub struct Datastore {
    manifest: DatastoreManifest,
    kv: KeyValues,
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
        require_equal(
            &mpath,
            &[
                ("model_sha256", &manifest.model_sha256, &expect.model_sha256),
                (
                    "tokenizer_sha256",
                    &manifest.tokenizer_sha256,
                    &expect.tokenizer_sha256,
                ),
            ],
        )?;
        if let Some(weights) = &manifest.weights {
            require_equal(&mpath, &[("weights", weights, &expect.weights)])?;
        }
        let kv = KeyValues::open(manifest.layout(dir), manifest.provenance(), count)?;
        Ok(Datastore { manifest, kv })
    }

    /// The manifest.
    pub fn manifest(&self) -> &DatastoreManifest {
        &self.manifest
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.kv.layout().dir
    }

    /// Which hidden state the keys are.
    pub fn key_kind(&self) -> Result<KeyKind> {
        parse_key(&self.manifest.key)
    }

    /// Live entries (all, unless restricted).
    pub fn len(&self) -> usize {
        self.kv.len()
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
    }

    /// Next-token id stored with entry `id`.
    pub fn value(&self, id: u64) -> Option<u32> {
        self.kv.value(id)
    }

    /// Searches `queries` (`n × dim`) and maps neighbour ids to stored next tokens.
    pub fn search(&self, queries: &[f32], k: usize, params: &SearchParams) -> Result<Neighbours> {
        self.kv.search(queries, k, params)
    }

    /// Keeps only a seeded random subset of about `fraction` of the entries live; subsets of
    /// one seed are nested (every entry of a smaller fraction is in each larger one).
    pub fn restrict(&mut self, fraction: f64, seed: u64) -> usize {
        self.kv.restrict(fraction, seed)
    }

    /// Calls `f` with every stored chunk's keys and values, in entry order.
    pub fn for_each_chunk(&self, f: &mut dyn FnMut(ChunkData) -> Result<()>) -> Result<()> {
        self.kv.layout().for_each_chunk(f)
    }

    /// An exact in-memory index over all stored keys (for exact search on an IVF-PQ datastore).
    pub fn exact_index(&self) -> Result<FlatIndex> {
        self.kv.layout().exact_index()
    }

    /// Switches the datastore's searches to an exact index over its keys.
    pub fn use_exact_search(&mut self) -> Result<()> {
        self.kv.use_exact_search()
    }
}
