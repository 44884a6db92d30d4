//! Neighbours cached once per evaluated position, so a whole grid of λ and temperature is
//! scored without searching again.

use crate::mixture::{interpolate_log_prob, knn_log_prob};
use rayon::prelude::*;
use serde::Serialize;

/// Per-position neighbours (k scores and stored tokens), targets and base-LM log-probabilities.
#[derive(Debug, Default, Clone)]
pub struct NeighbourCache {
    k: usize,
    scores: Vec<f32>,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    lm_log_probs: Vec<f32>,
}

/// Perplexity of one (λ, T) setting.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SweepPoint {
    pub lambda: f32,
    pub temperature: f32,
    pub perplexity: f64,
}

impl NeighbourCache {
    /// An empty cache for `k` neighbours per position.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            ..Default::default()
        }
    }

    /// Number of neighbours kept per position.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Caches one position: its k neighbour scores and tokens, the true next token and log p_LM of it.
    pub fn push(&mut self, scores: &[f32], tokens: &[u32], target: u32, lm_log_prob: f32) {
        assert_eq!(scores.len(), self.k, "scores per position must equal k");
        assert_eq!(tokens.len(), self.k, "tokens per position must equal k");
        self.scores.extend_from_slice(scores);
        self.tokens.extend_from_slice(tokens);
        self.targets.push(target);
        self.lm_log_probs.push(lm_log_prob);
    }

    /// The same positions, targets and LM log-probabilities with other neighbours
    /// (`len() × k` scores and tokens), e.g. from a smaller datastore.
    pub fn with_neighbours(&self, k: usize, scores: Vec<f32>, tokens: Vec<u32>) -> Self {
        assert_eq!(
            scores.len(),
            self.len() * k,
            "scores must hold k per position"
        );
        assert_eq!(
            tokens.len(),
            self.len() * k,
            "tokens must hold k per position"
        );
        Self {
            k,
            scores,
            tokens,
            targets: self.targets.clone(),
            lm_log_probs: self.lm_log_probs.clone(),
        }
    }

    /// log p(target) of position `i` under the kNN-LM with the given λ and T.
    pub fn log_prob(&self, i: usize, lambda: f32, temperature: f32) -> f32 {
        let r = i * self.k..(i + 1) * self.k;
        let knn = knn_log_prob(
            &self.scores[r.clone()],
            &self.tokens[r],
            self.targets[i],
            temperature,
        );
        interpolate_log_prob(self.lm_log_probs[i], knn, lambda)
    }

    /// Perplexity over all cached positions (or a subset by index range) for one setting.
    pub fn perplexity(&self, range: std::ops::Range<usize>, lambda: f32, temperature: f32) -> f64 {
        let n = range.len().max(1) as f64;
        let nll: f64 = range
            .into_par_iter()
            .map(|i| -(self.log_prob(i, lambda, temperature) as f64))
            .sum();
        (nll / n).exp()
    }

    /// Perplexity at every (λ, T) of the grid over the given positions.
    pub fn sweep(
        &self,
        range: std::ops::Range<usize>,
        lambdas: &[f32],
        temperatures: &[f32],
    ) -> Vec<SweepPoint> {
        let mut out = Vec::with_capacity(lambdas.len() * temperatures.len());
        for &temperature in temperatures {
            for &lambda in lambdas {
                let perplexity = self.perplexity(range.clone(), lambda, temperature);
                out.push(SweepPoint {
                    lambda,
                    temperature,
                    perplexity,
                });
            }
        }
        out
    }
}

/// The setting with the lowest perplexity.
pub fn best(points: &[SweepPoint]) -> Option<SweepPoint> {
    points
        .iter()
        .copied()
        .min_by(|a, b| a.perplexity.total_cmp(&b.perplexity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_zero_is_the_base_model() {
        let mut c = NeighbourCache::new(2);
        c.push(&[-1.0, -2.0], &[5, 6], 5, (0.5f32).ln());
        c.push(&[-1.0, -2.0], &[7, 6], 5, (0.25f32).ln());
        let base = c.perplexity(0..2, 0.0, 1.0);
        assert!((base - (1.0f64 / (0.5 * 0.25)).sqrt()).abs() < 1e-4);
        let pts = c.sweep(0..2, &[0.0, 0.5], &[1.0, 2.0]);
        assert_eq!(pts.len(), 4);
        // Position 0: p_kNN(5) = e^-1 / (e^-1 + e^-2); position 1 never retrieves its target.
        let p0 = 0.5 * (1.0 / (1.0 + (-1.0f64).exp())) + 0.5 * 0.5;
        let mixed = (1.0 / (p0 * 0.5 * 0.25)).sqrt();
        let at_half = pts
            .iter()
            .find(|p| p.lambda == 0.5 && p.temperature == 1.0)
            .unwrap();
        assert!(
            (at_half.perplexity - mixed).abs() < 1e-3,
            "{at_half:?} vs {mixed}"
        );
        assert_eq!(best(&pts).unwrap().lambda, 0.0);
    }
}
