//! `ralm serve`: the HTTP service; `ralm loadtest`: a bounded load test of it on loopback.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ralm_server::client::Client;
use ralm_server::config::{DatastoreConfig, MtDatastoreConfig, NamedPath};
use ralm_server::loadtest::{self, LoadReport, MakeRequest};
use ralm_server::{AppState, ServerConfig};
use serde_json::json;

/// What to serve: a config file and flags that override or extend it.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// JSON config file (see docs/server.md); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    listen: Option<String>,
    /// QA index to serve, `NAME=DIR` (repeatable).
    #[arg(long = "qa", value_parser = named)]
    qa: Vec<NamedPath>,
    /// kNN-LM datastore to serve, `NAME=DIR` (repeatable).
    #[arg(long = "datastore", value_parser = named)]
    datastores: Vec<NamedPath>,
    /// Translator to serve, `NAME=DIR` (repeatable).
    #[arg(long = "translator", value_parser = named)]
    translators: Vec<NamedPath>,
    /// kNN-MT datastore to serve, `NAME=TRANSLATOR:DIR`, mixed in with its tuned.json
    /// (repeatable; the config file also sets the gate and the search knobs).
    #[arg(long = "mt-datastore", value_parser = mt_datastore)]
    mt_datastores: Vec<MtDatastoreConfig>,
    /// Causal LM of the datastores (GGUF file, a directory holding one, or HF directory).
    #[arg(long)]
    lm: Option<PathBuf>,
    /// Run a GGUF LM with quantized matmuls (less memory, slower) instead of dequantized f32.
    #[arg(long)]
    lm_quantized: bool,
    /// Bearer token of the admin endpoints (also read from RALM_ADMIN_TOKEN).
    #[arg(long)]
    admin_token: Option<String>,
    /// Longest wait for a batch to fill, in milliseconds.
    #[arg(long)]
    max_batch_wait_ms: Option<u64>,
    /// Run every request alone instead of batching concurrent ones.
    #[arg(long)]
    no_batching: bool,
    /// Requests served at once (more get 503).
    #[arg(long)]
    max_concurrent: Option<usize>,
    /// Per-request timeout in milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
}

fn named(s: &str) -> Result<NamedPath, String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PATH, got {s:?}"))?;
    Ok(NamedPath {
        name: name.to_string(),
        path: path.into(),
    })
}

fn mt_datastore(s: &str) -> Result<MtDatastoreConfig, String> {
    let n = named(s)?;
    let text = n.path.to_string_lossy();
    let (translator, dir) = text
        .split_once(':')
        .ok_or_else(|| format!("expected NAME=TRANSLATOR:DIR, got {s:?}"))?;
    serde_json::from_value(json!({"name": n.name, "path": dir, "translator": translator}))
        .map_err(|e| e.to_string())
}

impl ServerArgs {
    /// The config file (or defaults) with the flags applied.
    fn config(&self) -> anyhow::Result<ServerConfig> {
        let mut c = match &self.config {
            Some(p) => ServerConfig::from_file(p)?,
            None => ServerConfig::default(),
        };
        if let Some(l) = &self.listen {
            c.listen = l.clone();
        }
        c.qa_indexes.extend(self.qa.iter().cloned());
        c.datastores
            .extend(self.datastores.iter().map(|n| DatastoreConfig {
                name: n.name.clone(),
                path: n.path.clone(),
                ..default_datastore()
            }));
        c.translators.extend(self.translators.iter().cloned());
        c.mt_datastores.extend(self.mt_datastores.iter().cloned());
        if let Some(lm) = &self.lm {
            c.lm = lm.clone();
        }
        c.lm_quantized |= self.lm_quantized;
        if let Some(d) = crate::device::given_name() {
            c.device = d;
        }
        if let Some(t) = self
            .admin_token
            .clone()
            .or_else(|| std::env::var("RALM_ADMIN_TOKEN").ok())
        {
            c.admin_token = Some(t);
        }
        if let Some(ms) = self.max_batch_wait_ms {
            c.batching.max_wait_ms = ms;
        }
        if self.no_batching {
            c.batching.enabled = false;
        }
        if let Some(n) = self.max_concurrent {
            c.limits.max_concurrent = n;
        }
        if let Some(ms) = self.timeout_ms {
            c.limits.timeout_ms = ms;
        }
        c.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }
}

/// A datastore entry's defaults (as a config file would fill them in).
fn default_datastore() -> DatastoreConfig {
    serde_json::from_value(json!({"name": "", "path": ""})).expect("defaults deserialize")
}

/// `ralm serve`.
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    server: ServerArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: draining requests in flight");
}

/// Runs `ralm serve`.
pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = a.server.config()?;
    let listen = config.listen.clone();
    tracing::info!(
        qa = config.qa_indexes.len(),
        datastores = config.datastores.len(),
        translators = config.translators.len(),
        batching = config.batching.enabled,
        "loading"
    );
    let state = Arc::new(AppState::load(config)?);
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        tracing::info!(addr = %listener.local_addr()?, "listening");
        ralm_server::serve(listener, state, shutdown_signal()).await?;
        Ok(())
    })
}

/// `ralm loadtest`: starts the server in this process on loopback (batching on, then off) and
/// hits retrieval and kNN-LM scoring with closed-loop clients.
#[derive(Args)]
pub struct LoadtestArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Seconds per run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Concurrent clients of each run.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// Reload the datastore (hot swap) in the middle of every scoring run.
    #[arg(long)]
    swap_mid_run: bool,
    /// Skip the batching-off pass.
    #[arg(long)]
    only_batched: bool,
}

/// Questions for the retrieval load (SQuAD-style).
const QUERIES: &[&str] = &[
    "Which NFL team represented the AFC at Super Bowl 50?",
    "Where did Super Bowl 50 take place?",
    "What is the largest city in Poland?",
    "Who designed the Eiffel Tower?",
    "What causes the tides of the ocean?",
    "When was the University of Chicago founded?",
    "What is the main export of Victoria?",
    "Who was the first Chancellor of Germany?",
    "How many species of birds are there?",
    "What language is spoken in Brazil?",
    "What does the Amazon rainforest produce?",
    "Who invented the steam engine?",
    "Which river flows through Warsaw?",
    "What is the capital of Kenya?",
    "When did the Normans conquer England?",
    "What is a prime number?",
];

/// Texts for the scoring load.
const TEXTS: &[&str] = &[
    "The city is the capital and largest city of the country, with a population of about two million people.",
    "The river flows north through the valley before it reaches the sea near the old harbour town.",
    "The team won the championship in the final game of the season after a long and difficult year.",
    "The university was founded in the nineteenth century and is known for its research in physics.",
    "The war ended with a treaty that changed the borders of several countries in the region.",
    "The album was released in the spring and reached the top of the charts within two weeks.",
    "The bridge was built of stone and iron and connects the two halves of the city.",
    "Scientists have long studied the effects of climate on the growth of forests in the north.",
];

fn print_report(what: &str, batching: bool, r: &LoadReport) {
    println!(
        "| {what} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
        if batching { "on" } else { "off" },
        r.clients,
        r.rps,
        r.p50_ms,
        r.p99_ms,
        r.ok,
        r.errors
    );
    if let Some(e) = &r.first_error {
        println!("|   first error: {e} |");
    }
}

/// Runs `ralm loadtest`.
pub fn run_loadtest(a: LoadtestArgs) -> anyhow::Result<()> {
    let base = a.server.config()?;
    let passes: &[bool] = if a.only_batched {
        &[true]
    } else {
        &[true, false]
    };
    let duration = Duration::from_secs_f64(a.seconds);
    println!(
        "rss at start: {:.0} MiB",
        loadtest::rss_mib().unwrap_or(f64::NAN)
    );
    println!("| endpoint | batching | clients | req/s | p50 ms | p99 ms | ok | errors |");
    println!("|---|---|---|---|---|---|---|---|");
    for &batching in passes {
        let mut config = base.clone();
        config.listen = "127.0.0.1:0".into();
        config.batching.enabled = batching;
        // The load itself must not be refused: room for every client.
        let most = a.clients.iter().copied().max().unwrap_or(1);
        config.limits.max_concurrent = config.limits.max_concurrent.max(most + 8);
        let qa = config.qa_indexes.first().map(|n| n.name.clone());
        let ds = config.datastores.first().map(|d| d.name.clone());
        let token = config.admin_token.clone();
        let state = Arc::new(AppState::load(config)?);
        runtime()?.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(ralm_server::serve(listener, state, async {
                let _ = stopped.await;
            }));
            let client = Client::new(addr);
            if let Some(index) = &qa {
                let index = index.clone();
                let make: MakeRequest = Arc::new(move |c, i| {
                    let q = QUERIES[(c * 7 + i) % QUERIES.len()];
                    (
                        "/v1/retrieve".into(),
                        json!({"query": q, "k": 5, "index": index, "retriever": "dense"}),
                    )
                });
                for &n in &a.clients {
                    let r = loadtest::run(&client, n, duration, make.clone()).await;
                    print_report("retrieve", batching, &r);
                }
            }
            if let Some(ds) = &ds {
                let name = ds.clone();
                let make: MakeRequest = Arc::new(move |c, i| {
                    let t = TEXTS[(c * 3 + i) % TEXTS.len()];
                    ("/v1/lm/score".into(), json!({"text": t, "datastore": name}))
                });
                for &n in &a.clients {
                    let swap = a.swap_mid_run.then(|| {
                        let client = client.clone();
                        let path = format!("/v1/admin/reload/{ds}");
                        let token = token.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(duration / 2).await;
                            client.post_admin(&path, token.as_deref()).await
                        })
                    });
                    let r = loadtest::run(&client, n, duration, make.clone()).await;
                    print_report("lm/score", batching, &r);
                    if let Some(s) = swap {
                        match s.await {
                            Ok(Ok(reply)) => {
                                println!("|   mid-run reload: {} {} |", reply.status, reply.text())
                            }
                            Ok(Err(e)) => println!("|   mid-run reload failed: {e} |"),
                            Err(e) => println!("|   mid-run reload task failed: {e} |"),
                        }
                    }
                }
            }
            let metrics = client.get("/metrics").await?;
            for line in metrics.text().lines() {
                if line.starts_with("ralm_batch_size_sum")
                    || line.starts_with("ralm_batch_size_count")
                {
                    println!("|   {line} |");
                }
            }
            let _ = stop.send(());
            server.await??;
            println!(
                "rss after batching-{} pass: {:.0} MiB",
                if batching { "on" } else { "off" },
                loadtest::rss_mib().unwrap_or(f64::NAN)
            );
            anyhow::Ok(())
        })?;
    }
    Ok(())
}
