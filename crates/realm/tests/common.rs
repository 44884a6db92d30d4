//! Helpers shared by the integration tests: locating optional real data files.

use std::path::PathBuf;

use ralm_realm::data::{repo_root, shared_data_dir};

/// `path` under the shared data directory, or None (with a printed skip message) when absent.
pub fn shared(path: &str) -> Option<PathBuf> {
    present(shared_data_dir().join(path))
}

/// `path` under the repository root (models/, corpora/), or None when absent.
pub fn in_repo(path: &str) -> Option<PathBuf> {
    present(repo_root().join(path))
}

fn present(p: PathBuf) -> Option<PathBuf> {
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} is absent", p.display());
        None
    }
}
