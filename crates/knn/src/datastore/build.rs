//! The resumable build driver: a manifest fixes the plan, every chunk is produced and stored
//! atomically, an interrupted build resumes with the chunks already on disk, and the index is
//! built once all chunks exist.

use super::kv::{differing_fields, read_json, write_json, IndexSpec, Layout};
use crate::error::{KnnError, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// A datastore manifest: everything that fixes the contents, plus the count once complete.
pub trait BuildPlan: Serialize + DeserializeOwned + PartialEq + Clone {
    /// Stored entries once the build completed.
    fn count(&self) -> Option<u64>;
    /// The same manifest with the count set (`None`: still building).
    fn with_count(&self, count: Option<u64>) -> Self;
    /// Where the chunks are stored under `dir`.
    fn layout(&self, dir: &Path) -> Layout;
    /// Index structure.
    fn index_spec(&self) -> IndexSpec;
    /// The same manifest with another index structure.
    fn with_index(&self, index: IndexSpec) -> Self;
    /// Provenance the index records and every user must agree on.
    fn provenance(&self) -> serde_json::Value;
}

/// How a build call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildOutcome {
    /// All chunks stored and indexed; the number of entries.
    Complete(u64),
    /// Stopped on request after storing this many chunks (of the plan's total).
    Interrupted {
        /// Chunks stored so far.
        done: usize,
        /// Chunks in the plan.
        total: usize,
    },
}

/// Progress of a build, reported after each chunk.
#[derive(Debug, Clone, Copy)]
pub struct BuildProgress {
    /// Entries stored so far (including chunks found from an earlier run).
    pub tokens_done: usize,
    /// Entries in the plan.
    pub tokens_total: usize,
    /// Entries produced by this run so far (for a speed estimate).
    pub tokens_this_run: usize,
}

/// Builds (or resumes) the datastore of `plan` in `dir`, its manifest at `dir/manifest_name`;
/// a plan that differs from the stored one only in its index reuses the chunks and re-indexes.
/// `produce(i)` returns chunk `i`'s keys and values; `stop` is asked after every chunk.
pub fn run_build<P: BuildPlan>(
    dir: &Path,
    manifest_name: &str,
    plan: P,
    produce: &mut dyn FnMut(usize) -> Result<(Vec<f32>, Vec<u32>)>,
    progress: &mut dyn FnMut(BuildProgress),
    stop: &dyn Fn() -> bool,
) -> Result<BuildOutcome> {
    let layout = plan.layout(dir);
    if layout.rows.is_empty() {
        return Err(KnnError::Invalid(
            "nothing to store: the plan has no chunks".into(),
        ));
    }
    layout.create_dirs()?;
    let mpath = dir.join(manifest_name);
    match read_json::<P>(&mpath)? {
        Some(old) if old.count().is_some() && old.with_count(None) == plan => {
            return Ok(BuildOutcome::Complete(old.count().unwrap_or(0)));
        }
        // Only the index differs: the stored chunks stay valid, the index is rebuilt.
        Some(old) if old.with_count(None).with_index(plan.index_spec()) == plan => {
            write_json(&mpath, &plan)?
        }
        Some(old) if old != plan => {
            return Err(KnnError::mismatch(
                &mpath,
                format!(
                    "holds a datastore with different settings ({}); remove it or build elsewhere",
                    differing_fields(&old, &plan)
                ),
            ));
        }
        Some(_) => {}
        None => write_json(&mpath, &plan)?,
    }
    let total = layout.entries();
    let (mut done, mut this_run) = (0, 0);
    for (i, &rows) in layout.rows.iter().enumerate() {
        if !layout.has_chunk(i) {
            let (keys, values) = produce(i)?;
            layout.write_chunk(i, &keys, &values)?;
            this_run += rows;
        }
        done += rows;
        progress(BuildProgress {
            tokens_done: done,
            tokens_total: total,
            tokens_this_run: this_run,
        });
        if i + 1 < layout.rows.len() && stop() {
            return Ok(BuildOutcome::Interrupted {
                done: i + 1,
                total: layout.rows.len(),
            });
        }
    }
    let count = layout.build_index(plan.index_spec(), plan.provenance())?;
    write_json(&mpath, &plan.with_count(Some(count)))?;
    Ok(BuildOutcome::Complete(count))
}
