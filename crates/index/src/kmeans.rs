//! Seeded k-means (random distinct initial points, Lloyd iterations, empty clusters split
//! from the largest) with assignment done by the exact flat kernel.

use crate::error::{IndexError, Result};
use rayon::prelude::*;

use crate::flat;
use crate::kernel;
use crate::metric::{KeyType, Metric};
use crate::rng::Rng;
use crate::rows::Rows;

/// Rows holding `centroids` (`k × dim`) with ids `0..k`, scored by `metric` (IP or L2).
pub(crate) fn centroid_rows(centroids: &[f32], dim: usize, metric: Metric) -> Rows {
    let mut rows = Rows::empty(dim, metric, KeyType::F32);
    let k = centroids.len() / dim;
    rows.append_prepared(centroids, &(0..k as u64).collect::<Vec<_>>());
    rows
}

/// The best centroid (id, score) of each row of `data`.
pub(crate) fn assign(centroids: &Rows, data: &[f32]) -> Vec<(u64, f32)> {
    flat::scan(centroids, data, 1)
        .into_iter()
        .map(|t| {
            t.into_sorted()
                .first()
                .map_or((0, f32::NEG_INFINITY), |&(s, id)| (id, s))
        })
        .collect()
}

/// Widest rows assigned by the transposed small-dimension kernel (PQ sub-spaces) rather than
/// by the blocked flat kernel.
const SMALL_DIM: usize = 32;

/// The nearest (L2) of `centroids` (`k × dim`) to each row of `data`, as (index, score) with the
/// flat kernel's score `2⟨x, c⟩ − ‖x‖² − ‖c‖²`; ties go to the smaller index.
pub(crate) fn assign_l2(centroids: &[f32], dim: usize, data: &[f32]) -> Vec<(u64, f32)> {
    if dim > SMALL_DIM {
        return assign(&centroid_rows(centroids, dim, Metric::L2), data);
    }
    let k = centroids.len() / dim;
    let ct = kernel::transpose(centroids, dim);
    let norms: Vec<f32> = centroids.chunks_exact(dim).map(kernel::norm2).collect();
    data.par_chunks(dim)
        .map_init(
            || vec![0f32; k],
            |scores, x| {
                kernel::dots_transposed(&ct, x, scores);
                for (s, &cn) in scores.iter_mut().zip(&norms) {
                    *s = 2.0 * *s - cn;
                }
                let (c, s) = kernel::argmax(scores);
                (c as u64, s - kernel::norm2(x))
            },
        )
        .collect()
}

/// `k` centroids of `data` (`n × dim`, `n ≥ k`) after `iters` Lloyd iterations, reproducible for `seed`.
pub(crate) fn kmeans(
    data: &[f32],
    dim: usize,
    k: usize,
    iters: usize,
    seed: u64,
) -> Result<Vec<f32>> {
    let n = data.len() / dim;
    if n < k {
        return Err(IndexError::invalid(format!(
            "k-means: {n} training vectors is fewer than {k} centroids"
        )));
    }
    let mut rng = Rng::new(seed);
    let mut cent: Vec<f32> = rng
        .sample(n, k)
        .into_iter()
        .flat_map(|i| data[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    for _ in 0..iters {
        let assignment = assign_l2(&cent, dim, data);
        let mut sums = vec![0f64; k * dim];
        let mut counts = vec![0usize; k];
        for (row, &(c, _)) in data.chunks_exact(dim).zip(&assignment) {
            let c = c as usize;
            counts[c] += 1;
            for (s, &x) in sums[c * dim..(c + 1) * dim].iter_mut().zip(row) {
                *s += x as f64;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                for d in 0..dim {
                    cent[c * dim + d] = (sums[c * dim + d] / counts[c] as f64) as f32;
                }
            }
        }
        // Empty clusters: split the largest cluster by nudging a copy of its centroid.
        for c in 0..k {
            if counts[c] == 0 {
                let big = (0..k)
                    .max_by_key(|&j| (counts[j], std::cmp::Reverse(j)))
                    .unwrap_or(0);
                for d in 0..dim {
                    let x = cent[big * dim + d];
                    let eps = 1e-3 * (rng.uniform() - 0.5) * (x.abs() + 1e-3);
                    cent[c * dim + d] = x + eps;
                    cent[big * dim + d] = x - eps;
                }
                counts[c] = counts[big] / 2;
                counts[big] -= counts[c];
            }
        }
    }
    Ok(cent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_dimension_assignment_matches_the_flat_kernel() {
        let mut rng = Rng::new(5);
        for dim in [1, 8, 32, 33] {
            let cent: Vec<f32> = (0..256 * dim).map(|_| rng.normal()).collect();
            let data: Vec<f32> = (0..500 * dim).map(|_| rng.normal()).collect();
            let want = assign(&centroid_rows(&cent, dim, Metric::L2), &data);
            let got = assign_l2(&cent, dim, &data);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.0, w.0, "dim {dim} row {i}");
                assert!(
                    (g.1 - w.1).abs() < 1e-3 * (1.0 + w.1.abs()),
                    "dim {dim} row {i}"
                );
            }
        }
    }

    #[test]
    fn finds_separated_clusters_deterministically() {
        let mut rng = Rng::new(3);
        let centers = [[0.0f32, 0.0], [10.0, 0.0], [0.0, 10.0]];
        let data: Vec<f32> = (0..300)
            .flat_map(|i| {
                let c = centers[i % 3];
                [c[0] + 0.1 * rng.normal(), c[1] + 0.1 * rng.normal()]
            })
            .collect();
        let a = kmeans(&data, 2, 3, 10, 7).unwrap();
        assert_eq!(a, kmeans(&data, 2, 3, 10, 7).unwrap());
        for c in centers {
            let best = a
                .chunks_exact(2)
                .map(|x| (x[0] - c[0]).powi(2) + (x[1] - c[1]).powi(2))
                .fold(f32::INFINITY, f32::min);
            assert!(best < 0.01, "no centroid near {c:?}: {a:?}");
        }
    }
}
