//! Save/open round trips and clear errors for damaged or mismatched index directories.

mod common;

use common::{clustered, uniform};
use ralm_index::persist::MANIFEST;
use ralm_index::{
    open_expecting, open_index, AnyIndex, Expect, FlatIndex, Index, IvfPqIndex, IvfPqParams,
    KeyType, Metric, OpenOptions, SearchParams,
};
use serde_json::json;
use std::path::Path;

const DIM: usize = 32;

fn flat(dir: &Path) -> (FlatIndex, Vec<f32>) {
    let keys = clustered(2000, DIM, 10, 3);
    let ids: Vec<u64> = (0..2000).collect();
    let mut idx = FlatIndex::from_vectors(DIM, Metric::L2, KeyType::F16, &keys, &ids).unwrap();
    idx.set_provenance(json!({"model": "minilm", "sha256": "abc"}));
    idx.save(dir).unwrap();
    (idx, uniform(20, DIM, 4))
}

fn err(dir: &Path) -> String {
    open_index(dir, &OpenOptions::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn round_trip_gives_identical_results() {
    let tmp = tempfile::tempdir().unwrap();
    let (idx, q) = flat(tmp.path());
    let sp = SearchParams::default();
    let opened = open_index(tmp.path(), &OpenOptions::default()).unwrap();
    assert_eq!(
        opened.search(&q, 7, &sp).unwrap(),
        idx.search(&q, 7, &sp).unwrap()
    );
    assert_eq!(opened.provenance()["model"], "minilm");

    let keys = clustered(3000, DIM, 10, 5);
    let ids: Vec<u64> = (0..3000).map(|i| i * 10).collect();
    for (metric, nbits) in [(Metric::InnerProduct, 8), (Metric::L2, 4)] {
        let params = IvfPqParams::new(16, 8, 2).with_nbits(nbits);
        let mut ivf = IvfPqIndex::build(DIM, metric, KeyType::F32, &keys, &ids, &params).unwrap();
        // Appended and deleted rows are merged into the saved lists.
        ivf.append(
            &q,
            &(0..q.len() / DIM)
                .map(|i| 1 + 10 * i as u64)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(ivf.delete(&[0, 10, 2990]), 3);
        let d2 = tmp.path().join(format!("ivf-{nbits}"));
        ivf.save(&d2).unwrap();
        let opened = open_index(&d2, &OpenOptions::default()).unwrap();
        for sp in [
            SearchParams {
                nprobe: 4,
                rerank: None,
            },
            SearchParams {
                nprobe: 4,
                rerank: Some(50),
            },
        ] {
            assert_eq!(
                opened.search(&q, 10, &sp).unwrap(),
                ivf.search(&q, 10, &sp).unwrap(),
                "{metric}, {nbits}-bit codes"
            );
        }
    }
}

#[test]
fn truncated_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    flat(tmp.path());
    let p = tmp.path().join("keys.f16");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
    let e = err(tmp.path());
    assert!(e.contains("keys.f16") && e.contains("truncated"), "{e}");
    // Length checks run even when checksums are skipped.
    let e = open_index(
        tmp.path(),
        &OpenOptions {
            verify_checksums: false,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("keys.f16"), "{e}");
}

#[test]
fn flipped_byte_fails_the_checksum_unless_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    flat(tmp.path());
    let p = tmp.path().join("ids.u64");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(&p, &bytes).unwrap();
    let e = err(tmp.path());
    assert!(e.contains("ids.u64") && e.contains("crc32 mismatch"), "{e}");
    assert!(open_index(
        tmp.path(),
        &OpenOptions {
            verify_checksums: false
        }
    )
    .is_ok());
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join(MANIFEST);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn manifest_problems_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    flat(tmp.path());
    edit_manifest(tmp.path(), |v| v["format_version"] = json!(99));
    let e = err(tmp.path());
    assert!(
        e.contains("manifest.json") && e.contains("format_version = 99"),
        "{e}"
    );
    edit_manifest(tmp.path(), |v| {
        v["format_version"] = json!(1);
        v["count"] = json!(1999);
        v["live"] = json!(1999);
    });
    let e = err(tmp.path());
    assert!(
        e.contains("files.keys.f16.bytes") && e.contains("count × dim"),
        "{e}"
    );
    std::fs::write(tmp.path().join(MANIFEST), b"{not json").unwrap();
    assert!(err(tmp.path()).contains("invalid JSON"));
    std::fs::remove_file(tmp.path().join(MANIFEST)).unwrap();
    assert!(err(tmp.path()).contains("manifest.json"));
}

#[test]
fn ivfpq_code_width_problems_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = clustered(2000, DIM, 10, 5);
    let ids: Vec<u64> = (0..2000).collect();
    let p = IvfPqParams::new(8, 8, 2).with_nbits(4);
    let ivf = IvfPqIndex::build(DIM, Metric::L2, KeyType::F32, &keys, &ids, &p).unwrap();
    ivf.save(tmp.path()).unwrap();
    // Older manifests have no pq_iters: their codebooks trained for `iters`.
    edit_manifest(tmp.path(), |v| {
        assert_eq!(v["ivfpq"]["pq_iters"], json!(25));
        v["ivfpq"].as_object_mut().unwrap().remove("pq_iters");
    });
    match open_index(tmp.path(), &OpenOptions::default()).unwrap() {
        AnyIndex::IvfPq(old) => assert_eq!((old.params().iters, old.params().pq_iters), (10, 10)),
        AnyIndex::Flat(_) => panic!("opened as a flat index"),
    }
    edit_manifest(tmp.path(), |v| v["ivfpq"]["nbits"] = json!(5));
    let e = err(tmp.path());
    assert!(
        e.contains("field ivfpq") && e.contains("nbits must be 8 or 4"),
        "{e}"
    );
    // 4-bit blocks read as 8-bit codes: the codebooks are 16 times too small.
    edit_manifest(tmp.path(), |v| v["ivfpq"]["nbits"] = json!(8));
    let e = err(tmp.path());
    assert!(
        e.contains("codebooks.f32") && e.contains("256 × dim"),
        "{e}"
    );
    // An index of an older build, whose lists numbered rows with u64.
    edit_manifest(tmp.path(), |v| {
        v["ivfpq"]["nbits"] = json!(4);
        let files = v["files"].as_object_mut().unwrap();
        let entry = files.remove("list_rows.u32").unwrap();
        files.insert("list_rows.u64".into(), entry);
    });
    let e = err(tmp.path());
    assert!(e.contains("list_rows.u64") && e.contains("rebuild"), "{e}");
}

#[test]
fn expectations_refuse_mismatches() {
    let tmp = tempfile::tempdir().unwrap();
    flat(tmp.path());
    let ok = Expect {
        dim: Some(DIM),
        metric: Some(Metric::L2),
        provenance: json!({"sha256": "abc"}),
    };
    assert_eq!(open_expecting(tmp.path(), &ok).unwrap().len(), 2000);
    let e = open_expecting(
        tmp.path(),
        &Expect {
            dim: Some(384),
            ..ok.clone()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("dim 32 but 384 was expected"), "{e}");
    let e = open_expecting(
        tmp.path(),
        &Expect {
            metric: Some(Metric::InnerProduct),
            ..ok.clone()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("metric l2 but ip was expected"), "{e}");
    let e = open_expecting(
        tmp.path(),
        &Expect {
            provenance: json!({"sha256": "def"}),
            ..ok
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("provenance.sha256 is \"abc\" but \"def\" was expected"),
        "{e}"
    );
}
