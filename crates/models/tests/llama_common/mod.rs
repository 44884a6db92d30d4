//! Shared helpers of the Llama tests: locating the real model files and skipping without them.

#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The SmolLM2 GGUF file, or `None` (with a printed notice) when it has not been fetched.
pub fn smollm2_gguf() -> Option<PathBuf> {
    let p = repo_root().join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipping: {} is absent (run scripts/setup.sh)", p.display());
        None
    }
}

/// The SmolLM2 golden file, or `None` (with a printed notice) when absent.
pub fn smollm2_golden() -> Option<serde_json::Value> {
    let p = repo_root().join("../shared/golden/smollm2_golden.json");
    match std::fs::read_to_string(&p) {
        Ok(text) => Some(serde_json::from_str(&text).expect("golden file is valid JSON")),
        Err(_) => {
            eprintln!("skipping: {} is absent", p.display());
            None
        }
    }
}
