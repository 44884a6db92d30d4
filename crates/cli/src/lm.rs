//! `ralm lm score`: perplexity of a text file under a causal LM with sliding windows;
//! `ralm lm tokenizer`: a model's tokenizer written as `tokenizer.json`.

use anyhow::Context;
use clap::{Args, Subcommand};
use ralm_models::bpe::LmTokenizer;
use ralm_models::llama::{LlamaModel, ScoreOptions, WeightMode};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Causal language-model commands.
#[derive(Args)]
pub struct LmArgs {
    #[command(subcommand)]
    cmd: LmCommand,
}

#[derive(Subcommand)]
enum LmCommand {
    /// Per-token NLL and perplexity of a UTF-8 text file.
    Score(ScoreArgs),
    /// Write a model's tokenizer (e.g. the one a GGUF file describes) as an HF tokenizer.json.
    Tokenizer(TokenizerArgs),
}

/// Arguments of `ralm lm tokenizer`.
#[derive(Args)]
pub struct TokenizerArgs {
    /// A `.gguf` file (or a directory holding one) or an HF Llama directory.
    #[arg(long)]
    model: PathBuf,
    /// Where to write the tokenizer.json.
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `ralm lm score`.
#[derive(Args)]
pub struct ScoreArgs {
    /// A `.gguf` file (or a directory holding one) or an HF Llama directory.
    #[arg(long)]
    model: PathBuf,
    /// The UTF-8 text file to score.
    file: PathBuf,
    /// Longest window of tokens (context plus scored tokens).
    #[arg(long, default_value_t = 512)]
    context: usize,
    /// Distance between window starts.
    #[arg(long, default_value_t = 256)]
    stride: usize,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Use quantized matmuls on the GGUF weights instead of dequantized f32.
    #[arg(long)]
    quantized: bool,
}

/// Runs an `lm` subcommand.
pub fn run(args: LmArgs) -> anyhow::Result<()> {
    match args.cmd {
        LmCommand::Score(a) => score(a),
        LmCommand::Tokenizer(a) => export_tokenizer(&a),
    }
}

/// Writes the model's tokenizer to `a.out` (temporary name, then rename).
fn export_tokenizer(a: &TokenizerArgs) -> anyhow::Result<()> {
    let tok = LmTokenizer::for_model(&a.model)?;
    crate::io::write_atomic(&a.out, tok.to_json()?.as_bytes())?;
    eprintln!("wrote {} ({} tokens)", a.out.display(), tok.vocab_size());
    Ok(())
}

/// Reads `path` as UTF-8 text, naming the file on failure.
fn read_text(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// Loads a model in the requested weight mode.
pub fn load_model(path: &Path, quantized: bool) -> anyhow::Result<LlamaModel> {
    let mode = if quantized {
        WeightMode::Quantized
    } else {
        WeightMode::F32
    };
    Ok(LlamaModel::load(path, mode, &crate::device::current())?)
}

fn score(a: ScoreArgs) -> anyhow::Result<()> {
    let text = read_text(&a.file)?;
    let tok = LmTokenizer::for_model(&a.model)?;
    let model = load_model(&a.model, a.quantized)?;
    let ids = tok.encode(&text)?;
    anyhow::ensure!(
        ids.len() >= 2,
        "{}: needs at least 2 tokens to score, has {}",
        a.file.display(),
        ids.len()
    );
    let opts = ScoreOptions {
        context_len: a.context,
        stride: a.stride,
        batch: a.batch,
        keys: None,
    };
    let bar = crate::progress::bar(
        ids.len() as u64 - 1,
        "{bar:40} {pos}/{len} tokens  {per_sec}  ETA {eta}",
    );
    let start = Instant::now();
    let scores =
        model.score_windows_with_progress(&ids, &opts, &mut |n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let n = scores.nll.len();
    let mean = scores.nll.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
    println!("tokens scored: {n}");
    println!("mean NLL: {mean:.4}");
    println!("perplexity: {:.3}", mean.exp());
    println!("time: {secs:.1} s ({:.0} tokens/s)", n as f64 / secs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_input_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latin1.txt");
        std::fs::write(&path, b"caf\xe9 au lait").unwrap();
        let e = read_text(&path).unwrap_err().to_string();
        assert!(e.contains("latin1.txt") && e.contains("UTF-8"), "{e}");
        assert!(read_text(&dir.path().join("absent.txt"))
            .unwrap_err()
            .to_string()
            .contains("absent.txt"));
        std::fs::write(&path, "plain text").unwrap();
        assert_eq!(read_text(&path).unwrap(), "plain text");
    }
}
