//! Shared test data: seeded clustered vectors and a naive exact reference.
#![allow(dead_code)]

use half::f16;
use ralm_index::rng::Rng;
use ralm_index::{KeyType, Metric};

/// `n` vectors around `clusters` Gaussian centres (spread 0.4), reproducible for `seed`.
pub fn clustered(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let centres: Vec<f32> = (0..clusters * dim).map(|_| rng.normal()).collect();
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let c = rng.below(clusters);
        for d in 0..dim {
            out.push(centres[c * dim + d] + 0.4 * rng.normal());
        }
    }
    out
}

/// Uniform random vectors in [-1, 1).
pub fn uniform(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n * dim).map(|_| 2.0 * rng.uniform() - 1.0).collect()
}

/// Keys as the index stores them (rounded to f16 when asked).
pub fn stored(keys: &[f32], ty: KeyType) -> Vec<f32> {
    match ty {
        KeyType::F32 => keys.to_vec(),
        KeyType::F16 => keys.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
    }
}

/// Reference score in f64 with the index's "higher is closer" convention.
pub fn score(metric: Metric, q: &[f32], k: &[f32]) -> f64 {
    let dot: f64 = q.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum();
    match metric {
        Metric::InnerProduct => dot,
        Metric::L2 => -q
            .iter()
            .zip(k)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum::<f64>(),
        Metric::Cosine => {
            let nq: f64 = q.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
            let nk: f64 = k.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
            dot / (nq * nk).max(1e-30)
        }
    }
}

/// Naive exact top-k (double loop), ties to the smaller id: (id, score) per query.
pub fn naive(
    metric: Metric,
    keys: &[f32],
    ids: &[u64],
    queries: &[f32],
    dim: usize,
    k: usize,
) -> Vec<Vec<(u64, f64)>> {
    queries
        .chunks_exact(dim)
        .map(|q| {
            let mut all: Vec<(u64, f64)> = keys
                .chunks_exact(dim)
                .zip(ids)
                .map(|(key, &id)| (id, score(metric, q, key)))
                .collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            all.truncate(k);
            all
        })
        .collect()
}

/// Fraction of the reference top-k ids found in the returned top-k.
pub fn recall(got: &ralm_index::Hits, want: &[Vec<(u64, f64)>]) -> f64 {
    let mut hit = 0;
    let mut total = 0;
    for (i, w) in want.iter().enumerate() {
        let (ids, _) = got.row(i);
        total += w.len();
        hit += w.iter().filter(|(id, _)| ids.contains(id)).count();
    }
    hit as f64 / total as f64
}
