//! Bad model files give errors that name the file, never panics.

use std::path::{Path, PathBuf};

use ralm_models::marian::{load_marian_binary, Precision, Translator};
use ralm_models::ModelError;

fn model_file() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/bergamot-enpt/model.enpt.intgemm.alphas.bin");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} is absent (run scripts/setup.sh)", p.display());
        None
    }
}

#[test]
fn missing_model_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.bin");
    let err = load_marian_binary(&path, Precision::Float32).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }));
    assert!(err.to_string().contains("nope.bin"), "{err}");
    let err = Translator::load(dir.path(), Precision::Float32)
        .err()
        .expect("empty dir fails");
    assert!(err.to_string().contains("models:"), "{err}");
}

#[test]
fn truncated_and_garbage_files_are_format_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.bin");
    std::fs::write(&garbage, b"definitely not a marian model").unwrap();
    let err = load_marian_binary(&garbage, Precision::Float32).unwrap_err();
    assert!(err.to_string().contains("garbage.bin"), "{err}");

    let Some(real) = model_file() else { return };
    let bytes = std::fs::read(real).unwrap();
    for cut in [8, 100, 12_000, bytes.len() / 2, bytes.len() - 1] {
        let p = dir.path().join("cut.bin");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let err = load_marian_binary(&p, Precision::Float32).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("cut.bin") && msg.contains("truncated"),
            "cut at {cut}: {msg}"
        );
    }
}

#[test]
fn bad_decoder_yaml_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.yml"),
        "models:\n  - m.bin\nbeam-size: many\n",
    )
    .unwrap();
    let err = Translator::load(dir.path(), Precision::Float32)
        .err()
        .expect("bad yml fails");
    let msg = err.to_string();
    assert!(
        msg.contains("config.yml") && msg.contains("beam-size"),
        "{msg}"
    );
    std::fs::write(
        dir.path().join("config.yml"),
        "models:\n  - m.bin\n   indented: x\n",
    )
    .unwrap();
    let msg = Translator::load(dir.path(), Precision::Float32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("config.yml") && msg.contains("line 3"),
        "{msg}"
    );
}
