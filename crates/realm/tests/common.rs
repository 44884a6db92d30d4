//! Helpers shared by the integration tests: locating optional real data files; tiny BERT and
//! Llama models.
#![allow(dead_code)] // each test binary uses a part

use std::path::{Path, PathBuf};

use ralm_models::bert::{load_tokenizer, BertConfig, HiddenAct};
use ralm_realm::data::{repo_root, shared_data_dir};

/// A tiny BERT's directory `root/bert` (its `vocab.txt` from `words` and a `tokenizer.json`
/// saved from it) and its config: 2 layers of width 16, no dropout, `max_seq` positions.
pub fn tiny_bert(root: &Path, words: &[&str], max_seq: usize) -> (PathBuf, BertConfig) {
    let dir = root.join("bert");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vocab.txt"), words.join("\n")).unwrap();
    let (tok, _) = load_tokenizer(&dir, max_seq).unwrap();
    tok.save(dir.join("tokenizer.json"), false).unwrap();
    let config = BertConfig {
        vocab_size: words.len(),
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 32,
        hidden_act: HiddenAct::Gelu,
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        max_position_embeddings: max_seq,
        type_vocab_size: 2,
        initializer_range: 0.5,
        layer_norm_eps: 1e-12,
        pad_token_id: 0,
        position_embedding_type: "absolute".into(),
        model_type: "bert".into(),
    };
    (dir, config)
}

/// A tiny random Llama's HF directory `root/llama` (2 layers of width 16, seeded weights), its
/// tokenizer the word-level one of [`tiny_bert`] over `words` (give it `<s>` for a `bos`).
pub fn tiny_llama(root: &Path, words: &[&str]) -> PathBuf {
    use rand::{Rng, SeedableRng};
    let (bert, _) = tiny_bert(&root.join("llama-words"), words, 64);
    let dir = root.join("llama");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(bert.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let (v, d, ff, layers) = (words.len(), 16, 32, 2);
    let config = serde_json::json!({"vocab_size": v, "hidden_size": d, "intermediate_size": ff,
        "num_hidden_layers": layers, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 128});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let kv = d / 2;
    let mut shapes = vec![
        ("model.embed_tokens.weight".to_string(), vec![v, d]),
        ("lm_head.weight".into(), vec![v, d]),
        ("model.norm.weight".into(), vec![d]),
    ];
    for i in 0..layers {
        for (name, shape) in [
            ("input_layernorm", vec![d]),
            ("post_attention_layernorm", vec![d]),
            ("self_attn.q_proj", vec![d, d]),
            ("self_attn.k_proj", vec![kv, d]),
            ("self_attn.v_proj", vec![kv, d]),
            ("self_attn.o_proj", vec![d, d]),
            ("mlp.gate_proj", vec![ff, d]),
            ("mlp.up_proj", vec![ff, d]),
            ("mlp.down_proj", vec![d, ff]),
        ] {
            shapes.push((format!("model.layers.{i}.{name}.weight"), shape));
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = shapes
        .into_iter()
        .map(|(name, shape)| {
            // Norm weights near 1, matrices uniform in ±0.5.
            let norm = shape.len() == 1;
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|_| f32::from(norm) + rng.random_range(-0.5f32..0.5))
                .collect();
            let t = candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu);
            (name, t.unwrap())
        })
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    dir
}

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

/// Names of the variables of `varmap` whose gradient in `grads` is missing or all zero.
pub fn without_gradient(
    varmap: &candle_nn::VarMap,
    grads: &candle_core::backprop::GradStore,
) -> Vec<String> {
    let vars = varmap.data().lock().unwrap();
    let mut names: Vec<String> = vars
        .iter()
        .filter(|(_, v)| {
            grads.get(v.as_tensor()).is_none_or(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    == 0.0
            })
        })
        .map(|(n, _)| n.clone())
        .collect();
    names.sort();
    names
}

/// Re-draws every variable of two or more dimensions of `varmap` from N(0, `std`) with `seed`
/// (biases and norms keep their values), so a model built with unseeded initialisation (candle's
/// CPU generator cannot be seeded) behaves the same in every run.
pub fn reseed(varmap: &candle_nn::VarMap, seed: u64, std: f64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let vars = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        if var.rank() < 2 {
            continue;
        }
        let values: Vec<f32> = (0..var.elem_count())
            .map(|_| {
                let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                let u2: f64 = rng.random();
                (std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
            })
            .collect();
        let t = candle_core::Tensor::from_vec(values, var.shape(), var.device()).unwrap();
        var.set(&t).unwrap();
    }
}
