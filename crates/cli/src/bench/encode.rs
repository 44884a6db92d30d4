//! `ralm bench encode`: BERT encoding throughput against a PyTorch reference.

use anyhow::Context;
use candle_core::{Device, Tensor};
use clap::Args;
use ralm_models::bert::{BertModel, Mode};
use std::path::PathBuf;

/// PyTorch f32 MiniLM encoding on the project's 2-core reference machine, measured elsewhere
/// (batch 32 × 128 tokens).
const PYTORCH_ENCODE_TOKENS_PER_S: f64 = 3800.0;

/// Arguments of `ralm bench encode`.
#[derive(Args)]
pub struct EncodeArgs {
    /// HF BERT directory.
    #[arg(long, default_value = "models/minilm")]
    model: PathBuf,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed forward passes (after one warm-up pass).
    #[arg(long, default_value_t = 5)]
    iters: usize,
}

/// Runs `ralm bench encode`.
pub fn run(args: EncodeArgs) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let model = BertModel::load(&args.model, &dev)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let (b, t) = (args.batch, args.seq);
    anyhow::ensure!(b > 0 && t >= 2, "need --batch >= 1 and --seq >= 2");
    // Deterministic pseudo-random ids between [CLS] (101) and [SEP] (102).
    let vocab = model.config().vocab_size as u32;
    let ids: Vec<u32> = (0..b * t)
        .map(|i| match i % t {
            0 => 101,
            p if p == t - 1 => 102,
            _ => (i as u32).wrapping_mul(7919) % vocab,
        })
        .collect();
    let ids = Tensor::from_vec(ids, (b, t), &dev)?;
    let types = ids.zeros_like()?;
    let mask = Tensor::ones((b, t), candle_core::DType::F32, &dev)?;
    let run = || model.forward(&ids, &types, &mask, Mode::Inference);
    run()?;
    let timer = super::Timer::start();
    for _ in 0..args.iters {
        run()?;
    }
    let (wall, cpu) = timer.elapsed();
    println!(
        "encode {}: batch {b} x {t} tokens, {} iters in {wall:.2} s; PyTorch f32 reference \
         {PYTORCH_ENCODE_TOKENS_PER_S:.0} tokens/s (measured elsewhere on the 2-core machine)",
        args.model.display(),
        args.iters
    );
    println!(
        "{}",
        super::report(
            "encode",
            b * t * args.iters,
            wall,
            cpu,
            PYTORCH_ENCODE_TOKENS_PER_S
        )
    );
    Ok(())
}
