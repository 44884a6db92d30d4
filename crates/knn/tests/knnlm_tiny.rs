//! kNN-LM end to end on a tiny random Llama written to a temp dir: probabilities against a
//! brute-force computation of the formula, manifest checks, resumable builds and replication.

use candle_core::{Device, Tensor};
use ralm_index::{Metric, SearchParams};
use ralm_knn::knnlm::chunks::PassOptions;
use ralm_knn::knnlm::corpus::Corpus;
use ralm_knn::knnlm::datastore::{replicate, DatastoreManifest};
use ralm_knn::knnlm::{
    build, BuildOptions, BuildOutcome, Datastore, DatastoreExpect, IndexSpec, KnnError, KnnLm,
    KnnParams, ScoringOptions,
};
use ralm_models::bpe::LmTokenizer;
use ralm_models::llama::{KeyKind, LlamaConfig, LlamaModel, Sampler, ScoreOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

const VOCAB: usize = 48;
const CTX: usize = 24;
const STRIDE: usize = 12;

fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: VOCAB,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 128,
        tie_word_embeddings: false,
    }
}

/// Writes an HF-layout model dir (config, random weights with `seed`, word-level tokenizer).
fn write_model(dir: &Path, seed: u64) {
    let cfg = tiny_config();
    let mut rng = StdRng::seed_from_u64(seed);
    let (d, ff, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let kv = cfg.kv_heads() * cfg.head_dim();
    let mut w = HashMap::new();
    let mut put = |name: String, shape: &[usize], scale: f32, offset: f32| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| offset + scale * (rng.random::<f32>() * 2.0 - 1.0))
            .collect();
        w.insert(name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap());
    };
    put("model.embed_tokens.weight".into(), &[v, d], 1.0, 0.0);
    put("lm_head.weight".into(), &[v, d], 0.5, 0.0);
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
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..VOCAB).map(|i| (format!("w{i}"), i.into())).collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
}

/// A corpus with repeated phrases (so neighbours are informative) from a fixed seed.
fn corpus_ids(seed: u64, n: usize) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let phrases: Vec<Vec<u32>> = (0..6)
        .map(|_| (0..5).map(|_| rng.random_range(0..VOCAB as u32)).collect())
        .collect();
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        if rng.random::<f32>() < 0.6 {
            ids.extend(&phrases[rng.random_range(0..phrases.len())]);
        } else {
            ids.push(rng.random_range(0..VOCAB as u32));
        }
    }
    ids.truncate(n);
    ids
}

fn text_of(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn load(dir: &Path) -> (LlamaModel, LmTokenizer) {
    let lm = LlamaModel::from_hf_dir(dir, &Device::Cpu).unwrap();
    let tok = LmTokenizer::for_model(dir).unwrap();
    (lm, tok)
}

fn corpus(tok: &LmTokenizer, ids: &[u32]) -> Corpus {
    let src = Corpus {
        sources: vec!["synthetic".into()],
        documents: 1,
        ids: tok.encode(&text_of(ids)).unwrap(),
    };
    assert_eq!(src.ids, ids, "the word-level tokenizer maps w<i> to i");
    src
}

fn options(key: KeyKind, index: IndexSpec) -> BuildOptions {
    BuildOptions {
        pass: PassOptions {
            context_len: CTX,
            stride: STRIDE,
            batch: 3,
            key,
        },
        metric: Metric::L2,
        index,
        chunk_tokens: 40,
    }
}

fn build_all(dir: &Path, lm: &LlamaModel, tok: &LmTokenizer, c: &Corpus, o: &BuildOptions) {
    let out = build(dir, lm, tok, c, o, &mut |_| {}, &|| false).unwrap();
    assert_eq!(out, BuildOutcome::Complete(c.ids.len() as u64 - 1));
}

fn scoring() -> ScoringOptions {
    ScoringOptions {
        context_len: CTX,
        stride: STRIDE,
        batch: 2,
        chunk_tokens: 30,
    }
}

#[test]
fn probabilities_match_brute_force_formula() {
    let tmp = tempfile::tempdir().unwrap();
    write_model(tmp.path(), 7);
    let (lm, tok) = load(tmp.path());
    let ids = corpus_ids(1, 260);
    let c = corpus(&tok, &ids);
    let ds_dir = tmp.path().join("ds");
    build_all(
        &ds_dir,
        &lm,
        &tok,
        &c,
        &options(KeyKind::FinalHidden, IndexSpec::Flat),
    );

    // Stored keys are the whole-corpus sliding-window keys (rounded to f16), values the next tokens.
    let (lm2, tok2) = load(tmp.path());
    let ds = Datastore::open(&ds_dir, &DatastoreExpect::of(&lm2, &tok2).unwrap()).unwrap();
    let opts = |keys| ScoreOptions {
        context_len: CTX,
        stride: STRIDE,
        batch: 4,
        keys: Some(keys),
    };
    let whole = lm.score_windows(&ids, &opts(KeyKind::FinalHidden)).unwrap();
    let want_keys: Vec<f32> = whole
        .keys
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    ds.for_each_chunk(&mut |ch| {
        keys.extend(ch.keys);
        values.extend(ch.values);
        Ok(())
    })
    .unwrap();
    assert_eq!(values, ids[1..]);
    assert_eq!(keys.len(), want_keys.len());
    for (a, b) in keys.iter().zip(&want_keys) {
        assert!((a - b).abs() <= 2e-3 * b.abs().max(1.0), "{a} vs {b}");
    }

    let k = 8;
    let knn = KnnLm {
        lm: lm2,
        tokenizer: tok2,
        datastore: ds,
        params: KnnParams {
            k,
            ..KnnParams::default()
        },
    };
    let eval = corpus_ids(2, 90);
    let scored = knn
        .score_ids(&eval, &scoring(), true, &mut |_, _| {})
        .unwrap();
    let base = lm
        .score_windows(&eval, &opts(KeyKind::FinalHidden))
        .unwrap();
    let queries: Vec<f32> = base.keys.unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let dim = 32;
    assert_eq!(scored.cache.len(), eval.len() - 1);
    for i in 0..eval.len() - 1 {
        let q = &queries[i * dim..(i + 1) * dim];
        // Brute force: squared distance to every stored key, by a double loop.
        let mut d: Vec<(f64, u32)> = Vec::new();
        for (j, &v) in values.iter().enumerate() {
            let mut s = 0.0f64;
            for t in 0..dim {
                let x = (q[t] - keys[j * dim + t]) as f64;
                s += x * x;
            }
            d.push((s, v));
        }
        d.sort_by(|a, b| a.0.total_cmp(&b.0));
        let top = &d[..k];
        let target = eval[i + 1];
        let p_lm = (-base.nll[i] as f64).exp();
        for temp in [1.0f32, 4.0] {
            let w: Vec<f64> = top.iter().map(|(s, _)| (-s / temp as f64).exp()).collect();
            let z: f64 = w.iter().sum();
            let hit: f64 = w
                .iter()
                .zip(top)
                .filter(|(_, e)| e.1 == target)
                .map(|(w, _)| w)
                .sum();
            let p_knn = hit / z;
            for lambda in [0.0f32, 0.3, 1.0] {
                let want = lambda as f64 * p_knn + (1.0 - lambda as f64) * p_lm;
                let got = (scored.cache.log_prob(i, lambda, temp) as f64).exp();
                assert!(
                    (got - want).abs() <= 1e-3 * want.max(1e-3),
                    "position {i} λ={lambda} T={temp}: {got} vs brute force {want}"
                );
            }
        }
    }
    // Texts scored together (one batch of windows, one search) give each text's own scores.
    let texts: [&[u32]; 3] = [&eval, &eval[..25], &eval[40..47]];
    let many = knn.score_many(&texts, &scoring()).unwrap();
    for (ids, got) in texts.iter().zip(&many) {
        let alone = knn
            .score_ids(ids, &scoring(), false, &mut |_, _| {})
            .unwrap();
        assert_eq!(got.cache.len(), ids.len() - 1);
        for i in 0..ids.len() - 1 {
            let (a, b) = (
                got.cache.log_prob(i, 0.3, 4.0),
                alone.cache.log_prob(i, 0.3, 4.0),
            );
            assert!((a - b).abs() < 1e-3, "position {i}: {a} vs {b}");
        }
    }
    assert!(knn.score_many(&[&eval[..1]], &scoring()).is_err());

    // The query keys the pipeline kept are the same whole-text keys.
    for (a, b) in scored.keys.iter().zip(&queries) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }

    // Full next-token distribution: normalised; λ = 0 is the LM, λ = 1 has mass only on retrieved tokens.
    let ctx = &eval[..20];
    let mut knn = knn;
    knn.params.lambda = 0.4;
    let lp = knn.next_token_distribution(ctx).unwrap();
    let total: f64 = lp.iter().map(|&x| (x as f64).exp()).sum();
    assert!((total - 1.0).abs() < 1e-4, "sums to {total}");
    knn.params.lambda = 0.0;
    let lp0 = knn.next_token_distribution(ctx).unwrap();
    let whole = lm
        .score_windows(&eval[..21], &opts(KeyKind::FinalHidden))
        .unwrap();
    assert!((lp0[eval[20] as usize] + whole.nll[19]).abs() < 1e-4);
    knn.params.lambda = 1.0;
    let lp1 = knn.next_token_distribution(ctx).unwrap();
    let nonzero = lp1.iter().filter(|x| x.is_finite()).count();
    assert!((1..=k).contains(&nonzero), "{nonzero} tokens with mass");

    // Greedy generation with λ = 0 equals the base model's; with λ = 1 it follows the datastore.
    knn.params.lambda = 0.0;
    let a = knn.generate(ctx, 8, &mut Sampler::Greedy, None).unwrap();
    let b = lm.generate(ctx, 8, &mut Sampler::Greedy, None).unwrap();
    assert_eq!(a, b);
    knn.params.lambda = 1.0;
    let g = knn.generate(ctx, 8, &mut Sampler::Greedy, None).unwrap();
    assert_eq!(g.len(), 8);
    // Streaming with a λ of the caller's: λ = 0 is the base model whatever the datastore's λ,
    // and the callback stops the loop.
    let mut streamed = Vec::new();
    knn.generate_with(ctx, 8, 0.0, &mut Sampler::Greedy, None, &mut |t| {
        streamed.push(t);
        streamed.len() < 3
    })
    .unwrap();
    assert_eq!(streamed, b[..3]);
    let text_lp = knn.score_text(&text_of(&eval)).unwrap();
    assert_eq!(text_lp.len(), eval.len() - 1);
}

#[test]
fn mismatched_model_or_settings_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    write_model(&a, 7);
    write_model(&b, 8);
    let (lm, tok) = load(&a);
    let (other, other_tok) = load(&b);
    let c = corpus(&tok, &corpus_ids(3, 120));
    let ds = tmp.path().join("ds");
    build_all(
        &ds,
        &lm,
        &tok,
        &c,
        &options(KeyKind::FfnInput, IndexSpec::Flat),
    );

    let err = Datastore::open(&ds, &DatastoreExpect::of(&other, &other_tok).unwrap())
        .err()
        .expect("a datastore of another model must be refused");
    assert!(matches!(err, KnnError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("model_sha256"), "{err}");
    let mut expect = DatastoreExpect::of(&lm, &tok).unwrap();
    expect.tokenizer_sha256 = "0".repeat(64);
    let err = Datastore::open(&ds, &expect).err().unwrap().to_string();
    assert!(
        err.contains("tokenizer_sha256") && err.contains("datastore.json"),
        "{err}"
    );

    // Reopening with the right model works, and the manifest records the key and layer.
    let opened = Datastore::open(&ds, &DatastoreExpect::of(&lm, &tok).unwrap()).unwrap();
    let m: &DatastoreManifest = opened.manifest();
    assert_eq!((m.key.as_str(), m.layer, m.dim), ("ffn-input", 1, 32));
    assert_eq!(m.count, Some(119));
    assert_eq!(m.weights.as_deref(), Some("f32"));

    // Keys of another weight mode (quantized matmuls) are refused; a manifest written before
    // the mode was recorded is still accepted.
    let manifest_path = ds.join("datastore.json");
    let original = std::fs::read_to_string(&manifest_path).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&original).unwrap();
    json["weights"] = "quantized".into();
    std::fs::write(&manifest_path, json.to_string()).unwrap();
    let err = Datastore::open(&ds, &DatastoreExpect::of(&lm, &tok).unwrap())
        .err()
        .expect("keys of quantized weights must be refused for an f32 model")
        .to_string();
    assert!(
        err.contains("weights quantized") && err.contains("f32"),
        "{err}"
    );
    json.as_object_mut().unwrap().remove("weights");
    std::fs::write(&manifest_path, json.to_string()).unwrap();
    Datastore::open(&ds, &DatastoreExpect::of(&lm, &tok).unwrap()).unwrap();
    std::fs::write(&manifest_path, original).unwrap();

    // Building into the same directory with other settings is refused, not mixed.
    let err = build(
        &ds,
        &lm,
        &tok,
        &c,
        &options(KeyKind::FinalHidden, IndexSpec::Flat),
        &mut |_| {},
        &|| false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("key"), "{err}");
    // A corrupt manifest is a format error naming the file.
    std::fs::write(ds.join("datastore.json"), "{").unwrap();
    let err = Datastore::open(&ds, &DatastoreExpect::of(&lm, &tok).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("datastore.json"), "{err}");
}

fn file_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["chunks", "index"] {
        let mut names: Vec<_> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            out.push((
                p.display()
                    .to_string()
                    .replace(&dir.display().to_string(), ""),
                std::fs::read(&p).unwrap(),
            ));
        }
    }
    out.push((
        "values".into(),
        std::fs::read(dir.join("values.u32")).unwrap(),
    ));
    out
}

#[test]
fn interrupted_build_resumes_to_the_same_datastore() {
    let tmp = tempfile::tempdir().unwrap();
    write_model(tmp.path(), 7);
    let (lm, tok) = load(tmp.path());
    let c = corpus(&tok, &corpus_ids(4, 300));
    let ivf = IndexSpec::IvfPq {
        nlist: 4,
        m: 4,
        nbits: 8,
        seed: 3,
    };
    let o = options(KeyKind::FinalHidden, ivf);
    let whole = tmp.path().join("whole");
    build_all(&whole, &lm, &tok, &c, &o);

    let resumed = tmp.path().join("resumed");
    let calls = std::cell::Cell::new(0);
    let out = build(&resumed, &lm, &tok, &c, &o, &mut |_| {}, &|| {
        calls.set(calls.get() + 1);
        calls.get() >= 2
    })
    .unwrap();
    assert!(
        matches!(out, BuildOutcome::Interrupted { done: 2, .. }),
        "{out:?}"
    );
    let expect = DatastoreExpect::of(&lm, &tok).unwrap();
    let err = Datastore::open(&resumed, &expect)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("did not complete"), "{err}");
    // A leftover temporary file of a chunk being written when interrupted is ignored.
    std::fs::write(resumed.join("chunks").join("000002.tmp"), b"partial").unwrap();
    let mut scored_again = 0;
    let out = build(
        &resumed,
        &lm,
        &tok,
        &c,
        &o,
        &mut |p| scored_again = p.tokens_this_run,
        &|| false,
    )
    .unwrap();
    assert_eq!(out, BuildOutcome::Complete(299));
    assert!(
        scored_again < 299 - 70,
        "finished chunks were recomputed: {scored_again}"
    );
    assert!(
        !resumed.join("chunks").join("000002.tmp").exists(),
        "the partial chunk was replaced by the finished one"
    );
    assert_eq!(file_bytes(&whole), file_bytes(&resumed));

    // Nested random subsets by deletion, searched through the IVF-PQ index.
    let mut ds = Datastore::open(&resumed, &expect).unwrap();
    let q: Vec<f32> = vec![0.1; 32];
    let all = ds
        .search(
            &q,
            5,
            &SearchParams {
                nprobe: 4,
                rerank: Some(20),
            },
        )
        .unwrap();
    assert!(all.tokens.iter().all(|&t| t < VOCAB as u32));
    ds.restrict(0.5, 1);
    let half = ds.len();
    ds.restrict(0.1, 1);
    assert!(
        (100..200).contains(&half) && ds.len() < half && ds.len() > 5,
        "{half} {}",
        ds.len()
    );
}

#[test]
fn replicated_datastore_holds_every_entry_n_times() {
    let tmp = tempfile::tempdir().unwrap();
    write_model(tmp.path(), 7);
    let (lm, tok) = load(tmp.path());
    let c = corpus(&tok, &corpus_ids(5, 150));
    let src = tmp.path().join("src");
    build_all(
        &src,
        &lm,
        &tok,
        &c,
        &options(KeyKind::FinalHidden, IndexSpec::Flat),
    );
    let dst = tmp.path().join("x3");
    let err = replicate(&src, &dst, 1, IndexSpec::Flat, &mut |_| {}, &|| false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 2"), "{err}");
    let out = replicate(&src, &dst, 3, IndexSpec::Flat, &mut |_| {}, &|| false).unwrap();
    assert_eq!(out, BuildOutcome::Complete(3 * 149));

    let expect = DatastoreExpect::of(&lm, &tok).unwrap();
    let (one, three) = (
        Datastore::open(&src, &expect).unwrap(),
        Datastore::open(&dst, &expect).unwrap(),
    );
    assert_eq!(three.manifest().replicas, Some(3));
    assert_eq!(three.len(), 3 * one.len());
    // Every stored key is found three times, at distance 0, with its own next token.
    let mut keys = Vec::new();
    one.for_each_chunk(&mut |ch| {
        keys.extend(ch.keys.chunks_exact(32).map(<[f32]>::to_vec).zip(ch.values));
        Ok(())
    })
    .unwrap();
    let params = SearchParams::default();
    for (key, value) in keys.iter().step_by(17) {
        let hits = three.search(key, 3, &params).unwrap();
        assert!(
            hits.scores.iter().all(|s| s.abs() < 1e-3),
            "{:?}",
            hits.scores
        );
        assert!(hits.tokens.iter().all(|t| t == value), "{:?}", hits.tokens);
    }
    // Replicating an unfinished build is refused.
    let partial = tmp.path().join("partial");
    let o = options(KeyKind::FinalHidden, IndexSpec::Flat);
    build(&partial, &lm, &tok, &c, &o, &mut |_| {}, &|| true).unwrap();
    let err = replicate(&partial, &dst, 2, IndexSpec::Flat, &mut |_| {}, &|| false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not complete"), "{err}");
}
