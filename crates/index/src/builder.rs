//! Building an index from a stream of vector chunks larger than memory: keys are spilled to a
//! file as they arrive, then (for IVF-PQ) training samples and chunked encoding read the
//! memory-mapped spill.

use memmap2::Mmap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::array::Array;
use crate::error::{IndexError, Result};
use crate::flat::{check_ids, FlatIndex};
use crate::ivfpq::{check_row_count, IvfPqIndex, IvfPqParams, Progress};
use crate::metric::{KeyType, Metric};
use crate::persist::{open_index, AnyIndex, KeyFile, OpenOptions, Sink};
use crate::rows::{Keys, Rows, Segment};

/// Which index to build.
#[derive(Clone, Debug)]
pub enum IndexKind {
    /// Exact index.
    Flat,
    /// IVF-PQ index with these parameters.
    IvfPq(IvfPqParams),
}

/// What the builder produces.
#[derive(Clone, Debug)]
pub struct BuildConfig {
    /// Vector dimension.
    pub dim: usize,
    /// Scoring metric.
    pub metric: Metric,
    /// Precision of the stored keys.
    pub key_type: KeyType,
    /// Index structure.
    pub kind: IndexKind,
    /// Provenance written to the manifest.
    pub provenance: serde_json::Value,
}

/// Streams vectors into an index directory.
pub struct IndexBuilder {
    dir: PathBuf,
    config: BuildConfig,
    spill_path: PathBuf,
    spill: Sink,
    ids: Vec<u64>,
    norms: Vec<f32>,
}

impl IndexBuilder {
    /// Starts building into `dir` (created if missing).
    pub fn new(dir: &Path, config: BuildConfig) -> Result<Self> {
        if config.dim == 0 {
            return Err(IndexError::invalid("build: dim must be positive"));
        }
        std::fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
        let spill_path = dir.join("keys.spill.tmp");
        Ok(IndexBuilder {
            dir: dir.to_path_buf(),
            config,
            spill: Sink::create(&spill_path)?,
            spill_path,
            ids: Vec::new(),
            norms: Vec::new(),
        })
    }

    /// Adds a chunk of vectors (`n × dim`) with their ids.
    pub fn add(&mut self, vectors: &[f32], ids: &[u64]) -> Result<()> {
        let c = &self.config;
        let mut chunk = Rows::empty(c.dim, c.metric, c.key_type);
        check_ids(&chunk, vectors, ids)?;
        if let IndexKind::IvfPq(_) = c.kind {
            // Refused now rather than after the whole stream was spilled.
            check_row_count(self.ids.len() + ids.len())?;
        }
        let v = chunk.prepare(vectors);
        chunk.append_prepared(&v, ids);
        let tail = &chunk.tail;
        self.spill.write(tail.keys.row_bytes(c.dim, 0, ids.len()))?;
        self.ids.extend_from_slice(ids);
        self.norms.extend_from_slice(&tail.norms);
        Ok(())
    }

    /// Vectors added so far.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether nothing was added yet.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Trains (IVF-PQ), encodes with progress reports, writes the index files (the spill becomes
    /// the key file) and opens them.
    pub fn finish(self, progress: Progress<'_>) -> Result<AnyIndex> {
        let IndexBuilder {
            dir,
            config: c,
            spill_path,
            spill,
            ids,
            norms,
        } = self;
        let (f, entry) = spill.finish()?;
        let elems = ids.len() * c.dim;
        let keys = if elems == 0 {
            Keys::empty(c.key_type)
        } else {
            // SAFETY: the spill file is private to this builder and no longer written.
            let map =
                Arc::new(unsafe { Mmap::map(&f) }.map_err(|e| IndexError::io(&spill_path, e))?);
            match c.key_type {
                KeyType::F32 => Keys::F32(Array::mapped(map, elems)),
                KeyType::F16 => Keys::F16(Array::mapped(map, elems)),
            }
        };
        let n = ids.len();
        let base = Segment {
            keys,
            ids: ids.into(),
            norms: norms.into(),
        };
        let rows = Rows::new(c.dim, c.metric, c.key_type, base);
        let keys = Some(KeyFile {
            path: &spill_path,
            entry,
        });
        match &c.kind {
            IndexKind::Flat => {
                let idx = FlatIndex {
                    rows,
                    provenance: c.provenance.clone(),
                };
                idx.save_with(&dir, keys)?;
                progress(n, n);
            }
            IndexKind::IvfPq(p) => {
                let mut idx = IvfPqIndex::train_rows(rows, p, progress)?;
                idx.set_provenance(c.provenance.clone());
                idx.save_with(&dir, keys)?;
            }
        }
        drop(f);
        open_index(&dir, &OpenOptions::default())
    }
}
