//! The index builder's threads run in Linux's idle scheduling class and the trainer's (rayon's
//! global pool) stay in the normal one, even when the builder is started before the trainer has
//! used rayon. Its own test binary, so that rayon's global pool is not running when it starts.

#![cfg(target_os = "linux")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use ralm_models::bert::Pooling;
use ralm_realm::passages::Passage;
use ralm_realm::refresh::{DocSnapshot, Refresher, SnapshotSlot};

/// Scheduling policy of every thread of this process whose name starts with `prefix`.
fn policies_of(prefix: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap();
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if name.starts_with(prefix) {
            let tid: i32 = task.file_name().to_str().unwrap().parse().unwrap();
            // SAFETY: sched_getscheduler only reads the policy of thread `tid`.
            out.push(unsafe { libc::sched_getscheduler(tid) });
        }
    }
    out
}

#[test]
fn the_builder_runs_idle_and_the_trainers_threads_keep_the_normal_class() {
    let passages = vec![Passage {
        id: "wiki:paris:0".into(),
        title: "Paris".into(),
        text: "paris is the capital of france.".into(),
    }];
    let first = DocSnapshot::new(0, 0, Instant::now(), &[1.0, 0.0], 2).unwrap();
    let slot = Arc::new(SnapshotSlot::new(first));
    let _refresher = Refresher::spawn(
        slot,
        Arc::new(passages),
        Pooling::Mean,
        8,
        Device::Cpu,
        None,
    );
    // Nothing here touches rayon before the builder has made its pool, as in `ralm realm
    // pretrain`, where the trainer first loads its models.
    let deadline = Instant::now() + Duration::from_secs(10);
    while policies_of("refresh-").is_empty() {
        assert!(Instant::now() < deadline, "no builder threads within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let builder = policies_of("refresh-");
    assert_eq!(
        builder.len(),
        rayon::current_num_threads(),
        "builder threads"
    );
    assert!(
        builder.iter().all(|&p| p == libc::SCHED_IDLE),
        "{builder:?}"
    );
    // SAFETY: as above, for the calling worker thread.
    let trainer = rayon::broadcast(|_| unsafe { libc::sched_getscheduler(0) });
    assert!(
        trainer.iter().all(|&p| p == libc::SCHED_OTHER),
        "{trainer:?}"
    );
}
