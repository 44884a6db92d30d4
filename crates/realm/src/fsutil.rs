//! Durable file writes: a temporary sibling, fsynced, then renamed into place.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{RealmError, Result};

/// The temporary sibling name used while `path` is being written.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `path` through `fill` into a temporary file, fsyncs it and renames it into place.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut out = BufWriter::new(File::create(&tmp)?);
        fill(&mut out)?;
        out.flush()?;
        out.get_ref().sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(RealmError::io(path, e));
    }
    sync_parent(path)
}

/// Fsyncs the directory holding `path` so a rename into it is durable.
pub fn sync_parent(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| RealmError::io(parent, e))
}

/// Replaces the directory `dir` with one written by `fill` into a temporary sibling: the old
/// one is moved to `<dir>.old`, the new one renamed into place, then the old one removed. A
/// crash between the two renames leaves the previous version as `<dir>.old`.
pub fn replace_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_sibling(dir);
    let mut old_name = dir.file_name().unwrap_or_default().to_os_string();
    old_name.push(".old");
    let old = dir.with_file_name(old_name);
    for stale in [&tmp, &old] {
        if stale.exists() {
            std::fs::remove_dir_all(stale).map_err(|e| RealmError::io(stale, e))?;
        }
    }
    std::fs::create_dir_all(&tmp).map_err(|e| RealmError::io(&tmp, e))?;
    fill(&tmp)?;
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| RealmError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| RealmError::io(dir, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| RealmError::io(&old, e))?;
    }
    sync_parent(dir)
}
