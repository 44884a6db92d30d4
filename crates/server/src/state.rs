//! What the server holds: QA systems, kNN-LMs and translators, each in a hot-swappable slot,
//! with the batchers in front of them, the metrics and the concurrency limiter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use candle_core::Device;
use ralm_index::{IndexStore, SearchParams};
use ralm_knn::knnlm::datastore::DatastoreManifest;
use ralm_knn::knnlm::{Datastore, DatastoreExpect, KnnLm, KnnParams};
use ralm_knn::knnmt::{MtManifest, MtMixer, ParamOverrides};
use ralm_models::bert::Pooling;
use ralm_models::bpe::LmTokenizer;
use ralm_models::llama::{resolve_model_path, LlamaModel, WeightMode};
use ralm_models::marian::{Precision, Translator};
use ralm_realm::ask::{search, QaSystem, RetrieverKind};
use ralm_realm::generative::GenerativeReader;
use ralm_realm::prior::PassagePrior;
use ralm_realm::qa_index::QaIndex;
use ralm_realm::retriever::DenseEncoder;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::api::{Hit, RetrieveResponse, ScoreResponse};
use crate::batch::{BatchFn, BatchPolicy, Batcher};
use crate::config::{DatastoreConfig, MtDatastoreConfig, NamedPath, ServerConfig};
use crate::error::{ApiError, LoadError};
use crate::lm::{self, ScoreJob};
use crate::metrics::Metrics;

/// The IndexStore root inside a QA index directory (see `ralm_realm::qa_index`).
const QA_DENSE_DIR: &str = "dense";

/// A value readers share and an admin can replace while readers finish on the old one.
pub struct Slot<T> {
    state: RwLock<(u64, Arc<T>)>,
    reloading: Mutex<()>,
}

impl<T> Slot<T> {
    fn new(version: u64, value: T) -> Self {
        Self {
            state: RwLock::new((version, Arc::new(value))),
            reloading: Mutex::new(()),
        }
    }

    /// The current version and value.
    pub fn get(&self) -> (u64, Arc<T>) {
        let g = self.state.read().unwrap_or_else(|p| p.into_inner());
        (g.0, g.1.clone())
    }

    /// Replaces the value with what `load` returns (given the current version), one reload at
    /// a time; returns the previous and the new version.
    fn reload<E>(
        &self,
        load: impl FnOnce(u64) -> Result<Option<(u64, T)>, E>,
    ) -> Result<(u64, u64), E> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.get().0;
        match load(old)? {
            None => Ok((old, old)),
            Some((v, value)) => {
                *self.state.write().unwrap_or_else(|p| p.into_inner()) = (v, Arc::new(value));
                Ok((old, v))
            }
        }
    }
}

/// One query of a retrieval batch.
pub struct RetrieveJob {
    /// Query text.
    pub query: String,
    /// Passages wanted.
    pub k: usize,
    /// Retriever.
    pub kind: RetrieverKind,
}

/// A QA index with its encoder and reader, and the retrieval batcher.
pub struct QaEntry {
    /// Directory it was loaded from.
    pub dir: PathBuf,
    /// The loaded system and its dense snapshot version.
    pub slot: Arc<Slot<QaSystem>>,
    /// Batched query encoding and search.
    pub retrieve: Batcher<RetrieveJob, Result<RetrieveResponse, ApiError>>,
}

/// A kNN-LM datastore with its own copy of the LM, and its scoring batcher.
pub struct DatastoreEntry {
    /// What the config says about it.
    pub config: DatastoreConfig,
    /// The loaded kNN-LM and its load generation.
    pub slot: Arc<Slot<KnnLm>>,
    /// Batched scoring: texts of concurrent requests share forward passes and one search.
    pub score: Batcher<ScoreJob, Result<ScoreResponse, ApiError>>,
}

/// A translator and its batcher.
pub struct TranslatorEntry {
    /// Model directory.
    pub dir: PathBuf,
    /// Batched translation of single sentences.
    pub batcher: Batcher<String, Result<String, ApiError>>,
}

/// A kNN-MT datastore, the translator it mixes into, and its batcher.
pub struct MtDatastoreEntry {
    /// What the config says about it.
    pub config: MtDatastoreConfig,
    /// The opened datastore and its load generation.
    pub slot: Arc<Slot<MtMixer>>,
    /// Batched translation with retrieval: the translation and the datastore version used.
    pub batcher: Batcher<String, Result<(u64, String), ApiError>>,
}

/// Everything the handlers share.
pub struct AppState {
    /// The config the server was started with.
    pub config: ServerConfig,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// QA indexes by name.
    pub qa: BTreeMap<String, QaEntry>,
    /// kNN-LM datastores by name.
    pub datastores: BTreeMap<String, DatastoreEntry>,
    /// Translators by name.
    pub translators: BTreeMap<String, TranslatorEntry>,
    /// kNN-MT datastores by name.
    pub mt_datastores: BTreeMap<String, MtDatastoreEntry>,
    /// Permits for requests in flight.
    pub limiter: Arc<Semaphore>,
}

/// The dense snapshot version `CURRENT` names in a QA index directory.
fn qa_version(dir: &Path) -> Result<u64, LoadError> {
    let root = dir.join(QA_DENSE_DIR);
    let store = IndexStore::open(&root).map_err(|e| LoadError::load("QA index", dir, e))?;
    store
        .current()
        .map_err(|e| LoadError::load("QA index", dir, e))?
        .ok_or_else(|| LoadError::load("QA index", dir, "no dense snapshot published"))
}

/// The device the config names.
fn device(cfg: &ServerConfig) -> Result<Device, LoadError> {
    ralm_models::parse_device(&cfg.device).map_err(|e| LoadError::Config {
        path: "device".into(),
        msg: e.to_string(),
    })
}

/// Loads the encoder, the QA index in `dir` and the reader.
pub fn load_qa(cfg: &ServerConfig, dir: &Path) -> Result<(u64, QaSystem), LoadError> {
    let version = qa_version(dir)?;
    let device = device(cfg)?;
    let encoder = DenseEncoder::load(&cfg.encoder, Pooling::Mean, cfg.encoder_batch, &device)
        .map_err(|e| LoadError::load("encoder", &cfg.encoder, e))?;
    let index = QaIndex::open(dir, &encoder).map_err(|e| LoadError::load("QA index", dir, e))?;
    let reader = GenerativeReader::load(&cfg.reader, &device)
        .map_err(|e| LoadError::load("reader", &cfg.reader, e))?;
    let system = QaSystem {
        index,
        encoder,
        reader: Some(ralm_realm::ask::Reader::Generative(reader)),
        prior: PassagePrior {
            dense: cfg.score_scale,
            bm25: cfg.bm25_weight,
        },
    };
    Ok((version, system))
}

/// Loads the LM and the datastore `ds` into a kNN-LM.
pub fn load_knnlm(cfg: &ServerConfig, ds: &DatastoreConfig) -> Result<KnnLm, LoadError> {
    let path =
        resolve_model_path(&cfg.lm).map_err(|e| LoadError::load("language model", &cfg.lm, e))?;
    let mode = if cfg.lm_quantized && !path.is_dir() {
        WeightMode::Quantized
    } else {
        WeightMode::F32
    };
    let lm = LlamaModel::load(&path, mode, &device(cfg)?)
        .map_err(|e| LoadError::load("language model", &cfg.lm, e))?;
    let tokenizer =
        LmTokenizer::for_model(&cfg.lm).map_err(|e| LoadError::load("tokenizer", &cfg.lm, e))?;
    let expect = DatastoreExpect::of(&lm, &tokenizer)
        .map_err(|e| LoadError::load("language model", &cfg.lm, e))?;
    let datastore = Datastore::open(&ds.path, &expect)
        .map_err(|e| LoadError::load("datastore", &ds.path, e))?;
    Ok(KnnLm {
        lm,
        tokenizer,
        datastore,
        params: KnnParams {
            k: ds.k,
            lambda: ds.lambda,
            temperature: ds.temperature,
            search: SearchParams {
                nprobe: ds.nprobe,
                rerank: None,
            },
        },
    })
}

/// Encodes a batch of queries in one forward pass and searches each; one result per job.
fn retrieve_batch(
    name: &str,
    slot: &Slot<QaSystem>,
    jobs: Vec<RetrieveJob>,
) -> Vec<Result<RetrieveResponse, ApiError>> {
    let (version, sys) = slot.get();
    let checked: Vec<_> = jobs
        .iter()
        .map(|j| sys.encoder.check_question(&j.query))
        .collect();
    let texts: Vec<&str> = checked
        .iter()
        .filter_map(|c| c.as_ref().ok().map(|q| q.text.as_str()))
        .collect();
    let vectors = match sys.encoder.encode_questions(&texts) {
        Ok(v) => v,
        Err(e) => {
            let e = ApiError::from(e);
            return jobs.iter().map(|_| Err(e.clone())).collect();
        }
    };
    let dim = sys.encoder.dim();
    let mut rows = vectors.chunks_exact(dim);
    jobs.iter()
        .zip(checked)
        .map(|(job, q)| {
            let q = q?;
            let query = rows
                .next()
                .ok_or_else(|| ApiError::internal("encoder returned too few vectors"))?;
            let index = &sys.index;
            let hits = search(index, job.kind, &q.text, query, job.k, &sys.prior)?;
            let passages = index.passages();
            Ok(RetrieveResponse {
                index: name.to_string(),
                version,
                query: q.text,
                hits: hits
                    .into_iter()
                    .map(|(i, score)| Hit {
                        id: passages[i].id.clone(),
                        title: passages[i].title.clone(),
                        text: passages[i].text.clone(),
                        score,
                    })
                    .collect(),
                warnings: q.warning.into_iter().collect(),
            })
        })
        .collect()
}

/// Translates a batch of sentences in one call, with kNN-MT retrieval from `mixer` when given;
/// one result per sentence.
fn translate_batch(
    tr: &Translator,
    mixer: Option<&MtMixer>,
    texts: &[String],
) -> Vec<Result<String, ApiError>> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let opts = tr.search_options(None);
    let out = match mixer {
        None => tr.translate(&refs, &opts).map_err(ApiError::from),
        Some(m) => m.retrieval().map_err(ApiError::from).and_then(|mut r| {
            let mut hook = |h: &candle_core::Tensor, lp: &mut candle_core::Tensor| r.hook(h, lp);
            tr.translate_with_hook(&refs, &opts, Some(&mut hook))
                .map_err(ApiError::from)
        }),
    };
    match out {
        Ok(out) => out.into_iter().map(Ok).collect(),
        Err(e) => texts.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// Opens the kNN-MT datastore `ds` for the translator model in `model_dir`.
pub fn load_mt_datastore(ds: &MtDatastoreConfig, model_dir: &Path) -> Result<MtMixer, LoadError> {
    let overrides = ParamOverrides {
        k: ds.k,
        lambda: ds.lambda,
        temperature: ds.temperature,
    };
    let search = SearchParams {
        nprobe: ds.nprobe,
        rerank: ds.rerank,
    };
    MtMixer::open(&ds.path, model_dir, ds.adaptive, overrides, search)
        .map_err(|e| LoadError::load("kNN-MT datastore", &ds.path, e))
}

/// What `/v1/admin/reload/{name}` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Reloaded {
    /// The index or datastore.
    pub name: String,
    /// `qa_index` or `datastore`.
    pub kind: String,
    /// Version before.
    pub previous: u64,
    /// Version now.
    pub version: u64,
}

/// A listed QA index.
#[derive(Debug, Clone, Serialize)]
pub struct IndexInfo {
    /// Name.
    pub name: String,
    /// Directory.
    pub path: PathBuf,
    /// Dense snapshot version.
    pub version: u64,
    /// Passages.
    pub passages: usize,
    /// Vector width.
    pub dim: usize,
}

/// A listed datastore with its manifest.
#[derive(Debug, Clone, Serialize)]
pub struct DatastoreInfo {
    /// Name.
    pub name: String,
    /// Directory.
    pub path: PathBuf,
    /// Load generation (1, then +1 per reload).
    pub version: u64,
    /// Live entries.
    pub entries: usize,
    /// Default λ.
    pub lambda: f32,
    /// Neighbours per position.
    pub k: usize,
    /// The datastore's manifest.
    pub manifest: DatastoreManifest,
}

/// A listed kNN-MT datastore with its mixing settings and manifest.
#[derive(Debug, Clone, Serialize)]
pub struct MtDatastoreInfo {
    /// Name.
    pub name: String,
    /// Directory.
    pub path: PathBuf,
    /// The translator it mixes into.
    pub translator: String,
    /// Load generation (1, then +1 per reload).
    pub version: u64,
    /// Live entries.
    pub entries: usize,
    /// Whether the gate picks λ per step (then `lambda` is unused).
    pub adaptive: bool,
    /// Weight of p_kNN.
    pub lambda: f32,
    /// Neighbours per step.
    pub k: usize,
    /// Temperature of p_kNN.
    pub temperature: f32,
    /// The datastore's manifest.
    pub manifest: MtManifest,
}

impl AppState {
    /// Loads everything `config` names (blocking: call it off the async threads).
    pub fn load(config: ServerConfig) -> Result<Self, LoadError> {
        config.validate().map_err(|msg| LoadError::Config {
            path: PathBuf::from("(flags)"),
            msg,
        })?;
        let metrics = Arc::new(Metrics::default());
        let policy = config.batching.enabled.then(|| BatchPolicy {
            max_batch: config.batching.max_batch,
            max_wait: Duration::from_millis(config.batching.max_wait_ms),
        });
        let spawn_err = |e: std::io::Error| LoadError::load("batcher", Path::new("-"), e);
        let mut qa = BTreeMap::new();
        for NamedPath { name, path } in &config.qa_indexes {
            let (version, system) = load_qa(&config, path)?;
            metrics.set_version("qa_index", name, version);
            let slot = Arc::new(Slot::new(version, system));
            let (n, s) = (name.clone(), slot.clone());
            let run: BatchFn<_, _> = Arc::new(move |jobs| retrieve_batch(&n, &s, jobs));
            let retrieve = Batcher::new(&format!("retrieve:{name}"), policy, metrics.clone(), run)
                .map_err(spawn_err)?;
            let entry = QaEntry {
                dir: path.clone(),
                slot,
                retrieve,
            };
            qa.insert(name.clone(), entry);
        }
        let mut datastores = BTreeMap::new();
        for ds in &config.datastores {
            let knn = load_knnlm(&config, ds)?;
            metrics.set_version("datastore", &ds.name, 1);
            let slot = Arc::new(Slot::new(1, knn));
            let (n, s) = (ds.name.clone(), slot.clone());
            let run: BatchFn<_, _> = Arc::new(move |jobs: Vec<ScoreJob>| {
                let (version, knn) = s.get();
                lm::score_batch(&knn, &n, version, &jobs)
            });
            let score = Batcher::new(&format!("score:{}", ds.name), policy, metrics.clone(), run)
                .map_err(spawn_err)?;
            let entry = DatastoreEntry {
                config: ds.clone(),
                slot,
                score,
            };
            datastores.insert(ds.name.clone(), entry);
        }
        let mut translators = BTreeMap::new();
        let mut models = BTreeMap::new();
        for NamedPath { name, path } in &config.translators {
            let tr = Arc::new(
                Translator::load(path, Precision::Float32)
                    .map_err(|e| LoadError::load("translator", path, e))?,
            );
            models.insert(name.clone(), tr.clone());
            let run: BatchFn<_, _> = Arc::new(move |texts| translate_batch(&tr, None, &texts));
            let batcher = Batcher::new(&format!("translate:{name}"), policy, metrics.clone(), run)
                .map_err(spawn_err)?;
            let entry = TranslatorEntry {
                dir: path.clone(),
                batcher,
            };
            translators.insert(name.clone(), entry);
        }
        let mut mt_datastores = BTreeMap::new();
        for ds in &config.mt_datastores {
            // `validate` checked that the translator is configured.
            let (tr, dir) = (&models[&ds.translator], &translators[&ds.translator].dir);
            let slot = Arc::new(Slot::new(1, load_mt_datastore(ds, dir)?));
            metrics.set_version("mt_datastore", &ds.name, 1);
            let (tr, s) = (tr.clone(), slot.clone());
            let run: BatchFn<_, _> = Arc::new(move |texts: Vec<String>| {
                let (version, mixer) = s.get();
                translate_batch(&tr, Some(&mixer), &texts)
                    .into_iter()
                    .map(|r| r.map(|t| (version, t)))
                    .collect()
            });
            let batcher = Batcher::new(&format!("knnmt:{}", ds.name), policy, metrics.clone(), run)
                .map_err(spawn_err)?;
            let entry = MtDatastoreEntry {
                config: ds.clone(),
                slot,
                batcher,
            };
            mt_datastores.insert(ds.name.clone(), entry);
        }
        Ok(Self {
            limiter: Arc::new(Semaphore::new(config.limits.max_concurrent)),
            config,
            metrics,
            qa,
            datastores,
            translators,
            mt_datastores,
        })
    }

    /// The QA index called `name`, or the first configured one (404 when none matches).
    pub fn qa_entry(&self, name: Option<&str>) -> Result<(String, &QaEntry), ApiError> {
        let first = self.config.qa_indexes.first().map(|n| n.name.as_str());
        lookup(&self.qa, name.or(first), "QA index")
    }

    /// The datastore called `name`, or the first configured one (404 when none matches).
    pub fn datastore(&self, name: Option<&str>) -> Result<(String, &DatastoreEntry), ApiError> {
        let first = self.config.datastores.first().map(|d| d.name.as_str());
        lookup(&self.datastores, name.or(first), "datastore")
    }

    /// The translator called `name`, or the first configured one (404 when none matches).
    pub fn translator(&self, name: Option<&str>) -> Result<(String, &TranslatorEntry), ApiError> {
        let first = self.config.translators.first().map(|t| t.name.as_str());
        lookup(&self.translators, name.or(first), "translator")
    }

    /// The kNN-MT datastore called `name` (404 when none matches).
    pub fn mt_datastore(&self, name: &str) -> Result<(String, &MtDatastoreEntry), ApiError> {
        lookup(&self.mt_datastores, Some(name), "kNN-MT datastore")
    }

    /// Swaps the QA index or datastore `name` to what is on disk now (blocking). A QA index is
    /// reloaded only when its `CURRENT` snapshot changed; a datastore is always re-opened.
    pub fn reload(&self, name: &str) -> Result<Reloaded, ApiError> {
        let fail = |e: LoadError| ApiError::internal(e.to_string());
        let (kind, (previous, version)) = if let Some(e) = self.qa.get(name) {
            let r = e.slot.reload(|old| {
                let v = qa_version(&e.dir)?;
                if v == old {
                    return Ok(None);
                }
                load_qa(&self.config, &e.dir).map(Some)
            });
            ("qa_index", r.map_err(fail)?)
        } else if let Some(e) = self.datastores.get(name) {
            let r = e
                .slot
                .reload(|old| load_knnlm(&self.config, &e.config).map(|k| Some((old + 1, k))));
            ("datastore", r.map_err(fail)?)
        } else if let Some(e) = self.mt_datastores.get(name) {
            let dir = &self.translators[&e.config.translator].dir;
            let r = e
                .slot
                .reload(|old| load_mt_datastore(&e.config, dir).map(|m| Some((old + 1, m))));
            ("mt_datastore", r.map_err(fail)?)
        } else {
            return Err(ApiError::not_found(format!(
                "no QA index or datastore called `{name}`"
            )));
        };
        self.metrics.set_version(kind, name, version);
        tracing::info!(name, kind, previous, version, "reloaded");
        Ok(Reloaded {
            name: name.to_string(),
            kind: kind.to_string(),
            previous,
            version,
        })
    }

    /// The QA indexes, for `/v1/indexes`.
    pub fn index_infos(&self) -> Vec<IndexInfo> {
        self.qa
            .iter()
            .map(|(name, e)| {
                let (version, sys) = e.slot.get();
                IndexInfo {
                    name: name.clone(),
                    path: e.dir.clone(),
                    version,
                    passages: sys.index.passages().len(),
                    dim: sys.encoder.dim(),
                }
            })
            .collect()
    }

    /// The datastores with their manifests, for `/v1/datastores`.
    pub fn datastore_infos(&self) -> Vec<DatastoreInfo> {
        self.datastores
            .iter()
            .map(|(name, e)| {
                let (version, knn) = e.slot.get();
                DatastoreInfo {
                    name: name.clone(),
                    path: e.config.path.clone(),
                    version,
                    entries: knn.datastore.len(),
                    lambda: knn.params.lambda,
                    k: knn.params.k,
                    manifest: knn.datastore.manifest().clone(),
                }
            })
            .collect()
    }

    /// The kNN-MT datastores with their manifests, for `/v1/datastores`.
    pub fn mt_datastore_infos(&self) -> Vec<MtDatastoreInfo> {
        self.mt_datastores
            .iter()
            .map(|(name, e)| {
                let (version, m) = e.slot.get();
                let p = m.params();
                MtDatastoreInfo {
                    name: name.clone(),
                    path: e.config.path.clone(),
                    translator: e.config.translator.clone(),
                    version,
                    entries: m.datastore().len(),
                    adaptive: m.adaptive(),
                    lambda: p.lambda,
                    k: p.k,
                    temperature: p.temperature,
                    manifest: m.datastore().manifest().clone(),
                }
            })
            .collect()
    }
}

fn lookup<'a, T>(
    map: &'a BTreeMap<String, T>,
    name: Option<&str>,
    what: &str,
) -> Result<(String, &'a T), ApiError> {
    let name = name.ok_or_else(|| ApiError::not_found(format!("no {what} is configured")))?;
    map.get(name).map(|e| (name.to_string(), e)).ok_or_else(|| {
        let known: Vec<&str> = map.keys().map(String::as_str).collect();
        ApiError::not_found(format!(
            "unknown {what} `{name}` (known: {})",
            known.join(", ")
        ))
    })
}
