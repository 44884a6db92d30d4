//! `ralm embed`: texts (.txt lines or a .jsonl field) → `.npy` f32 matrix `[n, d]`.

use anyhow::{bail, Context};
use clap::Args;
use ralm_models::bert::{BertEncoder, EncoderOptions, Pooling};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `ralm embed`.
#[derive(Args)]
pub struct EmbedArgs {
    /// HF BERT directory (config.json, model.safetensors, tokenizer.json or vocab.txt).
    #[arg(long)]
    model: PathBuf,
    /// Input: `.txt` (one text per line) or `.jsonl` (see --field).
    #[arg(long)]
    input: PathBuf,
    /// JSON field holding the text in `.jsonl` input.
    #[arg(long, default_value = "text")]
    field: String,
    /// Output `.npy` file (f32, [n, d]).
    #[arg(long)]
    output: PathBuf,
    /// Pooling over tokens: mean or cls.
    #[arg(long, default_value = "mean")]
    pooling: Pooling,
    /// L2-normalise every vector.
    #[arg(long)]
    normalize: bool,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

/// Runs `ralm embed`.
pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    let texts = read_texts(&args.input, &args.field)?;
    let options = EncoderOptions {
        pooling: args.pooling,
        normalize: args.normalize,
        batch_size: args.batch_size,
    };
    let encoder = BertEncoder::load(&args.model, options, &crate::device::current())?;
    let dim = encoder.dim();

    let bar = crate::progress::bar(
        texts.len() as u64,
        "{bar:40} {pos}/{len} texts  {msg}  [{elapsed_precise}]",
    );
    let start = Instant::now();
    let mut tokens = 0usize;
    let mut data = Vec::with_capacity(texts.len() * dim);
    // Chunks of several batches so length sorting still cuts padding.
    for chunk in texts.chunks(args.batch_size.max(1) * 16) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let encodings = encoder.tokenize(&refs)?;
        tokens += encodings.iter().map(|e| e.len()).sum::<usize>();
        let vecs = encoder.encode_encodings(&encodings)?;
        data.extend(vecs.flatten_all()?.to_vec1::<f32>()?);
        bar.inc(chunk.len() as u64);
        bar.set_message(format!(
            "{:.0} tokens/s",
            tokens as f64 / start.elapsed().as_secs_f64()
        ));
    }
    bar.finish();
    ralm_index::npy::write_f32(&args.output, texts.len(), dim, &data)?;
    eprintln!(
        "wrote {} vectors of dim {dim} to {} ({tokens} tokens in {:.1} s)",
        texts.len(),
        args.output.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Texts of a `.txt` file (one per line) or of `field` in each line of a `.jsonl` file.
fn read_texts(path: &Path, field: &str) -> anyhow::Result<Vec<String>> {
    let content =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("txt") => Ok(content.lines().map(str::to_string).collect()),
        Some("jsonl") => content
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                let v: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1))?;
                match v.get(field).and_then(|t| t.as_str()) {
                    Some(t) => Ok(t.to_string()),
                    None => bail!("{}:{}: no string field `{field}`", path.display(), i + 1),
                }
            })
            .collect(),
        _ => bail!(
            "{}: unsupported input extension (expected .txt or .jsonl)",
            path.display()
        ),
    }
}
