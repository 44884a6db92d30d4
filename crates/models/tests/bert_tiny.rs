//! A tiny random BERT written in HF layout: save/load round trips, prefix detection, the
//! vocab.txt tokenizer, training mode and bad-input errors.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, SGD};
use ralm_models::bert::{
    BertConfig, BertEncoder, BertForMaskedLM, BertModel, EncoderOptions, HiddenAct, Mode, Pooling,
    TokenBatch,
};
use std::collections::HashMap;
use std::path::Path;

const VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog",
    "ran", "##s", "big", "red", ".", ",", "?", "who", "wrote", "it",
];

fn tiny_config(dropout: f64) -> BertConfig {
    serde_json::from_value(serde_json::json!({
        "vocab_size": VOCAB.len(),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "hidden_act": "gelu",
        "hidden_dropout_prob": dropout,
        "attention_probs_dropout_prob": dropout,
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12
    }))
    .unwrap()
}

/// Writes vocab.txt and a fresh model (config.json + model.safetensors) to `dir`.
fn write_tiny(dir: &Path, dropout: f64) -> BertForMaskedLM {
    std::fs::write(dir.join("vocab.txt"), VOCAB.join("\n") + "\n").unwrap();
    let mut m = BertForMaskedLM::new_random(&tiny_config(dropout), &Device::Cpu).unwrap();
    m.set_tokenizer_source(dir);
    m.save(dir).unwrap();
    m
}

fn batch(dir: &Path, texts: &[&str]) -> TokenBatch {
    let enc = BertEncoder::load(dir, EncoderOptions::default(), &Device::Cpu).unwrap();
    let e = enc.tokenize(texts).unwrap();
    TokenBatch::new(&e.iter().collect::<Vec<_>>(), 0, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    ralm_models::fast_ops::max_abs_diff(a, b).unwrap()
}

#[test]
fn save_load_round_trip_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_tiny(tmp.path(), 0.1);
    let b = batch(tmp.path(), &["the cat sat on the mat.", "a dog ran"]);
    let (h0, l0) = m
        .forward(&b.ids, &b.type_ids, &b.mask, Mode::Inference)
        .unwrap();
    assert_eq!(l0.dims(), &[2, 9, VOCAB.len()]);

    let loaded = BertForMaskedLM::load(tmp.path(), &Device::Cpu).unwrap();
    let (h1, l1) = loaded
        .forward(&b.ids, &b.type_ids, &b.mask, Mode::Inference)
        .unwrap();
    assert_eq!(max_diff(&h0, &h1), 0.0);
    assert_eq!(max_diff(&l0, &l1), 0.0);

    // The mmaped inference path (bert. prefix detected) gives the same hidden states.
    let body = BertModel::load(tmp.path(), &Device::Cpu).unwrap();
    let h2 = body
        .forward(&b.ids, &b.type_ids, &b.mask, Mode::Inference)
        .unwrap();
    assert_eq!(max_diff(&h0, &h2), 0.0);

    // Saving the loaded model again reproduces the same file contents.
    let again = tempfile::tempdir().unwrap();
    loaded.save(again.path()).unwrap();
    assert!(again.path().join("vocab.txt").exists());
    let a =
        candle_core::safetensors::load(tmp.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let c = candle_core::safetensors::load(again.path().join("model.safetensors"), &Device::Cpu)
        .unwrap();
    assert_eq!(a.len(), c.len());
    for (k, v) in &a {
        assert_eq!(max_diff(v, &c[k]), 0.0, "{k}");
    }
    assert!(a.contains_key("bert.embeddings.word_embeddings.weight"));
    assert!(a.contains_key("cls.predictions.transform.dense.weight"));
    assert!(
        !a.contains_key("cls.predictions.decoder.weight"),
        "decoder is tied"
    );
}

#[test]
fn loads_without_bert_prefix_and_initialises_missing_head() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_tiny(tmp.path(), 0.1);
    let b = batch(tmp.path(), &["who wrote it?"]);
    let h0 = m
        .bert()
        .forward(&b.ids, &b.type_ids, &b.mask, Mode::Inference)
        .unwrap();

    // Rewrite as a plain BertModel checkpoint: no prefix, no MLM head.
    let path = tmp.path().join("model.safetensors");
    let all = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let body: HashMap<String, Tensor> = all
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("bert.").map(|k| (k.to_string(), v)))
        .collect();
    candle_core::safetensors::save(&body, &path).unwrap();

    let h1 = BertModel::load(tmp.path(), &Device::Cpu)
        .unwrap()
        .forward(&b.ids, &b.type_ids, &b.mask, Mode::Inference)
        .unwrap();
    assert_eq!(max_diff(&h0, &h1), 0.0);

    let mlm = BertForMaskedLM::load(tmp.path(), &Device::Cpu).unwrap();
    let (h2, logits) = mlm
        .forward(&b.ids, &b.type_ids, &b.mask, Mode::Inference)
        .unwrap();
    assert_eq!(max_diff(&h0, &h2), 0.0);
    assert_eq!(logits.dims(), &[1, b.lengths[0], VOCAB.len()]);
    let vars = mlm.varmap().data().lock().unwrap();
    let bias = vars["cls.predictions.bias"].as_tensor();
    assert_eq!(
        bias.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    let ln = vars["cls.predictions.transform.LayerNorm.weight"].as_tensor();
    assert_eq!(ln.sum_all().unwrap().to_scalar::<f32>().unwrap(), 32.0);
    let w = vars["cls.predictions.transform.dense.weight"].as_tensor();
    let std = w
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt();
    assert!((0.015..0.025).contains(&std), "HF init std 0.02, got {std}");
}

#[test]
fn vocab_txt_tokenizer_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny(tmp.path(), 0.1);
    assert!(!tmp.path().join("tokenizer.json").exists());
    let enc = BertEncoder::load(tmp.path(), EncoderOptions::default(), &Device::Cpu).unwrap();
    let e = &enc.tokenize(&["The CATS sat, zebra!"]).unwrap()[0];
    // [CLS] the cat ##s sat , [UNK] [UNK] [SEP]  (lower-cased; "zebra" and "!" unknown)
    assert_eq!(e.get_ids(), &[2, 5, 6, 13, 7, 17, 1, 1, 3]);
    assert_eq!(e.get_offsets()[2], (4, 7));
    let text = enc.tokenizer().decode(e.get_ids(), true).unwrap();
    assert_eq!(text, "the cats sat,");

    let p = &enc.tokenize_pairs(&[("a dog", "ran")]).unwrap()[0];
    assert_eq!(p.get_ids(), &[2, 10, 11, 3, 12, 3]);
    assert_eq!(p.get_type_ids(), &[0, 0, 0, 0, 1, 1]);

    // tokenizer_config.json can turn lower-casing off.
    std::fs::write(
        tmp.path().join("tokenizer_config.json"),
        r#"{"do_lower_case": false}"#,
    )
    .unwrap();
    let cased = BertEncoder::load(tmp.path(), EncoderOptions::default(), &Device::Cpu).unwrap();
    assert_eq!(
        cased.tokenize(&["The cat"]).unwrap()[0].get_ids(),
        &[2, 1, 6, 3]
    );
}

#[test]
fn encoder_batches_match_single_runs() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny(tmp.path(), 0.1);
    let texts = [
        "the cat",
        "a big red dog ran on the mat.",
        "who",
        "the dog sat on a cat",
    ];
    let opts = EncoderOptions {
        pooling: Pooling::Mean,
        normalize: true,
        batch_size: 3,
    };
    let enc = BertEncoder::load(tmp.path(), opts, &Device::Cpu).unwrap();
    let all = enc.encode(&texts).unwrap();
    for (i, t) in texts.iter().enumerate() {
        let one = enc.encode(&[t]).unwrap();
        assert!(
            max_diff(&all.get(i).unwrap(), &one.get(0).unwrap()) < 1e-5,
            "text {i}"
        );
    }
    let norms: Vec<f32> = all.sqr().unwrap().sum(1).unwrap().to_vec1().unwrap();
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5));
}

#[test]
fn projection_is_applied_when_present() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny(tmp.path(), 0.1);
    let path = tmp.path().join("model.safetensors");
    let mut all = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let w = Tensor::randn(0f32, 0.1, (8, 32), &Device::Cpu).unwrap();
    let bias = Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap();
    all.insert("projection.weight".into(), w.clone());
    all.insert("projection.bias".into(), bias);
    candle_core::safetensors::save(&all, &path).unwrap();
    let opts = EncoderOptions {
        pooling: Pooling::Cls,
        normalize: false,
        batch_size: 4,
    };
    let enc = BertEncoder::load(tmp.path(), opts, &Device::Cpu).unwrap();
    assert_eq!(enc.dim(), 8);
    let v = enc.encode(&["the cat"]).unwrap();
    let e = enc.tokenize(&["the cat"]).unwrap();
    let (h, _) = enc.hidden_states(&[&e[0]]).unwrap();
    let cls = h.get(0).unwrap().get(0).unwrap().unsqueeze(0).unwrap();
    let want = cls.matmul(&w.t().unwrap()).unwrap();
    assert!(max_diff(&v, &want) < 1e-5);
}

#[test]
fn train_and_inference_modes_agree_without_dropout() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_tiny(tmp.path(), 0.0);
    let b = batch(tmp.path(), &["the cat sat on the mat.", "a dog"]);
    let (_, inf) = m
        .forward(&b.ids, &b.type_ids, &b.mask, Mode::Inference)
        .unwrap();
    let (_, tr) = m
        .forward(&b.ids, &b.type_ids, &b.mask, Mode::Train)
        .unwrap();
    let d = max_diff(&inf, &tr);
    assert!(d < 1e-4, "modes differ by {d}");
    // The head at chosen positions gives the same rows as the head everywhere.
    let (rows, t, v) = inf.dims3().unwrap();
    let positions = Tensor::new(&[0u32, 3, (rows * t - 1) as u32], &Device::Cpu).unwrap();
    let at = m
        .logits_at(&b.ids, &b.type_ids, &b.mask, &positions, Mode::Inference)
        .unwrap();
    let want = inf
        .reshape((rows * t, v))
        .unwrap()
        .index_select(&positions, 0)
        .unwrap();
    assert!(max_diff(&at, &want) < 1e-5);
}

#[test]
fn dropout_is_active_only_in_training() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_tiny(tmp.path(), 0.5);
    let b = batch(tmp.path(), &["the cat sat on the mat."]);
    let (a, _) = m
        .forward(&b.ids, &b.type_ids, &b.mask, Mode::Inference)
        .unwrap();
    let (a2, _) = m
        .forward(&b.ids, &b.type_ids, &b.mask, Mode::Inference)
        .unwrap();
    let (t, _) = m
        .forward(&b.ids, &b.type_ids, &b.mask, Mode::Train)
        .unwrap();
    assert_eq!(max_diff(&a, &a2), 0.0);
    assert!(max_diff(&a, &t) > 1e-3);
}

#[test]
fn every_parameter_gets_a_gradient_from_mlm_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_tiny(tmp.path(), 0.0);
    let b = batch(tmp.path(), &["the cat sat on the mat.", "who wrote it?"]);
    // Segment B tokens so the type-1 embedding row is used too.
    let types = Tensor::new(
        &[[0u32, 0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 0, 0, 0]],
        &Device::Cpu,
    )
    .unwrap();
    let positions = Tensor::new(&[2u32, 4, 11], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[6u32, 8, 20], &Device::Cpu).unwrap();
    let logits = m
        .logits_at(&b.ids, &types, &b.mask, &positions, Mode::Train)
        .unwrap();
    let loss = BertForMaskedLM::masked_lm_loss(&logits, &targets).unwrap();
    let grads = loss.backward().unwrap();
    let vars = m.varmap().data().lock().unwrap();
    assert!(vars.len() >= 2 * 16 + 5 + 5);
    for (name, var) in vars.iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(norm > 0.0, "zero gradient for {name}");
    }
    drop(vars);

    // A few SGD steps lower the loss.
    let first: f32 = loss.to_scalar().unwrap();
    let mut opt = SGD::new(m.varmap().all_vars(), 0.05).unwrap();
    let mut last = first;
    for _ in 0..10 {
        let logits = m
            .logits_at(&b.ids, &types, &b.mask, &positions, Mode::Train)
            .unwrap();
        let loss = BertForMaskedLM::masked_lm_loss(&logits, &targets).unwrap();
        opt.backward_step(&loss).unwrap();
        last = loss.to_scalar().unwrap();
    }
    assert!(last < first, "loss {first} -> {last}");
}

fn err_of<T>(r: ralm_models::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_give_errors_naming_the_file() {
    let dev = Device::Cpu;
    let load = |d: &Path| err_of(BertEncoder::load(d, EncoderOptions::default(), &dev));

    let tmp = tempfile::tempdir().unwrap();
    write_tiny(tmp.path(), 0.1);
    let dir = tmp.path();

    // Missing tokenizer.
    std::fs::rename(dir.join("vocab.txt"), dir.join("vocab.bak")).unwrap();
    assert!(load(dir).contains("tokenizer.json"), "{}", load(dir));
    std::fs::rename(dir.join("vocab.bak"), dir.join("vocab.txt")).unwrap();

    // Missing weights.
    std::fs::rename(dir.join("model.safetensors"), dir.join("w.bak")).unwrap();
    assert!(load(dir).contains("model.safetensors"), "{}", load(dir));
    std::fs::rename(dir.join("w.bak"), dir.join("model.safetensors")).unwrap();

    // Wrong tensor shape.
    let path = dir.join("model.safetensors");
    let good = std::fs::read(&path).unwrap();
    let mut all = candle_core::safetensors::load(&path, &dev).unwrap();
    all.insert(
        "bert.encoder.layer.1.intermediate.dense.weight".into(),
        Tensor::zeros((63, 32), DType::F32, &dev).unwrap(),
    );
    candle_core::safetensors::save(&all, &path).unwrap();
    let e = load(dir);
    assert!(
        e.contains("model.safetensors") && e.contains("encoder.layer.1.intermediate.dense.weight"),
        "{e}"
    );
    let e = err_of(BertForMaskedLM::load(dir, &dev));
    assert!(
        e.contains("model.safetensors") && e.contains("[63, 32]"),
        "{e}"
    );

    // Missing tensor.
    all.remove("bert.encoder.layer.1.intermediate.dense.weight");
    candle_core::safetensors::save(&all, &path).unwrap();
    let e = load(dir);
    assert!(
        e.contains("missing tensor") && e.contains("layer.1.intermediate"),
        "{e}"
    );
    let e = err_of(BertForMaskedLM::load(dir, &dev));
    assert!(
        e.contains("missing tensor") && e.contains("layer.1.intermediate"),
        "{e}"
    );

    // Corrupt header.
    let mut bad = good.clone();
    bad[8..24].copy_from_slice(b"this is not json");
    std::fs::write(&path, &bad).unwrap();
    assert!(load(dir).contains("model.safetensors"), "{}", load(dir));
    std::fs::write(&path, b"abc").unwrap();
    assert!(load(dir).contains("model.safetensors"), "{}", load(dir));
    std::fs::write(&path, &good).unwrap();

    // Invalid and missing config.
    let cfg = dir.join("config.json");
    let good_cfg = std::fs::read(&cfg).unwrap();
    std::fs::write(&cfg, b"{\"hidden_size\": 32,").unwrap();
    assert!(load(dir).contains("config.json"), "{}", load(dir));
    std::fs::write(&cfg, b"{\"vocab_size\": 5, \"hidden_size\": 30, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"intermediate_size\": 8}").unwrap();
    let e = load(dir);
    assert!(e.contains("config.json") && e.contains("multiple"), "{e}");
    std::fs::remove_file(&cfg).unwrap();
    assert!(load(dir).contains("config.json"), "{}", load(dir));
    std::fs::write(&cfg, &good_cfg).unwrap();

    // Corrupt tokenizer.json.
    std::fs::write(dir.join("tokenizer.json"), b"{ nope").unwrap();
    assert!(load(dir).contains("tokenizer.json"), "{}", load(dir));
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();

    // And the directory is fine again.
    BertEncoder::load(dir, EncoderOptions::default(), &dev).unwrap();
    let cfg: BertConfig = BertConfig::from_file(&cfg).unwrap();
    assert_eq!(cfg.hidden_act, HiddenAct::Gelu);
}
