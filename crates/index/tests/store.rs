//! Streaming builds, snapshots, atomic version switching under concurrent readers, retraining.

mod common;

use common::clustered;
use ralm_index::{
    AnyIndex, BuildConfig, FlatIndex, Index, IndexBuilder, IndexKind, IndexStore, IvfPqIndex,
    IvfPqParams, KeyType, Metric, SearchParams, SharedIndex,
};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const DIM: usize = 16;

#[test]
fn streamed_build_equals_in_memory_build() {
    let keys = clustered(4000, DIM, 20, 8);
    let ids: Vec<u64> = (0..4000).map(|i| i * 7).collect();
    let params = IvfPqParams::new(16, 4, 9);
    let tmp = tempfile::tempdir().unwrap();
    let config = BuildConfig {
        dim: DIM,
        metric: Metric::L2,
        key_type: KeyType::F16,
        kind: IndexKind::IvfPq(params.clone()),
        provenance: serde_json::json!({"model": "test"}),
    };
    let mut b = IndexBuilder::new(tmp.path(), config).unwrap();
    for (k, i) in keys.chunks(1000 * DIM).zip(ids.chunks(1000)) {
        b.add(k, i).unwrap();
    }
    let last = std::sync::Mutex::new((0, 0));
    let streamed = b
        .finish(&|done, total| *last.lock().unwrap() = (done, total))
        .unwrap();
    assert_eq!(*last.lock().unwrap(), (4000, 4000));
    assert!(!tmp.path().join("keys.spill.tmp").exists());
    let mem = IvfPqIndex::build(DIM, Metric::L2, KeyType::F16, &keys, &ids, &params).unwrap();
    let q = clustered(30, DIM, 20, 8);
    let sp = SearchParams {
        nprobe: 4,
        rerank: Some(40),
    };
    assert_eq!(
        streamed.search(&q, 10, &sp).unwrap(),
        mem.search(&q, 10, &sp).unwrap()
    );
    assert_eq!(streamed.provenance()["model"], "test");
}

#[test]
fn streamed_flat_build_moves_its_spill_in_as_the_key_file() {
    let keys = clustered(3000, DIM, 20, 5);
    let ids: Vec<u64> = (0..3000).collect();
    let tmp = tempfile::tempdir().unwrap();
    let (streamed_dir, mem_dir) = (tmp.path().join("streamed"), tmp.path().join("mem"));
    let config = BuildConfig {
        dim: DIM,
        metric: Metric::L2,
        key_type: KeyType::F16,
        kind: IndexKind::Flat,
        provenance: serde_json::json!({}),
    };
    let mut b = IndexBuilder::new(&streamed_dir, config).unwrap();
    for (k, i) in keys.chunks(700 * DIM).zip(ids.chunks(700)) {
        b.add(k, i).unwrap();
    }
    let streamed = b.finish(&|_, _| {}).unwrap();
    let mem = FlatIndex::from_vectors(DIM, Metric::L2, KeyType::F16, &keys, &ids).unwrap();
    mem.save(&mem_dir).unwrap();
    let files = |d: &std::path::Path| {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(files(&streamed_dir), files(&mem_dir));
    for f in ["keys.f16", "ids.u64", "norms.f32"] {
        let (a, b) = (streamed_dir.join(f), mem_dir.join(f));
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap(), "{f}");
    }
    let q = clustered(20, DIM, 20, 6);
    let sp = SearchParams::default();
    assert_eq!(
        streamed.search(&q, 5, &sp).unwrap(),
        mem.search(&q, 5, &sp).unwrap()
    );
}

/// Version `v` holds 64 marker keys with ids `v·1000 + i`.
fn publish_marker(store: &IndexStore, v: u64) -> u64 {
    let keys = clustered(64, DIM, 4, v);
    let ids: Vec<u64> = (0..64).map(|i| v * 1000 + i).collect();
    store
        .publish(|dir| {
            FlatIndex::from_vectors(DIM, Metric::InnerProduct, KeyType::F32, &keys, &ids)?.save(dir)
        })
        .unwrap()
}

#[test]
fn readers_always_see_one_complete_version() {
    let tmp = tempfile::tempdir().unwrap();
    let store = IndexStore::open(tmp.path()).unwrap();
    assert!(store.open_current().is_err());
    assert_eq!(publish_marker(&store, 1), 1);
    let shared = Arc::new(SharedIndex::new(store).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let searches = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..3)
        .map(|t| {
            let (shared, stop, searches) = (shared.clone(), stop.clone(), searches.clone());
            std::thread::spawn(move || {
                let q = clustered(4, DIM, 4, 100 + t);
                let mut seen = std::collections::BTreeSet::new();
                // Run until stopped, and at least until the final version was searched.
                while !(stop.load(Ordering::Relaxed) && seen.contains(&6)) {
                    let idx = shared.get();
                    let hits = idx.search(&q, 64, &SearchParams::default()).unwrap();
                    let v = hits.ids[0] / 1000;
                    assert!(
                        hits.ids.iter().all(|id| id / 1000 == v),
                        "mixed versions: {:?}",
                        hits.ids
                    );
                    assert_eq!(idx.len(), 64);
                    seen.insert(v);
                    searches.fetch_add(1, Ordering::Relaxed);
                }
                seen
            })
        })
        .collect();
    for v in 2..=6 {
        assert_eq!(publish_marker(shared.store(), v), v);
        assert!(shared.reload().unwrap());
        assert_eq!(shared.version(), v);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!shared.reload().unwrap());
    stop.store(true, Ordering::Relaxed);
    let mut seen = std::collections::BTreeSet::new();
    for r in readers {
        seen.extend(r.join().unwrap());
    }
    assert!(searches.load(Ordering::Relaxed) > 0);
    assert!(
        seen.iter().all(|v| (1..=6).contains(v)) && seen.contains(&6),
        "{seen:?}"
    );
    let store = shared.store();
    assert_eq!(store.versions().unwrap(), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(store.gc(2).unwrap(), vec![1, 2, 3, 4]);
    assert_eq!(store.versions().unwrap(), vec![5, 6]);
    assert_eq!(store.open_current().unwrap().0, 6);
}

#[test]
fn retrain_in_background_while_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let store = IndexStore::open(tmp.path()).unwrap();
    let keys = clustered(3000, DIM, 10, 4);
    let ids: Vec<u64> = (0..3000).collect();
    let params = IvfPqParams::new(8, 4, 1);
    store
        .publish(|dir| {
            IvfPqIndex::build(DIM, Metric::L2, KeyType::F32, &keys, &ids, &params)?.save(dir)
        })
        .unwrap();
    let mut old = match store.open_version(1).unwrap() {
        AnyIndex::IvfPq(i) => i,
        AnyIndex::Flat(_) => panic!("expected IVF-PQ"),
    };
    old.delete(&[0, 1, 2]);
    let old = Arc::new(old);
    let q = keys[10 * DIM..20 * DIM].to_vec();
    let sp = SearchParams {
        nprobe: 8,
        rerank: Some(50),
    };
    let before = old.search(&q, 5, &sp).unwrap();
    let bg = {
        let old = old.clone();
        let store = IndexStore::open(tmp.path()).unwrap();
        std::thread::spawn(move || {
            store
                .publish(|dir| old.retrain(2, &|_, _| {})?.save(dir))
                .unwrap()
        })
    };
    for _ in 0..5 {
        assert_eq!(old.search(&q, 5, &sp).unwrap(), before);
    }
    assert_eq!(bg.join().unwrap(), 2);
    let new = store.open_version(2).unwrap();
    assert_eq!(new.len(), 2997);
    let m = ralm_index::persist::read_manifest(&store.version_dir(2)).unwrap();
    assert_eq!(m.ivfpq.unwrap().seed, 2);
    // With full re-ranking both versions find the exact neighbours of keys they contain.
    assert_eq!(new.search(&q, 5, &sp).unwrap().ids, before.ids);
}
