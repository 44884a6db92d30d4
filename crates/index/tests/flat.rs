//! Exact search against a naive double-loop reference.

mod common;

use common::{clustered, naive, stored, uniform};
use ralm_index::{FlatIndex, Index, KeyType, Metric, SearchParams};

const ALL: [Metric; 3] = [Metric::InnerProduct, Metric::L2, Metric::Cosine];

/// Asserts hits equal the reference up to float rounding: same order, and where ids differ
/// the reference scores of the two ids are within `tol`.
fn assert_matches(idx: &FlatIndex, keys: &[f32], ids: &[u64], queries: &[f32], k: usize) {
    let dim = idx.dim();
    let metric = idx.metric();
    let hits = idx.search(queries, k, &SearchParams::default()).unwrap();
    let want = naive(metric, keys, ids, queries, dim, k);
    for (qi, w) in want.iter().enumerate() {
        let (got_ids, got_scores) = hits.row(qi);
        let tol = 1e-3 * w.first().map_or(1.0, |x| x.1.abs().max(1.0));
        for (rank, &(wid, ws)) in w.iter().enumerate() {
            assert!(
                (got_scores[rank] as f64 - ws).abs() < tol,
                "{metric} q{qi} rank {rank}: {} vs {ws}",
                got_scores[rank]
            );
            if got_ids[rank] != wid {
                let alt = w
                    .iter()
                    .find(|x| x.0 == got_ids[rank])
                    .map_or(f64::NAN, |x| x.1);
                assert!(
                    (alt - ws).abs() < tol,
                    "{metric} q{qi} rank {rank}: id {} vs {wid}",
                    got_ids[rank]
                );
            }
        }
        for rank in w.len()..k {
            assert_eq!(
                (got_ids[rank], got_scores[rank]),
                (u64::MAX, f32::NEG_INFINITY)
            );
        }
    }
}

#[test]
fn exact_matches_naive_for_all_metrics_and_key_types() {
    let (n, dim) = (3000, 48);
    let keys = clustered(n, dim, 20, 1);
    let ids: Vec<u64> = (0..n as u64).map(|i| i * 3 + 7).collect();
    let queries = uniform(37, dim, 2);
    for ty in [KeyType::F32, KeyType::F16] {
        for metric in ALL {
            let idx = FlatIndex::from_vectors(dim, metric, ty, &keys, &ids).unwrap();
            assert_eq!(idx.len(), n);
            assert_matches(&idx, &stored(&keys, ty), &ids, &queries, 10);
        }
    }
}

#[test]
fn k_larger_than_count_pads() {
    let dim = 8;
    let keys = uniform(5, dim, 3);
    let ids = [10, 11, 12, 13, 14];
    for metric in ALL {
        let idx = FlatIndex::from_vectors(dim, metric, KeyType::F32, &keys, &ids).unwrap();
        assert_matches(&idx, &keys, &ids, &uniform(3, dim, 4), 9);
    }
}

#[test]
fn duplicate_vectors_tie_to_smaller_id() {
    let dim = 16;
    let v = uniform(1, dim, 5);
    let mut keys = Vec::new();
    for _ in 0..40 {
        keys.extend_from_slice(&v);
    }
    let ids: Vec<u64> = (0..40u64).rev().map(|i| i * 2).collect();
    for metric in ALL {
        for ty in [KeyType::F32, KeyType::F16] {
            let idx = FlatIndex::from_vectors(dim, metric, ty, &keys, &ids).unwrap();
            // One and seven queries exercise different micro-kernel widths.
            for nq in [1, 7] {
                let q: Vec<f32> = uniform(nq, dim, 6);
                let hits = idx.search(&q, 5, &SearchParams::default()).unwrap();
                for i in 0..nq {
                    assert_eq!(hits.row(i).0, &[0, 2, 4, 6, 8], "{metric} {ty:?}");
                }
            }
        }
    }
}

#[test]
fn wrong_query_length_is_an_error() {
    let idx = FlatIndex::from_vectors(4, Metric::L2, KeyType::F32, &uniform(3, 4, 1), &[1, 2, 3])
        .unwrap();
    let e = idx
        .search(&[1.0; 6], 1, &SearchParams::default())
        .unwrap_err();
    assert!(e.to_string().contains("not a multiple of dim 4"), "{e}");
    let e = FlatIndex::from_vectors(4, Metric::L2, KeyType::F32, &[0.0; 8], &[1]).unwrap_err();
    assert!(e.to_string().contains("2 vectors but 1 ids"), "{e}");
}
