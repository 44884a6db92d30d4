//! The kNN next-token distribution and its interpolation with the model's softmax.
//!
//! Scores follow the index convention, higher is closer (inner product, cosine, or the negated
//! squared L2 distance), so p_kNN(y) ∝ Σ_{i: v_i = y} exp(s_i / T) is Khandelwal et al.'s
//! exp(−d/T) for L2. Padding neighbours (score −∞) carry no mass.

/// Natural log of a sum of exponentials, −∞ for an empty or all −∞ input.
fn log_sum_exp(xs: impl Iterator<Item = f32> + Clone) -> f32 {
    let max = xs.clone().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    let sum: f32 = xs.map(|x| (x - max).exp()).sum();
    max + sum.ln()
}

/// log p_kNN(target) from one query's neighbour scores and stored tokens (−∞ when no neighbour has it).
pub fn knn_log_prob(scores: &[f32], tokens: &[u32], target: u32, temperature: f32) -> f32 {
    debug_assert_eq!(scores.len(), tokens.len());
    let scaled = scores.iter().map(move |s| s / temperature);
    let total = log_sum_exp(scaled.clone());
    let hits = scaled
        .zip(tokens)
        .filter(move |(_, &t)| t == target)
        .map(|(s, _)| s);
    log_sum_exp(hits) - total
}

/// The whole p_kNN as sparse (token, probability) pairs, one entry per distinct token, sorted by token.
pub fn knn_distribution(scores: &[f32], tokens: &[u32], temperature: f32) -> Vec<(u32, f32)> {
    let total = log_sum_exp(scores.iter().map(|s| s / temperature));
    if total == f32::NEG_INFINITY {
        return Vec::new();
    }
    let mut out: Vec<(u32, f32)> = Vec::with_capacity(tokens.len());
    for (s, &t) in scores.iter().zip(tokens) {
        if *s == f32::NEG_INFINITY {
            continue;
        }
        out.push((t, (s / temperature - total).exp()));
    }
    out.sort_unstable_by_key(|&(t, _)| t);
    out.dedup_by(|next, kept| {
        if next.0 == kept.0 {
            kept.1 += next.1;
            true
        } else {
            false
        }
    });
    out
}

/// log(λ·p_kNN + (1−λ)·p_LM) from the two log-probabilities.
pub fn interpolate_log_prob(lm_log_prob: f32, knn_log_prob: f32, lambda: f32) -> f32 {
    if lambda <= 0.0 {
        return lm_log_prob;
    }
    if lambda >= 1.0 {
        return knn_log_prob;
    }
    let a = lambda.ln() + knn_log_prob;
    let b = (1.0 - lambda).ln() + lm_log_prob;
    let max = a.max(b);
    if max == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    max + ((a - max).exp() + (b - max).exp()).ln()
}

/// Mixes a sparse p_kNN into a full vocabulary of LM log-probabilities, in place.
pub fn mix_into_log_probs(lm_log_probs: &mut [f32], knn: &[(u32, f32)], lambda: f32) {
    if knn.is_empty() {
        return;
    }
    let keep = (1.0 - lambda).ln();
    for lp in lm_log_probs.iter_mut() {
        *lp += keep;
    }
    for &(t, p) in knn {
        if let Some(lp) = lm_log_probs.get_mut(t as usize) {
            let mixed = lp.exp() + lambda * p;
            *lp = mixed.ln();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The formula written out directly over a dense vocabulary.
    fn brute_force(scores: &[f32], tokens: &[u32], vocab: usize, t: f32) -> Vec<f64> {
        let w: Vec<f64> = scores.iter().map(|&s| ((s / t) as f64).exp()).collect();
        let z: f64 = w.iter().sum();
        let mut p = vec![0.0; vocab];
        for (wi, &tok) in w.iter().zip(tokens) {
            p[tok as usize] += wi / z;
        }
        p
    }

    #[test]
    fn matches_direct_computation() {
        let scores = [-1.0f32, -2.5, -0.3, -4.0, -2.5, f32::NEG_INFINITY];
        let tokens = [3u32, 1, 3, 0, 2, 9];
        for t in [0.5f32, 1.0, 10.0] {
            let dense = brute_force(&scores[..5], &tokens[..5], 10, t);
            let sparse = knn_distribution(&scores, &tokens, t);
            for y in 0..10u32 {
                let lp = knn_log_prob(&scores, &tokens, y, t);
                assert!(
                    ((lp as f64).exp() - dense[y as usize]).abs() < 1e-6,
                    "y={y} t={t}"
                );
                let sp = sparse.iter().find(|e| e.0 == y).map_or(0.0, |e| e.1);
                assert!((sp as f64 - dense[y as usize]).abs() < 1e-6);
            }
            let total: f32 = sparse.iter().map(|e| e.1).sum();
            assert!((total - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn interpolation_endpoints_and_midpoint() {
        let (lm, knn) = ((0.2f32).ln(), (0.6f32).ln());
        assert_eq!(interpolate_log_prob(lm, knn, 0.0), lm);
        assert_eq!(interpolate_log_prob(lm, knn, 1.0), knn);
        let mid = interpolate_log_prob(lm, knn, 0.25).exp();
        assert!((mid - (0.25 * 0.6 + 0.75 * 0.2)).abs() < 1e-6);
        assert_eq!(
            interpolate_log_prob(lm, f32::NEG_INFINITY, 0.25),
            lm + 0.75f32.ln()
        );
    }

    #[test]
    fn mixed_distribution_sums_to_one() {
        let lm: Vec<f32> = [0.1f32, 0.2, 0.3, 0.4].iter().map(|p| p.ln()).collect();
        let mut mixed = lm.clone();
        mix_into_log_probs(&mut mixed, &[(1, 0.5), (3, 0.5)], 0.4);
        let total: f32 = mixed.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!((mixed[1].exp() - (0.6 * 0.2 + 0.4 * 0.5)).abs() < 1e-6);
    }
}
