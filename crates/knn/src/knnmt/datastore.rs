//! A kNN-MT datastore: for every target token of a parallel corpus, the decoder's final hidden
//! state before the output projection (teacher-forced) as key and the token as value.
//!
//! Directory layout as for kNN-LM: `datastore.json` (model and vocabulary hashes, dimension,
//! corpus fingerprint, chunk plan, count once complete), `chunks/`, `values.u32`, `index/`.

use super::forced::{teacher_force, TokenPairs};
use crate::datastore::build::{run_build, BuildOutcome, BuildPlan, BuildProgress};
use crate::datastore::{read_json, require_equal, IndexSpec, KeyValues, Layout, Neighbours};
use crate::error::{KnnError, Result};
use ralm_index::{Metric, SearchParams};
use ralm_models::hash::{file_sha256, sha256_hex};
use ralm_models::marian::Transformer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Name of the datastore manifest.
pub const MANIFEST: &str = "datastore.json";
const FORMAT_VERSION: u32 = 1;
/// The only key kind: the decoder's final hidden state before the output layer.
pub const KEY: &str = "decoder-final";

/// Everything that fixes a kNN-MT datastore's contents; a resumed build must agree on all of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MtManifest {
    /// Format of this file.
    pub format_version: u32,
    /// SHA-256 over the model directory's weight files.
    pub model_sha256: String,
    /// SHA-256 of the vocabulary (`tokenizer.json`).
    pub vocab_sha256: String,
    /// Which hidden state the keys are.
    pub key: String,
    /// Key dimension.
    pub dim: usize,
    /// Search metric.
    pub metric: Metric,
    /// The parallel corpus (file name).
    pub source: String,
    /// Pairs stored.
    pub pairs: usize,
    /// SHA-256 of the tokenized pairs.
    pub source_fingerprint: String,
    /// Index structure.
    pub index: IndexSpec,
    /// Pairs per chunk file.
    pub pairs_per_chunk: usize,
    /// Entries (target tokens) of each chunk.
    pub chunk_rows: Vec<usize>,
    /// Stored entries once the build completed.
    pub count: Option<u64>,
}

impl BuildPlan for MtManifest {
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
            rows: self.chunk_rows.clone(),
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
            "vocab_sha256": self.vocab_sha256,
            "key": self.key,
            "dim": self.dim,
            "source_fingerprint": self.source_fingerprint,
        })
    }
}

/// The model a datastore belongs to: hashes of its weights and vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct MtExpect {
    /// SHA-256 over the weight files (`*.bin`, `*.safetensors`, by name).
    pub model_sha256: String,
    /// SHA-256 of `tokenizer.json`.
    pub vocab_sha256: String,
}

impl MtExpect {
    /// Hashes the model directory `dir` (as given to `Translator::load`).
    pub fn of_model_dir(dir: &Path) -> Result<Self> {
        let entries = std::fs::read_dir(dir).map_err(|e| KnnError::io(dir, e))?;
        let mut weights: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "bin" || x == "safetensors")
            })
            .collect();
        weights.sort();
        if weights.is_empty() {
            return Err(KnnError::format(
                dir,
                "no *.bin or *.safetensors weights to hash",
            ));
        }
        let mut listing = String::new();
        for p in &weights {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            listing.push_str(&format!("{name} {}\n", file_sha256(p)?));
        }
        Ok(Self {
            model_sha256: sha256_hex(listing.as_bytes()),
            vocab_sha256: file_sha256(&dir.join("tokenizer.json"))?,
        })
    }
}

/// Settings of a kNN-MT datastore build.
#[derive(Debug, Clone)]
pub struct MtBuildOptions {
    /// Search metric.
    pub metric: Metric,
    /// Index structure.
    pub index: IndexSpec,
    /// Pairs per chunk file (the unit of resumption).
    pub pairs_per_chunk: usize,
    /// Pairs per teacher-forced forward pass.
    pub batch: usize,
}

/// Builds (or resumes) a datastore in `dir` from tokenized `pairs` of the corpus named `source`.
#[allow(clippy::too_many_arguments)]
pub fn build(
    dir: &Path,
    model: &Transformer,
    expect: &MtExpect,
    pairs: &TokenPairs,
    source: &str,
    opts: &MtBuildOptions,
    progress: &mut dyn FnMut(BuildProgress),
    stop: &dyn Fn() -> bool,
) -> Result<BuildOutcome> {
    let per = opts.pairs_per_chunk.max(1);
    let n = pairs.targets.len();
    let ranges: Vec<std::ops::Range<usize>> =
        (0..n).step_by(per).map(|a| a..(a + per).min(n)).collect();
    let plan = MtManifest {
        format_version: FORMAT_VERSION,
        model_sha256: expect.model_sha256.clone(),
        vocab_sha256: expect.vocab_sha256.clone(),
        key: KEY.into(),
        dim: model.config.d_model,
        metric: opts.metric,
        source: source.into(),
        pairs: n,
        source_fingerprint: pairs.fingerprint(),
        index: opts.index,
        pairs_per_chunk: per,
        chunk_rows: ranges
            .iter()
            .map(|r| pairs.slice(r.clone()).target_tokens())
            .collect(),
        count: None,
    };
    let mut produce = |i: usize| -> Result<(Vec<f32>, Vec<u32>)> {
        let f = teacher_force(model, &pairs.slice(ranges[i].clone()), opts.batch, false)?;
        Ok((f.keys, f.targets))
    };
    run_build(dir, MANIFEST, plan, &mut produce, progress, stop)
}

/// An opened, complete kNN-MT datastore.
pub struct MtDatastore {
    manifest: MtManifest,
    kv: KeyValues,
}

impl MtDatastore {
    /// Opens the datastore in `dir`, refusing one built for another model or vocabulary.
    pub fn open(dir: &Path, expect: &MtExpect) -> Result<Self> {
        let mpath = dir.join(MANIFEST);
        let manifest: MtManifest = read_json(&mpath)?
            .ok_or_else(|| KnnError::format(&mpath, "missing: not a datastore directory"))?;
        if manifest.format_version != FORMAT_VERSION || manifest.key != KEY {
            return Err(KnnError::format(
                &mpath,
                format!(
                    "format_version {} with key {:?}, expected {FORMAT_VERSION} with {KEY:?}",
                    manifest.format_version, manifest.key
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
                ("vocab_sha256", &manifest.vocab_sha256, &expect.vocab_sha256),
            ],
        )?;
        let kv = KeyValues::open(manifest.layout(dir), manifest.provenance(), count)?;
        Ok(Self { manifest, kv })
    }

    /// The manifest.
    pub fn manifest(&self) -> &MtManifest {
        &self.manifest
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.kv.layout().dir
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.kv.len()
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
    }

    /// Searches `queries` (`n × dim`) and maps neighbour ids to stored target tokens.
    pub fn search(&self, queries: &[f32], k: usize, params: &SearchParams) -> Result<Neighbours> {
        self.kv.search(queries, k, params)
    }

    /// Switches searches to an exact index over the stored keys.
    pub fn use_exact_search(&mut self) -> Result<()> {
        self.kv.use_exact_search()
    }
}
