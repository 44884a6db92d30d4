//! Exact and compressed nearest-neighbour search over memory-mapped, versioned on-disk indexes.
//!
//! Scores are "higher is closer" for every [`Metric`]: inner product, cosine, and negated
//! squared L2 distance, so callers can turn them into probabilities with `exp(score / T)`.

mod array;
pub mod builder;
mod coarse;
pub mod error;
mod fastscan;
pub mod flat;
#[cfg(any(feature = "cuda", test))]
mod gpu;
pub mod ivfpq;
mod kernel;
mod kmeans;
pub mod metric;
pub mod npy;
pub mod persist;
mod pq;
pub mod rng;
mod rows;
pub mod store;
mod topk;

pub use builder::{BuildConfig, IndexBuilder, IndexKind};
pub use error::{IndexError, Result};
pub use flat::FlatIndex;
#[cfg(feature = "cuda")]
pub use gpu::GpuFlatIndex;
pub use ivfpq::{IvfPqIndex, IvfPqParams};
pub use metric::{KeyType, Metric};
pub use persist::{open_expecting, open_index, AnyIndex, Expect, Manifest, OpenOptions};
pub use store::{IndexStore, SharedIndex};

use topk::TopK;

/// Search results for `nq` queries, row-major `nq × k`, best first. Rows with fewer than `k`
/// live keys are padded with id `u64::MAX` and score `f32::NEG_INFINITY`.
#[derive(Clone, Debug, PartialEq)]
pub struct Hits {
    /// Results per query.
    pub k: usize,
    /// Ids, `nq × k`.
    pub ids: Vec<u64>,
    /// Scores (higher is closer), `nq × k`.
    pub scores: Vec<f32>,
}

impl Hits {
    /// Number of queries.
    pub fn len(&self) -> usize {
        self.ids.len().checked_div(self.k).unwrap_or(0)
    }

    /// Whether there are no queries.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Ids and scores of query `i`.
    pub fn row(&self, i: usize) -> (&[u64], &[f32]) {
        let r = i * self.k..(i + 1) * self.k;
        (&self.ids[r.clone()], &self.scores[r])
    }

    fn from_tops(k: usize, tops: Vec<TopK>) -> Self {
        let mut ids = Vec::with_capacity(tops.len() * k);
        let mut scores = Vec::with_capacity(tops.len() * k);
        for t in tops {
            let sorted = t.into_sorted();
            let n = sorted.len().min(k);
            for &(s, id) in &sorted[..n] {
                ids.push(id);
                scores.push(s);
            }
            ids.extend(std::iter::repeat_n(u64::MAX, k - n));
            scores.extend(std::iter::repeat_n(f32::NEG_INFINITY, k - n));
        }
        Hits { k, ids, scores }
    }
}

/// Search-time knobs of approximate indexes (ignored by exact ones).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchParams {
    /// Inverted lists probed per query.
    pub nprobe: usize,
    /// Shortlist size re-scored exactly from the full keys (`None`: no re-ranking).
    pub rerank: Option<usize>,
}

impl Default for SearchParams {
    fn default() -> Self {
        SearchParams {
            nprobe: 16,
            rerank: None,
        }
    }
}

/// A searchable nearest-neighbour index.
pub trait Index: Send + Sync {
    /// Vector dimension.
    fn dim(&self) -> usize;
    /// Live (not deleted) keys.
    fn len(&self) -> usize;
    /// Whether there are no live keys.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The metric scores are computed with.
    fn metric(&self) -> Metric;
    /// Top-`k` of each query of `queries` (`nq × dim` row-major); errors on a wrong length.
    fn search(&self, queries: &[f32], k: usize, params: &SearchParams) -> Result<Hits>;
}
