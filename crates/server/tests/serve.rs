//! The server on a loopback port with a real HTTP client: every endpoint, every error case,
//! batching, hot swap under load, and graceful shutdown. The QA index is built here from a
//! handful of passages with the real MiniLM, the kNN-LM datastores from a few sentences with the
//! real SmolLM2, the kNN-MT datastore from a few sentence pairs with the real Bergamot model; the
//! tests skip with a message when `models/` is absent.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use candle_core::Device;
use ralm_index::Metric;
use ralm_knn::knnlm::chunks::PassOptions;
use ralm_knn::knnlm::corpus::Corpus;
use ralm_knn::knnlm::{build, BuildOptions, BuildOutcome, IndexSpec};
use ralm_knn::knnmt::mixer::write_tuned;
use ralm_knn::knnmt::{KnnMtParams, MtBuildOptions, MtExpect, TokenPairs};
use ralm_models::bert::Pooling;
use ralm_models::bpe::LmTokenizer;
use ralm_models::llama::{KeyKind, LlamaModel, Sampler, WeightMode};
use ralm_models::marian::{Precision, Translator};
use ralm_realm::passages::{write_passages, Passage};
use ralm_realm::qa_index::{build_or_reuse, CorpusSources};
use ralm_realm::retriever::DenseEncoder;
use ralm_server::client::{Client, Reply};
use ralm_server::config::{DatastoreConfig, MtDatastoreConfig, NamedPath};
use ralm_server::state::load_knnlm;
use ralm_server::{AppState, ServerConfig};
use serde_json::{json, Value};
use tokio::sync::oneshot;

const TOKEN: &str = "s3cret";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model(rel: &str) -> Option<PathBuf> {
    let p = repo_root().join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} is absent (run scripts/setup.sh)", p.display());
        None
    }
}

struct Models {
    minilm: PathBuf,
    smollm: PathBuf,
    marian: PathBuf,
}

fn models() -> Option<Models> {
    Some(Models {
        minilm: model("models/minilm")?,
        smollm: model("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")?,
        marian: model("models/bergamot-enpt")?,
    })
}

fn passages(set: &[(&str, &str, &str)]) -> Vec<Passage> {
    set.iter()
        .map(|(id, title, text)| Passage {
            id: id.to_string(),
            title: title.to_string(),
            text: text.to_string(),
        })
        .collect()
}

const SET_A: &[(&str, &str, &str)] = &[
    ("a1", "Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, designed by the engineer Gustave Eiffel's company and finished in 1889."),
    ("a2", "Amazon River", "The Amazon River in South America is the largest river by discharge of water in the world."),
    ("a3", "Photosynthesis", "Photosynthesis is the process by which green plants use sunlight to turn carbon dioxide and water into sugar and oxygen."),
    ("a4", "Chess", "Chess is a board game for two players, each starting with sixteen pieces on a checkered board of sixty-four squares."),
    ("a5", "Mount Everest", "Mount Everest, on the border of Nepal and China, is Earth's highest mountain above sea level."),
    ("a6", "Penicillin", "Penicillin was discovered in 1928 by Alexander Fleming, who noticed mould killing bacteria in a dish."),
];

const SET_B: &[(&str, &str, &str)] = &[
    ("b1", "Mount Vesuvius", "Mount Vesuvius is a volcano near Naples in Italy whose eruption in 79 AD buried the town of Pompeii."),
    ("b2", "Honey bee", "The honey bee is a flying insect that collects nectar from flowers and makes honey in a hive."),
    ("b3", "Saturn", "Saturn is the sixth planet from the Sun, famous for its bright system of rings made of ice."),
    ("b4", "Violin", "The violin is a wooden string instrument played with a bow, the smallest and highest-pitched of its family."),
];

const TEXT_A: &str = "The river flows north through the valley before it reaches the sea. The old harbour town lies at the mouth of the river. Fishing boats leave the harbour every morning and return in the evening with their catch. The river flows north through the valley before it reaches the sea.";
const TEXT_B: &str = "The library opens at nine in the morning and closes at six in the evening. Students read quietly at the long wooden tables. The library opens at nine in the morning and closes at six in the evening.";

/// Files every test shares, built once.
struct Fixture {
    _tmp: tempfile::TempDir,
    models: Models,
    /// QA index directory (set A).
    qa: PathBuf,
    /// Passages of set B, for rebuilding a QA index.
    passages_b: PathBuf,
    /// Datastores built from TEXT_A and TEXT_B.
    ds_a: PathBuf,
    ds_b: PathBuf,
}

/// Builds (or rebuilds in place) the QA index in `dir` from `passages` with MiniLM.
fn build_qa(minilm: &Path, dir: &Path, passages: &Path) {
    let sources = CorpusSources {
        wiki: None,
        squad: Some(passages.to_path_buf()),
        tokenizer: minilm.join("tokenizer.json"),
        max_wordpieces: 128,
    };
    let encoder = DenseEncoder::load(minilm, Pooling::Mean, 16, &Device::Cpu).unwrap();
    build_or_reuse(dir, &sources, &encoder, &mut |_| {}).unwrap();
}

fn build_datastore(dir: &Path, lm: &LlamaModel, tok: &LmTokenizer, text: &str) {
    let corpus = Corpus {
        sources: vec!["test".into()],
        documents: 1,
        ids: tok.encode(text).unwrap(),
    };
    let opts = BuildOptions {
        pass: PassOptions {
            context_len: 32,
            stride: 16,
            batch: 4,
            key: KeyKind::FinalHidden,
        },
        metric: Metric::L2,
        index: IndexSpec::Flat,
        chunk_tokens: 64,
    };
    let out = build(dir, lm, tok, &corpus, &opts, &mut |_| {}, &|| false).unwrap();
    assert!(matches!(out, BuildOutcome::Complete(_)));
}

fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let models = models()?;
        let tmp = tempfile::tempdir().unwrap();
        let pa = tmp.path().join("a.jsonl");
        let pb = tmp.path().join("b.jsonl");
        write_passages(&pa, &passages(SET_A)).unwrap();
        write_passages(&pb, &passages(SET_B)).unwrap();
        let qa = tmp.path().join("qa");
        build_qa(&models.minilm, &qa, &pa);
        // The server runs its LM in f32 by default, and refuses a datastore built in another mode.
        let lm = LlamaModel::load(&models.smollm, WeightMode::F32, &Device::Cpu).unwrap();
        let tok = LmTokenizer::for_model(&models.smollm).unwrap();
        let (ds_a, ds_b) = (tmp.path().join("ds_a"), tmp.path().join("ds_b"));
        build_datastore(&ds_a, &lm, &tok, TEXT_A);
        build_datastore(&ds_b, &lm, &tok, TEXT_B);
        Some(Fixture {
            _tmp: tmp,
            models,
            qa,
            passages_b: pb,
            ds_a,
            ds_b,
        })
    })
    .as_ref()
}

fn datastore(name: &str, path: &Path) -> DatastoreConfig {
    DatastoreConfig {
        name: name.into(),
        path: path.to_path_buf(),
        lambda: 0.25,
        k: 8,
        temperature: 10.0,
        nprobe: 1,
    }
}

fn config(f: &Fixture) -> ServerConfig {
    let mut c = ServerConfig {
        encoder: f.models.minilm.clone(),
        reader: f.models.smollm.clone(),
        lm: f.models.smollm.clone(),
        admin_token: Some(TOKEN.into()),
        ..ServerConfig::default()
    };
    c.qa_indexes.push(NamedPath {
        name: "tiny".into(),
        path: f.qa.clone(),
    });
    c.datastores.push(datastore("text", &f.ds_a));
    c.limits.max_k = 10;
    c.limits.max_text_chars = 500;
    c.limits.max_body_bytes = 4096;
    c.limits.max_new_tokens = 16;
    // The machine running the tests may be busy: only the timeout test wants a short one.
    c.limits.timeout_ms = 300_000;
    c
}

/// A running server and a client of it.
struct Server {
    client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(config: ServerConfig) -> Self {
        let state = tokio::task::spawn_blocking(move || AppState::load(config))
            .await
            .unwrap()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ralm_server::serve(listener, Arc::new(state), async {
            let _ = stopped.await;
        }));
        Self {
            client: Client::new(addr),
            stop: Some(stop),
            task,
        }
    }

    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

async fn post(c: &Client, path: &str, body: Value) -> Reply {
    c.post_json(path, &body).await.unwrap()
}

/// Asserts `r` has `status` and an error message containing `needle`.
fn assert_error(r: &Reply, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let msg = r.json().unwrap()["error"].as_str().unwrap().to_string();
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
}

fn titles(r: &Reply) -> Vec<String> {
    let v = r.json().unwrap();
    v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["title"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_endpoint_and_error_case() {
    let Some(f) = fixture() else { return };
    let mut cfg = config(f);
    cfg.translators.push(NamedPath {
        name: "enpt".into(),
        path: f.models.marian.clone(),
    });
    let s = Server::start(cfg.clone()).await;
    let c = &s.client;

    // Health, OpenAPI: the document lists exactly the routes the server answers.
    assert_eq!(
        c.get("/healthz").await.unwrap().json().unwrap()["status"],
        "ok"
    );
    let doc = c.get("/openapi.json").await.unwrap().json().unwrap();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), p.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = [
        ("post", "/v1/retrieve"),
        ("post", "/v1/ask"),
        ("post", "/v1/lm/score"),
        ("post", "/v1/lm/generate"),
        ("post", "/v1/translate"),
        ("get", "/v1/indexes"),
        ("get", "/v1/datastores"),
        ("post", "/v1/admin/reload/{name}"),
        ("get", "/healthz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(documented, served);
    for (method, path) in &documented {
        let path = path.replace("{name}", "nothing");
        let m = method.to_uppercase().parse().unwrap();
        let r = c.send(m, &path, &[], Default::default()).await.unwrap();
        assert!(
            !r.text().contains("no route"),
            "{method} {path} is not routed"
        );
        assert_ne!(r.status, 405, "{method} {path}");
    }
    assert_error(&c.get("/v1/nowhere").await.unwrap(), 404, "no route");

    // Retrieval: the right passage comes first with each retriever.
    for retriever in ["dense", "bm25", "hybrid"] {
        let r = post(
            c,
            "/v1/retrieve",
            json!({"query": "Who discovered penicillin?", "k": 3, "retriever": retriever}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(titles(&r)[0], "Penicillin", "{retriever}");
        assert_eq!(r.json().unwrap()["index"], "tiny");
    }
    let r = post(
        c,
        "/v1/retrieve",
        json!({"query": "highest mountain on Earth", "k": 2, "index": "tiny"}),
    )
    .await;
    let t = titles(&r);
    assert_eq!((t.len(), t[0].as_str()), (2, "Mount Everest"));

    // Retrieval errors.
    assert_error(
        &c.post_raw("/v1/retrieve", "{\"query\": ").await.unwrap(),
        400,
        "",
    );
    assert_error(
        &post(c, "/v1/retrieve", json!({"query": "x", "top": 3})).await,
        400,
        "top",
    );
    assert_error(
        &post(c, "/v1/retrieve", json!({"k": 3})).await,
        400,
        "query",
    );
    assert_error(&post(c, "/v1/retrieve", json!({"query": 5})).await, 400, "");
    let no_type = c
        .send(
            "POST".parse().unwrap(),
            "/v1/retrieve",
            &[],
            "{\"query\":\"x\"}".into(),
        )
        .await
        .unwrap();
    assert_eq!(no_type.status, 400, "{}", no_type.text());
    assert_error(
        &post(c, "/v1/retrieve", json!({"query": "x", "index": "nope"})).await,
        404,
        "nope",
    );
    assert_error(
        &post(c, "/v1/retrieve", json!({"query": "x", "k": 0})).await,
        400,
        "`k`",
    );
    assert_error(
        &post(c, "/v1/retrieve", json!({"query": "x", "k": 11})).await,
        400,
        "`k`",
    );
    assert_error(
        &post(c, "/v1/retrieve", json!({"query": "  "})).await,
        400,
        "empty",
    );
    assert_error(
        &post(
            c,
            "/v1/retrieve",
            json!({"query": "x", "retriever": "magic"}),
        )
        .await,
        400,
        "magic",
    );
    assert_error(
        &post(c, "/v1/retrieve", json!({"query": "word ".repeat(120)})).await,
        413,
        "characters",
    );
    let huge = json!({"query": "x".repeat(5000)}).to_string();
    assert_eq!(c.post_raw("/v1/retrieve", huge).await.unwrap().status, 413);

    // QA with evidence.
    let r = post(
        c,
        "/v1/ask",
        json!({"question": "In which city is the Eiffel Tower?", "k": 1}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json().unwrap();
    assert_eq!(v["evidence"][0]["title"], "Eiffel Tower");
    assert!(
        v["answer"]["text"].as_str().unwrap().contains("Paris"),
        "{v}"
    );
    assert_error(
        &post(c, "/v1/ask", json!({"question": "x", "index": "nope"})).await,
        404,
        "nope",
    );
    assert_error(
        &post(c, "/v1/ask", json!({"question": "x", "k": 99})).await,
        400,
        "`k`",
    );

    // kNN-LM scoring: the server's λ plumbing agrees with the library's own scoring.
    let cfg2 = cfg.clone();
    let reference = Arc::new(
        tokio::task::spawn_blocking(move || load_knnlm(&cfg2, &cfg2.datastores[0]).unwrap())
            .await
            .unwrap(),
    );
    let text = "The river flows north through the valley before it reaches the sea.";
    let r = post(c, "/v1/lm/score", json!({"text": text})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json().unwrap();
    let got: Vec<f64> = v["log_probs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let knn = reference.clone();
    let want = tokio::task::spawn_blocking(move || knn.score_text(text).unwrap())
        .await
        .unwrap();
    assert_eq!(got.len(), want.len());
    assert_eq!(v["tokens"].as_array().unwrap().len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - *w as f64).abs() < 1e-4, "{g} vs {w}");
    }
    // The text is in the datastore: mixing in neighbours lowers its perplexity.
    assert!(
        v["perplexity"].as_f64().unwrap() < v["lm_perplexity"].as_f64().unwrap(),
        "{v}"
    );
    let r0 = post(
        c,
        "/v1/lm/score",
        json!({"text": text, "lambda": 0.0, "datastore": "text"}),
    )
    .await;
    let v0 = r0.json().unwrap();
    assert_eq!(v0["log_probs"], v0["lm_log_probs"]);
    assert_error(
        &post(c, "/v1/lm/score", json!({"text": text, "lambda": 1.5})).await,
        400,
        "lambda",
    );
    assert_error(
        &post(
            c,
            "/v1/lm/score",
            json!({"text": text, "datastore": "nope"}),
        )
        .await,
        404,
        "nope",
    );
    assert_error(
        &post(c, "/v1/lm/score", json!({"text": "Hi"})).await,
        400,
        "two tokens",
    );

    // Streamed generation: greedy, equal to the library's kNN-LM generation.
    let prompt = "The river flows north through the";
    let r = post(
        c,
        "/v1/lm/generate",
        json!({"prompt": prompt, "max_new_tokens": 6}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let events = r.events();
    let ids: Vec<u32> = events
        .iter()
        .filter(|(e, _)| e == "token")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["id"]
                .as_u64()
                .unwrap() as u32
        })
        .collect();
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "done", "{events:?}");
    let done: Value = serde_json::from_str(done).unwrap();
    assert_eq!(done["tokens"], ids.len());
    let knn = reference.clone();
    let want = tokio::task::spawn_blocking(move || {
        let p = knn.tokenizer.encode(prompt).unwrap();
        let out = knn
            .generate(&p, 6, &mut Sampler::Greedy, knn.tokenizer.eos_id())
            .unwrap();
        (out.clone(), knn.tokenizer.decode(&out).unwrap())
    })
    .await
    .unwrap();
    assert_eq!(ids, want.0);
    assert_eq!(done["text"], want.1);
    assert_error(
        &post(
            c,
            "/v1/lm/generate",
            json!({"prompt": prompt, "max_new_tokens": 17}),
        )
        .await,
        400,
        "max_new_tokens",
    );
    assert_error(
        &post(
            c,
            "/v1/lm/generate",
            json!({"prompt": prompt, "max_new_tokens": 4, "temperature": -1.0}),
        )
        .await,
        400,
        "temperature",
    );

    // Translation (batched with concurrent ones).
    let r = post(
        c,
        "/v1/translate",
        json!({"text": "The cat is on the table."}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json().unwrap()["translation"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(t.contains("gato") && t.contains("mesa"), "{t}");
    assert_error(
        &post(c, "/v1/translate", json!({"text": "x", "model": "nope"})).await,
        404,
        "nope",
    );
    assert_error(
        &post(c, "/v1/translate", json!({"text": "x", "datastore": "d"})).await,
        404,
        "unknown kNN-MT datastore `d`",
    );

    // Listings.
    let v = c.get("/v1/indexes").await.unwrap().json().unwrap();
    assert_eq!(v["indexes"][0]["name"], "tiny");
    assert_eq!(v["indexes"][0]["passages"], SET_A.len());
    let v = c.get("/v1/datastores").await.unwrap().json().unwrap();
    assert_eq!(v["datastores"][0]["name"], "text");
    assert_eq!(v["datastores"][0]["manifest"]["context_len"], 32);
    assert!(v["datastores"][0]["entries"].as_u64().unwrap() > 10);

    // Admin: bearer token required.
    let path = "/v1/admin/reload/tiny";
    assert_eq!(c.post_admin(path, None).await.unwrap().status, 401);
    assert_eq!(c.post_admin(path, Some("wrong")).await.unwrap().status, 401);
    let r = c.post_admin(path, Some(TOKEN)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap()["version"], r.json().unwrap()["previous"]);
    assert_error(
        &c.post_admin("/v1/admin/reload/nope", Some(TOKEN))
            .await
            .unwrap(),
        404,
        "nope",
    );

    // Metrics.
    let m = c.get("/metrics").await.unwrap().text();
    assert!(
        m.contains("ralm_requests_total{route=\"/v1/retrieve\",status=\"200\"} 4"),
        "{m}"
    );
    assert!(m.contains("ralm_requests_total{route=\"/v1/retrieve\",status=\"404\"} 1"));
    assert!(m.contains("ralm_request_duration_seconds_count{route=\"/v1/ask\"}"));
    assert!(m.contains("ralm_batch_size_count{batcher=\"retrieve:tiny\"}"));
    assert!(m.contains("ralm_index_version{kind=\"qa_index\",name=\"tiny\"} 1"));
    assert!(m.contains("ralm_index_version{kind=\"datastore\",name=\"text\"} 1"));
    s.shutdown().await;
}

/// In-domain pairs whose references differ from what the model says unaided.
const MT_PAIRS: [(&str, &str); 3] = [
    (
        "The cat is on the table.",
        "O felino encontra-se sobre a bancada.",
    ),
    ("Save the file.", "Grave o ficheiro."),
    ("Close the window.", "Encerre a janela."),
];

/// A kNN-MT datastore of `MT_PAIRS` in `dir`, teacher-forced by the real Bergamot model, mixed
/// with λ 0.9 and k 1: decoding then follows the stored references.
fn build_mt_datastore(marian: &Path, dir: &Path) {
    let tr = Translator::load(marian, Precision::Float32).unwrap();
    let (sources, targets): (Vec<String>, Vec<String>) = MT_PAIRS
        .iter()
        .map(|(s, t)| (s.to_string(), t.to_string()))
        .unzip();
    let pairs = TokenPairs::encode(&tr, &sources, &targets).unwrap();
    let opts = MtBuildOptions {
        metric: Metric::L2,
        index: IndexSpec::Flat,
        pairs_per_chunk: 2,
        batch: 4,
    };
    let expect = MtExpect::of_model_dir(marian).unwrap();
    let out = ralm_knn::knnmt::build(
        dir,
        &tr.model,
        &expect,
        &pairs,
        "pairs",
        &opts,
        &mut |_| {},
        &|| false,
    )
    .unwrap();
    assert!(matches!(out, BuildOutcome::Complete(_)));
    let params = KnnMtParams {
        k: 1,
        lambda: 0.9,
        temperature: 10.0,
    };
    write_tuned(dir, &params).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn knnmt_translation_follows_the_datastore_and_reloads() {
    let Some(models) = models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("software");
    build_mt_datastore(&models.marian, &dir);
    let mut cfg = ServerConfig {
        admin_token: Some(TOKEN.into()),
        ..ServerConfig::default()
    };
    cfg.translators.push(NamedPath {
        name: "enpt".into(),
        path: models.marian.clone(),
    });
    cfg.mt_datastores.push(
        serde_json::from_value::<MtDatastoreConfig>(json!({
            "name": "software", "path": dir, "translator": "enpt"
        }))
        .unwrap(),
    );
    let s = Server::start(cfg).await;
    let c = &s.client;

    // Concurrent requests share the datastore's batcher; each follows its stored reference,
    // while plain decoding of the same sentence does not.
    let answers = translate_concurrently(c, &MT_PAIRS.map(|(src, _)| src)).await;
    for ((src, reference), r) in MT_PAIRS.iter().zip(&answers) {
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json().unwrap();
        assert_eq!(v["translation"], *reference, "{src}");
        assert_eq!(v["model"], "enpt");
        assert_eq!(v["datastore"], json!({"name": "software", "version": 1}));
    }
    let plain = post(c, "/v1/translate", json!({"text": MT_PAIRS[0].0})).await;
    let plain = plain.json().unwrap();
    assert_ne!(plain["translation"], MT_PAIRS[0].1);
    assert!(plain.get("datastore").is_none(), "{plain}");

    // Errors: another translator, an unknown datastore.
    assert_error(
        &post(
            c,
            "/v1/translate",
            json!({"text": "x", "model": "other", "datastore": "software"}),
        )
        .await,
        400,
        "built with translator `enpt`",
    );
    assert_error(
        &post(
            c,
            "/v1/translate",
            json!({"text": "x", "datastore": "nope"}),
        )
        .await,
        404,
        "nope",
    );

    // Listing and hot swap.
    let v = c.get("/v1/datastores").await.unwrap().json().unwrap();
    let ds = &v["mt_datastores"][0];
    assert_eq!(ds["name"], "software");
    assert_eq!(ds["translator"], "enpt");
    assert_eq!(ds["k"], 1);
    assert_eq!(ds["manifest"]["pairs"], MT_PAIRS.len());
    assert!(ds["entries"].as_u64().unwrap() > 10);
    let r = c
        .post_admin("/v1/admin/reload/software", Some(TOKEN))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap()["kind"], "mt_datastore");
    let r = post(
        c,
        "/v1/translate",
        json!({"text": MT_PAIRS[1].0, "datastore": "software"}),
    )
    .await;
    assert_eq!(r.json().unwrap()["datastore"]["version"], 2);
    let m = c.get("/metrics").await.unwrap().text();
    assert!(m.contains("ralm_index_version{kind=\"mt_datastore\",name=\"software\"} 2"));
    assert!(m.contains("ralm_batch_size_count{batcher=\"knnmt:software\"}"));
    s.shutdown().await;
}

/// The translations of `sources` with datastore `software`, requested concurrently.
async fn translate_concurrently(c: &Client, sources: &[&str]) -> Vec<Reply> {
    let tasks: Vec<_> = sources
        .iter()
        .map(|src| {
            let c = c.clone();
            let body = json!({"text": src, "datastore": "software"});
            tokio::spawn(async move { post(&c, "/v1/translate", body).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_are_batched_and_answered_like_single_ones() {
    let Some(f) = fixture() else { return };
    let mut cfg = config(f);
    cfg.datastores.clear();
    cfg.batching.max_wait_ms = 20;
    let s = Server::start(cfg).await;
    let queries = [
        "Who discovered penicillin?",
        "highest mountain",
        "a board game with sixty-four squares",
        "largest river by discharge",
        "how plants make sugar from sunlight",
        "iron tower in Paris",
    ];
    let mut single = Vec::new();
    for q in queries {
        single.push(
            post(&s.client, "/v1/retrieve", json!({"query": q, "k": 3}))
                .await
                .json()
                .unwrap(),
        );
    }
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let c = s.client.clone();
            let q = queries[i % queries.len()];
            tokio::spawn(async move {
                (
                    i,
                    c.post_json("/v1/retrieve", &json!({"query": q, "k": 3}))
                        .await
                        .unwrap(),
                )
            })
        })
        .collect();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json().unwrap();
        let want = &single[i % queries.len()]["hits"];
        for (a, b) in v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .zip(want.as_array().unwrap())
        {
            assert_eq!(a["id"], b["id"]);
            assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-4);
        }
    }
    let m = s.client.get("/metrics").await.unwrap().text();
    let line = m
        .lines()
        .find(|l| l.starts_with("ralm_batch_size_count{batcher=\"retrieve:tiny\"}"))
        .unwrap();
    let batches: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        batches < 6 + 24,
        "30 requests ran in {batches} batches: no batching"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_knnlm_scores_are_batched_and_answered_like_single_ones() {
    let Some(f) = fixture() else { return };
    let mut cfg = config(f);
    cfg.qa_indexes.clear();
    cfg.batching.max_wait_ms = 50;
    let s = Server::start(cfg).await;
    let texts = [
        "The river flows north through the valley before it reaches the sea.",
        "A short sentence about chess.",
        "Penicillin was discovered in a London laboratory.",
        "Hi",
    ];
    let body = |i: usize| json!({"text": texts[i % texts.len()], "lambda": 0.1 * (i % 3) as f64});
    let mut single = Vec::new();
    for i in 0..texts.len() * 3 {
        single.push(post(&s.client, "/v1/lm/score", body(i)).await);
    }
    let tasks: Vec<_> = (0..texts.len() * 3)
        .map(|i| {
            let (c, b) = (s.client.clone(), body(i));
            tokio::spawn(async move { (i, c.post_json("/v1/lm/score", &b).await.unwrap()) })
        })
        .collect();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        let want = &single[i];
        assert_eq!(r.status, want.status, "{}", r.text());
        if texts[i % texts.len()] == "Hi" {
            // A bad text in a batch fails alone.
            assert_error(&r, 400, "two tokens");
            continue;
        }
        let (v, w) = (r.json().unwrap(), want.json().unwrap());
        assert_eq!(v["tokens"], w["tokens"]);
        assert_eq!(v["lambda"], w["lambda"]);
        for key in ["log_probs", "lm_log_probs"] {
            for (a, b) in v[key]
                .as_array()
                .unwrap()
                .iter()
                .zip(w[key].as_array().unwrap())
            {
                let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                assert!((a - b).abs() < 1e-3, "request {i} {key}: {a} vs {b}");
            }
        }
    }
    let m = s.client.get("/metrics").await.unwrap().text();
    let count = |suffix: &str| -> f64 {
        let prefix = format!("ralm_batch_size_{suffix}{{batcher=\"score:text\"}}");
        let line = m.lines().find(|l| l.starts_with(&prefix)).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    // 12 single requests (12 batches) then 12 concurrent ones in fewer than 12 batches.
    assert!(
        count("count") < 24.0 && count("sum") == 24.0,
        "{} batches for 24 requests: no batching",
        count("count")
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_answers_503_and_slow_requests_504() {
    let Some(f) = fixture() else { return };
    let mut cfg = config(f);
    cfg.datastores.clear();
    cfg.limits.max_concurrent = 1;
    cfg.limits.timeout_ms = 300_000;
    let s = Server::start(cfg.clone()).await;
    let slow = {
        let c = s.client.clone();
        tokio::spawn(async move {
            c.post_json(
                "/v1/ask",
                &json!({"question": "Who discovered penicillin?", "k": 1}),
            )
            .await
            .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = post(&s.client, "/v1/retrieve", json!({"query": "x"})).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.headers["retry-after"], "1");
    // Health and metrics are not limited.
    assert_eq!(s.client.get("/healthz").await.unwrap().status, 200);
    assert_eq!(slow.await.unwrap().status, 200);
    s.shutdown().await;

    cfg.limits.max_concurrent = 8;
    cfg.limits.timeout_ms = 50;
    let s = Server::start(cfg).await;
    let r = post(
        &s.client,
        "/v1/ask",
        json!({"question": "Who discovered penicillin?", "k": 1}),
    )
    .await;
    assert_error(&r, 504, "longer than 50 ms");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_answers_requests_in_flight() {
    let Some(f) = fixture() else { return };
    let mut cfg = config(f);
    cfg.datastores.clear();
    let s = Server::start(cfg).await;
    let c = s.client.clone();
    let slow = tokio::spawn(async move {
        c.post_json(
            "/v1/ask",
            &json!({"question": "Who discovered penicillin?", "k": 1}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.shutdown().await;
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Sends retrieval (or scoring) requests in a loop until `stop`; returns the statuses.
fn hammer(
    c: &Client,
    path: &'static str,
    body: Value,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u16>> {
    let c = c.clone();
    tokio::spawn(async move {
        let mut statuses = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            statuses.push(c.post_json(path, &body).await.map_or(0, |r| r.status));
        }
        statuses
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swap_under_load_drops_no_request() {
    let Some(f) = fixture() else { return };
    // Private copies: this test rebuilds the QA index and re-points the datastore link.
    let tmp = tempfile::tempdir().unwrap();
    let qa = tmp.path().join("qa");
    build_qa(&f.models.minilm, &qa, &f.qa.join("passages.jsonl"));
    let link = tmp.path().join("current");
    std::os::unix::fs::symlink(&f.ds_a, &link).unwrap();
    let mut cfg = config(f);
    cfg.qa_indexes[0].path = qa.clone();
    cfg.datastores[0].path = link.clone();
    let s = Server::start(cfg).await;
    let c = &s.client;

    let before = post(
        c,
        "/v1/retrieve",
        json!({"query": "a volcano that buried Pompeii", "k": 1}),
    )
    .await;
    assert_ne!(titles(&before)[0], "Mount Vesuvius");
    let ds_before = c.get("/v1/datastores").await.unwrap().json().unwrap()["datastores"][0]
        ["manifest"]["corpus_fingerprint"]
        .clone();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..3)
        .map(|_| {
            hammer(
                c,
                "/v1/retrieve",
                json!({"query": "a volcano that buried Pompeii", "k": 2}),
                stop.clone(),
            )
        })
        .chain([hammer(
            c,
            "/v1/lm/score",
            json!({"text": TEXT_B}),
            stop.clone(),
        )])
        .collect();

    // Publish a new snapshot (set B) while serving, then swap to it.
    let (models, pb, qa2) = (f.models.minilm.clone(), f.passages_b.clone(), qa.clone());
    tokio::task::spawn_blocking(move || build_qa(&models, &qa2, &pb))
        .await
        .unwrap();
    let r = c
        .post_admin("/v1/admin/reload/tiny", Some(TOKEN))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json().unwrap();
    assert_eq!(
        (v["previous"].as_u64(), v["version"].as_u64()),
        (Some(1), Some(2))
    );
    let after = post(
        c,
        "/v1/retrieve",
        json!({"query": "a volcano that buried Pompeii", "k": 1}),
    )
    .await;
    assert_eq!(titles(&after)[0], "Mount Vesuvius");
    assert_eq!(after.json().unwrap()["version"], 2);

    // Swap the datastore: re-point the link atomically, reload.
    let tmp_link = tmp.path().join("current.tmp");
    std::os::unix::fs::symlink(&f.ds_b, &tmp_link).unwrap();
    std::fs::rename(&tmp_link, &link).unwrap();
    let r = c
        .post_admin("/v1/admin/reload/text", Some(TOKEN))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap()["version"], 2);
    let ds = c.get("/v1/datastores").await.unwrap().json().unwrap();
    assert_ne!(
        ds["datastores"][0]["manifest"]["corpus_fingerprint"],
        ds_before
    );
    assert_eq!(ds["datastores"][0]["version"], 2);
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in load {
        let statuses = t.await.unwrap();
        assert!(
            statuses.iter().all(|&s| s == 200),
            "failed during the swap: {statuses:?}"
        );
        total += statuses.len();
    }
    assert!(total >= 4, "the load made only {total} requests");
    let m = c.get("/metrics").await.unwrap().text();
    assert!(
        m.contains("ralm_index_version{kind=\"qa_index\",name=\"tiny\"} 2"),
        "{m}"
    );
    s.shutdown().await;
}
