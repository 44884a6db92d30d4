//! Host side of GPU search: how a search is cut into query batches, key blocks and kernel
//! chunks; rounding rows to the padded f16 layout the GPU holds; merging the per-chunk
//! candidates the kernel returns.

use half::f16;
use rayon::prelude::*;

use crate::topk::TopK;

/// Threads per top-k thread block: a multiple of the 32-thread warp (`THREADS` in `topk.cu`).
pub(crate) const THREADS: usize = 128;
/// Largest `k` the kernel supports (`KMAX` in `topk.cu`).
pub(crate) const MAX_K: usize = 64;
/// f16 elements each GPU key row is padded to a multiple of (16 bytes, for cuBLAS' fast paths).
pub(crate) const ROW_ALIGN: usize = 8;
/// Most queries scored by one GEMM.
const MAX_QUERY_BATCH: usize = 1024;
/// Thread blocks one kernel launch aims for: a few waves on a 132-SM H100.
const TARGET_BLOCKS: usize = 2048;
/// Fewest scores one kernel thread scans (more amortise its block's merges)...
const MIN_ITEMS: usize = 64;
/// ...and most (fewer give more thread blocks, and fewer candidates to merge).
const MAX_ITEMS: usize = 1024;

/// How one search is cut into GPU work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Queries per batch: the rows of the score matrix.
    pub q_batch: usize,
    /// Keys per GEMM: the columns of the score matrix. A multiple of `chunk` unless it covers
    /// all keys, so every block starts on a chunk boundary.
    pub key_block: usize,
    /// Keys per top-k thread block.
    pub chunk: usize,
    /// Chunks over all keys: the candidate lists per query.
    pub n_chunks: usize,
}

impl Plan {
    /// Plans a top-`k` search of `nq` queries over `n` keys whose score matrix holds at most
    /// `budget` f32 values (raised to one query batch × `THREADS` keys if smaller).
    pub fn new(n: usize, nq: usize, k: usize, budget: usize) -> Plan {
        let n = n.max(1);
        let q_batch = nq.clamp(1, MAX_QUERY_BATCH);
        let max_block = (budget / q_batch).max(THREADS);
        let span = n.min(max_block);
        let min_items = (2 * k).clamp(MIN_ITEMS, MAX_ITEMS);
        let items = (span * q_batch)
            .div_ceil(TARGET_BLOCKS * THREADS)
            .clamp(min_items, MAX_ITEMS);
        let chunk = (items * THREADS).min(max_block / THREADS * THREADS);
        let key_block = if n <= max_block {
            n
        } else {
            max_block / chunk * chunk
        };
        Plan {
            q_batch,
            key_block,
            chunk,
            n_chunks: n.div_ceil(chunk),
        }
    }

    /// Bytes of GPU memory a search with this plan allocates (scores, queries, candidates) for
    /// rows of `dim_pad` halves and top-`k` lists.
    pub fn bytes(&self, dim_pad: usize, k: usize) -> usize {
        self.q_batch * (self.key_block * 4 + dim_pad * 2 + self.n_chunks * k * 8)
    }
}

/// `dim` rounded up to the padded GPU row length.
pub(crate) fn padded_dim(dim: usize) -> usize {
    dim.div_ceil(ROW_ALIGN) * ROW_ALIGN
}

/// Rounds the rows of `src` (`dim` wide) into `out` as f16 rows `dim_pad` wide, zero padded,
/// scaling each to unit length first when `normalize` (zero rows stay zero). Returns the squared
/// norm of each rounded row.
pub(crate) fn round_rows(
    src: &[f32],
    dim: usize,
    dim_pad: usize,
    normalize: bool,
    out: &mut [f16],
) -> Vec<f32> {
    src.par_chunks_exact(dim)
        .zip(out.par_chunks_exact_mut(dim_pad))
        .map(|(s, o)| {
            let len = if normalize {
                s.iter().map(|x| x * x).sum::<f32>().sqrt()
            } else {
                0.0
            };
            let mut norm = 0.0f32;
            for (o, &x) in o.iter_mut().zip(s) {
                *o = f16::from_f32(if len > 0.0 { x / len } else { x });
                let v = o.to_f32();
                norm += v * v;
            }
            o[dim..].fill(f16::ZERO);
            norm
        })
        .collect()
}

/// Merges the kernel's candidates for a batch of queries — `scores` and `rows`, each
/// `[nq, per_query]`, row −1 for an empty slot — into each query's top-`k`, adding the query's
/// `offsets` entry to its scores and mapping rows to `ids`.
pub(crate) fn merge(
    scores: &[f32],
    rows: &[i32],
    per_query: usize,
    k: usize,
    offsets: &[f32],
    ids: &[u64],
) -> Vec<TopK> {
    scores
        .par_chunks_exact(per_query)
        .zip(rows.par_chunks_exact(per_query))
        .zip(offsets.par_iter())
        .map(|((s, r), &off)| {
            let mut top = TopK::new(k);
            for (&s, &r) in s.iter().zip(r) {
                if let Ok(r) = usize::try_from(r) {
                    top.push(s + off, ids[r]);
                }
            }
            top
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every plan covers all keys in chunk-aligned blocks within the score budget.
    fn check(n: usize, nq: usize, k: usize, budget: usize) -> Plan {
        let p = Plan::new(n, nq, k, budget);
        assert!(p.q_batch >= 1 && p.q_batch <= nq.max(1));
        assert!(
            p.chunk >= THREADS && p.chunk.is_multiple_of(THREADS),
            "{p:?}"
        );
        assert!(p.key_block >= 1 && p.key_block <= n.max(1), "{p:?}");
        if p.key_block < n.max(1) {
            assert_eq!(p.key_block % p.chunk, 0, "{p:?}");
        }
        let floor = p.q_batch * THREADS;
        assert!(p.q_batch * p.key_block <= budget.max(floor), "{p:?}");
        assert_eq!(p.n_chunks, n.max(1).div_ceil(p.chunk));
        // Blocks tile the keys, and the chunks of each block number on from the previous one.
        let mut chunks = 0;
        for j0 in (0..n).step_by(p.key_block) {
            assert_eq!(j0 / p.chunk, chunks);
            chunks += (n - j0).min(p.key_block).div_ceil(p.chunk);
        }
        assert_eq!(chunks, if n == 0 { 0 } else { p.n_chunks });
        p
    }

    #[test]
    fn plans_tile_the_keys() {
        let two_gib = (2usize << 30) / 4;
        // The benchmark shape: two blocks of 512 Ki keys, 4 chunks each, 4096 thread blocks.
        let p = check(1_000_000, 1024, 32, two_gib);
        assert_eq!(
            p,
            Plan {
                q_batch: 1024,
                key_block: 524_288,
                chunk: 131_072,
                n_chunks: 8
            }
        );
        check(10_000_000, 1024, 32, two_gib);
        check(1_000_000, 1, 32, two_gib);
        check(1, 1, 64, two_gib);
        check(0, 3, 5, two_gib);
        check(5000, 1500, 10, 16 << 10);
        check(3001, 17, 32, 17 * 1000);
        check(100_003, 7, 64, 7 * 2000);
        for n in [1, 127, 128, 129, 1000, 65_537] {
            for nq in [1, 2, 1023, 1025] {
                check(n, nq, MAX_K, 100_000);
            }
        }
    }

    #[test]
    fn sizes_gpu_buffers() {
        assert_eq!(padded_dim(576), 576);
        assert_eq!(padded_dim(37), 40);
        assert_eq!(padded_dim(1), ROW_ALIGN);
        let p = Plan::new(1_000_000, 1024, 32, (2usize << 30) / 4);
        // 2 GiB of scores, 1152-byte query rows, 8 chunks × 32 (score, row) pairs per query.
        assert_eq!(p.bytes(576, 32), (2 << 30) + 1024 * (1152 + 8 * 32 * 8));
    }

    #[test]
    fn rounds_pads_and_normalises() {
        let src = [3.0, 4.0, 0.0, 0.0, 0.0, 0.0];
        let mut out = vec![f16::ONE; 2 * 8];
        let norms = round_rows(&src, 3, 8, true, &mut out);
        let got: Vec<f32> = out.iter().map(|x| x.to_f32()).collect();
        assert_eq!(
            &got[..3],
            &[0.6, 0.8, 0.0].map(|x: f32| f16::from_f32(x).to_f32())
        );
        assert!(got[3..8].iter().all(|&x| x == 0.0));
        assert!(got[8..].iter().all(|&x| x == 0.0), "zero rows stay zero");
        assert!((norms[0] - 1.0).abs() < 1e-3 && norms[1] == 0.0);
        let norms = round_rows(&src, 3, 8, false, &mut out);
        assert_eq!(norms, vec![25.0, 0.0]);
    }

    #[test]
    fn merges_candidates_best_first_and_skips_empty_slots() {
        // Two queries, two chunks of k = 2 each.
        let scores = [1.0, 0.5, 3.0, f32::NEG_INFINITY, 2.0, 2.0, 2.0, 1.0];
        let rows = [0, 1, 2, -1, 3, 0, 1, 2];
        let ids = [10, 11, 12, 13];
        let tops = merge(&scores, &rows, 4, 2, &[-1.0, 0.0], &ids);
        let sorted: Vec<_> = tops.into_iter().map(TopK::into_sorted).collect();
        assert_eq!(sorted[0], vec![(2.0, 12), (0.0, 10)]);
        // Ties go to the smaller id, as on the CPU.
        assert_eq!(sorted[1], vec![(2.0, 10), (2.0, 11)]);
    }
}
