//! BM25 index: ranking on a handful of passages, manifest checks, clear errors on bad files.

use std::path::Path;

use ralm_realm::bm25::{Bm25Index, MANIFEST};
use ralm_realm::passages::{write_passages, Passage};

fn passages() -> Vec<Passage> {
    [
        (
            "Paris",
            "Paris is the capital and most populous city of France.",
        ),
        (
            "Berlin",
            "Berlin is the capital of Germany and its largest city.",
        ),
        (
            "Photosynthesis",
            "Plants convert light energy into chemical energy stored in glucose.",
        ),
        (
            "Volcano",
            "A volcano is a rupture in the crust through which lava escapes.",
        ),
        (
            "Normandy",
            "The Normans gave their name to Normandy, a region in northern France.",
        ),
    ]
    .iter()
    .enumerate()
    .map(|(i, (title, text))| Passage {
        id: format!("t:{title}:{i}"),
        title: title.to_string(),
        text: text.to_string(),
    })
    .collect()
}

fn build(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let p = dir.join("passages.jsonl");
    write_passages(&p, &passages()).unwrap();
    let index = dir.join("index");
    let mut calls = Vec::new();
    let manifest = Bm25Index::build(&p, &index, |done, total| calls.push((done, total))).unwrap();
    assert_eq!(manifest.passages, 5);
    assert_eq!(calls.last(), Some(&(5, 5)));
    (p, index)
}

#[test]
fn passage_with_the_query_words_ranks_first() {
    let dir = tempfile::tempdir().unwrap();
    let (p, index) = build(dir.path());
    let bm25 = Bm25Index::open(&index, &p).unwrap();
    let hits = bm25.search("What is the capital of Germany?", 3).unwrap();
    assert_eq!(hits[0].0, 1, "{hits:?}");
    assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1));
    // Stemming: "volcanoes" and "escaping" match "volcano" and "escapes".
    assert_eq!(bm25.search("volcanoes escaping lava", 1).unwrap()[0].0, 3);
    assert_eq!(bm25.search("who were the Normans", 5).unwrap()[0].0, 4);
    // Stop words and punctuation alone retrieve nothing; k bounds the result.
    assert!(bm25.search("the of?!", 5).unwrap().is_empty());
    assert_eq!(
        bm25.search("capital city France Germany", 2).unwrap().len(),
        2
    );
    let queries: Vec<String> = ["France capital", "glucose light", "zzz"]
        .map(String::from)
        .to_vec();
    let batch = bm25.search_batch(&queries, 2).unwrap();
    for (q, b) in queries.iter().zip(&batch) {
        assert_eq!(&bm25.search(q, 2).unwrap(), b);
    }
    assert_eq!(batch[1][0].0, 2);
    assert!(batch[2].is_empty());
}

#[test]
fn rebuilding_replaces_the_index_and_changed_passages_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (p, index) = build(dir.path());
    // Same passages rebuilt in place: still opens.
    Bm25Index::build(&p, &index, |_, _| {}).unwrap();
    Bm25Index::open(&index, &p).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");

    let mut changed = passages();
    changed[0].text.push_str(" Edited.");
    write_passages(&p, &changed).unwrap();
    let err = Bm25Index::open(&index, &p).err().unwrap().to_string();
    assert!(err.contains("different passages file"), "{err}");
}

#[test]
fn missing_and_corrupt_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (p, index) = build(dir.path());

    let err = Bm25Index::open(&dir.path().join("nowhere"), &p)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nowhere") && err.contains(MANIFEST), "{err}");
    let err = Bm25Index::open(&index, &dir.path().join("gone.jsonl"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("gone.jsonl"), "{err}");

    std::fs::write(index.join(MANIFEST), "{\"format\": \"ralm-bm25\",").unwrap();
    let err = Bm25Index::open(&index, &p).err().unwrap().to_string();
    assert!(err.contains(MANIFEST) && err.contains("line 1"), "{err}");

    // Rebuild, then destroy the engine's own files: an error, not a panic.
    Bm25Index::build(&p, &index, |_, _| {}).unwrap();
    for entry in std::fs::read_dir(&index).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != MANIFEST {
            std::fs::write(&path, b"garbage").unwrap();
        }
    }
    let err = Bm25Index::open(&index, &p).err().unwrap().to_string();
    assert!(err.contains("index"), "{err}");

    // Building from a bad passages file names its line; a foreign directory is not replaced.
    std::fs::write(
        &p,
        "{\"id\": \"a\", \"title\": \"t\", \"text\": \"x\"}\nnot json\n",
    )
    .unwrap();
    let err = Bm25Index::build(&p, &index, |_, _| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("passages.jsonl") && err.contains("line 2"),
        "{err}"
    );
    write_passages(&p, &passages()).unwrap();
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("keep.txt"), "mine").unwrap();
    let err = Bm25Index::build(&p, &foreign, |_, _| {})
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a BM25 index"), "{err}");
    assert!(foreign.join("keep.txt").exists());
}
