//! Exact (brute-force) search: blocked batched scoring with per-query bounded top-k,
//! parallel over query chunks and key blocks.

use rayon::prelude::*;

use crate::error::{IndexError, Result};
use crate::kernel::{self, PANEL};
use crate::metric::{KeyType, Metric};
use crate::rows::{Rows, Segment};
use crate::topk::TopK;
use crate::{Hits, Index, SearchParams};

/// Key rows scored per task (packed into panels that stay in cache).
const KEY_BLOCK: usize = 512;
/// Queries scored together against one key block.
const QUERY_CHUNK: usize = 120;

/// Per-task scratch: one top-k per query of the chunk, packed panels, the score tile and the
/// positions of a tile row that reach the top-k.
struct Scratch {
    tops: Vec<TopK>,
    panels: Vec<f32>,
    out: Vec<f32>,
    pass: Vec<u32>,
}

/// Exact top-`k` of prepared queries (`nq × dim`) over all live rows, by row id.
pub(crate) fn scan(rows: &Rows, queries: &[f32], k: usize) -> Vec<TopK> {
    let dim = rows.dim;
    let l2 = rows.metric == Metric::L2;
    let blocks: Vec<(usize, &Segment, usize, usize)> = rows
        .segments()
        .into_iter()
        .flat_map(|(off, seg)| {
            (0..seg.len())
                .step_by(KEY_BLOCK)
                .map(move |r0| (off, seg, r0, (r0 + KEY_BLOCK).min(seg.len())))
        })
        .collect();
    let chunks: Vec<&[f32]> = queries.chunks(QUERY_CHUNK * dim).collect();
    chunks
        .into_par_iter()
        .flat_map_iter(|chunk| {
            let nc = chunk.len() / dim;
            let qpack = kernel::pack_queries(chunk, nc, dim);
            let qnorms: Vec<f32> = if l2 {
                chunk.chunks_exact(dim).map(kernel::norm2).collect()
            } else {
                vec![0.0; nc]
            };
            let init = || Scratch {
                tops: vec![TopK::new(k); nc],
                panels: Vec::new(),
                out: Vec::new(),
                pass: Vec::new(),
            };
            let done = blocks
                .par_iter()
                .fold(init, |mut s, &(off, seg, r0, r1)| {
                    let n = r1 - r0;
                    let np = n.div_ceil(PANEL);
                    let ld = np * PANEL;
                    kernel::pack_keys(seg.keys.rows().range(dim, r0, r1), n, dim, &mut s.panels);
                    s.out.resize(nc * ld, 0.0);
                    kernel::dots(&qpack, nc, &s.panels, np, dim, &mut s.out);
                    for (qi, top) in s.tops.iter_mut().enumerate() {
                        let row = &mut s.out[qi * ld..qi * ld + n];
                        let f = kernel::Affine::exact(l2, qnorms[qi], &seg.norms, r0..r1);
                        top.offer_block(row, f, &mut s.pass, |j| {
                            (!rows.is_dead(off + r0 + j)).then(|| seg.ids[r0 + j])
                        });
                    }
                    s
                })
                .map(|s| s.tops)
                .reduce(
                    || vec![TopK::new(k); nc],
                    |mut a, b| {
                        for (x, y) in a.iter_mut().zip(b) {
                            x.merge(y);
                        }
                        a
                    },
                );
            done.into_iter()
        })
        .collect()
}

/// Exact index over f32 or f16 keys with u64 ids.
pub struct FlatIndex {
    pub(crate) rows: Rows,
    pub(crate) provenance: serde_json::Value,
}

impl FlatIndex {
    /// An empty index.
    pub fn new(dim: usize, metric: Metric, key_type: KeyType) -> Self {
        FlatIndex {
            rows: Rows::empty(dim, metric, key_type),
            provenance: serde_json::Value::Null,
        }
    }

    /// An index over `vectors` (`n × dim` row-major) with their `ids`.
    pub fn from_vectors(
        dim: usize,
        metric: Metric,
        key_type: KeyType,
        vectors: &[f32],
        ids: &[u64],
    ) -> Result<Self> {
        let mut idx = Self::new(dim, metric, key_type);
        idx.append(vectors, ids)?;
        Ok(idx)
    }

    /// Adds vectors with their ids; visible to the next search.
    pub fn append(&mut self, vectors: &[f32], ids: &[u64]) -> Result<()> {
        check_ids(&self.rows, vectors, ids)?;
        let v = self.rows.prepare(vectors);
        self.rows.append_prepared(&v, ids);
        Ok(())
    }

    /// Deletes every key with one of `ids` (tombstones until the next save); returns how many.
    pub fn delete(&mut self, ids: &[u64]) -> usize {
        self.rows.delete(ids)
    }

    /// Precision of the stored keys.
    pub fn key_type(&self) -> KeyType {
        self.rows.key_type
    }

    /// Free-form provenance saved in the manifest (model/tokenizer hashes).
    pub fn provenance(&self) -> &serde_json::Value {
        &self.provenance
    }

    /// Replaces the provenance saved with the index.
    pub fn set_provenance(&mut self, p: serde_json::Value) {
        self.provenance = p;
    }
}

/// Checks a batch of vectors and ids for an append.
pub(crate) fn check_ids(rows: &Rows, vectors: &[f32], ids: &[u64]) -> Result<()> {
    let n = rows.check_batch(vectors, "append vectors")?;
    if n != ids.len() {
        return Err(IndexError::invalid(format!(
            "append: {n} vectors but {} ids",
            ids.len()
        )));
    }
    Ok(())
}

/// Checks queries and `k`, returning the number of queries.
pub(crate) fn check_queries(rows: &Rows, queries: &[f32]) -> Result<usize> {
    rows.check_batch(queries, "search queries")
}

impl Index for FlatIndex {
    fn dim(&self) -> usize {
        self.rows.dim
    }
    fn len(&self) -> usize {
        self.rows.live()
    }
    fn metric(&self) -> Metric {
        self.rows.metric
    }
    fn search(&self, queries: &[f32], k: usize, _params: &SearchParams) -> Result<Hits> {
        check_queries(&self.rows, queries)?;
        let q = self.rows.prepare(queries);
        Ok(Hits::from_tops(k, scan(&self.rows, &q, k)))
    }
}

impl std::fmt::Debug for FlatIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlatIndex")
            .field("dim", &self.rows.dim)
            .field("metric", &self.rows.metric)
            .field("key_type", &self.rows.key_type)
            .field("live", &self.rows.live())
            .finish()
    }
}
