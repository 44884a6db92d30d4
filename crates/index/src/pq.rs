//! Product quantisation: `m` sub-spaces × 256 centroids (8-bit codes), trained by k-means.

use rayon::prelude::*;

use crate::error::Result;
use crate::kernel;
use crate::kmeans;
use crate::metric::Metric;

/// Centroids per sub-quantiser (8-bit codes).
pub(crate) const KSUB: usize = 256;

/// Sub-vectors `j` (`dsub` wide) of every row of `data`, gathered contiguously.
fn subvectors(data: &[f32], dim: usize, dsub: usize, j: usize) -> Vec<f32> {
    data.chunks_exact(dim)
        .flat_map(|r| r[j * dsub..(j + 1) * dsub].iter().copied())
        .collect()
}

/// Trains codebooks (`m × 256 × dsub`) on `data` (`n × dim`).
pub(crate) fn train(
    data: &[f32],
    dim: usize,
    m: usize,
    iters: usize,
    seed: u64,
) -> Result<Vec<f32>> {
    let dsub = dim / m;
    let books: Vec<Vec<f32>> = (0..m)
        .into_par_iter()
        .map(|j| {
            let sub = subvectors(data, dim, dsub, j);
            kmeans::kmeans(&sub, dsub, KSUB, iters, seed.wrapping_add(1 + j as u64))
        })
        .collect::<Result<_>>()?;
    Ok(books.concat())
}

/// Codes (`n × m` bytes) of the rows of `data` (`n × dim`).
pub(crate) fn encode(books: &[f32], dim: usize, m: usize, data: &[f32]) -> Vec<u8> {
    let dsub = dim / m;
    let n = data.len() / dim;
    let mut codes = vec![0u8; n * m];
    let per_sub: Vec<Vec<u64>> = (0..m)
        .into_par_iter()
        .map(|j| {
            let cent = kmeans::centroid_rows(
                &books[j * KSUB * dsub..(j + 1) * KSUB * dsub],
                dsub,
                Metric::L2,
            );
            kmeans::assign(&cent, &subvectors(data, dim, dsub, j))
                .into_iter()
                .map(|(c, _)| c)
                .collect()
        })
        .collect();
    for (j, col) in per_sub.iter().enumerate() {
        for (i, &c) in col.iter().enumerate() {
            codes[i * m + j] = c as u8;
        }
    }
    codes
}

/// `table[j·256 + c] = ⟨q_j, book_j[c]⟩` for one query.
pub(crate) fn ip_table(books: &[f32], dsub: usize, q: &[f32], table: &mut [f32]) {
    for (j, (qj, t)) in q
        .chunks_exact(dsub)
        .zip(table.chunks_exact_mut(KSUB))
        .enumerate()
    {
        let b = &books[j * KSUB * dsub..(j + 1) * KSUB * dsub];
        for (c, x) in t.iter_mut().enumerate() {
            *x = kernel::dot(qj, &b[c * dsub..(c + 1) * dsub]);
        }
    }
}

/// `term[j·256 + c] = 2⟨centroid_j, book_j[c]⟩ + ‖book_j[c]‖²`: the query-independent part
/// of an L2 distance table for one inverted list.
pub(crate) fn l2_term(books: &[f32], dsub: usize, centroid: &[f32], term: &mut [f32]) {
    ip_table(books, dsub, centroid, term);
    for (j, t) in term.chunks_exact_mut(KSUB).enumerate() {
        for (c, x) in t.iter_mut().enumerate() {
            let b = &books[(j * KSUB + c) * dsub..][..dsub];
            *x = 2.0 * *x + kernel::norm2(b);
        }
    }
}

/// Sum of table entries selected by `code` (one per sub-quantiser), four lanes at a time.
#[inline]
pub(crate) fn adc(table: &[f32], code: &[u8]) -> f32 {
    let mut acc = [0f32; 4];
    let codes = code.chunks_exact(4);
    let tables = table.chunks_exact(4 * KSUB);
    let rest: f32 = codes
        .remainder()
        .iter()
        .zip(tables.remainder().chunks_exact(KSUB))
        .map(|(&c, t)| t[c as usize])
        .sum();
    for (c4, t4) in codes.zip(tables) {
        let t4: &[f32; 4 * KSUB] = t4.try_into().expect("table chunk");
        for i in 0..4 {
            acc[i] += t4[i * KSUB + c4[i] as usize];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + rest
}
