//! A BM25 passage index on tantivy, stored as a directory with a `manifest.json` that ties it
//! to the exact passages file it was built from.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::columnar::Column;
use tantivy::query::BooleanQuery;
use tantivy::schema::{Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
    TokenStream,
};
use tantivy::{Index, IndexReader, ReloadPolicy, Searcher, TantivyDocument, Term};

use crate::error::{RealmError, Result};
use crate::fsutil::{sync_parent, temp_sibling, write_atomic};
use crate::passages::read_passages;

/// The manifest's file name inside an index directory.
pub const MANIFEST: &str = "manifest.json";
const FORMAT: &str = "ralm-bm25";
const VERSION: u32 = 1;
const ANALYZER: &str = "ralm_en";
const IDX_FIELD: &str = "idx";
const CONTENT_FIELD: &str = "content";
/// Progress is reported every this many passages while indexing.
const PROGRESS_EVERY: usize = 1000;

/// What an index directory records about itself and the passages it was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// File name of the passages file (informational).
    pub passages_file: String,
    /// SHA-256 of the passages file, hex.
    pub passages_sha256: String,
    /// Number of passages indexed.
    pub passages: usize,
}

/// SHA-256 of a file's bytes, hex-encoded.
pub fn file_sha256(path: &Path) -> Result<String> {
    Ok(ralm_models::hash::file_sha256(path)?)
}

/// English analysis: split on non-alphanumerics, drop long tokens, lowercase, drop stop
/// words, Porter-stem (as Lucene's English analyser does for BM25 baselines).
fn analyzer() -> TextAnalyzer {
    let stop = StopWordFilter::new(Language::English).expect("tantivy ships English stop words");
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(stop)
        .filter(Stemmer::new(Language::English))
        .build()
}

fn schema() -> (Schema, Field, Field) {
    let mut builder = Schema::builder();
    let idx = builder.add_u64_field(IDX_FIELD, FAST);
    let content = builder.add_text_field(
        CONTENT_FIELD,
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(ANALYZER)
                .set_index_option(IndexRecordOption::WithFreqs),
        ),
    );
    (builder.build(), idx, content)
}

/// A BM25 index over a passages file; hits are 0-based line indices into that file's passages.
pub struct Bm25Index {
    dir: PathBuf,
    manifest: Manifest,
    content: Field,
    searcher: Searcher,
    /// The passage-index column of each segment, by segment ordinal.
    idx_columns: Vec<Column<u64>>,
}

impl Bm25Index {
    /// Indexes every passage of `passages_path` into the directory `index_dir`, replacing an
    /// earlier index there; `progress(done, total)` is called as passages are added.
    pub fn build(
        passages_path: &Path,
        index_dir: &Path,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Manifest> {
        let passages = read_passages(passages_path)?;
        let sha = file_sha256(passages_path)?;
        if index_dir.exists() && !index_dir.join(MANIFEST).exists() {
            let empty = std::fs::read_dir(index_dir)
                .map_err(|e| RealmError::io(index_dir, e))?
                .next()
                .is_none();
            if !empty {
                return Err(RealmError::Invalid(format!(
                    "{}: exists and is not a BM25 index (no {MANIFEST}); refusing to replace it",
                    index_dir.display()
                )));
            }
        }
        let tmp = temp_sibling(index_dir);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| RealmError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| RealmError::io(&tmp, e))?;
        let (schema, idx, content) = schema();
        let index = Index::create_in_dir(&tmp, schema).map_err(|e| RealmError::index(&tmp, e))?;
        index.tokenizers().register(ANALYZER, analyzer());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let mut writer = index
            .writer_with_num_threads::<TantivyDocument>(threads, threads * 50_000_000)
            .map_err(|e| RealmError::index(&tmp, e))?;
        let total = passages.len();
        for (i, p) in passages.iter().enumerate() {
            let mut doc = TantivyDocument::new();
            doc.add_u64(idx, i as u64);
            doc.add_text(content, format!("{}\n{}", p.title, p.text));
            writer
                .add_document(doc)
                .map_err(|e| RealmError::index(&tmp, e))?;
            if (i + 1) % PROGRESS_EVERY == 0 {
                progress(i + 1, total);
            }
        }
        writer.commit().map_err(|e| RealmError::index(&tmp, e))?;
        writer
            .wait_merging_threads()
            .map_err(|e| RealmError::index(&tmp, e))?;
        progress(total, total);
        let manifest = Manifest {
            format: FORMAT.to_string(),
            version: VERSION,
            passages_file: passages_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            passages_sha256: sha,
            passages: total,
        };
        write_atomic(&tmp.join(MANIFEST), |out| {
            serde_json::to_writer_pretty(&mut *out, &manifest)?;
            Ok(())
        })?;
        replace_dir(&tmp, index_dir)?;
        Ok(manifest)
    }

    /// Opens the index in `index_dir`, refusing it unless it was built from exactly the
    /// passages file at `passages_path`.
    pub fn open(index_dir: &Path, passages_path: &Path) -> Result<Self> {
        let manifest_path = index_dir.join(MANIFEST);
        if !manifest_path.exists() {
            return Err(RealmError::format(
                index_dir,
                format!("not a BM25 index: {MANIFEST} is missing"),
            ));
        }
        let manifest: Manifest = crate::data::read_json(&manifest_path)?;
        if manifest.format != FORMAT || manifest.version != VERSION {
            return Err(RealmError::format(
                &manifest_path,
                format!(
                    "format {:?} version {} is not {FORMAT:?} version {VERSION}",
                    manifest.format, manifest.version
                ),
            ));
        }
        let sha = file_sha256(passages_path)?;
        if sha != manifest.passages_sha256 {
            return Err(RealmError::Invalid(format!(
                "{}: index was built from a different passages file than {} (sha256 {} in manifest, {} now); rebuild the index",
                index_dir.display(),
                passages_path.display(),
                manifest.passages_sha256,
                sha
            )));
        }
        let index = Index::open_in_dir(index_dir).map_err(|e| RealmError::index(index_dir, e))?;
        index.tokenizers().register(ANALYZER, analyzer());
        let schema = index.schema();
        let field = |name: &str| {
            schema
                .get_field(name)
                .map_err(|e| RealmError::index(index_dir, e))
        };
        let content = field(CONTENT_FIELD)?;
        field(IDX_FIELD)?;
        let reader: IndexReader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| RealmError::index(index_dir, e))?;
        let searcher = reader.searcher();
        if searcher.num_docs() != manifest.passages as u64 {
            return Err(RealmError::index(
                index_dir,
                format!(
                    "holds {} documents but the manifest says {}",
                    searcher.num_docs(),
                    manifest.passages
                ),
            ));
        }
        let idx_columns = searcher
            .segment_readers()
            .iter()
            .map(|s| s.fast_fields().u64(IDX_FIELD))
            .collect::<tantivy::Result<Vec<_>>>()
            .map_err(|e| RealmError::index(index_dir, e))?;
        Ok(Self {
            dir: index_dir.to_path_buf(),
            manifest,
            content,
            searcher,
            idx_columns,
        })
    }

    /// The manifest the index was opened with.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The `k` best passages for `query` as `(passage index, BM25 score)`, best first.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<(usize, f32)>> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let mut analyzer = analyzer();
        let mut terms = Vec::new();
        let mut stream = analyzer.token_stream(query);
        while let Some(token) = stream.next() {
            terms.push(Term::from_field_text(self.content, &token.text));
        }
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let query = BooleanQuery::new_multiterms_query(terms);
        let hits = self
            .searcher
            .search(&query, &TopDocs::with_limit(k).order_by_score())
            .map_err(|e| RealmError::index(&self.dir, e))?;
        hits.into_iter()
            .map(|(score, addr)| {
                self.idx_columns
                    .get(addr.segment_ord as usize)
                    .and_then(|c| c.first(addr.doc_id))
                    .map(|i| (i as usize, score))
                    .ok_or_else(|| {
                        RealmError::index(
                            &self.dir,
                            format!("document {addr:?} has no {IDX_FIELD}"),
                        )
                    })
            })
            .collect()
    }

    /// [`Self::search`] for many queries in parallel, results in query order.
    pub fn search_batch(&self, queries: &[String], k: usize) -> Result<Vec<Vec<(usize, f32)>>> {
        queries.par_iter().map(|q| self.search(q, k)).collect()
    }
}

/// Moves the finished directory `tmp` to `dest`, replacing a previous index there.
fn replace_dir(tmp: &Path, dest: &Path) -> Result<()> {
    let old = dest.with_file_name(format!(
        "{}.old-{}",
        dest.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let had_old = dest.exists();
    if had_old {
        std::fs::rename(dest, &old).map_err(|e| RealmError::io(dest, e))?;
    }
    std::fs::rename(tmp, dest).map_err(|e| RealmError::io(dest, e))?;
    sync_parent(dest)?;
    if had_old {
        std::fs::remove_dir_all(&old).map_err(|e| RealmError::io(&old, e))?;
    }
    Ok(())
}
