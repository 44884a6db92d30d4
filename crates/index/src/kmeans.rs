//! Seeded k-means (random distinct initial points, Lloyd iterations, empty clusters split
//! from the largest) with assignment done by the exact kernel (the coarse quantiser's packed
//! centroids; in PQ sub-spaces, a kernel for small dimensions).

use crate::error::{IndexError, Result};
use rayon::prelude::*;

use crate::coarse::Coarse;
use crate::kernel;
use crate::metric::Metric;
use crate::rng::Rng;

/// Rows holding `centroids` (`k × dim`) with ids `0..k`, scored by `metric` (IP or L2): what
/// the flat search would scan, as a reference for the tests.
#[cfg(test)]
pub(crate) fn centroid_rows(centroids: &[f32], dim: usize, metric: Metric) -> crate::rows::Rows {
    let mut rows = crate::rows::Rows::empty(dim, metric, crate::metric::KeyType::F32);
    let k = centroids.len() / dim;
    rows.append_prepared(centroids, &(0..k as u64).collect::<Vec<_>>());
    rows
}

/// Rows of `data` per task of `assign`.
const ASSIGN_CHUNK: usize = 256;

/// The best centroid of each row of `data` (0 where no score is a number), on all threads.
pub(crate) fn assign(coarse: &Coarse, data: &[f32]) -> Vec<u32> {
    let dim = coarse.dim();
    data.par_chunks(ASSIGN_CHUNK * dim)
        .flat_map_iter(|chunk| {
            let best = coarse.probe(chunk, 1).into_iter();
            best.map(|t| t.into_sorted().first().map_or(0, |&(_, c)| c as u32))
        })
        .collect()
}

/// Widest rows assigned by the transposed small-dimension kernel (PQ sub-spaces) rather than
/// by the blocked flat kernel.
const SMALL_DIM: usize = 32;

/// The index of the nearest (L2) of `centroids` (`k × dim`) to each row of `data`, by the
/// exact kernel's score `2⟨x, c⟩ − ‖c‖²`; ties go to the smaller index.
pub(crate) fn nearest_l2(centroids: &[f32], dim: usize, data: &[f32]) -> Vec<u32> {
    if dim > SMALL_DIM {
        return assign(&Coarse::new(centroids, dim, Metric::L2), data);
    }
    let k = centroids.len() / dim;
    let ct = kernel::transpose(centroids, dim);
    let norms: Vec<f32> = centroids.chunks_exact(dim).map(kernel::norm2).collect();
    let mut out = vec![0u32; data.len() / dim];
    let blocked = blocked_rows_supported(k);
    // Blocks of rows for the threads; with AVX2, scored `ROWS_AT_ONCE` rows at a time.
    out.par_chunks_mut(SMALL_CHUNK)
        .zip(data.par_chunks(SMALL_CHUNK * dim))
        .for_each_init(
            || vec![0f32; k],
            |scores, (out, data)| {
                let mut done = 0;
                #[cfg(target_arch = "x86_64")]
                if blocked {
                    done = out.len() / ROWS_AT_ONCE * ROWS_AT_ONCE;
                    for (o, x) in out[..done]
                        .chunks_exact_mut(ROWS_AT_ONCE)
                        .zip(data.chunks_exact(ROWS_AT_ONCE * dim))
                    {
                        // SAFETY: AVX2 is present and `k` a multiple of 8 (`blocked`).
                        unsafe { nearest_rows_avx2(&ct, &norms, x, o) };
                    }
                }
                for (o, x) in out[done..]
                    .iter_mut()
                    .zip(data[done * dim..].chunks_exact(dim))
                {
                    *o = nearest_row(&ct, &norms, x, scores);
                }
            },
        );
    out
}

/// Rows of `data` scored together by `nearest_rows_avx2`.
const ROWS_AT_ONCE: usize = 4;
/// Rows of `data` per task of `nearest_l2` in small dimensions.
const SMALL_CHUNK: usize = 4096;

/// Whether `nearest_rows_avx2` can assign to `k` centroids on this CPU.
fn blocked_rows_supported(k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if k.is_multiple_of(8) && std::is_x86_feature_detected!("avx2") {
        return true;
    }
    let _ = k;
    false
}

/// `nearest_l2`'s answer for one row `x`, from the transposed centroids `ct` and their squared
/// norms; `scores` is scratch of one entry per centroid.
fn nearest_row(ct: &[f32], norms: &[f32], x: &[f32], scores: &mut [f32]) -> u32 {
    kernel::dots_transposed(ct, x, scores);
    for (s, &cn) in scores.iter_mut().zip(norms) {
        *s = 2.0 * *s - cn;
    }
    kernel::argmax(scores).0 as u32
}

/// `nearest_row` for `ROWS_AT_ONCE` rows (`x`) at once, 8 centroids at a time (`k` a multiple
/// of 8): each load of the centroids serves every row, and each lane keeps its best score and
/// centroid as it goes instead of writing all scores out. The products are summed in
/// `nearest_row`'s order without fusing, so the scores and answers are the same.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn nearest_rows_avx2(ct: &[f32], norms: &[f32], x: &[f32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    const R: usize = ROWS_AT_ONCE;
    let (k, dim) = (norms.len(), x.len() / R);
    assert!(k.is_multiple_of(8) && ct.len() >= k * dim && out.len() == R);
    let (two, lanes) = (
        _mm256_set1_ps(2.0),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    );
    let mut best = [_mm256_set1_ps(f32::NEG_INFINITY); R];
    let mut at = [_mm256_setzero_si256(); R];
    for c0 in (0..k).step_by(8) {
        let mut acc = [_mm256_setzero_ps(); R];
        for d in 0..dim {
            let col = _mm256_loadu_ps(ct.as_ptr().add(d * k + c0));
            for (r, a) in acc.iter_mut().enumerate() {
                let xd = _mm256_set1_ps(*x.get_unchecked(r * dim + d));
                *a = _mm256_add_ps(*a, _mm256_mul_ps(xd, col));
            }
        }
        let cn = _mm256_loadu_ps(norms.as_ptr().add(c0));
        let idx = _mm256_add_epi32(lanes, _mm256_set1_epi32(c0 as i32));
        for ((a, b), i) in acc.iter().zip(&mut best).zip(&mut at) {
            let s = _mm256_sub_ps(_mm256_mul_ps(two, *a), cn);
            let better = _mm256_cmp_ps::<_CMP_GT_OQ>(s, *b);
            *b = _mm256_blendv_ps(*b, s, better);
            *i = _mm256_castps_si256(_mm256_blendv_ps(
                _mm256_castsi256_ps(*i),
                _mm256_castsi256_ps(idx),
                better,
            ));
        }
    }
    for (r, o) in out.iter_mut().enumerate() {
        let (mut b, mut i) = ([0f32; 8], [0u32; 8]);
        _mm256_storeu_ps(b.as_mut_ptr(), best[r]);
        _mm256_storeu_si256(i.as_mut_ptr() as *mut __m256i, at[r]);
        // The best lane; among equal scores, the smallest centroid index. (A loop, not a
        // closure: a closure would not be compiled for AVX2 and inlined.)
        let (mut c, mut s) = (0u32, f32::NEG_INFINITY);
        for (&bj, &ij) in b.iter().zip(&i) {
            if bj > s || (bj == s && ij < c) {
                (c, s) = (ij, bj);
            }
        }
        *o = c;
    }
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
        let assignment = nearest_l2(&cent, dim, data);
        let mut sums = vec![0f64; k * dim];
        let mut counts = vec![0usize; k];
        for (row, &c) in data.chunks_exact(dim).zip(&assignment) {
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
    use crate::flat;

    #[test]
    fn small_dimension_assignment_matches_the_flat_kernel() {
        let mut rng = Rng::new(5);
        // 16 and 256 centroids take the blocked path, 24 the row-by-row one; 501 rows leave a
        // tail; dim 33 goes to the flat kernel.
        for (dim, k) in [(1, 256), (4, 16), (8, 256), (8, 24), (32, 256), (33, 256)] {
            let cent: Vec<f32> = (0..k * dim).map(|_| rng.normal()).collect();
            let data: Vec<f32> = (0..501 * dim).map(|_| rng.normal()).collect();
            let want: Vec<u32> = flat::scan(&centroid_rows(&cent, dim, Metric::L2), &data, 1)
                .into_iter()
                .map(|t| t.into_sorted()[0].1 as u32)
                .collect();
            assert_eq!(
                nearest_l2(&cent, dim, &data),
                want,
                "dim {dim}, {k} centroids"
            );
        }
    }

    #[test]
    fn rows_scored_together_get_the_row_by_row_answers_and_ties_go_low() {
        let mut rng = Rng::new(9);
        for (dim, k) in [(4, 16), (8, 256), (3, 24)] {
            let mut cent: Vec<f32> = (0..k * dim).map(|_| rng.normal()).collect();
            // Centroid 5 repeated as centroids 9 and k - 1: rows on it tie three ways.
            let c5 = cent[5 * dim..6 * dim].to_vec();
            cent[9 * dim..10 * dim].copy_from_slice(&c5);
            cent[(k - 1) * dim..].copy_from_slice(&c5);
            let mut data: Vec<f32> = (0..403 * dim).map(|_| rng.normal()).collect();
            for r in [0, 6, 401] {
                data[r * dim..(r + 1) * dim].copy_from_slice(&c5);
            }
            let ct = kernel::transpose(&cent, dim);
            let norms: Vec<f32> = cent.chunks_exact(dim).map(kernel::norm2).collect();
            let mut scores = vec![0f32; k];
            let want: Vec<u32> = data
                .chunks_exact(dim)
                .map(|x| nearest_row(&ct, &norms, x, &mut scores))
                .collect();
            assert_eq!(
                nearest_l2(&cent, dim, &data),
                want,
                "dim {dim}, {k} centroids"
            );
            for r in [0, 6, 401] {
                assert_eq!(want[r], 5, "dim {dim} row {r}");
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
