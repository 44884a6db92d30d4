//! Cross-request batching: concurrent requests queue for a dedicated worker thread, which waits
//! at most `max_wait` after the first one for others to join (up to `max_batch`) and runs them
//! through one batched call. With batching off every request runs alone on tokio's blocking
//! pool. Either way the model work stays off the async executor's threads, and a panic inside
//! the work becomes a 500 for the requests of that batch instead of taking the server down.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// The batched work: one output per input, in order.
pub type BatchFn<Req, Resp> = Arc<dyn Fn(Vec<Req>) -> Vec<Resp> + Send + Sync>;

/// When a batch is closed.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Most requests per batch.
    pub max_batch: usize,
    /// Longest the first request of a batch waits for company.
    pub max_wait: Duration,
}

struct Job<Req, Resp> {
    req: Req,
    reply: oneshot::Sender<Resp>,
}

enum Mode<Req, Resp> {
    Batched(mpsc::Sender<Job<Req, Resp>>),
    Direct(BatchFn<Req, Resp>),
}

/// Runs requests through a [`BatchFn`], batched or one at a time.
pub struct Batcher<Req, Resp> {
    name: String,
    mode: Mode<Req, Resp>,
    metrics: Arc<Metrics>,
}

/// Calls `run` on `reqs`, turning a panic into `None`.
fn run_guarded<Req, Resp>(run: &BatchFn<Req, Resp>, reqs: Vec<Req>) -> Option<Vec<Resp>> {
    catch_unwind(AssertUnwindSafe(|| run(reqs))).ok()
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// A batcher called `name` (the metrics label). `policy: None` turns batching off.
    pub fn new(
        name: &str,
        policy: Option<BatchPolicy>,
        metrics: Arc<Metrics>,
        run: BatchFn<Req, Resp>,
    ) -> std::io::Result<Self> {
        let mode = match policy {
            None => Mode::Direct(run),
            Some(p) => {
                let (tx, rx) = mpsc::channel();
                let m = metrics.clone();
                let label = name.to_string();
                std::thread::Builder::new()
                    .name(format!("batch-{name}"))
                    .spawn(move || worker(rx, p, &run, &m, &label))?;
                Mode::Batched(tx)
            }
        };
        Ok(Self {
            name: name.to_string(),
            mode,
            metrics,
        })
    }

    /// Runs `req` (in a batch with others when batching is on) and returns its output.
    pub async fn submit(&self, req: Req) -> Result<Resp, ApiError> {
        let lost = || ApiError::internal(format!("the {} worker failed", self.name));
        match &self.mode {
            Mode::Batched(tx) => {
                let (reply, rx) = oneshot::channel();
                tx.send(Job { req, reply }).map_err(|_| lost())?;
                rx.await.map_err(|_| lost())
            }
            Mode::Direct(run) => {
                let run = run.clone();
                self.metrics.batch(&self.name, 1);
                tokio::task::spawn_blocking(move || run_guarded(&run, vec![req]))
                    .await
                    .ok()
                    .flatten()
                    .and_then(|mut v| v.pop())
                    .ok_or_else(lost)
            }
        }
    }
}

/// The batching thread: collects jobs until the batch is full or the first job waited
/// `max_wait`, runs them, answers each; ends when every sender is gone.
fn worker<Req, Resp>(
    rx: mpsc::Receiver<Job<Req, Resp>>,
    policy: BatchPolicy,
    run: &BatchFn<Req, Resp>,
    metrics: &Metrics,
    name: &str,
) {
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + policy.max_wait;
        let mut jobs = vec![first];
        while jobs.len() < policy.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        metrics.batch(name, jobs.len());
        let (reqs, replies): (Vec<Req>, Vec<oneshot::Sender<Resp>>) =
            jobs.into_iter().map(|j| (j.req, j.reply)).unzip();
        // On a panic the replies are dropped: each waiting request answers 500.
        if let Some(outs) = run_guarded(run, reqs) {
            for (reply, out) in replies.into_iter().zip(outs) {
                // A receiver that is gone timed out; nothing to tell it.
                let _ = reply.send(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn doubling(sizes: Arc<Mutex<Vec<usize>>>) -> BatchFn<u32, u32> {
        Arc::new(move |reqs: Vec<u32>| {
            sizes.lock().unwrap().push(reqs.len());
            if reqs.contains(&13) {
                panic!("unlucky");
            }
            reqs.into_iter().map(|x| x * 2).collect()
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_batches_and_get_their_own_answers() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let policy = BatchPolicy {
            max_batch: 8,
            max_wait: Duration::from_millis(50),
        };
        let metrics = Arc::new(Metrics::default());
        let b =
            Arc::new(Batcher::new("t", Some(policy), metrics, doubling(sizes.clone())).unwrap());
        let tasks: Vec<_> = (100..120u32)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { (i, b.submit(i).await) })
            })
            .collect();
        for t in tasks {
            let (i, out) = t.await.unwrap();
            assert_eq!(out.unwrap(), 2 * i);
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|&s| s <= 8));
        assert!(sizes.len() < 20, "no batching happened: {sizes:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_batch_answers_500_and_the_worker_survives() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let metrics = Arc::new(Metrics::default());
        for policy in [
            None,
            Some(BatchPolicy {
                max_batch: 4,
                max_wait: Duration::from_millis(1),
            }),
        ] {
            let b = Batcher::new("t", policy, metrics.clone(), doubling(sizes.clone())).unwrap();
            let err = b.submit(13).await.unwrap_err();
            assert_eq!(err.status, axum::http::StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(b.submit(4).await.unwrap(), 8);
        }
    }
}
