//! Append and delete after build, visible to the next search and compacted on save.

mod common;

use common::clustered;
use ralm_index::{
    open_index, AnyIndex, FlatIndex, Index, IvfPqIndex, IvfPqParams, KeyType, Metric, OpenOptions,
    SearchParams,
};

const DIM: usize = 32;

fn check(mut idx: AnyIndex, sp: &SearchParams) {
    let extra = clustered(10, DIM, 2, 99);
    let extra_ids: Vec<u64> = (0..10).map(|i| 1_000_000 + i).collect();
    let n0 = idx.len();
    idx.append(&extra, &extra_ids).unwrap();
    assert_eq!(idx.len(), n0 + 10);
    // Each appended vector is its own nearest neighbour.
    let hits = idx.search(&extra, 1, sp).unwrap();
    for (i, id) in extra_ids.iter().enumerate() {
        assert_eq!(hits.row(i).0[0], *id);
    }
    // Delete half of the appended and some of the original keys.
    let gone: Vec<u64> = extra_ids[..5].iter().copied().chain(0..100).collect();
    assert_eq!(idx.delete(&gone), 105);
    assert_eq!(idx.delete(&gone), 0, "already deleted");
    assert_eq!(idx.len(), n0 - 95);
    let everything = idx.search(&extra, 50, sp).unwrap();
    assert!(everything.ids.iter().all(|id| !gone.contains(id)));
    let hits = idx.search(&extra[5 * DIM..], 1, sp).unwrap();
    assert_eq!(hits.ids, &extra_ids[5..]);
    // Saving compacts: the reopened index has only live rows and the same answers.
    let tmp = tempfile::tempdir().unwrap();
    idx.save(tmp.path()).unwrap();
    let m = ralm_index::persist::read_manifest(tmp.path()).unwrap();
    assert_eq!(m.count as usize, n0 - 95);
    let back = open_index(tmp.path(), &OpenOptions::default()).unwrap();
    assert_eq!(
        back.search(&extra, 20, sp).unwrap(),
        idx.search(&extra, 20, sp).unwrap()
    );
}

#[test]
fn flat_append_delete_compact() {
    let keys = clustered(3000, DIM, 10, 1);
    let ids: Vec<u64> = (0..3000).collect();
    let idx = FlatIndex::from_vectors(DIM, Metric::L2, KeyType::F32, &keys, &ids).unwrap();
    check(AnyIndex::Flat(idx), &SearchParams::default());
}

#[test]
fn ivfpq_append_delete_compact() {
    let keys = clustered(3000, DIM, 10, 1);
    let ids: Vec<u64> = (0..3000).collect();
    let idx = IvfPqIndex::build(
        DIM,
        Metric::L2,
        KeyType::F16,
        &keys,
        &ids,
        &IvfPqParams::new(16, 8, 3),
    )
    .unwrap();
    check(
        AnyIndex::IvfPq(idx),
        &SearchParams {
            nprobe: 16,
            rerank: Some(200),
        },
    );
}
