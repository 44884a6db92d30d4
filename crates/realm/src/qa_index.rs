//! An open-domain QA index directory: chunked passages, their dense vectors in an index
//! snapshot (IndexStore) tied to the encoder that made them, and a BM25 index beside it.
//!
//! Layout: `passages.jsonl`, `vectors.npy` (f16, one row per passage), `dense/` (IndexStore
//! root with `CURRENT`), `bm25/`, `manifest.json`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use ralm_index::{
    open_expecting, BuildConfig, Expect, Index, IndexBuilder, IndexKind, IndexStore, KeyType,
    Metric,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::bm25::{file_sha256, Bm25Index};
use crate::data::{read_json, read_wiki_summaries, Document};
use crate::error::{RealmError, Result};
use crate::fsutil::write_atomic;
use crate::passages::{read_passages, write_passages, Chunker, Passage, WordPieceCounter};
use crate::prior::PassagePrior;
use crate::retriever::{dot, top_rows, DenseEncoder};

/// File and directory names inside a QA index directory.
pub const PASSAGES_FILE: &str = "passages.jsonl";
const VECTORS_FILE: &str = "vectors.npy";
const DENSE_DIR: &str = "dense";
const BM25_DIR: &str = "bm25";
const MANIFEST_FILE: &str = "manifest.json";
const FORMAT: &str = "ralm-qa";
const VERSION: u32 = 1;
/// Passages embedded per progress report.
const ENCODE_CHUNK: usize = 128;

/// What a QA index directory records about how it was built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaManifest {
    pub format: String,
    pub version: u32,
    /// Hash of everything the build read: source files, chunk limit, encoder.
    pub inputs_sha256: String,
    /// Source names and files (informational).
    pub sources: Vec<String>,
    /// Number of passages.
    pub passages: usize,
    /// SHA-256 of `passages.jsonl`.
    pub passages_sha256: String,
    /// The encoder's provenance (model and tokenizer hashes, pooling, projection).
    pub encoder: serde_json::Value,
}

/// Where the passages of a QA index come from.
#[derive(Debug, Clone)]
pub struct CorpusSources {
    /// Wikipedia summaries JSON (`{title: {title, extract, ...}}`), source `wiki`.
    pub wiki: Option<PathBuf>,
    /// Passages JSONL (`{id, title, text}`, e.g. squad-open), source `squad`, placed first.
    pub squad: Option<PathBuf>,
    /// BERT `tokenizer.json` counting wordpieces for chunking.
    pub tokenizer: PathBuf,
    /// Most wordpieces per passage (title + text).
    pub max_wordpieces: usize,
}

/// A stage of [`build_or_reuse`] reporting progress.
#[derive(Debug, Clone, Copy)]
pub enum BuildEvent {
    /// Passages chunked and written.
    Chunked { passages: usize },
    /// BM25: passages indexed so far.
    Bm25 { done: usize, total: usize },
    /// Dense: passages and wordpieces embedded so far.
    Encoded {
        done: usize,
        total: usize,
        tokens: usize,
    },
}

/// Whether [`build_or_reuse`] built a new index or found one built from the same inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Built,
    Reused,
}

fn inputs_hash(
    sources: &CorpusSources,
    encoder: &serde_json::Value,
) -> Result<(String, Vec<String>)> {
    let mut parts = vec![format!("max_wordpieces={}", sources.max_wordpieces)];
    let mut names = Vec::new();
    for (name, path) in [("squad", &sources.squad), ("wiki", &sources.wiki)] {
        if let Some(p) = path {
            parts.push(format!("{name}={}", file_sha256(p)?));
            names.push(format!("{name}: {}", p.display()));
        }
    }
    if names.is_empty() {
        return Err(RealmError::Invalid(
            "no passage source given (need the Wikipedia corpus and/or a passages file)".into(),
        ));
    }
    parts.push(format!("tokenizer={}", file_sha256(&sources.tokenizer)?));
    parts.push(format!("encoder={encoder}"));
    Ok((
        ralm_models::hash::sha256_hex(parts.join("\n").as_bytes()),
        names,
    ))
}

fn read_manifest(dir: &Path) -> Result<QaManifest> {
    let m: QaManifest = read_json(&dir.join(MANIFEST_FILE))?;
    if m.format != FORMAT || m.version != VERSION {
        return Err(RealmError::format(
            &dir.join(MANIFEST_FILE),
            format!(
                "format {} version {} (this build reads {FORMAT} version {VERSION})",
                m.format, m.version
            ),
        ));
    }
    Ok(m)
}

/// Builds the QA index in `dir`, or reuses the one there when it was built from the same
/// inputs with the same encoder.
pub fn build_or_reuse(
    dir: &Path,
    sources: &CorpusSources,
    encoder: &DenseEncoder,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<Outcome> {
    let (inputs_sha256, names) = inputs_hash(sources, encoder.provenance())?;
    if let Ok(m) = read_manifest(dir) {
        if m.inputs_sha256 == inputs_sha256 && QaIndex::open(dir, encoder).is_ok() {
            return Ok(Outcome::Reused);
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| RealmError::io(dir, e))?;
    // A stale manifest must not vouch for a half-rebuilt directory.
    let manifest_path = dir.join(MANIFEST_FILE);
    if manifest_path.exists() {
        std::fs::remove_file(&manifest_path).map_err(|e| RealmError::io(&manifest_path, e))?;
    }

    let passages = chunk_sources(sources)?;
    let passages_path = dir.join(PASSAGES_FILE);
    write_passages(&passages_path, &passages)?;
    progress(BuildEvent::Chunked {
        passages: passages.len(),
    });
    Bm25Index::build(&passages_path, &dir.join(BM25_DIR), |done, total| {
        progress(BuildEvent::Bm25 { done, total })
    })?;
    let passages_sha256 = file_sha256(&passages_path)?;
    let vectors = embed(&passages, encoder, progress)?;
    write_vectors(
        &dir.join(VECTORS_FILE),
        passages.len(),
        encoder.dim(),
        &vectors,
    )?;
    publish_dense(dir, encoder, &passages_sha256, &vectors)?;

    let manifest = QaManifest {
        format: FORMAT.into(),
        version: VERSION,
        inputs_sha256,
        sources: names,
        passages: passages.len(),
        passages_sha256,
        encoder: encoder.provenance().clone(),
    };
    let bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| RealmError::Invalid(format!("manifest: {e}")))?;
    write_atomic(&manifest_path, |out| std::io::Write::write_all(out, &bytes))?;
    Ok(Outcome::Built)
}

fn chunk_sources(sources: &CorpusSources) -> Result<Vec<Passage>> {
    let chunker = Chunker::with_max_tokens(
        WordPieceCounter::from_file(&sources.tokenizer)?,
        sources.max_wordpieces,
    );
    let mut passages = Vec::new();
    if let Some(p) = &sources.squad {
        let docs: Vec<Document> = read_passages(p)?.into_iter().map(Document::from).collect();
        passages.extend(chunker.chunk_all("squad", &docs)?);
    }
    if let Some(p) = &sources.wiki {
        passages.extend(chunker.chunk_all("wiki", &read_wiki_summaries(p)?)?);
    }
    Ok(passages)
}

fn embed(
    passages: &[Passage],
    encoder: &DenseEncoder,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<Vec<f32>> {
    let mut vectors = Vec::with_capacity(passages.len() * encoder.dim());
    let mut tokens = 0;
    for chunk in passages.chunks(ENCODE_CHUNK) {
        let encodings = encoder.tokenize_passages(chunk)?;
        tokens += encodings.iter().map(|e| e.len()).sum::<usize>();
        vectors.extend(encoder.encode_tokenized(&encodings)?);
        progress(BuildEvent::Encoded {
            done: vectors.len() / encoder.dim(),
            total: passages.len(),
            tokens,
        });
    }
    Ok(vectors)
}

fn write_vectors(path: &Path, rows: usize, dim: usize, vectors: &[f32]) -> Result<()> {
    Ok(ralm_index::npy::write_f16(path, rows, dim, vectors)?)
}

/// The provenance every dense snapshot carries and every reader demands.
fn dense_provenance(encoder: &DenseEncoder, passages_sha256: &str) -> serde_json::Value {
    let mut p = encoder.provenance().clone();
    if let Some(obj) = p.as_object_mut() {
        obj.insert("passages_sha256".into(), json!(passages_sha256));
    }
    p
}

fn publish_dense(
    dir: &Path,
    encoder: &DenseEncoder,
    passages_sha256: &str,
    vectors: &[f32],
) -> Result<()> {
    let store = IndexStore::open(&dir.join(DENSE_DIR))?;
    let config = BuildConfig {
        dim: encoder.dim(),
        metric: Metric::InnerProduct,
        key_type: KeyType::F16,
        kind: IndexKind::Flat,
        provenance: dense_provenance(encoder, passages_sha256),
    };
    store.publish(|tmp| {
        let mut builder = IndexBuilder::new(tmp, config)?;
        let ids: Vec<u64> = (0..(vectors.len() / encoder.dim()) as u64).collect();
        builder.add(vectors, &ids)?;
        builder.finish(&|_, _| {})?;
        Ok(())
    })?;
    store.gc(1)?;
    Ok(())
}

/// An opened QA index: passages, their vectors, dense and BM25 search.
pub struct QaIndex {
    passages: Vec<Passage>,
    vectors: Vec<f32>,
    dim: usize,
    dense: ralm_index::AnyIndex,
    bm25: Bm25Index,
}

impl QaIndex {
    /// Opens `dir`, refusing it when its vectors were made by a different encoder (or from
    /// different passages) than `encoder`.
    pub fn open(dir: &Path, encoder: &DenseEncoder) -> Result<Self> {
        let manifest = read_manifest(dir)?;
        let passages_path = dir.join(PASSAGES_FILE);
        let store = IndexStore::open(&dir.join(DENSE_DIR))?;
        let version = store.current()?.ok_or_else(|| {
            RealmError::format(&dir.join(DENSE_DIR), "no dense index has been published")
        })?;
        let expect = Expect {
            dim: Some(encoder.dim()),
            metric: Some(Metric::InnerProduct),
            provenance: dense_provenance(encoder, &manifest.passages_sha256),
        };
        let dense = open_expecting(&store.version_dir(version), &expect).map_err(|e| {
            RealmError::Invalid(format!(
                "{e}\nthe index was built with a different encoder or passages; rebuild it with `ralm qa index`"
            ))
        })?;
        let passages = read_passages(&passages_path)?;
        let bm25 = Bm25Index::open(&dir.join(BM25_DIR), &passages_path)?;
        let m = ralm_index::npy::read(&dir.join(VECTORS_FILE))?;
        if m.rows != passages.len() || m.cols != encoder.dim() || dense.len() != passages.len() {
            return Err(RealmError::format(
                &dir.join(VECTORS_FILE),
                format!(
                    "{} × {} vectors and {} dense keys for {} passages of dim {}",
                    m.rows,
                    m.cols,
                    dense.len(),
                    passages.len(),
                    encoder.dim()
                ),
            ));
        }
        Ok(Self {
            passages,
            vectors: m.data,
            dim: m.cols,
            dense,
            bm25,
        })
    }

    /// The passages of the index in `dir` without opening its search structures or needing
    /// its encoder; refused when `passages.jsonl` is not the file the manifest records.
    pub fn read_passages(dir: &Path) -> Result<Vec<Passage>> {
        let manifest = read_manifest(dir)?;
        let path = dir.join(PASSAGES_FILE);
        if file_sha256(&path)? != manifest.passages_sha256 {
            return Err(RealmError::format(
                &path,
                "changed since the index was built (its SHA-256 differs from the manifest's)",
            ));
        }
        read_passages(&path)
    }

    /// All passages, in index order.
    pub fn passages(&self) -> &[Passage] {
        &self.passages
    }

    /// All stored vectors, row-major, and their dimension.
    pub fn vectors(&self) -> (&[f32], usize) {
        (&self.vectors, self.dim)
    }

    /// The stored (document-tower) vector of passage `i`.
    pub fn vector(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }

    /// Inner product of a question vector with passage `i`'s vector.
    pub fn score(&self, query: &[f32], i: usize) -> f32 {
        dot(query, self.vector(i))
    }

    /// Top-`k` passages by inner product with `query`, best first.
    pub fn dense(&self, query: &[f32], k: usize) -> Result<Vec<(usize, f32)>> {
        top_rows(&self.dense, query, k)
    }

    /// Top-`k` passages by BM25, best first.
    pub fn bm25(&self, question: &str, k: usize) -> Result<Vec<(usize, f32)>> {
        self.bm25.search(question, k)
    }

    /// BM25's ranking of `question` deep enough to retrieve `k` passages from, by BM25 or
    /// fused with the dense ranking: its top `max(k, FUSION_DEPTH)`.
    pub fn bm25_ranking(&self, question: &str, k: usize) -> Result<Bm25Ranking> {
        let depth = k.max(FUSION_DEPTH);
        let hits = self.bm25(question, depth)?;
        let floor = match hits.last() {
            Some(h) if hits.len() == depth => h.1,
            _ => 0.0,
        };
        Ok(Bm25Ranking {
            scores: hits.iter().copied().collect(),
            hits,
            floor,
        })
    }

    /// The union of the BM25 (`bm25`) and dense top [`FUSION_DEPTH`] (or `k`), ranked by
    /// `prior`'s logit `dense · q·d + bm25 · BM25`: the `k` passages with the highest `p(z|x)`
    /// among them, each with its dense inner product. Ties go to the smaller id.
    pub fn weighted(
        &self,
        bm25: &Bm25Ranking,
        query: &[f32],
        k: usize,
        prior: &PassagePrior,
    ) -> Result<Vec<(usize, f32)>> {
        let mut pool: HashSet<usize> = bm25.hits.iter().map(|h| h.0).collect();
        pool.extend(
            self.dense(query, k.max(FUSION_DEPTH))?
                .into_iter()
                .map(|h| h.0),
        );
        let mut ranked: Vec<(usize, f32, f64)> = pool
            .into_iter()
            .map(|i| {
                let d = self.score(query, i);
                (i, d, prior.logit(d, bm25.score(i)))
            })
            .collect();
        ranked.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
        Ok(ranked.into_iter().take(k).map(|(i, d, _)| (i, d)).collect())
    }

    /// Reciprocal-rank fusion of the BM25 and dense rankings, each [`FUSION_DEPTH`] deep (or
    /// `k`): the best `k` by fused rank, each with its dense inner product as score (what
    /// p(z|x) is computed from).
    pub fn hybrid(&self, bm25: &Bm25Ranking, query: &[f32], k: usize) -> Result<Vec<(usize, f32)>> {
        let ids = |hits: &[(usize, f32)]| hits.iter().map(|h| h.0).collect::<Vec<_>>();
        let rankings = [
            ids(&bm25.hits),
            ids(&self.dense(query, k.max(FUSION_DEPTH))?),
        ];
        Ok(reciprocal_rank_fusion(&rankings, k)
            .into_iter()
            .map(|i| (i, self.score(query, i)))
            .collect())
    }
}

/// BM25's top passages for one question ([`QaIndex::bm25_ranking`]) and the score of any
/// passage: exact within the ranking; for the others the lowest score of a full ranking (an
/// upper bound), or 0 when the ranking is shorter (BM25 matched nothing else).
pub struct Bm25Ranking {
    hits: Vec<(usize, f32)>,
    scores: HashMap<usize, f32>,
    floor: f32,
}

impl Bm25Ranking {
    /// `(passage, score)`, best first.
    pub fn hits(&self) -> &[(usize, f32)] {
        &self.hits
    }

    /// The BM25 score of `passage`.
    pub fn score(&self, passage: usize) -> f32 {
        self.scores.get(&passage).copied().unwrap_or(self.floor)
    }
}

/// How deep each ranking [`QaIndex::hybrid`] fuses goes.
pub const FUSION_DEPTH: usize = 100;

/// The rank offset of reciprocal-rank fusion (Cormack, Clarke and Büttcher, 2009).
const RRF_OFFSET: f64 = 60.0;

/// The best `k` items by Σ over rankings of 1 / (60 + rank), rank counted from 1; ties go to
/// the smaller id.
pub fn reciprocal_rank_fusion(rankings: &[Vec<usize>], k: usize) -> Vec<usize> {
    let mut fused: HashMap<usize, f64> = HashMap::new();
    for ranking in rankings {
        for (rank, &id) in ranking.iter().enumerate() {
            *fused.entry(id).or_default() += 1.0 / (RRF_OFFSET + rank as f64 + 1.0);
        }
    }
    let mut order: Vec<(usize, f64)> = fused.into_iter().collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    order.into_iter().take(k).map(|(id, _)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::reciprocal_rank_fusion;

    #[test]
    fn fusion_rewards_agreement_between_rankings() {
        // 7 is second in both lists and beats each list's own winner, which the other lacks.
        let lexical = vec![1, 7, 3];
        let dense = vec![2, 7, 3];
        assert_eq!(reciprocal_rank_fusion(&[lexical, dense], 4), [7, 3, 1, 2]);
        // One ranking alone keeps its order; k larger than the items returns them all.
        assert_eq!(reciprocal_rank_fusion(&[vec![5, 4, 9]], 10), [5, 4, 9]);
        assert!(reciprocal_rank_fusion(&[vec![5], vec![]], 0).is_empty());
    }
}
