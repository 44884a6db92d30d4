//! Hugging Face `MarianMTModel` path on a tiny random checkpoint written to a temp dir:
//! save → load gives identical greedy outputs, and the KV-cached decoder equals full recomputation.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use ralm_models::marian::search::{search, SearchOptions};
use ralm_models::marian::weights::HfTensors;
use ralm_models::marian::{load_hf_model, HfMarianConfig, Transformer};
use rand::{rngs::StdRng, Rng, SeedableRng};

const V: usize = 48;
const D: usize = 16;
const FFN: usize = 32;

fn config() -> HfMarianConfig {
    HfMarianConfig {
        d_model: D,
        encoder_layers: 2,
        decoder_layers: 2,
        encoder_attention_heads: 4,
        decoder_attention_heads: 4,
        encoder_ffn_dim: FFN,
        decoder_ffn_dim: FFN,
        vocab_size: V,
        activation_function: "swish".into(),
        pad_token_id: V as u32 - 1,
        eos_token_id: 0,
        decoder_start_token_id: None,
        scale_embedding: true,
    }
}

/// Adds a tensor: name, shape, uniform half-width, offset.
type Put<'a> = dyn FnMut(String, &[usize], f32, f32) + 'a;

fn random_tensors(seed: u64) -> HashMap<String, Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = HashMap::new();
    let mut put = |name: String, dims: &[usize], scale: f32, offset: f32| {
        let n: usize = dims.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| offset + scale * rng.random_range(-1.0f32..1.0))
            .collect();
        out.insert(name, Tensor::from_vec(data, dims, &Device::Cpu).unwrap());
    };
    put("model.shared.weight".into(), &[V, D], 0.5, 0.0);
    put("final_logits_bias".into(), &[1, V], 0.1, 0.0);
    let attn = |put: &mut Put, p: &str| {
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            put(format!("{p}.{proj}.weight"), &[D, D], 0.4, 0.0);
            put(format!("{p}.{proj}.bias"), &[D], 0.1, 0.0);
        }
        put(format!("{p}_layer_norm.weight"), &[D], 0.1, 1.0);
        put(format!("{p}_layer_norm.bias"), &[D], 0.1, 0.0);
    };
    let ffn = |put: &mut Put, p: &str| {
        put(format!("{p}.fc1.weight"), &[FFN, D], 0.4, 0.0);
        put(format!("{p}.fc1.bias"), &[FFN], 0.1, 0.0);
        put(format!("{p}.fc2.weight"), &[D, FFN], 0.3, 0.0);
        put(format!("{p}.fc2.bias"), &[D], 0.1, 0.0);
        put(format!("{p}.final_layer_norm.weight"), &[D], 0.1, 1.0);
        put(format!("{p}.final_layer_norm.bias"), &[D], 0.1, 0.0);
    };
    for i in 0..2 {
        let e = format!("model.encoder.layers.{i}");
        attn(&mut put, &format!("{e}.self_attn"));
        ffn(&mut put, &e);
        let d = format!("model.decoder.layers.{i}");
        attn(&mut put, &format!("{d}.self_attn"));
        attn(&mut put, &format!("{d}.encoder_attn"));
        ffn(&mut put, &d);
    }
    out
}

fn save(dir: &Path, tensors: &HashMap<String, Tensor>) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config()).unwrap(),
    )
    .unwrap();
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
}

fn options(beam: usize) -> SearchOptions {
    SearchOptions {
        beam_size: beam,
        normalize: 1.0,
        max_length_factor: 2.0,
        max_length: 12,
        suppress: None,
    }
}

fn sources() -> Vec<Vec<u32>> {
    vec![
        vec![5, 9, 13, 0],
        vec![7, 0],
        vec![3, 4, 5, 6, 7, 8, 0],
        vec![20, 21, 22, 0],
    ]
}

fn in_memory(tensors: &HashMap<String, Tensor>) -> Transformer {
    let cfg = config().to_config(Path::new("config.json")).unwrap();
    HfTensors::new(tensors, Path::new("memory"))
        .build(cfg)
        .unwrap()
}

#[test]
fn save_load_gives_identical_greedy_and_beam_outputs() {
    let tensors = random_tensors(7);
    let dir = tempfile::tempdir().unwrap();
    save(dir.path(), &tensors);
    let a = in_memory(&tensors);
    let b = load_hf_model(dir.path()).unwrap();
    for beam in [1, 3] {
        let ha = search(&a, &sources(), &options(beam), None).unwrap();
        let hb = search(&b, &sources(), &options(beam), None).unwrap();
        assert_eq!(ha, hb);
        assert!(
            ha.iter().any(|h| !h.tokens.is_empty()),
            "degenerate outputs {ha:?}"
        );
    }
}

#[test]
fn batching_and_padding_do_not_change_outputs() {
    let model = in_memory(&random_tensors(11));
    let batched = search(&model, &sources(), &options(2), None).unwrap();
    for (src, want) in sources().iter().zip(&batched) {
        let alone = search(&model, std::slice::from_ref(src), &options(2), None).unwrap();
        assert_eq!(alone[0].tokens, want.tokens);
        assert!((alone[0].score - want.score).abs() < 1e-4);
    }
}

#[test]
fn kv_cache_equals_full_recomputation() {
    let model = in_memory(&random_tensors(3));
    let src = sources();
    let targets: Vec<Vec<u32>> = vec![vec![4, 8, 15, 16, 23, 0]; src.len()];
    let enc = model.encode(&src).unwrap();
    let full = model.forward_teacher(&enc, &targets).unwrap();
    let mut state = model.start(&enc).unwrap();
    for t in 0..targets[0].len() {
        let prev: Option<Vec<u32>> = (t > 0).then(|| targets.iter().map(|r| r[t - 1]).collect());
        let h = model.step(&mut state, prev.as_deref()).unwrap();
        let want = full.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
        let diff = (h - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "step {t}: {diff}");
    }
}

#[test]
fn greedy_is_argmax_of_teacher_forced_logits() {
    let model = in_memory(&random_tensors(5));
    let src = sources();
    let hyps = search(&model, &src, &options(1), None).unwrap();
    for (s, h) in src.iter().zip(&hyps) {
        let mut target = h.tokens.clone();
        target.push(0);
        let enc = model.encode(std::slice::from_ref(s)).unwrap();
        let hidden = model
            .forward_teacher(&enc, std::slice::from_ref(&target))
            .unwrap();
        let logits = model.logits(&hidden.squeeze(0).unwrap()).unwrap();
        let best = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        // The last position only predicts EOS when the search stopped on EOS rather than the cap.
        let cap = ((s.len() as f32 * 2.0) as usize).min(12);
        let n = if h.tokens.len() >= cap {
            h.tokens.len()
        } else {
            target.len()
        };
        assert_eq!(best[..n], target[..n], "source {s:?}");
    }
}

#[test]
fn bad_hf_checkpoints_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{\"d_model\": 16}").unwrap();
    let msg = load_hf_model(dir.path()).err().unwrap().to_string();
    assert!(msg.contains("config.json"), "{msg}");
    let mut tensors = random_tensors(1);
    tensors.remove("final_logits_bias");
    save(dir.path(), &tensors);
    let msg = load_hf_model(dir.path()).err().unwrap().to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("final_logits_bias"),
        "{msg}"
    );
}
