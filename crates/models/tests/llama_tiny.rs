//! A tiny random Llama (2 layers, hidden 32, grouped-query attention) written to disk in HF
//! layout and as GGUF: loading, KV-cache decoding, padding and sliding-window scoring.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor, D};
use ralm_models::llama::{
    ForwardOptions, KeyKind, LlamaConfig, LlamaModel, Sampler, ScoreOptions, WeightMode,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

const DEV: Device = Device::Cpu;

fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 96,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 256,
        tie_word_embeddings: false,
    }
}

fn random(rng: &mut StdRng, shape: &[usize], scale: f32, offset: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| offset + scale * (rng.random::<f32>() * 2.0 - 1.0))
        .collect();
    Tensor::from_vec(v, shape, &DEV).unwrap()
}

/// Random weights named as in HF checkpoints (fixed seed).
fn tiny_weights(cfg: &LlamaConfig) -> HashMap<String, Tensor> {
    let mut rng = StdRng::seed_from_u64(7);
    let (d, ff, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let kv = cfg.kv_heads() * cfg.head_dim();
    let mut w = HashMap::new();
    let mut put = |name: String, shape: &[usize], scale: f32, offset: f32| {
        w.insert(name, random(&mut rng, shape, scale, offset));
    };
    put("model.embed_tokens.weight".into(), &[v, d], 1.0, 0.0);
    put("lm_head.weight".into(), &[v, d], 0.3, 0.0);
    put("model.norm.weight".into(), &[d], 0.2, 1.0);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        put(format!("{p}.input_layernorm.weight"), &[d], 0.2, 1.0);
        put(
            format!("{p}.post_attention_layernorm.weight"),
            &[d],
            0.2,
            1.0,
        );
        put(format!("{p}.self_attn.q_proj.weight"), &[d, d], 0.4, 0.0);
        put(format!("{p}.self_attn.k_proj.weight"), &[kv, d], 0.4, 0.0);
        put(format!("{p}.self_attn.v_proj.weight"), &[kv, d], 0.4, 0.0);
        put(format!("{p}.self_attn.o_proj.weight"), &[d, d], 0.2, 0.0);
        put(format!("{p}.mlp.gate_proj.weight"), &[ff, d], 0.3, 0.0);
        put(format!("{p}.mlp.up_proj.weight"), &[ff, d], 0.3, 0.0);
        put(format!("{p}.mlp.down_proj.weight"), &[d, ff], 0.2, 0.0);
    }
    w
}

fn write_hf_dir(dir: &Path, cfg: &LlamaConfig, w: &HashMap<String, Tensor>) {
    std::fs::write(dir.join("config.json"), serde_json::to_string(cfg).unwrap()).unwrap();
    candle_core::safetensors::save(w, dir.join("model.safetensors")).unwrap();
}

/// Applies llama.cpp's q/k row permutation (rotary halves interleaved per head).
fn llama_cpp_permute(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// Writes the weights as a llama.cpp-style GGUF file (matrices Q8_0, norms F32).
fn write_gguf(path: &Path, cfg: &LlamaConfig, w: &HashMap<String, Tensor>) {
    let hf_to_gguf = |name: &str| -> String {
        name.replace("model.embed_tokens", "token_embd")
            .replace("model.norm", "output_norm")
            .replace("lm_head", "output")
            .replace("model.layers.", "blk.")
            .replace("input_layernorm", "attn_norm")
            .replace("post_attention_layernorm", "ffn_norm")
            .replace("self_attn.q_proj", "attn_q")
            .replace("self_attn.k_proj", "attn_k")
            .replace("self_attn.v_proj", "attn_v")
            .replace("self_attn.o_proj", "attn_output")
            .replace("mlp.gate_proj", "ffn_gate")
            .replace("mlp.up_proj", "ffn_up")
            .replace("mlp.down_proj", "ffn_down")
    };
    let mut tensors = Vec::new();
    for (name, t) in w {
        let t = if name.contains("q_proj") {
            llama_cpp_permute(t, cfg.num_attention_heads)
        } else if name.contains("k_proj") {
            llama_cpp_permute(t, cfg.kv_heads())
        } else {
            t.clone()
        };
        let dtype = if t.rank() == 2 {
            GgmlDType::Q8_0
        } else {
            GgmlDType::F32
        };
        tensors.push((hf_to_gguf(name), QTensor::quantize(&t, dtype).unwrap()));
    }
    let u = |x: usize| Value::U32(x as u32);
    let meta = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.vocab_size", u(cfg.vocab_size)),
        ("llama.embedding_length", u(cfg.hidden_size)),
        ("llama.feed_forward_length", u(cfg.intermediate_size)),
        ("llama.block_count", u(cfg.num_hidden_layers)),
        ("llama.attention.head_count", u(cfg.num_attention_heads)),
        ("llama.attention.head_count_kv", u(cfg.kv_heads())),
        ("llama.context_length", u(cfg.max_position_embeddings)),
        ("llama.rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(cfg.rms_norm_eps as f32),
        ),
    ];
    let meta: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta, &tensors).unwrap();
}

fn ids_tensor(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &DEV).unwrap().unsqueeze(0).unwrap()
}

fn tokens(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    ralm_models::fast_ops::max_abs_diff(a, b).unwrap()
}

fn mem_model() -> LlamaModel {
    let cfg = tiny_config();
    LlamaModel::from_hf_tensors(cfg.clone(), tiny_weights(&cfg), &DEV).unwrap()
}

#[test]
fn hf_directory_save_load_gives_identical_outputs() {
    let cfg = tiny_config();
    let w = tiny_weights(&cfg);
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), &cfg, &w);
    let loaded = LlamaModel::load(dir.path(), WeightMode::F32, &DEV).unwrap();
    let mem = LlamaModel::from_hf_tensors(cfg.clone(), w, &DEV).unwrap();
    assert_eq!(loaded.config(), &cfg);
    let ids = ids_tensor(&tokens(20, 1, cfg.vocab_size));
    let a = loaded
        .logits(&loaded.forward(&ids, 0, None).unwrap().hidden)
        .unwrap();
    let b = mem
        .logits(&mem.forward(&ids, 0, None).unwrap().hidden)
        .unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    assert_eq!(loaded.model_hash().unwrap().len(), 64);
    assert!(LlamaModel::load(dir.path(), WeightMode::Quantized, &DEV).is_err());
}

#[test]
fn gguf_with_permuted_qk_matches_hf_layout() {
    let cfg = tiny_config();
    let w = tiny_weights(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &cfg, &w);
    // The HF model gets the same Q8_0-rounded matrices, so only the layout can differ.
    let rounded: HashMap<String, Tensor> = w
        .iter()
        .map(|(k, t)| {
            let t = if t.rank() == 2 {
                QTensor::quantize(t, GgmlDType::Q8_0)
                    .unwrap()
                    .dequantize(&DEV)
                    .unwrap()
            } else {
                t.clone()
            };
            (k.clone(), t)
        })
        .collect();
    let hf = LlamaModel::from_hf_tensors(cfg.clone(), rounded, &DEV).unwrap();
    let gguf = LlamaModel::from_gguf(&path, WeightMode::F32, &DEV).unwrap();
    let quant = LlamaModel::from_gguf(&path, WeightMode::Quantized, &DEV).unwrap();
    // GGUF stores the epsilon as f32.
    let got_cfg = gguf.config().clone();
    assert!((got_cfg.rms_norm_eps - cfg.rms_norm_eps).abs() < 1e-9);
    let got_cfg = LlamaConfig {
        rms_norm_eps: cfg.rms_norm_eps,
        ..got_cfg
    };
    assert_eq!(got_cfg, cfg);
    let ids = ids_tensor(&tokens(24, 2, cfg.vocab_size));
    let want = hf.forward(&ids, 0, None).unwrap().hidden;
    let got = gguf.forward(&ids, 0, None).unwrap().hidden;
    assert!(max_abs_diff(&want, &got) < 1e-4);
    let q = quant.forward(&ids, 0, None).unwrap().hidden;
    let dev = max_abs_diff(&want, &q);
    eprintln!("tiny model, quantized-matmul max |Δhidden| = {dev:.4}");
    assert!(dev < 0.2);
}

#[test]
fn directory_holding_one_gguf_stands_for_it() {
    let cfg = tiny_config();
    let dir = tempfile::tempdir().unwrap();
    let err = |p: &Path| {
        LlamaModel::load(p, WeightMode::F32, &DEV)
            .err()
            .unwrap()
            .to_string()
    };
    let e = err(dir.path());
    assert!(e.contains("no config.json") && e.contains(".gguf"), "{e}");

    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &cfg, &tiny_weights(&cfg));
    let from_dir = LlamaModel::load(dir.path(), WeightMode::F32, &DEV).unwrap();
    let from_file = LlamaModel::load(&path, WeightMode::F32, &DEV).unwrap();
    assert_eq!(
        from_dir.model_hash().unwrap(),
        from_file.model_hash().unwrap()
    );
    let ids = ids_tensor(&tokens(8, 1, cfg.vocab_size));
    let a = from_dir.forward(&ids, 0, None).unwrap().hidden;
    let b = from_file.forward(&ids, 0, None).unwrap().hidden;
    assert_eq!(max_abs_diff(&a, &b), 0.0);

    std::fs::copy(&path, dir.path().join("other.gguf")).unwrap();
    let e = err(dir.path());
    assert!(e.contains("2 .gguf files"), "{e}");
}

#[test]
fn kv_cache_decoding_equals_full_recomputation() {
    let model = mem_model();
    let ids = tokens(14, 3, model.config().vocab_size);
    let full = model.forward(&ids_tensor(&ids), 0, None).unwrap().hidden;
    let mut cache = model.new_cache();
    let mut parts = vec![
        model
            .forward(&ids_tensor(&ids[..5]), 0, Some(&mut cache))
            .unwrap()
            .hidden,
    ];
    for (p, &id) in ids.iter().enumerate().skip(5) {
        parts.push(
            model
                .forward(&ids_tensor(&[id]), p, Some(&mut cache))
                .unwrap()
                .hidden,
        );
    }
    assert_eq!(cache.len(), ids.len());
    let inc = Tensor::cat(&parts, 1).unwrap();
    assert!(max_abs_diff(&full, &inc) < 1e-5);
    assert!(model
        .forward(&ids_tensor(&[1]), 3, Some(&mut cache))
        .is_err());

    // Greedy generation with the cache equals re-running the whole sequence at every step.
    let prompt = &ids[..6];
    let generated = model
        .generate(prompt, 8, &mut Sampler::Greedy, None)
        .unwrap();
    let mut seq = prompt.to_vec();
    for _ in 0..8 {
        let h = model.forward(&ids_tensor(&seq), 0, None).unwrap().hidden;
        let logits = model.logits(&h.get(0).unwrap()).unwrap();
        let next: Vec<u32> = logits.argmax(D::Minus1).unwrap().to_vec1().unwrap();
        seq.push(*next.last().unwrap());
    }
    assert_eq!(generated, seq[6..]);

    // Seeded temperature sampling is reproducible and stops at the stop token.
    let a = model.generate(prompt, 10, &mut Sampler::temperature(0.8, 9).unwrap(), None);
    let b = model.generate(prompt, 10, &mut Sampler::temperature(0.8, 9).unwrap(), None);
    assert_eq!(a.unwrap(), b.unwrap());
    let stop = generated[2];
    let stopped = model
        .generate(prompt, 8, &mut Sampler::Greedy, Some(stop))
        .unwrap();
    assert_eq!(stopped.last(), Some(&stop));
    assert!(stopped.len() <= 3);
}

#[test]
fn left_padded_batch_matches_single_sequences() {
    let model = mem_model();
    let v = model.config().vocab_size;
    let (a, b) = (tokens(9, 4, v), tokens(5, 5, v));
    let pad = a.len() - b.len();
    let mut batch = a.clone();
    batch.extend(std::iter::repeat_n(0, pad));
    batch.extend(&b);
    let input = Tensor::from_vec(batch, (2, a.len()), &DEV).unwrap();
    let opts = ForwardOptions {
        capture_ffn_input: true,
        left_padding: vec![0, pad],
    };
    let mut cache = model.new_cache();
    let out = model
        .forward_with(&input, 0, Some(&mut cache), &opts)
        .unwrap();
    let ha = model.forward(&ids_tensor(&a), 0, None).unwrap().hidden;
    let hb = model.forward(&ids_tensor(&b), 0, None).unwrap().hidden;
    assert!(max_abs_diff(&out.hidden.get(0).unwrap(), &ha.get(0).unwrap()) < 1e-5);
    let real_b = out.hidden.get(1).unwrap().narrow(0, pad, b.len()).unwrap();
    assert!(max_abs_diff(&real_b, &hb.get(0).unwrap()) < 1e-5);
    assert_eq!(out.ffn_input.unwrap().dims(), &[2, a.len(), 32]);

    // One more token per row through the cache, still padding-aware.
    let next = Tensor::new(&[[7u32], [8u32]], &DEV).unwrap();
    let step = model
        .forward_with(&next, a.len(), Some(&mut cache), &opts)
        .unwrap();
    let mut b7 = b.clone();
    b7.push(8);
    let hb7 = model.forward(&ids_tensor(&b7), 0, None).unwrap().hidden;
    let want = hb7.get(0).unwrap().get(b.len()).unwrap();
    let got = step.hidden.get(1).unwrap().get(0).unwrap();
    assert!(max_abs_diff(&want, &got) < 1e-5);
}

/// NLL of `ids[1..]` from one direct forward pass.
fn direct_nll(model: &LlamaModel, ids: &[u32]) -> Vec<f32> {
    let h = model.forward(&ids_tensor(ids), 0, None).unwrap().hidden;
    let n = ids.len();
    let lp = model
        .next_token_logprobs(&h.narrow(1, 0, n - 1).unwrap(), &ids_tensor(&ids[1..]))
        .unwrap();
    lp.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| -x)
        .collect()
}

#[test]
fn sliding_window_scoring() {
    let model = mem_model();
    let ids = tokens(40, 6, model.config().vocab_size);

    // The whole text fits one window: identical to direct scoring, keys are the hidden states.
    let one = model
        .score_windows(
            &ids,
            &ScoreOptions {
                context_len: 64,
                stride: 32,
                batch: 2,
                keys: Some(KeyKind::FinalHidden),
            },
        )
        .unwrap();
    let direct = direct_nll(&model, &ids);
    assert_eq!(one.nll.len(), ids.len() - 1);
    for (a, b) in one.nll.iter().zip(&direct) {
        assert!((a - b).abs() < 1e-5);
    }
    let h = model.forward(&ids_tensor(&ids), 0, None).unwrap().hidden;
    let keys = one.keys.unwrap();
    assert!(
        max_abs_diff(
            &keys,
            &h.get(0).unwrap().narrow(0, 0, ids.len() - 1).unwrap()
        ) < 1e-5
    );

    // Several windows, batched with a ragged last window: each token is scored once, by the
    // window that the plan assigns it, with exactly that window's left context.
    let opts = ScoreOptions {
        context_len: 12,
        stride: 5,
        batch: 3,
        keys: Some(KeyKind::FfnInput),
    };
    let many = model.score_windows(&ids, &opts).unwrap();
    assert_eq!(many.nll.len(), ids.len() - 1);
    assert_eq!(many.keys.unwrap().dims(), &[ids.len() - 1, 32]);
    let plan = ralm_models::llama::plan_windows(ids.len(), 12, 5).unwrap();
    for w in plan {
        let alone = direct_nll(&model, &ids[w.begin..w.end]);
        for p in w.first_target..w.end {
            let (got, want) = (many.nll[p - 1], alone[p - w.begin - 1]);
            assert!((got - want).abs() < 1e-5, "token {p}: {got} vs {want}");
        }
    }
    // Context matters: with short windows some tokens get a different NLL than with full context.
    assert!(many
        .nll
        .iter()
        .zip(&direct)
        .any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn texts_scored_together_match_each_scored_alone() {
    let model = mem_model();
    let vocab = model.config().vocab_size;
    let (a, b, c) = (
        tokens(30, 1, vocab),
        tokens(7, 2, vocab),
        tokens(19, 3, vocab),
    );
    let opts = ScoreOptions {
        context_len: 12,
        stride: 5,
        batch: 4,
        keys: Some(KeyKind::FinalHidden),
    };
    let together = model.score_texts(&[&a, &b, &c], &opts).unwrap();
    assert_eq!(together.len(), 3);
    for (ids, got) in [&a, &b, &c].into_iter().zip(&together) {
        let alone = model.score_windows(ids, &opts).unwrap();
        assert_eq!(got.nll.len(), ids.len() - 1);
        for (x, y) in got.nll.iter().zip(&alone.nll) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
        let (kg, ka) = (got.keys.as_ref().unwrap(), alone.keys.as_ref().unwrap());
        assert_eq!(kg.dims(), ka.dims());
        assert!(max_abs_diff(kg, ka) < 1e-4);
    }
}
