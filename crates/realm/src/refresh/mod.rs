//! REALM's asynchronous index refresh: the trainer retrieves from the current [`DocSnapshot`]
//! (passage vectors made by one version of the document tower), while a [`Refresher`] thread
//! re-embeds the corpus with a saved copy of the tower and swaps the new snapshot in whole. The
//! trainer never waits: it offers a copy only when the refresher is idle, and a search holds its
//! snapshot (an `Arc`) to the end, so it never sees a mix of two versions. The refresher runs
//! at the lowest scheduling priority, so it takes only the cycles the trainer leaves idle.

mod store;

pub use store::SnapshotStore;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::Device;
use ralm_index::{FlatIndex, Index, KeyType, Metric};
use ralm_models::bert::Pooling;

use crate::error::{RealmError, Result};
use crate::passages::Passage;
use crate::retriever::{top_rows, DenseEncoder};

/// Passage vectors made by one version of the document tower, searchable by inner product.
pub struct DocSnapshot {
    /// 0 for the index the run started from, then 1, 2, … per refresh.
    pub version: u64,
    /// Trainer updates taken when the tower's parameters were copied.
    pub params_step: usize,
    /// When the parameters were copied.
    pub taken: Instant,
    index: FlatIndex,
}

impl DocSnapshot {
    /// A snapshot over `vectors` (`n × dim`, row `i` = passage `i`).
    pub fn new(
        version: u64,
        params_step: usize,
        taken: Instant,
        vectors: &[f32],
        dim: usize,
    ) -> Result<Self> {
        if dim == 0 || !vectors.len().is_multiple_of(dim) {
            return Err(RealmError::Invalid(format!(
                "{} values are not rows of dimension {dim}",
                vectors.len()
            )));
        }
        let ids: Vec<u64> = (0..(vectors.len() / dim) as u64).collect();
        let index =
            FlatIndex::from_vectors(dim, Metric::InnerProduct, KeyType::F32, vectors, &ids)?;
        Ok(Self {
            version,
            params_step,
            taken,
            index,
        })
    }

    /// Passages in the snapshot.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the snapshot holds no passage.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The top-`k` passages by inner product with `query`, best first, with their scores.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<(usize, f32)>> {
        top_rows(&self.index, query, k)
    }
}

/// The snapshot the trainer reads; replaced whole by [`publish`](Self::publish).
pub struct SnapshotSlot {
    current: Mutex<Arc<DocSnapshot>>,
}

impl SnapshotSlot {
    /// A slot holding `first`.
    pub fn new(first: DocSnapshot) -> Self {
        Self {
            current: Mutex::new(Arc::new(first)),
        }
    }

    /// The current snapshot (kept alive by the returned `Arc` however often it is replaced).
    pub fn current(&self) -> Arc<DocSnapshot> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Makes `next` the current snapshot.
    pub fn publish(&self, next: Arc<DocSnapshot>) {
        *self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
    }
}

/// One finished refresh.
#[derive(Debug, Clone)]
pub struct RefreshReport {
    pub version: u64,
    pub params_step: usize,
    /// Seconds from the parameter copy to the swap.
    pub seconds: f64,
}

struct Job {
    step: usize,
    taken: Instant,
    tower: PathBuf,
}

/// Moves the calling thread to Linux's idle scheduling class (`SCHED_IDLE`): it runs only on a
/// core no normal thread wants, so the trainer's threads take the core back at once. Nice 19
/// lets a refresh slow the trainer's updates.
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_setscheduler with pid 0 changes only the calling thread's policy; `param`
    // lives across the call.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

/// The background index builder. Dropping it stops the thread after the refresh under way,
/// whose result is then discarded; a process that exits meanwhile abandons that refresh.
pub struct Refresher {
    jobs: SyncSender<Job>,
    reports: Receiver<Result<RefreshReport>>,
    busy: Arc<AtomicBool>,
}

impl Refresher {
    /// Starts the builder thread: each job re-embeds `passages` with the document tower saved in
    /// the job's directory (an HF BERT directory, pooled with `pooling`, `batch` passages per
    /// forward pass on `device`), saves the result in `store` when given, and publishes it into
    /// `slot`.
    pub fn spawn(
        slot: Arc<SnapshotSlot>,
        passages: Arc<Vec<Passage>>,
        pooling: Pooling,
        batch: usize,
        device: Device,
        store: Option<Arc<SnapshotStore>>,
    ) -> Self {
        let (jobs, inbox) = mpsc::sync_channel::<Job>(1);
        let (outbox, reports) = mpsc::channel();
        let busy = Arc::new(AtomicBool::new(false));
        let flag = busy.clone();
        // Asked here, this starts rayon's global pool (the trainer's) from the caller's thread
        // if it is not running yet: started from the builder's thread, its workers would
        // inherit the idle class, and the trainer would run at the builder's priority.
        let threads = rayon::current_num_threads();
        std::thread::spawn(move || {
            lowest_priority();
            // Its own worker threads, so that the trainer's keep their priority.
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("refresh-{i}"))
                .start_handler(|_| lowest_priority())
                .build();
            let first = slot.current().version + 1;
            for (version, job) in (first..).zip(inbox) {
                let build = || -> Result<RefreshReport> {
                    let encoder = DenseEncoder::load(&job.tower, pooling, batch, &device)?;
                    let dim = encoder.dim();
                    let tokens = encoder.tokenize_passages(&passages)?;
                    let vectors = encoder.encode_tokenized(&tokens)?;
                    if let Some(store) = &store {
                        store.save(version, job.step, job.taken, &vectors, dim)?;
                    }
                    let snapshot = DocSnapshot::new(version, job.step, job.taken, &vectors, dim)?;
                    slot.publish(Arc::new(snapshot));
                    Ok(RefreshReport {
                        version,
                        params_step: job.step,
                        seconds: job.taken.elapsed().as_secs_f64(),
                    })
                };
                let result = match &pool {
                    Ok(pool) => pool.install(build),
                    Err(_) => build(),
                };
                flag.store(false, Ordering::SeqCst);
                if outbox.send(result).is_err() {
                    break;
                }
            }
        });
        Self {
            jobs,
            reports,
            busy,
        }
    }

    /// Whether a refresh is under way.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
    }

    /// Hands over the document tower saved in `tower` (copied at trainer update `step`, at
    /// `taken`); `false`, and nothing sent, while a refresh is under way. The directory must
    /// not change until the refresh reports.
    pub fn offer(&self, step: usize, taken: Instant, tower: PathBuf) -> bool {
        if self.busy.swap(true, Ordering::SeqCst) {
            return false;
        }
        let sent = self.jobs.send(Job { step, taken, tower }).is_ok();
        if !sent {
            self.busy.store(false, Ordering::SeqCst);
        }
        sent
    }

    /// The refreshes finished since the last call.
    pub fn finished(&self) -> Vec<Result<RefreshReport>> {
        self.reports.try_iter().collect()
    }
}
