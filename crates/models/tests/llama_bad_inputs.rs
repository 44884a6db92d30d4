//! Broken model files give errors that name the file, never panics.

mod llama_common;

use candle_core::{DType, Device, Tensor};
use ralm_models::llama::{LlamaModel, WeightMode};
use std::collections::HashMap;
use std::path::Path;

fn load_err(path: &Path) -> String {
    match LlamaModel::load(path, WeightMode::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_and_truncated_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.gguf");
    assert!(load_err(&missing).contains("absent.gguf"));

    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"definitely not a gguf file").unwrap();
    let e = load_err(&junk);
    assert!(e.contains("junk.gguf") && e.contains("GGUF"), "{e}");

    let Some(real) = llama_common::smollm2_gguf() else {
        return;
    };
    let bytes = std::fs::read(&real).unwrap();
    for cut in [100, 2_000_000, bytes.len() - 1000] {
        let p = dir.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = load_err(&p);
        assert!(e.contains(&format!("cut{cut}.gguf")), "{e}");
    }
}

fn write_dir(dir: &Path, config: &str) {
    std::fs::write(dir.join("config.json"), config).unwrap();
}

const CONFIG: &str = r#"{"vocab_size": 16, "hidden_size": 8, "intermediate_size": 16,
  "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}"#;

#[test]
fn corrupt_safetensors_and_wrong_shapes() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), CONFIG);
    let e = load_err(dir.path());
    assert!(e.contains("model.safetensors"), "{e}");

    std::fs::write(dir.path().join("model.safetensors"), b"\x10\x00\x00garbage").unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("model.safetensors"), "{e}");

    // Every tensor present, but q_proj has the wrong shape.
    let dev = Device::Cpu;
    let z = |s: &[usize]| Tensor::zeros(s, DType::F32, &dev).unwrap();
    let mut w: HashMap<String, Tensor> = HashMap::new();
    w.insert("model.embed_tokens.weight".into(), z(&[16, 8]));
    w.insert("model.norm.weight".into(), z(&[8]));
    let p = "model.layers.0";
    for (n, s) in [
        ("input_layernorm", vec![8]),
        ("post_attention_layernorm", vec![8]),
        ("self_attn.q_proj", vec![8, 4]),
        ("self_attn.k_proj", vec![4, 8]),
        ("self_attn.v_proj", vec![4, 8]),
        ("self_attn.o_proj", vec![8, 8]),
        ("mlp.gate_proj", vec![16, 8]),
        ("mlp.up_proj", vec![16, 8]),
        ("mlp.down_proj", vec![8, 16]),
    ] {
        w.insert(format!("{p}.{n}.weight"), z(&s));
    }
    candle_core::safetensors::save(&w, dir.path().join("model.safetensors")).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("q_proj"),
        "{e}"
    );

    write_dir(dir.path(), r#"{"vocab_size": 16}"#);
    let e = load_err(dir.path());
    assert!(e.contains("config.json"), "{e}");
    write_dir(
        dir.path(),
        &CONFIG.replace("\"num_key_value_heads\": 1", "\"num_key_value_heads\": 3"),
    );
    let e = load_err(dir.path());
    assert!(
        e.contains("config.json") && e.contains("key/value heads"),
        "{e}"
    );
}
