//! Index snapshots on disk, so that a resumed pre-training run retrieves from the snapshot its
//! checkpoint was reading: `<dir>/v<version>/` holds `vectors.f32` (little-endian rows) and
//! `snapshot.json` (format, version, the trainer update and time of the document tower's copy,
//! and the corpus it covers).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::DocSnapshot;
use crate::error::{RealmError, Result};
use crate::fsutil::{replace_dir, write_atomic};
use crate::passages::Passage;

const FORMAT: &str = "ralm-realm-snapshot";
const VERSION: u32 = 1;
const MANIFEST: &str = "snapshot.json";
const VECTORS: &str = "vectors.f32";

/// What `snapshot.json` records.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    snapshot: u64,
    params_step: usize,
    /// Seconds since the Unix epoch when the document tower was copied.
    taken_unix_s: f64,
    passages: usize,
    dim: usize,
    /// SHA-256 of the passage ids, one per line.
    corpus: String,
}

/// The snapshots of one run, over one corpus.
pub struct SnapshotStore {
    dir: PathBuf,
    corpus: String,
    passages: usize,
}

impl SnapshotStore {
    /// The store in `dir` for snapshots of `passages`.
    pub fn new(dir: &Path, passages: &[Passage]) -> Self {
        let ids: Vec<&str> = passages.iter().map(|p| p.id.as_str()).collect();
        Self {
            dir: dir.to_path_buf(),
            corpus: ralm_models::hash::sha256_hex(ids.join("\n").as_bytes()),
            passages: passages.len(),
        }
    }

    fn path(&self, version: u64) -> PathBuf {
        self.dir.join(format!("v{version}"))
    }

    /// Writes snapshot `version` (`vectors`: one row of `dim` per passage), replacing any
    /// earlier copy whole.
    pub fn save(
        &self,
        version: u64,
        params_step: usize,
        taken: Instant,
        vectors: &[f32],
        dim: usize,
    ) -> Result<()> {
        if vectors.len() != self.passages * dim {
            return Err(RealmError::Invalid(format!(
                "{} values are not {} passages of dimension {dim}",
                vectors.len(),
                self.passages
            )));
        }
        let taken_at = SystemTime::now()
            .checked_sub(taken.elapsed())
            .unwrap_or(UNIX_EPOCH);
        let manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            snapshot: version,
            params_step,
            taken_unix_s: taken_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
            passages: self.passages,
            dim,
            corpus: self.corpus.clone(),
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| RealmError::Invalid(format!("snapshot manifest: {e}")))?;
        std::fs::create_dir_all(&self.dir).map_err(|e| RealmError::io(&self.dir, e))?;
        replace_dir(&self.path(version), |tmp| {
            write_atomic(&tmp.join(VECTORS), |w| {
                vectors
                    .iter()
                    .try_for_each(|v| std::io::Write::write_all(w, &v.to_le_bytes()))
            })?;
            write_atomic(&tmp.join(MANIFEST), |w| std::io::Write::write_all(w, &json))
        })
    }

    /// Reads snapshot `version`, refusing one of another format or corpus; its copy time is
    /// carried over, so staleness in seconds goes on across a restart.
    pub fn load(&self, version: u64) -> Result<DocSnapshot> {
        let dir = self.path(version);
        let file = dir.join(MANIFEST);
        let m: Manifest = crate::data::read_json(&file)?;
        crate::data::check_format(&file, (&m.format, m.version), (FORMAT, VERSION))?;
        if (m.snapshot, m.passages, m.corpus.as_str())
            != (version, self.passages, self.corpus.as_str())
        {
            return Err(RealmError::format(
                &file,
                format!(
                    "snapshot {} of {} passages (corpus {}), but this run needs snapshot \
                     {version} of its own {} passages (corpus {})",
                    m.snapshot, m.passages, m.corpus, self.passages, self.corpus
                ),
            ));
        }
        let path = dir.join(VECTORS);
        let bytes = std::fs::read(&path).map_err(|e| RealmError::io(&path, e))?;
        if bytes.len() != m.passages * m.dim * 4 {
            return Err(RealmError::format(
                &path,
                format!(
                    "{} bytes, but {MANIFEST} says {} passages of dimension {}",
                    bytes.len(),
                    m.passages,
                    m.dim
                ),
            ));
        }
        let vectors: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let age = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(Duration::from_secs_f64(m.taken_unix_s.max(0.0)));
        let taken = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        DocSnapshot::new(version, m.params_step, taken, &vectors, m.dim)
    }

    /// Deletes the snapshots older than `version` (a checkpoint reading `version` is saved).
    pub fn prune(&self, version: u64) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let old = name
                .to_str()
                .and_then(|n| n.strip_prefix('v'))
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|v| v < version);
            if old {
                let path = entry.path();
                std::fs::remove_dir_all(&path).map_err(|e| RealmError::io(&path, e))?;
            }
        }
        Ok(())
    }
}
