//! `ralm bench encode`: BERT encoding throughput against a PyTorch reference.

use anyhow::Context;
use candle_core::{DType, Tensor};
use clap::Args;
use ralm_models::bert::{BertModel, Mode};
use std::path::PathBuf;

/// PyTorch f32 MiniLM encoding on the project's 2-core reference machine, measured elsewhere
/// (batch 32 × 128 tokens).
const PYTORCH_ENCODE_TOKENS_PER_S: f64 = 3800.0;
/// PyTorch 2.11 MiniLM encoding on an H100 (random weights, batch 256 × 128), f32 and bf16.
const PYTORCH_H100_ENCODE: [(DType, f64); 2] = [(DType::F32, 1.66e6), (DType::BF16, 5.9e6)];

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
    /// Weight and activation type: f32, bf16 or f16 (the half types are for GPUs).
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: DType,
    /// Reference tokens/s, e.g. PyTorch measured in the same run by `scripts/bench_models.sh`
    /// (default: the PyTorch figure measured elsewhere for this device).
    #[arg(long)]
    reference: Option<f64>,
}

/// Parses `f32`, `bf16` or `f16`.
pub(crate) fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        _ => Err(format!("unknown dtype '{s}' (expected f32, bf16 or f16)")),
    }
}

/// Runs `ralm bench encode`.
pub fn run(args: EncodeArgs) -> anyhow::Result<()> {
    let dev = crate::device::current();
    let model = BertModel::load_as(&args.model, args.dtype, &dev)
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
    let mask = Tensor::ones((b, t), DType::F32, &dev)?;
    let run = || model.forward(&ids, &types, &mask, Mode::Inference);
    run()?;
    dev.synchronize()?;
    let timer = super::Timer::start();
    for _ in 0..args.iters {
        run()?;
    }
    dev.synchronize()?;
    let (wall, cpu) = timer.elapsed();
    let (reference, origin) = if let Some(r) = args.reference {
        (r, "given with --reference")
    } else if dev.is_cpu() {
        (
            PYTORCH_ENCODE_TOKENS_PER_S,
            "PyTorch f32, batch 32 x 128, on the 2-core machine",
        )
    } else {
        let r = PYTORCH_H100_ENCODE
            .iter()
            .find(|(d, _)| *d == args.dtype)
            .map_or(f64::NAN, |(_, r)| *r);
        (r, "PyTorch 2.11 on an H100, batch 256 x 128, same dtype")
    };
    println!(
        "encode {} ({:?} on {:?}): batch {b} x {t} tokens, {} iters in {wall:.3} s; reference \
         {reference:.0} tokens/s ({origin})",
        args.model.display(),
        args.dtype,
        dev.location(),
        args.iters
    );
    println!(
        "{}",
        super::report("encode", b * t * args.iters, wall, cpu, reference)
    );
    super::result_line(
        &format!("encode-{:?}", args.dtype).to_lowercase(),
        b * t * args.iters,
        wall,
        reference,
    );
    Ok(())
}
