//! `p(z|x)` over retrieved passages as a log-linear mix of the two retrieval signals,
//! `softmax(dense · q·d + bm25 · BM25(x, z))`, and its fit on training questions.
//!
//! The retrievers rank passages; the prior decides how much each one's answers count. With the
//! dense inner product alone (REALM's `p(z|x)`), a hybrid top-k hands most of the weight to the
//! passages the dense tower likes best even when BM25 put others first. The two weights are
//! fitted by maximising the likelihood that the weight lands on passages holding a gold answer.

use serde::{Deserialize, Serialize};

use crate::ask::DEFAULT_SCORE_SCALE;

/// Weights of the two retrieval scores in `p(z|x)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PassagePrior {
    /// Weight of the dense inner product `q·d`.
    pub dense: f64,
    /// Weight of the BM25 score.
    pub bm25: f64,
}

impl Default for PassagePrior {
    /// REALM's prior: `softmax(20 · q·d)`, BM25 ignored.
    fn default() -> Self {
        Self {
            dense: DEFAULT_SCORE_SCALE,
            bm25: 0.0,
        }
    }
}

/// Dense weights tried by [`PassagePrior::fit`].
const DENSE_GRID: [f64; 11] = [0.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 80.0];

/// BM25 weights tried by [`PassagePrior::fit`] (BM25 scores of a question's top passages
/// spread over about 5–30).
const BM25_GRID: [f64; 12] = [
    0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0,
];

/// One training question's retrieved passages: their scores and whether each holds a gold
/// answer.
#[derive(Debug, Clone)]
pub struct PriorSample {
    pub dense: Vec<f32>,
    pub bm25: Vec<f32>,
    pub has_answer: Vec<bool>,
}

impl PassagePrior {
    /// The unnormalised log-prior of a passage with dense score `dense` and BM25 score `bm25`.
    pub fn logit(&self, dense: f32, bm25: f32) -> f64 {
        self.dense * dense as f64 + self.bm25 * bm25 as f64
    }

    /// `p(z|x)` of passages with dense scores `dense` and BM25 scores `bm25` (same length).
    pub fn posterior(&self, dense: &[f32], bm25: &[f32]) -> Vec<f64> {
        assert_eq!(dense.len(), bm25.len(), "one BM25 score per passage");
        let logits: Vec<f64> = dense
            .iter()
            .zip(bm25)
            .map(|(&d, &b)| self.logit(d, b))
            .collect();
        softmax(&logits)
    }

    /// Mean `log Σ_{z holds an answer} p(z|x)` over the samples where some but not all
    /// passages hold an answer (the others do not depend on the prior), and their count.
    pub fn log_likelihood(&self, samples: &[PriorSample]) -> (f64, usize) {
        let mut total = 0.0;
        let mut n = 0;
        for s in samples.iter().filter(|s| informative(s)) {
            let p = self.posterior(&s.dense, &s.bm25);
            let mass: f64 = p
                .iter()
                .zip(&s.has_answer)
                .filter(|x| *x.1)
                .map(|x| x.0)
                .sum();
            total += mass.max(f64::MIN_POSITIVE).ln();
            n += 1;
        }
        (if n == 0 { 0.0 } else { total / n as f64 }, n)
    }

    /// The grid point with the highest [`log_likelihood`](Self::log_likelihood); `bm25_free`
    /// false keeps the BM25 weight at 0. Ties keep the first point (smaller weights). With no
    /// informative sample this is the default prior.
    pub fn fit(samples: &[PriorSample], bm25_free: bool) -> Self {
        if !samples.iter().any(informative) {
            return Self::default();
        }
        let bm25_grid: &[f64] = if bm25_free { &BM25_GRID } else { &[0.0] };
        let mut best = (f64::NEG_INFINITY, Self::default());
        for &dense in &DENSE_GRID {
            for &bm25 in bm25_grid {
                let prior = Self { dense, bm25 };
                let (ll, _) = prior.log_likelihood(samples);
                if ll > best.0 {
                    best = (ll, prior);
                }
            }
        }
        best.1
    }
}

/// Whether the prior changes the sample's likelihood: some but not all passages hold an answer.
fn informative(s: &PriorSample) -> bool {
    s.has_answer.iter().any(|&h| h) && !s.has_answer.iter().all(|&h| h)
}

/// Softmax of `logits` in f64.
fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|&l| (l - max).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dense: &[f32], bm25: &[f32], has: &[bool]) -> PriorSample {
        PriorSample {
            dense: dense.to_vec(),
            bm25: bm25.to_vec(),
            has_answer: has.to_vec(),
        }
    }

    #[test]
    fn default_prior_is_the_dense_softmax() {
        let p = PassagePrior::default().posterior(&[0.5, 0.4], &[30.0, 1.0]);
        let e = (20.0f64 * -0.1).exp();
        assert!((p[0] - 1.0 / (1.0 + e)).abs() < 1e-6, "{p:?}");
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn posterior_is_a_scaled_softmax() {
        let p = PassagePrior::default().posterior(&[0.5, 0.4, 0.4], &[0.0; 3]);
        let e = (-2.0f64).exp();
        assert!((p[0] - 1.0 / (1.0 + 2.0 * e)).abs() < 1e-6);
        assert!((p[1] - p[2]).abs() < 1e-15);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn likelihood_matches_a_hand_computed_value() {
        let prior = PassagePrior {
            dense: 10.0,
            bm25: 0.5,
        };
        // logits 10·0.6 + 0.5·2 = 7, 10·0.5 + 0.5·6 = 8: answer in the second passage.
        let s = [sample(&[0.6, 0.5], &[2.0, 6.0], &[false, true])];
        let (ll, n) = prior.log_likelihood(&s);
        let want = (1.0f64.exp() / (1.0 + 1.0f64.exp())).ln();
        assert_eq!(n, 1);
        assert!((ll - want).abs() < 1e-6, "{ll} vs {want}");
    }

    #[test]
    fn fit_weighs_the_signal_that_finds_answers() {
        // The answer always sits in the passage BM25 scores highest; the dense scores point
        // elsewhere. The fit must give BM25 weight and no more dense weight than BM25 needs.
        let samples: Vec<PriorSample> = (0..50)
            .map(|i| {
                let shift = (i % 7) as f32;
                sample(
                    &[0.7, 0.5, 0.4],
                    &[9.0 + shift, 15.0 + shift, 4.0],
                    &[false, true, false],
                )
            })
            .collect();
        let fitted = PassagePrior::fit(&samples, true);
        assert!(fitted.bm25 > 0.0, "{fitted:?}");
        let dense_only = PassagePrior::fit(&samples, false);
        assert_eq!(dense_only.bm25, 0.0);
        assert_eq!(
            dense_only.dense, 0.0,
            "dense scores mislead: uniform is best"
        );
        assert!(fitted.log_likelihood(&samples).0 > dense_only.log_likelihood(&samples).0);
    }

    #[test]
    fn samples_without_contrast_leave_the_default() {
        let all = [sample(&[0.1, 0.2], &[1.0, 2.0], &[true, true])];
        let none = [sample(&[0.1, 0.2], &[1.0, 2.0], &[false, false])];
        assert_eq!(PassagePrior::fit(&all, true), PassagePrior::default());
        assert_eq!(PassagePrior::fit(&none, true), PassagePrior::default());
        assert_eq!(PassagePrior::default().log_likelihood(&none), (0.0, 0));
    }
}
