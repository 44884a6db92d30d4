//! Tuning data: neighbours of teacher-forced dev pairs searched once with the largest k, so
//! perplexity over a k × λ × T grid (and the gate's training) needs no further search.

use super::datastore::MtDatastore;
use super::forced::{teacher_force, TokenPairs};
use crate::datastore::Neighbours;
use crate::error::{KnnError, Result};
use crate::knnlm::sweep::{NeighbourCache, SweepPoint};
use ralm_index::SearchParams;
use ralm_models::marian::Transformer;

/// Neighbours, reference tokens and log p_MT of every teacher-forced target position.
#[derive(Debug, Clone)]
pub struct ForcedNeighbours {
    /// Neighbours (best first) of every position.
    pub neighbours: Neighbours,
    /// Reference tokens.
    pub targets: Vec<u32>,
    /// log p_MT of the reference tokens.
    pub log_probs: Vec<f32>,
}

/// A point of the k × λ × T grid.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct GridPoint {
    /// Neighbours.
    pub k: usize,
    /// λ, temperature and perplexity.
    #[serde(flatten)]
    pub point: SweepPoint,
}

impl ForcedNeighbours {
    /// Teacher-forces `pairs` and searches every position's key for `k_max` neighbours.
    pub fn compute(
        model: &Transformer,
        datastore: &MtDatastore,
        pairs: &TokenPairs,
        k_max: usize,
        search: &SearchParams,
        batch: usize,
    ) -> Result<Self> {
        let f = teacher_force(model, pairs, batch, true)?;
        let neighbours = datastore.search(&f.keys, k_max, search)?;
        Ok(Self {
            neighbours,
            targets: f.targets,
            log_probs: f.log_probs,
        })
    }

    /// The first `k` neighbours of every position as a sweep cache.
    pub fn cache(&self, k: usize) -> Result<NeighbourCache> {
        if k == 0 || k > self.neighbours.k {
            return Err(KnnError::Invalid(format!(
                "k = {k}: the cache holds 1..={} neighbours",
                self.neighbours.k
            )));
        }
        let mut c = NeighbourCache::new(k);
        for (i, (&t, &lp)) in self.targets.iter().zip(&self.log_probs).enumerate() {
            let (s, tok) = self.neighbours.row(i);
            c.push(&s[..k], &tok[..k], t, lp);
        }
        Ok(c)
    }

    /// Perplexity of the reference tokens at every (k, λ, T).
    pub fn sweep(
        &self,
        ks: &[usize],
        lambdas: &[f32],
        temperatures: &[f32],
    ) -> Result<Vec<GridPoint>> {
        let mut out = Vec::new();
        for &k in ks {
            let c = self.cache(k)?;
            for point in c.sweep(0..c.len(), lambdas, temperatures) {
                out.push(GridPoint { k, point });
            }
        }
        Ok(out)
    }
}
