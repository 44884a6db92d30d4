//! `ralm bench score`: LM scoring throughput against a PyTorch reference.

use crate::lm::load_model;
use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};
use ralm_models::llama::LlamaModel;
use std::path::PathBuf;

/// PyTorch (f32, HF transformers) scoring speed for SmolLM2-135M at batch 4 × 512 on the
/// project's 2-core reference machine, measured outside this project.
const PYTORCH_SCORE_TOKENS_PER_S: f64 = 330.0;

/// Arguments of `ralm bench score`.
#[derive(Args)]
pub struct ScoreArgs {
    /// A `.gguf` file (both weight modes are measured).
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
}

/// Weight modes measured by `bench score`.
#[derive(Clone, Copy, ValueEnum)]
enum Modes {
    Both,
    F32,
    Quantized,
}

/// One scoring pass: all positions but the last predict their successor.
fn score_once(model: &LlamaModel, ids: &Tensor) -> anyhow::Result<()> {
    let seq = ids.dim(1)?;
    let hidden = model.forward(ids, 0, None)?.hidden;
    let lp =
        model.next_token_logprobs(&hidden.narrow(1, 0, seq - 1)?, &ids.narrow(1, 1, seq - 1)?)?;
    anyhow::ensure!(
        lp.sum_all()?.to_scalar::<f32>()?.is_finite(),
        "non-finite log-probabilities"
    );
    Ok(())
}

pub fn run(a: ScoreArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.batch > 0 && a.seq > 1 && a.iters > 0,
        "batch, seq and iters must be positive (seq > 1)"
    );
    println!(
        "scoring {} × {} tokens, {} iterations, {} threads; PyTorch f32 reference: {PYTORCH_SCORE_TOKENS_PER_S} tokens/s (measured elsewhere on the 2-core machine)",
        a.batch,
        a.seq,
        a.iters,
        candle_core::utils::get_num_threads()
    );
    let modes: &[bool] = match a.modes {
        Modes::Both => &[false, true],
        Modes::F32 => &[false],
        Modes::Quantized => &[true],
    };
    for &quantized in modes {
        let model = load_model(&a.model, quantized)?;
        let vocab = model.config().vocab_size as u32;
        // Deterministic pseudo-random ids (a fixed LCG) keep runs comparable.
        let mut state = 0x2545_f491_u32;
        let ids: Vec<u32> = (0..a.batch * a.seq)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) % vocab
            })
            .collect();
        let ids = Tensor::from_vec(ids, (a.batch, a.seq), &Device::Cpu)?;
        score_once(&model, &ids)?;
        let timer = super::Timer::start();
        for _ in 0..a.iters {
            score_once(&model, &ids)?;
        }
        let (wall, cpu) = timer.elapsed();
        let label = if quantized { "quantized" } else { "f32" };
        println!(
            "{}",
            super::report(
                label,
                a.batch * a.seq * a.iters,
                wall,
                cpu,
                PYTORCH_SCORE_TOKENS_PER_S
            )
        );
    }
    Ok(())
}
