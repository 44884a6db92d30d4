//! `ralm bench train`: BERT masked-LM training steps (forward, backward, AdamW update).

use anyhow::Context;
use candle_core::{DType, Tensor};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use clap::Args;
use ralm_models::bert::{BertForMaskedLM, Mode};
use std::path::PathBuf;

/// PyTorch 2.11 MiniLM MLM training step with bf16 autocast on an H100 (batch 64 × 128).
const PYTORCH_H100_MLM_TOKENS_PER_S: f64 = 389e3;
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
    #[arg(long, default_value_t = 64)]
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
    let n = a.batch * a.seq;
    let mut state = 0x1234_5678_u32;
    let mut next = || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        state >> 8
    };
    let targets: Vec<u32> = (0..n).map(|_| 1000 + next() % (vocab - 1000)).collect();
    let masked: Vec<u32> = (0..n as u32)
        .filter(|_| next() % 100 < MASK_PERCENT)
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
    let mut opt = AdamW::new(
        model.varmap().all_vars(),
        ParamsAdamW {
            lr: 1e-4,
            ..Default::default()
        },
    )?;
    let mut step = || -> anyhow::Result<f32> {
        let (_, logits) = model.forward(&ids, &types, &mask, Mode::Train)?;
        let loss = BertForMaskedLM::masked_lm_loss(&logits, &positions, &picked)?;
        opt.backward_step(&loss)?;
        Ok(loss.to_scalar::<f32>()?)
    };
    let first = step()?;
    let timer = super::Timer::start();
    let mut last = first;
    for _ in 0..a.iters {
        last = step()?;
    }
    let (wall, cpu) = timer.elapsed();
    anyhow::ensure!(last.is_finite(), "training loss is not finite");
    println!(
        "train {} (f32 on {:?}): batch {} x {}, {} steps in {wall:.3} s, loss {first:.3} -> {last:.3}; \
         reference: PyTorch 2.11 bf16 autocast on an H100, {PYTORCH_H100_MLM_TOKENS_PER_S:.0} tokens/s",
        a.model.display(),
        dev.location(),
        a.batch,
        a.seq,
        a.iters
    );
    let tokens = n * a.iters;
    println!(
        "{}",
        super::report("train", tokens, wall, cpu, PYTORCH_H100_MLM_TOKENS_PER_S)
    );
    super::result_line("train-mlm-f32", tokens, wall, PYTORCH_H100_MLM_TOKENS_PER_S);
    Ok(())
}
