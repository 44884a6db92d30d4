//! Parity with HF transformers on all-MiniLM-L6-v2.
//!
//! Reference values come from `../shared/golden/minilm_golden.json` (HF transformers BertModel,
//! float32, on the same weights; see that folder's README.md), read at test time.

use candle_core::Device;
use ralm_models::bert::{BertEncoder, EncoderOptions, Pooling};
use std::path::PathBuf;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Case {
    text: String,
    token_ids: Vec<u32>,
    cls_first8: Vec<f32>,
    embedding: Vec<f32>,
}

/// The golden cases and cosine matrix, or `None` (with a message) when files are absent.
fn setup() -> Option<(PathBuf, Vec<Case>, Vec<Vec<f32>>)> {
    let model = repo_root().join("models/minilm");
    let golden = repo_root().join("../shared/golden/minilm_golden.json");
    if !model.join("model.safetensors").exists() || !golden.exists() {
        eprintln!(
            "skipping: {} or {} absent",
            model.display(),
            golden.display()
        );
        return None;
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden).unwrap()).unwrap();
    let floats = |x: &serde_json::Value| -> Vec<f32> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_f64().unwrap() as f32)
            .collect()
    };
    let cases = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_string(),
            token_ids: c["token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect(),
            cls_first8: floats(&c["cls_hidden_first8"]),
            embedding: floats(&c["embedding"]),
        })
        .collect();
    let cos = v["cosine_matrix"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    Some((model, cases, cos))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn minilm_matches_transformers() {
    let Some((dir, cases, cos)) = setup() else {
        return;
    };
    let dev = Device::Cpu;
    // Batch size 3 with 4 texts: exercises padding, length sorting and order restoration.
    let opts = EncoderOptions {
        pooling: Pooling::Mean,
        normalize: true,
        batch_size: 3,
    };
    let enc = BertEncoder::load(&dir, opts, &dev).unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();

    let encodings = enc.tokenize(&texts).unwrap();
    for (c, e) in cases.iter().zip(&encodings) {
        assert_eq!(
            e.get_ids(),
            c.token_ids.as_slice(),
            "token ids of {:?}",
            c.text
        );
    }

    // CLS hidden state, each text run alone (no padding).
    for (c, e) in cases.iter().zip(&encodings) {
        let (hidden, _) = enc.hidden_states(&[e]).unwrap();
        let cls: Vec<f32> = hidden.get(0).unwrap().get(0).unwrap().to_vec1().unwrap();
        let d = max_abs_diff(&cls[..8], &c.cls_first8);
        assert!(d < 1e-4, "cls_hidden_first8 of {:?} differs by {d}", c.text);
    }

    let emb = enc.encode(&texts).unwrap();
    let rows: Vec<Vec<f32>> = emb.to_vec2().unwrap();
    let mut worst = (0f32, 0f32);
    for (c, r) in cases.iter().zip(&rows) {
        let d = max_abs_diff(r, &c.embedding);
        assert!(d < 1e-4, "embedding of {:?} differs by {d}", c.text);
        worst.0 = worst.0.max(d);
    }
    let sims: Vec<Vec<f32>> = emb.matmul(&emb.t().unwrap()).unwrap().to_vec2().unwrap();
    for (i, (got, want)) in sims.iter().zip(&cos).enumerate() {
        let d = max_abs_diff(got, want);
        assert!(d < 1e-4, "cosine row {i} differs by {d}");
        worst.1 = worst.1.max(d);
    }
    eprintln!(
        "MiniLM, {} texts in one padded batch: max |Δembedding| {:.2e}, max |Δcosine| {:.2e}",
        rows.len(),
        worst.0,
        worst.1
    );
}

#[test]
fn pairs_get_segment_ids_and_cls_pooling_works() {
    let Some((dir, ..)) = setup() else {
        return;
    };
    let dev = Device::Cpu;
    let opts = EncoderOptions {
        pooling: Pooling::Cls,
        normalize: false,
        batch_size: 2,
    };
    let enc = BertEncoder::load(&dir, opts, &dev).unwrap();
    let pairs = [
        ("who wrote moby dick?", "herman melville wrote it."),
        ("a", "b c"),
    ];
    let e = enc.tokenize_pairs(&pairs).unwrap();
    // [CLS] who wrote mob ##y dick ? [SEP] herman melville wrote it . [SEP]
    let types = e[0].get_type_ids();
    let sep = types.iter().position(|&t| t == 1).unwrap();
    assert_eq!(e[0].get_ids()[0], 101);
    assert_eq!(e[0].get_ids()[sep - 1], 102);
    assert_eq!(*e[0].get_ids().last().unwrap(), 102);
    assert!(types[sep..].iter().all(|&t| t == 1));
    // Offsets point back into the second text for span extraction.
    let (s, t) = e[0].get_offsets()[sep];
    assert_eq!(&pairs[0].1[s..t], "herman");

    let v = enc.encode_pairs(&pairs).unwrap();
    assert_eq!(v.dims(), &[2, 384]);
    // Batched CLS pooling equals running each pair alone.
    for (i, enc_i) in e.iter().enumerate() {
        let (h, _) = enc.hidden_states(&[enc_i]).unwrap();
        let alone: Vec<f32> = h.get(0).unwrap().get(0).unwrap().to_vec1().unwrap();
        let batched: Vec<f32> = v.get(i).unwrap().to_vec1().unwrap();
        assert!(max_abs_diff(&alone, &batched) < 1e-4);
    }
    assert_eq!(enc.model_hash().unwrap().len(), 64);
    assert_ne!(enc.model_hash().unwrap(), enc.tokenizer_hash().unwrap());
    let empty = enc.encode(&[]).unwrap();
    assert_eq!(empty.dims(), &[0, 384]);
}
