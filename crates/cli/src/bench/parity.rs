//! `ralm bench parity`: the same models on the CPU and on `--device`, outputs compared.

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use clap::Args;
use ralm_models::bert::{BertModel, Mode};
use ralm_models::llama::{LlamaModel, WeightMode};
use std::path::PathBuf;

/// Arguments of `ralm bench parity`.
#[derive(Args)]
pub struct ParityArgs {
    /// HF BERT directory.
    #[arg(long, default_value = "models/minilm")]
    bert: PathBuf,
    /// A `.gguf` file (or a directory holding one) or an HF Llama directory.
    #[arg(long, default_value = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")]
    llama: PathBuf,
    /// Largest allowed f32 difference, relative to the largest magnitude of the CPU output.
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f32,
}

/// `max |a - b| / max |a|` over two equally long slices.
fn relative_diff(cpu: &[f32], other: &[f32]) -> f32 {
    let scale = cpu.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    let diff = cpu
        .iter()
        .zip(other)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

/// A tensor's values as f32 on the host.
fn host(t: &Tensor) -> anyhow::Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?)
}

/// Deterministic pseudo-random token ids `[b, t]` below `vocab`.
fn ids(b: usize, t: usize, vocab: usize, dev: &Device) -> anyhow::Result<Tensor> {
    let v = super::Lcg(0x9e37_79b9).ids(b * t, vocab);
    Ok(Tensor::from_vec(v, (b, t), dev)?)
}

/// Compares and prints one output; `tolerance` None only reports.
fn check(name: &str, cpu: &[f32], other: &[f32], tolerance: Option<f32>) -> bool {
    let rel = relative_diff(cpu, other);
    let verdict = match tolerance {
        Some(t) if rel <= t => "PASS",
        Some(_) => "FAIL",
        None => "reported",
    };
    println!("parity {name}: max |diff| / max |cpu| = {rel:.2e} ({verdict})");
    println!("RESULT parity-{name} relative_diff={rel:.3e} verdict={verdict}");
    verdict != "FAIL"
}

/// BERT last hidden states `[4, 64]` with padding in three rows, in `dtype` on `dev`.
fn bert_hidden(args: &ParityArgs, dtype: DType, dev: &Device) -> anyhow::Result<Vec<f32>> {
    let model = BertModel::load_as(&args.bert, dtype, dev)
        .with_context(|| format!("loading {}", args.bert.display()))?;
    let (b, t) = (4, 64);
    let ids = ids(b, t, model.config().vocab_size, dev)?;
    let mask: Vec<f32> = (0..b * t)
        .map(|i| f32::from(u8::from(i % t < t - 8 * (i / t))))
        .collect();
    let mask = Tensor::from_vec(mask, (b, t), dev)?;
    host(&model.forward(&ids, &ids.zeros_like()?, &mask, Mode::Inference)?)
}

/// Llama final hidden states and next-token log-probabilities of `[2, 128]` ids.
fn llama_outputs(
    args: &ParityArgs,
    mode: WeightMode,
    dev: &Device,
) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    let model = LlamaModel::load(&args.llama, mode, dev)
        .with_context(|| format!("loading {}", args.llama.display()))?;
    let (b, t) = (2, 128);
    let ids = ids(b, t, model.config().vocab_size, dev)?;
    let hidden = model.forward(&ids, 0, None)?.hidden;
    let lp = model.next_token_logprobs(&hidden.narrow(1, 0, t - 1)?, &ids.narrow(1, 1, t - 1)?)?;
    Ok((host(&hidden)?, host(&lp)?))
}

/// Runs `ralm bench parity`.
pub fn run(args: ParityArgs) -> anyhow::Result<()> {
    let dev = crate::device::current();
    anyhow::ensure!(
        !dev.is_cpu(),
        "bench parity compares the CPU with another device: pass --device cuda"
    );
    let cpu = Device::Cpu;
    let tol = Some(args.tolerance);
    let mut ok = true;
    let reference = bert_hidden(&args, DType::F32, &cpu)?;
    ok &= check(
        "bert-f32",
        &reference,
        &bert_hidden(&args, DType::F32, &dev)?,
        tol,
    );
    check(
        "bert-bf16",
        &reference,
        &bert_hidden(&args, DType::BF16, &dev)?,
        None,
    );
    let (hidden, lp) = llama_outputs(&args, WeightMode::F32, &cpu)?;
    let (h, l) = llama_outputs(&args, WeightMode::F32, &dev)?;
    ok &= check("llama-f32-hidden", &hidden, &h, tol);
    ok &= check("llama-f32-logprobs", &lp, &l, tol);
    let (h, l) = llama_outputs(&args, WeightMode::Bf16, &dev)?;
    check("llama-bf16-hidden", &hidden, &h, None);
    check("llama-bf16-logprobs", &lp, &l, None);
    if args.llama.extension().is_some_and(|e| e == "gguf") {
        let (hq, lq) = llama_outputs(&args, WeightMode::Quantized, &cpu)?;
        let (h, l) = llama_outputs(&args, WeightMode::Quantized, &dev)?;
        check("llama-quantized-hidden", &hq, &h, None);
        check("llama-quantized-logprobs", &lq, &l, None);
    }
    anyhow::ensure!(
        ok,
        "GPU outputs differ from CPU outputs beyond {}",
        args.tolerance
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_diff_scales_by_the_reference() {
        assert_eq!(relative_diff(&[2.0, -4.0], &[2.0, -4.0]), 0.0);
        assert!((relative_diff(&[2.0, -4.0], &[2.5, -4.0]) - 0.125).abs() < 1e-7);
        assert!(check("same", &[1.0], &[1.0], Some(1e-6)));
        assert!(!check("off", &[1.0], &[1.1], Some(1e-3)));
    }

    #[test]
    fn needs_a_device_other_than_the_cpu() {
        let args = ParityArgs {
            bert: "absent-bert".into(),
            llama: "absent-llama".into(),
            tolerance: 1e-3,
        };
        let err = run(args).unwrap_err().to_string();
        assert!(err.contains("--device cuda"), "{err}");
    }
}
