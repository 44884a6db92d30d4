//! Product quantisation: `m` sub-spaces × 256 centroids (8-bit codes), trained by k-means.

use rayon::prelude::*;

use crate::error::Result;
use crate::kernel;
use crate::kmeans;

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
    let per_sub: Vec<Vec<(u64, f32)>> = (0..m)
        .into_par_iter()
        .map(|j| {
            let book = &books[j * KSUB * dsub..(j + 1) * KSUB * dsub];
            kmeans::assign_l2(book, dsub, &subvectors(data, dim, dsub, j))
        })
        .collect();
    for (j, col) in per_sub.iter().enumerate() {
        for (i, &(c, _)) in col.iter().enumerate() {
            codes[i * m + j] = c as u8;
        }
    }
    codes
}

/// Codebooks (`m × 256 × dsub`) transposed to `m × dsub × 256`, so that a distance table is
/// built from broadcasts over contiguous centroids.
pub(crate) fn transpose_books(books: &[f32], dsub: usize) -> Vec<f32> {
    books
        .chunks_exact(KSUB * dsub)
        .flat_map(|b| kernel::transpose(b, dsub))
        .collect()
}

/// `table[j·256 + c] = ⟨q_j, book_j[c]⟩` for one query, from transposed codebooks.
pub(crate) fn ip_table(books_t: &[f32], dsub: usize, q: &[f32], table: &mut [f32]) {
    for ((qj, bj), t) in q
        .chunks_exact(dsub)
        .zip(books_t.chunks_exact(dsub * KSUB))
        .zip(table.chunks_exact_mut(KSUB))
    {
        kernel::dots_transposed(bj, qj, t);
    }
}

/// `term[j·256 + c] = 2⟨centroid_j, book_j[c]⟩ + ‖book_j[c]‖²`: the query-independent part
/// of an L2 distance table for one inverted list (from transposed codebooks).
pub(crate) fn l2_term(books_t: &[f32], dsub: usize, centroid: &[f32], term: &mut [f32]) {
    ip_table(books_t, dsub, centroid, term);
    for (t, bj) in term
        .chunks_exact_mut(KSUB)
        .zip(books_t.chunks_exact(dsub * KSUB))
    {
        for (c, x) in t.iter_mut().enumerate() {
            let norm: f32 = (0..dsub).map(|d| bj[d * KSUB + c].powi(2)).sum();
            *x = 2.0 * *x + norm;
        }
    }
}

/// Sum of table entries selected by `code` (one per sub-quantiser), four lanes at a time.
#[inline]
fn adc(table: &[f32], code: &[u8]) -> f32 {
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

/// Table sums of two codes at once (`m` a multiple of 8), reading each code eight bytes at a
/// time: two codes in flight keep four sums independent, and word loads halve the loads per lookup.
#[inline]
fn adc2(table: &[f32], x: &[u8], y: &[u8]) -> (f32, f32) {
    let (mut a0, mut a1, mut b0, mut b1) = (0f32, 0f32, 0f32, 0f32);
    for ((t, cx), cy) in table
        .chunks_exact(8 * KSUB)
        .zip(x.chunks_exact(8))
        .zip(y.chunks_exact(8))
    {
        let t: &[f32; 8 * KSUB] = t.try_into().expect("table group");
        let wx = u64::from_le_bytes(cx.try_into().expect("code group"));
        let wy = u64::from_le_bytes(cy.try_into().expect("code group"));
        for i in (0..8).step_by(2) {
            a0 += t[i * KSUB + ((wx >> (8 * i)) & 0xff) as usize];
            b0 += t[i * KSUB + ((wy >> (8 * i)) & 0xff) as usize];
            a1 += t[(i + 1) * KSUB + ((wx >> (8 * i + 8)) & 0xff) as usize];
            b1 += t[(i + 1) * KSUB + ((wy >> (8 * i + 8)) & 0xff) as usize];
        }
    }
    (a0 + a1, b0 + b1)
}

/// Table sums (asymmetric distances) of the `out.len()` codes of `m` bytes each in `codes`.
pub(crate) fn adc_many(table: &[f32], codes: &[u8], m: usize, out: &mut [f32]) {
    let mut done = 0;
    if m.is_multiple_of(8) {
        for (o, c) in out.chunks_exact_mut(2).zip(codes.chunks_exact(2 * m)) {
            let (x, y) = c.split_at(m);
            (o[0], o[1]) = adc2(table, x, y);
            done += 2;
        }
    }
    for (o, code) in out[done..]
        .iter_mut()
        .zip(codes[done * m..].chunks_exact(m))
    {
        *o = adc(table, code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn tables_and_distances_match_naive_sums() {
        let mut rng = Rng::new(11);
        for (m, dsub) in [(8, 3), (12, 2), (16, 1)] {
            let books: Vec<f32> = (0..m * KSUB * dsub).map(|_| rng.normal()).collect();
            let q: Vec<f32> = (0..m * dsub).map(|_| rng.normal()).collect();
            let mut table = vec![0f32; m * KSUB];
            ip_table(&transpose_books(&books, dsub), dsub, &q, &mut table);
            for j in 0..m {
                for c in 0..KSUB {
                    let b = &books[(j * KSUB + c) * dsub..][..dsub];
                    let want: f32 = (0..dsub).map(|d| q[j * dsub + d] * b[d]).sum();
                    assert!(
                        (table[j * KSUB + c] - want).abs() < 1e-5,
                        "m {m} j {j} c {c}"
                    );
                }
            }
            let n = 7;
            let codes: Vec<u8> = (0..n * m).map(|_| (rng.uniform() * 256.0) as u8).collect();
            let mut got = vec![0f32; n];
            adc_many(&table, &codes, m, &mut got);
            for (i, g) in got.iter().enumerate() {
                let want: f32 = (0..m)
                    .map(|j| table[j * KSUB + codes[i * m + j] as usize])
                    .sum();
                assert!((g - want).abs() < 1e-4, "m {m} code {i}: {g} vs {want}");
            }
        }
    }
}
