//! Snapshots: immutable numbered index versions under one root with an atomically switched
//! `CURRENT` pointer, and a shared handle that swaps to new versions while searches finish
//! on the old one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::{IndexError, Result};
use crate::persist::{open_index, read_manifest, sync_dir, write_atomic, AnyIndex, OpenOptions};
use crate::Index;

/// Name of the file naming the current version.
const CURRENT: &str = "CURRENT";

fn version_name(v: u64) -> String {
    format!("v{v:06}")
}

fn parse_version(name: &str) -> Option<u64> {
    let digits = name.strip_prefix('v')?;
    (digits.len() >= 6 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())?
}

/// A root directory of numbered index versions.
pub struct IndexStore {
    root: PathBuf,
    opts: OpenOptions,
    publish_lock: Mutex<()>,
}

impl IndexStore {
    /// A store rooted at `root` (created if missing), verifying checksums when opening.
    pub fn open(root: &Path) -> Result<Self> {
        Self::with_options(root, OpenOptions::default())
    }

    /// A store rooted at `root` opening versions with `opts`.
    pub fn with_options(root: &Path, opts: OpenOptions) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| IndexError::io(root, e))?;
        Ok(IndexStore {
            root: root.to_path_buf(),
            opts,
            publish_lock: Mutex::new(()),
        })
    }

    /// Directory of version `v`.
    pub fn version_dir(&self, v: u64) -> PathBuf {
        self.root.join(version_name(v))
    }

    /// Published versions, ascending.
    pub fn versions(&self) -> Result<Vec<u64>> {
        let rd = std::fs::read_dir(&self.root).map_err(|e| IndexError::io(&self.root, e))?;
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| IndexError::io(&self.root, e))?;
            if let Some(v) = e.file_name().to_str().and_then(parse_version) {
                out.push(v);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The version `CURRENT` names, if any.
    pub fn current(&self) -> Result<Option<u64>> {
        let path = self.root.join(CURRENT);
        match std::fs::read_to_string(&path) {
            Ok(s) => parse_version(s.trim()).map(Some).ok_or_else(|| {
                IndexError::format(&path, format!("not a version name: {:?}", s.trim()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IndexError::io(&path, e)),
        }
    }

    /// Builds a new version: `build` writes an index into a fresh directory, which is then
    /// renamed into place and made current. Returns the new version number.
    pub fn publish(&self, build: impl FnOnce(&Path) -> Result<()>) -> Result<u64> {
        let _guard = self.publish_lock.lock().unwrap_or_else(|p| p.into_inner());
        let v = self.versions()?.last().copied().unwrap_or(0) + 1;
        let dir = self.version_dir(v);
        let tmp = self.root.join(format!("{}.tmp", version_name(v)));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
        build(&tmp)?;
        read_manifest(&tmp)?;
        sync_dir(&tmp)?;
        std::fs::rename(&tmp, &dir).map_err(|e| IndexError::io(&dir, e))?;
        sync_dir(&self.root)?;
        write_atomic(
            &self.root.join(CURRENT),
            format!("{}\n", version_name(v)).as_bytes(),
        )?;
        Ok(v)
    }

    /// Opens version `v`.
    pub fn open_version(&self, v: u64) -> Result<AnyIndex> {
        open_index(&self.version_dir(v), &self.opts)
    }

    /// Opens the current version and returns it with its number.
    pub fn open_current(&self) -> Result<(u64, Arc<dyn Index>)> {
        let v = self.current()?.ok_or_else(|| {
            IndexError::format(&self.root.join(CURRENT), "no version has been published")
        })?;
        Ok((v, Arc::new(self.open_version(v)?)))
    }

    /// Deletes all but the newest `keep` versions (never the current one); returns those removed.
    pub fn gc(&self, keep: usize) -> Result<Vec<u64>> {
        let _guard = self.publish_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current()?;
        let versions = self.versions()?;
        let cut = versions.len().saturating_sub(keep);
        let mut removed = Vec::new();
        for &v in &versions[..cut] {
            if Some(v) != current {
                let d = self.version_dir(v);
                std::fs::remove_dir_all(&d).map_err(|e| IndexError::io(&d, e))?;
                removed.push(v);
            }
        }
        sync_dir(&self.root)?;
        Ok(removed)
    }
}

/// A handle readers share: `get` returns the index to search, `reload` swaps in the current
/// version; searches holding the old `Arc` finish on it undisturbed.
pub struct SharedIndex {
    store: IndexStore,
    state: RwLock<(u64, Arc<dyn Index>)>,
}

impl SharedIndex {
    /// Opens the store's current version.
    pub fn new(store: IndexStore) -> Result<Self> {
        let state = store.open_current()?;
        Ok(SharedIndex {
            store,
            state: RwLock::new(state),
        })
    }

    /// The index to search now.
    pub fn get(&self) -> Arc<dyn Index> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// The version `get` returns.
    pub fn version(&self) -> u64 {
        self.state.read().unwrap_or_else(|p| p.into_inner()).0
    }

    /// The underlying store.
    pub fn store(&self) -> &IndexStore {
        &self.store
    }

    /// Switches to the current version if it changed; returns whether it did.
    pub fn reload(&self) -> Result<bool> {
        let v = self.store.current()?;
        if v.is_none() || v == Some(self.version()) {
            return Ok(false);
        }
        let next = self.store.open_current()?;
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(true)
    }
}
