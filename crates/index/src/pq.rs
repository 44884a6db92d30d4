//! Product quantisation: `m` sub-spaces × `2^nbits` centroids (8-bit or 4-bit codes), trained by
//! k-means; codes are unpacked here, one byte per sub-quantiser.

use rayon::prelude::*;

use crate::error::Result;
use crate::kernel;
use crate::kmeans;

/// Centroids per sub-quantiser of 8-bit codes (the width of the f32 tables scanned here).
pub(crate) const KSUB: usize = 256;

/// Centroids per sub-quantiser of `nbits`-bit codes.
pub(crate) fn ksub(nbits: u32) -> usize {
    1 << nbits
}

/// Sub-vectors `j` (`dsub` wide) of every row of `data`, gathered contiguously.
fn subvectors(data: &[f32], dim: usize, dsub: usize, j: usize) -> Vec<f32> {
    data.chunks_exact(dim)
        .flat_map(|r| r[j * dsub..(j + 1) * dsub].iter().copied())
        .collect()
}

/// Trains codebooks (`m × ksub × dsub`) on `data` (`n × dim`).
pub(crate) fn train(
    data: &[f32],
    dim: usize,
    m: usize,
    ksub: usize,
    iters: usize,
    seed: u64,
) -> Result<Vec<f32>> {
    let dsub = dim / m;
    let books: Vec<Vec<f32>> = (0..m)
        .into_par_iter()
        .map(|j| {
            let sub = subvectors(data, dim, dsub, j);
            kmeans::kmeans(&sub, dsub, ksub, iters, seed.wrapping_add(1 + j as u64))
        })
        .collect::<Result<_>>()?;
    Ok(books.concat())
}

/// Codes (`n × m` bytes) of the rows of `data` (`n × dim`), from codebooks `m × ksub × dsub`.
pub(crate) fn encode(books: &[f32], dim: usize, m: usize, data: &[f32]) -> Vec<u8> {
    let dsub = dim / m;
    let ksub = books.len() / (m * dsub);
    let n = data.len() / dim;
    let mut codes = vec![0u8; n * m];
    let per_sub: Vec<Vec<u32>> = (0..m)
        .into_par_iter()
        .map(|j| {
            let book = &books[j * ksub * dsub..(j + 1) * ksub * dsub];
            kmeans::nearest_l2(book, dsub, &subvectors(data, dim, dsub, j))
        })
        .collect();
    for (j, col) in per_sub.iter().enumerate() {
        for (i, &c) in col.iter().enumerate() {
            codes[i * m + j] = c as u8;
        }
    }
    codes
}

/// Codebooks (`m × ksub × dsub`) transposed to `m × dsub × ksub`, so that a distance table is
/// built from broadcasts over contiguous centroids.
pub(crate) fn transpose_books(books: &[f32], dsub: usize, ksub: usize) -> Vec<f32> {
    books
        .chunks_exact(ksub * dsub)
        .flat_map(|b| kernel::transpose(b, dsub))
        .collect()
}

/// `table[j·ksub + c] = ⟨q_j, book_j[c]⟩` for one query, from transposed codebooks
/// (`ksub = table.len() / m`).
pub(crate) fn ip_table(books_t: &[f32], dsub: usize, q: &[f32], table: &mut [f32]) {
    let ksub = table.len() * dsub / q.len();
    for ((qj, bj), t) in q
        .chunks_exact(dsub)
        .zip(books_t.chunks_exact(dsub * ksub))
        .zip(table.chunks_exact_mut(ksub))
    {
        kernel::dots_transposed(bj, qj, t);
    }
}

/// `2⟨centroid, r̂⟩ + ‖r̂‖²` for the residual r̂ that `code` decodes to (codebooks
/// `m × ksub × dsub`): the query-independent part of an L2 distance, since
/// `‖q − centroid − r̂‖² = ‖q − centroid‖² − 2⟨q, r̂⟩ + 2⟨centroid, r̂⟩ + ‖r̂‖²`.
pub(crate) fn code_term(books: &[f32], dsub: usize, centroid: &[f32], code: &[u8]) -> f32 {
    let ksub = books.len() / (code.len() * dsub);
    code.iter()
        .zip(centroid.chunks_exact(dsub))
        .enumerate()
        .map(|(j, (&c, cj))| {
            let b = &books[(j * ksub + c as usize) * dsub..][..dsub];
            b.iter()
                .zip(cj)
                .map(|(&x, &y)| x * (2.0 * y + x))
                .sum::<f32>()
        })
        .sum()
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

/// Table sums of two codes at once over the sub-quantisers of `table` (a multiple of 4 of them),
/// four independent sums per code so that the additions overlap the table loads.
#[inline]
fn adc2(table: &[f32], x: &[u8], y: &[u8]) -> (f32, f32) {
    let (mut a, mut b) = ([0f32; 4], [0f32; 4]);
    for ((t, cx), cy) in table
        .chunks_exact(4 * KSUB)
        .zip(x.chunks_exact(4))
        .zip(y.chunks_exact(4))
    {
        let t: &[f32; 4 * KSUB] = t.try_into().expect("table group");
        let cx: &[u8; 4] = cx.try_into().expect("code group");
        let cy: &[u8; 4] = cy.try_into().expect("code group");
        for i in 0..4 {
            a[i] += t[i * KSUB + cx[i] as usize];
            b[i] += t[i * KSUB + cy[i] as usize];
        }
    }
    ((a[0] + a[1]) + (a[2] + a[3]), (b[0] + b[1]) + (b[2] + b[3]))
}

/// Sub-quantisers whose tables one pass over a block of codes reads: 32 KiB of f32 tables,
/// the size of the L1 data cache. A single pass over all 64 tables of 576-d keys (64 KiB)
/// would evict each table before its next use.
const PASS: usize = 32;

/// Table sums (asymmetric distances) of the `out.len()` codes of `m` bytes each in `codes`.
/// With `m` a multiple of 4 the sums are taken in passes of `PASS` sub-quantisers, two codes
/// at a time.
pub(crate) fn adc_many(table: &[f32], codes: &[u8], m: usize, out: &mut [f32]) {
    let n = out.len();
    let mut done = 0;
    if m.is_multiple_of(4) {
        for j0 in (0..m).step_by(PASS) {
            let j1 = (j0 + PASS).min(m);
            let t = &table[j0 * KSUB..j1 * KSUB];
            for (o, c) in out.chunks_exact_mut(2).zip(codes.chunks_exact(2 * m)) {
                let (x, y) = c.split_at(m);
                let (dx, dy) = adc2(t, &x[j0..j1], &y[j0..j1]);
                if j0 == 0 {
                    (o[0], o[1]) = (dx, dy);
                } else {
                    o[0] += dx;
                    o[1] += dy;
                }
            }
        }
        done = n - n % 2;
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
        for (m, dsub) in [(8, 3), (12, 2), (16, 1), (6, 2), (72, 1)] {
            let books: Vec<f32> = (0..m * KSUB * dsub).map(|_| rng.normal()).collect();
            let q: Vec<f32> = (0..m * dsub).map(|_| rng.normal()).collect();
            let mut table = vec![0f32; m * KSUB];
            ip_table(&transpose_books(&books, dsub, KSUB), dsub, &q, &mut table);
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
