//! `ralm bench train`: BERT masked-LM training steps (forward, backward, AdamW update).

use anyhow::Context;
use candle_core::{DType, Tensor};
use clap::Args;
use ralm_models::bert::{BertForMaskedLM, Mode};
use ralm_realm::finetune::adamw::{AdamW, AdamWConfig};
use std::path::PathBuf;

/// PyTorch 2.11 MiniLM MLM training step with bf16 autocast on an H100 (batch 64 × 128).
const PYTORCH_H100_MLM_TOKENS_PER_S: f64 = 389e3;
/// PyTorch 2.13 f32 MiniLM MLM training step on the project's 2-core CPU (batch 8 × 128).
const PYTORCH_CPU_MLM_TOKENS_PER_S: f64 = 520.0;
/// `[MASK]` in BERT's uncased vocabulary (MiniLM's).
const MASK_ID: u32 = 103;
/// Share of positions masked, as in BERT.
const MASK_PERCENT: u32 = 15;

/// Arguments of `ralm bench train`.
#[derive(Args)]
pub struct TrainArgs {
    /// HF BERT directory (its MLM head is created when absent).
    #[arg(long, default_value = "models/minilm")]
    model: PathBuf,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    iters: usize,
}

/// Runs `ralm bench train`.
pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.batch > 0 && a.seq > 1 && a.iters > 0,
        "batch, iters must be positive and seq > 1"
    );
    let dev = crate::device::current();
    let model = BertForMaskedLM::load(&a.model, &dev)
        .with_context(|| format!("loading {}", a.model.display()))?;
    let vocab = model.bert().config().vocab_size as u32;
    anyhow::ensure!(
        vocab > MASK_ID,
        "{}: a vocabulary of {vocab} has no [MASK] id {MASK_ID}",
        a.model.display()
    );
    let n = a.batch * a.seq;
    let mut rng = super::Lcg(0x1234_5678);
    // Targets above the special tokens (the first 1000 ids of BERT's vocabulary).
    let lo = (vocab / 2).min(1000);
    let targets: Vec<u32> = (0..n).map(|_| lo + rng.next_u24() % (vocab - lo)).collect();
    let masked: Vec<u32> = (0..n as u32)
        .filter(|_| rng.next_u24() % 100 < MASK_PERCENT)
        .collect();
    let mut inputs = targets.clone();
    for &p in &masked {
        inputs[p as usize] = MASK_ID;
    }
    let picked: Vec<u32> = masked.iter().map(|&p| targets[p as usize]).collect();
    let ids = Tensor::from_vec(inputs, (a.batch, a.seq), &dev)?;
    let types = ids.zeros_like()?;
    let mask = Tensor::ones((a.batch, a.seq), DType::F32, &dev)?;
    let positions = Tensor::from_vec(masked, picked.len(), &dev)?;
    let picked = Tensor::from_vec(picked, positions.dim(0)?, &dev)?;
    // The trainers' optimizer: AdamW with gradient clipping.
    let mut opt = AdamW::new(&[("", model.varmap(), 1.0)], AdamWConfig::default())?;
    // Seconds in forward, backward and the optimizer, summed over the timed steps.
    let mut phases = [0f64; 3];
    let mut step = |phases: &mut [f64; 3]| -> anyhow::Result<f32> {
        let t0 = std::time::Instant::now();
        let logits = model.logits_at(&ids, &types, &mask, &positions, Mode::Train)?;
        let loss = BertForMaskedLM::masked_lm_loss(&logits, &picked)?;
        let t1 = std::time::Instant::now();
        let grads = loss.backward()?;
        let t2 = std::time::Instant::now();
        opt.step(&grads, 1e-4)?;
        let loss = loss.to_scalar::<f32>()?;
        for (p, t) in phases.iter_mut().zip([t1 - t0, t2 - t1, t2.elapsed()]) {
            *p += t.as_secs_f64();
        }
        Ok(loss)
    };
    let first = step(&mut [0.0; 3])?;
    let timer = super::Timer::start();
    let mut last = first;
    for _ in 0..a.iters {
        last = step(&mut phases)?;
    }
    let (wall, cpu) = timer.elapsed();
    anyhow::ensure!(last.is_finite(), "training loss is not finite");
    let (reference, reference_name) = if dev.is_cpu() {
        (
            PYTORCH_CPU_MLM_TOKENS_PER_S,
            "PyTorch 2.13 f32 on the 2-core CPU, batch 8 x 128",
        )
    } else {
        (
            PYTORCH_H100_MLM_TOKENS_PER_S,
            "PyTorch 2.11 bf16 autocast on an H100, batch 64 x 128",
        )
    };
    let ms = |s: f64| s * 1e3 / a.iters as f64;
    println!(
        "train {} (f32 on {:?}): batch {} x {}, {} steps in {wall:.3} s, loss {first:.3} -> {last:.3}; \
         per step: forward {:.0} ms, backward {:.0} ms, optimizer {:.0} ms; \
         reference: {reference_name}, {reference:.0} tokens/s",
        a.model.display(),
        dev.location(),
        a.batch,
        a.seq,
        a.iters,
        ms(phases[0]),
        ms(phases[1]),
        ms(phases[2]),
    );
    let tokens = n * a.iters;
    println!("{}", super::report("train", tokens, wall, cpu, reference));
    super::result_line("train-mlm-f32", tokens, wall, reference);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ralm_models::bert::{BertConfig, HiddenAct};

    /// A tiny random BERT with an MLM head, saved as an HF directory.
    fn tiny_bert(dir: &std::path::Path, vocab_size: usize) {
        let config = BertConfig {
            vocab_size,
            hidden_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 32,
            hidden_act: HiddenAct::Gelu,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 64,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
            model_type: "bert".into(),
        };
        BertForMaskedLM::new_random(&config, &candle_core::Device::Cpu)
            .unwrap()
            .save(dir)
            .unwrap();
    }

    #[test]
    fn trains_a_tiny_bert_and_refuses_a_vocabulary_without_mask() {
        let tmp = tempfile::tempdir().unwrap();
        tiny_bert(tmp.path(), 300);
        let args = |model: &std::path::Path| TrainArgs {
            model: model.to_path_buf(),
            batch: 2,
            seq: 16,
            iters: 2,
        };
        run(args(tmp.path())).unwrap();
        let small = tmp.path().join("small");
        tiny_bert(&small, 50);
        let err = run(args(&small)).unwrap_err().to_string();
        assert!(err.contains("no [MASK] id"), "{err}");
    }
}
