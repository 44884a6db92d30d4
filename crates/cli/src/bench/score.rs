//! `ralm bench score`: LM scoring throughput against a PyTorch reference.

use anyhow::Context;
use candle_core::Tensor;
use clap::{Args, ValueEnum};
use ralm_models::llama::{LlamaModel, WeightMode};
use std::path::PathBuf;

/// PyTorch (f32, HF transformers) scoring speed for SmolLM2-135M at batch 4 × 512 on the
/// project's 2-core reference machine, measured outside this project.
const PYTORCH_SCORE_TOKENS_PER_S: f64 = 330.0;
/// PyTorch 2.11 bf16 scoring of SmolLM2-135M on an H100 (random weights, batch 16 × 1024).
const PYTORCH_H100_BF16_SCORE_TOKENS_PER_S: f64 = 426e3;

/// Arguments of `ralm bench score`.
#[derive(Args)]
pub struct ScoreArgs {
    /// A `.gguf` file or an HF Llama directory (dense modes only).
    #[arg(long, default_value = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// Timed iterations (after one warm-up).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Which weight modes to measure.
    #[arg(long, value_enum, default_value_t = Modes::Both)]
    modes: Modes,
    /// Reference tokens/s, e.g. PyTorch f32 measured in the same run by
    /// `scripts/bench_models.sh` (default: the PyTorch figure measured elsewhere for this device).
    #[arg(long)]
    reference: Option<f64>,
}

/// Weight modes measured by `bench score`.
#[derive(Clone, Copy, ValueEnum)]
enum Modes {
    Both,
    F32,
    Quantized,
    Bf16,
}

/// One scoring pass (all positions but the last predict their successor); returns the seconds
/// of the forward pass and of the log-probabilities.
fn score_once(model: &LlamaModel, ids: &Tensor) -> anyhow::Result<(f64, f64)> {
    let seq = ids.dim(1)?;
    let start = std::time::Instant::now();
    let hidden = model.forward(ids, 0, None)?.hidden;
    model.device().synchronize()?;
    let forward = start.elapsed().as_secs_f64();
    let lp =
        model.next_token_logprobs(&hidden.narrow(1, 0, seq - 1)?, &ids.narrow(1, 1, seq - 1)?)?;
    anyhow::ensure!(
        lp.sum_all()?.to_scalar::<f32>()?.is_finite(),
        "non-finite log-probabilities"
    );
    Ok((forward, start.elapsed().as_secs_f64() - forward))
}

pub fn run(a: ScoreArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.batch > 0 && a.seq > 1 && a.iters > 0,
        "batch, seq and iters must be positive (seq > 1)"
    );
    let device = crate::device::current();
    let (reference, origin) = match a.reference {
        Some(r) => (r, "given with --reference"),
        None if device.is_cpu() => (
            PYTORCH_SCORE_TOKENS_PER_S,
            "PyTorch f32, measured elsewhere on the 2-core machine",
        ),
        None => (
            PYTORCH_H100_BF16_SCORE_TOKENS_PER_S,
            "PyTorch 2.11 bf16 on an H100, batch 16 x 1024",
        ),
    };
    println!(
        "scoring {} × {} tokens, {} iterations, {} threads; reference: {reference:.0} tokens/s ({origin})",
        a.batch,
        a.seq,
        a.iters,
        candle_core::utils::get_num_threads()
    );
    let modes: &[WeightMode] = match a.modes {
        Modes::Both => &[WeightMode::F32, WeightMode::Quantized],
        Modes::F32 => &[WeightMode::F32],
        Modes::Quantized => &[WeightMode::Quantized],
        Modes::Bf16 => &[WeightMode::Bf16],
    };
    for &mode in modes {
        let model = LlamaModel::load(&a.model, mode, &device)
            .with_context(|| format!("loading {}", a.model.display()))?;
        let ids = super::Lcg(0x2545_f491).ids(a.batch * a.seq, model.config().vocab_size);
        let ids = Tensor::from_vec(ids, (a.batch, a.seq), &device)?;
        score_once(&model, &ids)?;
        let timer = super::Timer::start();
        let mut split = (0.0, 0.0);
        for _ in 0..a.iters {
            let (f, l) = score_once(&model, &ids)?;
            split = (split.0 + f, split.1 + l);
        }
        let (wall, cpu) = timer.elapsed();
        println!(
            "per pass: forward {:.1} ms, next-token log-probabilities {:.1} ms",
            1e3 * split.0 / a.iters as f64,
            1e3 * split.1 / a.iters as f64
        );
        let label = format!("{mode:?}").to_lowercase();
        let tokens = a.batch * a.seq * a.iters;
        println!("{}", super::report(&label, tokens, wall, cpu, reference));
        super::result_line(&format!("score-{label}"), tokens, wall, reference);
    }
    Ok(())
}
