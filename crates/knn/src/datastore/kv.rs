//! The key/value part of a datastore: chunk files (`chunks/NNNNNN.bin`), `values.u32` and the
//! ralm-index directory `index/` whose provenance repeats what the keys were made from.

use super::store::{read_chunk, write_atomic, write_chunk, ChunkData};
use crate::error::{KnnError, Result};
use ralm_index::{
    open_expecting, AnyIndex, BuildConfig, Expect, FlatIndex, Hits, Index, IndexBuilder, IndexKind,
    IvfPqParams, KeyType, Metric, SearchParams,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The index structure of a datastore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum IndexSpec {
    /// Exact search.
    Flat,
    /// IVF-PQ with `nlist` lists and `m` sub-quantisers of `nbits` bits.
    IvfPq {
        /// Inverted lists.
        nlist: usize,
        /// PQ sub-quantisers.
        m: usize,
        /// Bits per sub-quantiser code: 8, or 4 for the fast byte-table scan (8 when absent, as
        /// in manifests written before 4-bit codes).
        #[serde(default = "eight_bits")]
        nbits: u32,
        /// Training seed.
        seed: u64,
    },
}

fn eight_bits() -> u32 {
    8
}

/// Reads a JSON file, `None` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| KnnError::format(path, e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KnnError::io(path, e)),
    }
}

/// Writes `value` as pretty JSON to `path` atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let json = serde_json::to_vec_pretty(value)
        .map_err(|e| KnnError::Invalid(format!("serialising {}: {e}", path.display())))?;
    write_atomic(path, &json)
}

/// Names of the top-level fields in which two serialisable values differ ("differs in a, b").
pub fn differing_fields<T: Serialize>(a: &T, b: &T) -> String {
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

/// Fails with a mismatch on `manifest` when a recorded hash is not the one of the loaded model.
pub fn require_equal(manifest: &Path, checks: &[(&str, &str, &str)]) -> Result<()> {
    for (field, have, want) in checks {
        if have != want {
            return Err(KnnError::mismatch(
                manifest,
                format!("datastore was built with {field} {have}, but the loaded one is {want}"),
            ));
        }
    }
    Ok(())
}

/// Where a datastore's chunk files are and what they hold.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The datastore directory.
    pub dir: PathBuf,
    /// Key dimension.
    pub dim: usize,
    /// Search metric.
    pub metric: Metric,
    /// Rows of each chunk file, in entry order.
    pub rows: Vec<usize>,
}

impl Layout {
    /// Path of chunk file `i`.
    pub fn chunk_path(&self, i: usize) -> PathBuf {
        self.dir.join("chunks").join(format!("{i:06}.bin"))
    }

    /// Whether chunk `i` is stored (files appear only once fully written, so it is finished).
    pub fn has_chunk(&self, i: usize) -> bool {
        self.chunk_path(i).exists()
    }

    /// Total rows of all chunks.
    pub fn entries(&self) -> usize {
        self.rows.iter().sum()
    }

    /// Creates the chunk directory.
    pub fn create_dirs(&self) -> Result<()> {
        let d = self.dir.join("chunks");
        std::fs::create_dir_all(&d).map_err(|e| KnnError::io(&d, e))
    }

    /// Writes chunk `i` atomically, checking it has the planned number of rows.
    pub fn write_chunk(&self, i: usize, keys: &[f32], values: &[u32]) -> Result<()> {
        let path = self.chunk_path(i);
        if self.rows.get(i) != Some(&values.len()) {
            return Err(KnnError::Invalid(format!(
                "chunk {}: {} rows, the plan says {:?}",
                path.display(),
                values.len(),
                self.rows.get(i)
            )));
        }
        write_chunk(&path, self.dim, keys, values)
    }

    /// Calls `f` with every stored chunk, in entry order, checking each against the plan.
    pub fn for_each_chunk(&self, f: &mut dyn FnMut(ChunkData) -> Result<()>) -> Result<()> {
        for (i, &rows) in self.rows.iter().enumerate() {
            let path = self.chunk_path(i);
            let c = read_chunk(&path)?;
            if c.dim != self.dim || c.values.len() != rows {
                return Err(KnnError::format(
                    &path,
                    format!(
                        "holds {} rows of dim {}, the plan says {rows} of dim {}",
                        c.values.len(),
                        c.dim,
                        self.dim
                    ),
                ));
            }
            f(c)?;
        }
        Ok(())
    }

    /// Indexes all chunks into `index/` and writes `values.u32`; returns the entry count.
    pub fn build_index(&self, spec: IndexSpec, provenance: serde_json::Value) -> Result<u64> {
        let kind = match spec {
            IndexSpec::Flat => IndexKind::Flat,
            IndexSpec::IvfPq {
                nlist,
                m,
                nbits,
                seed,
            } => IndexKind::IvfPq(IvfPqParams::new(nlist, m, seed).with_nbits(nbits)),
        };
        let mut builder = IndexBuilder::new(
            &self.dir.join("index"),
            BuildConfig {
                dim: self.dim,
                metric: self.metric,
                key_type: KeyType::F16,
                kind,
                provenance,
            },
        )?;
        let mut values: Vec<u32> = Vec::with_capacity(self.entries());
        self.for_each_chunk(&mut |c| {
            let first = values.len() as u64;
            let ids: Vec<u64> = (first..first + c.values.len() as u64).collect();
            builder.add(&c.keys, &ids)?;
            values.extend_from_slice(&c.values);
            Ok(())
        })?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_atomic(&self.dir.join("values.u32"), &bytes)?;
        builder.finish(&|_, _| {})?;
        Ok(values.len() as u64)
    }

    /// An exact in-memory index over all stored keys.
    pub fn exact_index(&self) -> Result<FlatIndex> {
        let mut idx = FlatIndex::new(self.dim, self.metric, KeyType::F16);
        let mut first = 0u64;
        self.for_each_chunk(&mut |c| {
            let n = c.values.len() as u64;
            idx.append(&c.keys, &(first..first + n).collect::<Vec<_>>())?;
            first += n;
            Ok(())
        })?;
        Ok(idx)
    }
}

/// Nearest neighbours of a batch of queries: `n × k` scores and stored values.
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

/// An opened key/value store: the index and the value of every entry.
pub struct KeyValues {
    layout: Layout,
    index: AnyIndex,
    values: Vec<u32>,
}

impl KeyValues {
    /// Opens the index and values of a complete datastore with `count` entries, checking the
    /// index's provenance.
    pub fn open(layout: Layout, provenance: serde_json::Value, count: u64) -> Result<Self> {
        let index = open_expecting(
            &layout.dir.join("index"),
            &Expect {
                dim: Some(layout.dim),
                metric: Some(layout.metric),
                provenance,
            },
        )?;
        let vpath = layout.dir.join("values.u32");
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
        Ok(Self {
            layout,
            index,
            values,
        })
    }

    /// The chunk layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Live entries (all, unless restricted).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Value stored with entry `id`.
    pub fn value(&self, id: u64) -> Option<u32> {
        self.values.get(usize::try_from(id).ok()?).copied()
    }

    /// Searches `queries` (`n × dim`) and maps neighbour ids to stored values.
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

    /// Switches searches to an exact index over the stored keys (no-op for a flat index).
    pub fn use_exact_search(&mut self) -> Result<()> {
        if matches!(self.index, AnyIndex::IvfPq(_)) {
            self.index = AnyIndex::Flat(self.layout.exact_index()?);
        }
        Ok(())
    }
}

/// A deterministic pseudo-random number in `[0, 1)` for `id` under `seed` (splitmix64).
pub(crate) fn unit_hash(id: u64, seed: u64) -> f64 {
    let z = ralm_index::rng::splitmix64(id.wrapping_add(seed.wrapping_mul(ralm_index::rng::GAMMA)));
    (z >> 11) as f64 / (1u64 << 53) as f64
}
