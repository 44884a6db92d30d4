//! IVF-PQ recall against exact search on clustered data, re-ranking, determinism.

mod common;

use common::{clustered, naive, recall, stored};
use ralm_index::{Index, IvfPqIndex, IvfPqParams, KeyType, Metric, SearchParams};

const N: usize = 10_000;
const DIM: usize = 64;
/// Every metric, with a key type each.
const METRICS: [(Metric, KeyType); 3] = [
    (Metric::InnerProduct, KeyType::F32),
    (Metric::L2, KeyType::F16),
    (Metric::Cosine, KeyType::F32),
];

fn data() -> (Vec<f32>, Vec<u64>, Vec<f32>) {
    let all = clustered(N + 100, DIM, 200, 11);
    let (keys, queries) = all.split_at(N * DIM);
    (
        keys.to_vec(),
        (0..N as u64).map(|i| i + 1000).collect(),
        queries.to_vec(),
    )
}

#[test]
fn recall_at_10_on_clustered_data() {
    let (keys, ids, queries) = data();
    for (metric, ty) in METRICS {
        let idx =
            IvfPqIndex::build(DIM, metric, ty, &keys, &ids, &IvfPqParams::new(32, 16, 1)).unwrap();
        let want = naive(metric, &stored(&keys, ty), &ids, &queries, DIM, 10);
        let plain = SearchParams {
            nprobe: 8,
            rerank: None,
        };
        let r = recall(&idx.search(&queries, 10, &plain).unwrap(), &want);
        let rr = SearchParams {
            nprobe: 8,
            rerank: Some(100),
        };
        let r2 = recall(&idx.search(&queries, 10, &rr).unwrap(), &want);
        eprintln!("{metric}: recall@10 nprobe 8 = {r:.3}, with rerank 100 = {r2:.3}");
        // Stated thresholds: 0.45 from codes alone (16 bytes for 64 dims), 0.9 re-ranked.
        assert!(r >= 0.45, "{metric}: recall {r}");
        assert!(r2 >= 0.9 && r2 > r, "{metric}: rerank recall {r2} vs {r}");
    }
}

#[test]
fn recall_at_10_with_4_bit_codes() {
    let (keys, ids, queries) = data();
    for (metric, ty) in METRICS {
        let params = IvfPqParams::new(32, 32, 1).with_nbits(4);
        let idx = IvfPqIndex::build(DIM, metric, ty, &keys, &ids, &params).unwrap();
        assert_eq!(
            idx.code_bytes_per_key(),
            16 + 4 + 4 * (metric == Metric::L2) as usize
        );
        let want = naive(metric, &stored(&keys, ty), &ids, &queries, DIM, 10);
        let at = |rerank| {
            let sp = SearchParams { nprobe: 8, rerank };
            recall(&idx.search(&queries, 10, &sp).unwrap(), &want)
        };
        let (r, r2) = (at(None), at(Some(100)));
        eprintln!("{metric}, 4-bit: recall@10 nprobe 8 = {r:.3}, with rerank 100 = {r2:.3}");
        // Stated thresholds: 0.4 from codes alone (16 bytes, a little below the 8-bit codes of
        // the same size: 0.44-0.59 against 0.47-0.60 here), 0.9 re-ranked.
        assert!(r >= 0.4, "{metric}: recall {r}");
        assert!(r2 >= 0.9 && r2 > r, "{metric}: rerank recall {r2} vs {r}");
    }
}

#[test]
fn reranking_every_key_of_every_list_is_exact_search() {
    // An odd dimension (the exact kernel's 8-wide steps leave a tail), keys both in the built
    // index and appended after it (two segments), and more re-ranked keys than a multiple of
    // the rows read together.
    let (dim, n, extra) = (30, 2_500, 501);
    let keys = clustered(n + extra + 20, dim, 40, 3);
    let (keys, queries) = keys.split_at((n + extra) * dim);
    let ids: Vec<u64> = (0..(n + extra) as u64).map(|i| 3 * i + 1).collect();
    for (metric, ty) in METRICS {
        for nbits in [8, 4] {
            let params = IvfPqParams::new(16, 10, 1).with_nbits(nbits);
            let mut idx =
                IvfPqIndex::build(dim, metric, ty, &keys[..n * dim], &ids[..n], &params).unwrap();
            idx.append(&keys[n * dim..], &ids[n..]).unwrap();
            let sp = SearchParams {
                nprobe: 16,
                rerank: Some(n + extra),
            };
            let got = idx.search(queries, 10, &sp).unwrap();
            let want = naive(metric, &stored(keys, ty), &ids, queries, dim, 10);
            for (i, w) in want.iter().enumerate() {
                let (got_ids, got_scores) = got.row(i);
                let want_ids: Vec<u64> = w.iter().map(|x| x.0).collect();
                assert_eq!(got_ids, want_ids, "{metric} {nbits}-bit query {i}");
                for (&g, &(_, s)) in got_scores.iter().zip(w) {
                    assert!(
                        (g as f64 - s).abs() <= 1e-4 * s.abs().max(1.0),
                        "{metric} {nbits}-bit query {i}: score {g} vs {s}"
                    );
                }
            }
        }
    }
}

#[test]
fn same_seed_same_index_different_seed_differs() {
    let (keys, ids, queries) = data();
    let keys = &keys[..6000 * DIM];
    let ids = &ids[..6000];
    let p = IvfPqParams::new(32, 8, 5);
    let build =
        |p: &IvfPqParams| IvfPqIndex::build(DIM, Metric::L2, KeyType::F32, keys, ids, p).unwrap();
    let (a, b) = (build(&p), build(&p));
    let sp = SearchParams {
        nprobe: 4,
        rerank: None,
    };
    let ha = a.search(&queries, 10, &sp).unwrap();
    assert_eq!(ha, b.search(&queries, 10, &sp).unwrap());
    let dir = tempfile::tempdir().unwrap();
    a.save(&dir.path().join("a")).unwrap();
    b.save(&dir.path().join("b")).unwrap();
    for f in [
        "centroids.f32",
        "codebooks.f32",
        "list_codes.u8",
        "list_rows.u32",
    ] {
        let fa = std::fs::read(dir.path().join("a").join(f)).unwrap();
        assert_eq!(
            fa,
            std::fs::read(dir.path().join("b").join(f)).unwrap(),
            "{f}"
        );
    }
    let c = build(&IvfPqParams { seed: 6, ..p });
    c.save(&dir.path().join("c")).unwrap();
    assert_ne!(
        std::fs::read(dir.path().join("a/centroids.f32")).unwrap(),
        std::fs::read(dir.path().join("c/centroids.f32")).unwrap()
    );
}

#[test]
fn too_few_vectors_or_bad_m_is_an_error() {
    let (keys, ids, _) = data();
    let e = IvfPqIndex::build(
        DIM,
        Metric::L2,
        KeyType::F32,
        &keys[..100 * DIM],
        &ids[..100],
        &IvfPqParams::new(8, 8, 1),
    )
    .unwrap_err();
    assert!(e.to_string().contains("needs at least 256"), "{e}");
    let e = IvfPqIndex::build(
        DIM,
        Metric::L2,
        KeyType::F32,
        &keys,
        &ids,
        &IvfPqParams::new(8, 7, 1),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("m = 7 does not divide dim 64"),
        "{e}"
    );
    let build = |m, nbits| {
        let p = IvfPqParams::new(8, m, 1).with_nbits(nbits);
        IvfPqIndex::build(DIM, Metric::L2, KeyType::F32, &keys, &ids, &p)
            .unwrap_err()
            .to_string()
    };
    let e = build(1, 4);
    assert!(e.contains("4-bit codes need an even m"), "{e}");
    let e = build(8, 6);
    assert!(e.contains("nbits must be 8 or 4, got 6"), "{e}");
    // 4-bit codes train 16 centroids per sub-quantiser, so 100 vectors are enough for 8 lists.
    let p = IvfPqParams::new(8, 8, 1).with_nbits(4);
    IvfPqIndex::build(
        DIM,
        Metric::L2,
        KeyType::F32,
        &keys[..100 * DIM],
        &ids[..100],
        &p,
    )
    .unwrap();
}
