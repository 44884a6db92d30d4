//! kNN-MT end to end on a tiny random Hugging Face Marian model: teacher forcing, the
//! datastore, the mixed distribution of every decoding step against a brute-force computation,
//! λ = 0 against plain decoding, and λ = 1 reproducing stored targets.

use candle_core::{Device, Tensor};
use ralm_index::{Metric, SearchParams};
use ralm_knn::datastore::build::{BuildOutcome, BuildPlan};
use ralm_knn::datastore::IndexSpec;
use ralm_knn::knnmt::datastore::MANIFEST;
use ralm_knn::knnmt::{
    build, teacher_force, KnnMtParams, MtBuildOptions, MtDatastore, MtExpect, MtManifest,
    Retrieval, TokenPairs,
};
use ralm_knn::KnnError;
use ralm_models::marian::search::{search, SearchOptions};
use ralm_models::marian::weights::HfTensors;
use ralm_models::marian::{HfMarianConfig, Transformer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

const V: usize = 40;
const D: usize = 16;
const FFN: usize = 32;

/// A random 2+2-layer Marian with HF tensor names (embeddings scaled up so outputs vary).
fn tiny_model(seed: u64) -> Transformer {
    let cfg = HfMarianConfig {
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
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, dims: &[usize], scale: f32, offset: f32| {
        let n: usize = dims.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| offset + scale * rng.random_range(-1.0f32..1.0))
            .collect();
        t.insert(name, Tensor::from_vec(data, dims, &Device::Cpu).unwrap());
    };
    put("model.shared.weight".into(), &[V, D], 0.5, 0.0);
    put("final_logits_bias".into(), &[1, V], 0.1, 0.0);
    let mut blocks = Vec::new();
    for i in 0..2 {
        blocks.push((format!("model.encoder.layers.{i}"), false));
        blocks.push((format!("model.decoder.layers.{i}"), true));
    }
    for (layer, decoder) in blocks {
        let mut attn = vec![format!("{layer}.self_attn")];
        if decoder {
            attn.push(format!("{layer}.encoder_attn"));
        }
        for p in attn {
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                put(format!("{p}.{proj}.weight"), &[D, D], 0.4, 0.0);
                put(format!("{p}.{proj}.bias"), &[D], 0.1, 0.0);
            }
            put(format!("{p}_layer_norm.weight"), &[D], 0.1, 1.0);
            put(format!("{p}_layer_norm.bias"), &[D], 0.1, 0.0);
        }
        put(format!("{layer}.fc1.weight"), &[FFN, D], 0.4, 0.0);
        put(format!("{layer}.fc1.bias"), &[FFN], 0.1, 0.0);
        put(format!("{layer}.fc2.weight"), &[D, FFN], 0.3, 0.0);
        put(format!("{layer}.fc2.bias"), &[D], 0.1, 0.0);
        put(format!("{layer}.final_layer_norm.weight"), &[D], 0.1, 1.0);
        put(format!("{layer}.final_layer_norm.bias"), &[D], 0.1, 0.0);
    }
    let cfg = cfg.to_config(Path::new("config.json")).unwrap();
    HfTensors::new(&t, Path::new("memory")).build(cfg).unwrap()
}

/// Random pairs: sources of 4..9 tokens, targets of 2..5 tokens (ids 1..V-1), each ending in EOS 0.
fn random_pairs(n: usize, seed: u64) -> TokenPairs {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut row = |lo: usize, hi: usize| -> Vec<u32> {
        let len = rng.random_range(lo..hi);
        let mut r: Vec<u32> = (0..len)
            .map(|_| rng.random_range(1..V as u32 - 1))
            .collect();
        r.push(0);
        r
    };
    let mut p = TokenPairs::default();
    for _ in 0..n {
        p.sources.push(row(4, 9));
        p.targets.push(row(2, 5));
    }
    p
}

fn expect() -> MtExpect {
    MtExpect {
        model_sha256: "model-a".into(),
        vocab_sha256: "vocab-a".into(),
    }
}

fn build_options(pairs_per_chunk: usize) -> MtBuildOptions {
    MtBuildOptions {
        metric: Metric::L2,
        index: IndexSpec::Flat,
        pairs_per_chunk,
        batch: 5,
    }
}

fn build_store(dir: &Path, model: &Transformer, pairs: &TokenPairs) -> MtDatastore {
    let out = build(
        dir,
        model,
        &expect(),
        pairs,
        "random",
        &build_options(4),
        &mut |_| {},
        &|| false,
    )
    .unwrap();
    assert_eq!(out, BuildOutcome::Complete(pairs.target_tokens() as u64));
    MtDatastore::open(dir, &expect()).unwrap()
}

fn options() -> SearchOptions {
    SearchOptions {
        beam_size: 1,
        normalize: 1.0,
        max_length_factor: 2.0,
        max_length: 12,
        suppress: None,
    }
}

#[test]
fn batched_teacher_forcing_equals_one_pair_at_a_time() {
    let model = tiny_model(3);
    let pairs = random_pairs(9, 1);
    let batched = teacher_force(&model, &pairs, 4, true).unwrap();
    let single = teacher_force(&model, &pairs, 1, true).unwrap();
    assert_eq!(batched.targets, single.targets);
    assert_eq!(batched.keys.len(), pairs.target_tokens() * D);
    for (a, b) in batched.keys.iter().zip(&single.keys) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    for (a, b) in batched.log_probs.iter().zip(&single.log_probs) {
        assert!((a - b).abs() < 1e-4 && *a <= 0.0);
    }
}

/// Every step's mixed log-probabilities equal the formula computed over all stored keys.
#[test]
fn mixed_distribution_matches_brute_force() {
    let model = tiny_model(5);
    let pairs = random_pairs(20, 2);
    let dir = tempfile::tempdir().unwrap();
    let ds = build_store(dir.path(), &model, &pairs);
    // All stored keys (as rounded to f16) and values.
    let manifest: MtManifest =
        serde_json::from_slice(&std::fs::read(dir.path().join(MANIFEST)).unwrap()).unwrap();
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    manifest
        .layout(dir.path())
        .for_each_chunk(&mut |c| {
            keys.extend(c.keys);
            values.extend(c.values);
            Ok(())
        })
        .unwrap();
    assert_eq!(values.len(), ds.len());

    let params = KnnMtParams {
        k: 4,
        lambda: 0.4,
        temperature: 2.0,
    };
    let mut r = Retrieval::new(&ds, params, SearchParams::default(), None).unwrap();
    let mut steps = Vec::new();
    let mut hook = |h: &Tensor, lp: &mut Tensor| {
        let before = lp.to_vec2::<f32>()?;
        r.hook(h, lp)?;
        steps.push((h.to_vec2::<f32>()?, before, lp.to_vec2::<f32>()?));
        Ok(())
    };
    let src = random_pairs(6, 9).sources;
    search(&model, &src, &options(), Some(&mut hook)).unwrap();
    assert!(!steps.is_empty());
    let mut rows = 0;
    for (hidden, before, after) in &steps {
        for ((q, lp), mixed) in hidden.iter().zip(before).zip(after) {
            rows += 1;
            let mut d: Vec<(f32, u32)> = keys
                .chunks_exact(D)
                .zip(&values)
                .map(|(k, &v)| (k.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum(), v))
                .collect();
            d.sort_by(|a, b| a.0.total_cmp(&b.0));
            let w: Vec<f64> = d[..4]
                .iter()
                .map(|(dist, _)| (-(*dist as f64) / 2.0).exp())
                .collect();
            let z: f64 = w.iter().sum();
            let mut p_knn = vec![0.0f64; V];
            for (wi, (_, v)) in w.iter().zip(&d[..4]) {
                p_knn[*v as usize] += wi / z;
            }
            for y in 0..V {
                let want = (0.4 * p_knn[y] + 0.6 * (lp[y] as f64).exp()).ln();
                assert!(
                    (mixed[y] as f64 - want).abs() < 2e-3,
                    "token {y}: {} vs {want}",
                    mixed[y]
                );
            }
        }
    }
    assert_eq!(r.queries, rows);
}

#[test]
fn lambda_zero_is_plain_decoding_and_lambda_one_recalls_stored_targets() {
    let model = tiny_model(7);
    let pairs = random_pairs(12, 4);
    let dir = tempfile::tempdir().unwrap();
    let ds = build_store(dir.path(), &model, &pairs);
    let mut zero = KnnMtParams {
        k: 8,
        lambda: 0.0,
        temperature: 1.0,
    };
    // Greedy and beam search: every live hypothesis is searched, none is changed.
    for beam in [3, 1] {
        let opts = SearchOptions {
            beam_size: beam,
            ..options()
        };
        let plain = search(&model, &pairs.sources, &opts, None).unwrap();
        let mut r = Retrieval::new(&ds, zero, SearchParams::default(), None).unwrap();
        let mut hook = |h: &Tensor, lp: &mut Tensor| r.hook(h, lp);
        let with = search(&model, &pairs.sources, &opts, Some(&mut hook)).unwrap();
        assert_eq!(plain, with, "beam {beam}");
        assert!(
            r.queries > r.steps * (beam - 1),
            "beam {beam}: {} queries",
            r.queries
        );
    }
    let plain = search(&model, &pairs.sources, &options(), None).unwrap();

    // Pure retrieval with k = 1 follows the stored target of a source in the datastore.
    zero.lambda = 1.0;
    zero.k = 1;
    let mut r = Retrieval::new(&ds, zero, SearchParams::default(), None).unwrap();
    let mut hook = |h: &Tensor, lp: &mut Tensor| r.hook(h, lp);
    let recalled = search(&model, &pairs.sources, &options(), Some(&mut hook)).unwrap();
    for (h, t) in recalled.iter().zip(&pairs.targets) {
        assert_eq!(h.tokens, t[..t.len() - 1]);
    }
    assert!(
        plain
            .iter()
            .zip(&pairs.targets)
            .any(|(h, t)| h.tokens != t[..t.len() - 1]),
        "the random model should not produce the stored targets by itself"
    );
}

#[test]
fn other_model_or_changed_corpus_is_refused_and_builds_resume() {
    let model = tiny_model(9);
    // Enough entries (> 256) to train IVF-PQ codebooks below.
    let pairs = random_pairs(100, 6);
    let dir = tempfile::tempdir().unwrap();
    let opts = build_options(4);
    let stop_after_one = || true;
    let out = build(
        dir.path(),
        &model,
        &expect(),
        &pairs,
        "random",
        &opts,
        &mut |_| {},
        &stop_after_one,
    )
    .unwrap();
    assert_eq!(out, BuildOutcome::Interrupted { done: 1, total: 25 });
    let err = MtDatastore::open(dir.path(), &expect())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("did not complete"), "{err}");
    let ds = build_store(dir.path(), &model, &pairs);
    assert_eq!(ds.len(), pairs.target_tokens());

    let other = MtExpect {
        model_sha256: "model-b".into(),
        ..expect()
    };
    match MtDatastore::open(dir.path(), &other) {
        Err(KnnError::Mismatch { msg, .. }) => assert!(msg.contains("model_sha256"), "{msg}"),
        r => panic!("expected a mismatch, got {:?}", r.err()),
    }
    // Another index (4-bit codes) over the same chunks: re-indexed without running the model again.
    let ivf = MtBuildOptions {
        index: IndexSpec::IvfPq {
            nlist: 4,
            m: 4,
            nbits: 4,
            seed: 1,
        },
        ..build_options(4)
    };
    let mut recomputed = 0;
    let out = build(
        dir.path(),
        &model,
        &expect(),
        &pairs,
        "random",
        &ivf,
        &mut |p| recomputed = p.tokens_this_run,
        &|| false,
    )
    .unwrap();
    assert_eq!(out, BuildOutcome::Complete(pairs.target_tokens() as u64));
    assert_eq!(recomputed, 0);
    let ds = MtDatastore::open(dir.path(), &expect()).unwrap();
    let hits = ds.search(&[0.1; D], 3, &SearchParams::default()).unwrap();
    assert!(hits.tokens.iter().all(|&t| (t as usize) < V));

    let changed = random_pairs(100, 7);
    let err = build(
        dir.path(),
        &model,
        &expect(),
        &changed,
        "random",
        &opts,
        &mut |_| {},
        &|| false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("source_fingerprint"), "{err}");
}
