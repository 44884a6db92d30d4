//! Parity of the SmolLM2 GGUF model with HF transformers.
//!
//! Reference: `../shared/golden/smollm2_golden.json`, computed with HF transformers
//! (LlamaForCausalLM, float32) on the same Q4_1 GGUF weights dequantized to f32 with
//! llama.cpp's q/k row permutation undone; token ids from a GPT-2-style byte-level BPE built
//! from the GGUF tokenizer metadata, no BOS.

mod llama_common;

use candle_core::{Device, Tensor, D};
use ralm_models::bpe::LmTokenizer;
use ralm_models::gguf::GgufFile;
use ralm_models::llama::{LlamaModel, WeightMode};
use serde_json::Value;

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

struct Deviation {
    max_nll: f32,
    max_hidden_rel: f32,
    argmax_mismatch: usize,
}

fn compare(model: &LlamaModel, tok: &LmTokenizer, case: &Value) -> Deviation {
    let text = case["text"].as_str().unwrap();
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids, u32s(&case["token_ids"]), "token ids of {text:?}");
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let hidden = model.forward(&input, 0, None).unwrap().hidden;
    let n = ids.len();

    // Final hidden states: first 8 dims of 3 positions, and the L2 norm of every position.
    let h: Vec<Vec<f32>> = hidden.squeeze(0).unwrap().to_vec2().unwrap();
    let mut max_hidden_rel = 0f32;
    for (p, want) in case["final_hidden_after_norm_first3pos_first8"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let want = f32s(want);
        let num: f32 = want.iter().zip(&h[p]).map(|(a, b)| (a - b).powi(2)).sum();
        let den: f32 = want.iter().map(|a| a * a).sum();
        max_hidden_rel = max_hidden_rel.max((num / den).sqrt());
    }
    for (p, want) in f32s(&case["final_hidden_after_norm_l2_per_pos"])
        .iter()
        .enumerate()
    {
        let got = h[p].iter().map(|x| x * x).sum::<f32>().sqrt();
        max_hidden_rel = max_hidden_rel.max((got - want).abs() / want);
    }

    // Next-token NLL via the chunked log-softmax, and the argmax of the full logits.
    let targets = Tensor::new(&ids[1..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let lp: Vec<f32> = model
        .next_token_logprobs(&hidden.narrow(1, 0, n - 1).unwrap(), &targets)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    let want_nll = f32s(&case["next_token_nll"]);
    assert_eq!(lp.len(), want_nll.len());
    let max_nll = lp
        .iter()
        .zip(&want_nll)
        .map(|(l, w)| (-l - w).abs())
        .fold(0f32, f32::max);
    let logits = model.logits(&hidden).unwrap().squeeze(0).unwrap();
    let argmax: Vec<u32> = logits.argmax(D::Minus1).unwrap().to_vec1().unwrap();
    let want_argmax = u32s(&case["argmax_next"]);
    let argmax_mismatch = argmax
        .iter()
        .zip(&want_argmax)
        .filter(|(a, b)| a != b)
        .count();

    // Top-5 logits at position 0.
    let row0: Vec<f32> = logits.get(0).unwrap().to_vec1().unwrap();
    for pair in case["logits_pos0_top5"].as_array().unwrap() {
        let id = pair[0].as_u64().unwrap() as usize;
        let want = pair[1].as_f64().unwrap() as f32;
        if model.mode() == WeightMode::F32 {
            assert!(
                (row0[id] - want).abs() < 0.02,
                "logit of {id}: {} vs {want}",
                row0[id]
            );
        }
    }
    Deviation {
        max_nll,
        max_hidden_rel,
        argmax_mismatch,
    }
}

#[test]
fn smollm2_matches_transformers() {
    let (Some(path), Some(golden)) = (llama_common::smollm2_gguf(), llama_common::smollm2_golden())
    else {
        return;
    };
    let tok = LmTokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let cases = golden["cases"].as_array().unwrap();

    let model = LlamaModel::from_gguf(&path, WeightMode::F32, &Device::Cpu).unwrap();
    let cfg = model.config();
    assert_eq!(
        (
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.kv_heads()
        ),
        (30, 576, 9, 3)
    );
    assert!(cfg.tie_word_embeddings);
    for case in cases {
        let d = compare(&model, &tok, case);
        eprintln!(
            "f32: max |ΔNLL| {:.5}, max hidden rel {:.2e}, argmax mismatches {}",
            d.max_nll, d.max_hidden_rel, d.argmax_mismatch
        );
        assert!(d.max_nll < 0.02, "NLL deviation {}", d.max_nll);
        assert!(
            d.max_hidden_rel < 1e-2,
            "hidden deviation {}",
            d.max_hidden_rel
        );
        assert_eq!(d.argmax_mismatch, 0);
    }

    // The quantized-matmul path quantizes activations too: reported, loosely bounded.
    let qmodel = LlamaModel::from_gguf(&path, WeightMode::Quantized, &Device::Cpu).unwrap();
    for case in cases {
        let d = compare(&qmodel, &tok, case);
        eprintln!(
            "quantized: max |ΔNLL| {:.5}, max hidden rel {:.2e}, argmax mismatches {}",
            d.max_nll, d.max_hidden_rel, d.argmax_mismatch
        );
        assert!(d.max_nll < 1.0 && d.max_hidden_rel < 0.2);
    }
}
