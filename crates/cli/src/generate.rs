//! `ralm generate`: greedy or sampled continuation with the base LM or a kNN-LM.

use crate::knnlm::{open_datastore, ModelArgs};
use clap::Args;
use ralm_index::SearchParams;
use ralm_knn::knnlm::{KnnLm, KnnParams};
use ralm_models::llama::Sampler;
use std::path::PathBuf;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Datastore directory: generate from the kNN-LM distribution instead of the base LM.
    #[arg(long)]
    datastore: Option<PathBuf>,
    /// Weight of p_kNN.
    #[arg(long, default_value_t = 0.25)]
    lambda: f32,
    /// Neighbours per step.
    #[arg(long, default_value_t = 32)]
    k: usize,
    /// Temperature of p_kNN over neighbour scores (exp(score / T)).
    #[arg(long, default_value_t = 10.0)]
    knn_temperature: f32,
    /// IVF lists probed per search.
    #[arg(long, default_value_t = 32)]
    nprobe: usize,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most new tokens.
    #[arg(long, default_value_t = 64)]
    max_new: usize,
    /// The prompt.
    prompt: String,
}

/// Runs `ralm generate`.
pub fn run(a: &GenerateArgs) -> anyhow::Result<()> {
    let (lm, tok) = match &a.datastore {
        Some(dir) => a.model.load_for(dir)?,
        None => a.model.load()?,
    };
    let prompt = tok.encode(&a.prompt)?;
    let mut sampler = if a.temperature > 0.0 {
        Sampler::temperature(a.temperature, a.seed)?
    } else {
        Sampler::Greedy
    };
    let stop = tok.eos_id();
    let out = match &a.datastore {
        None => lm.generate(&prompt, a.max_new, &mut sampler, stop)?,
        Some(dir) => {
            let datastore = open_datastore(dir, &lm, &tok)?;
            let knn = KnnLm {
                lm,
                tokenizer: tok,
                datastore,
                params: KnnParams {
                    k: a.k,
                    lambda: a.lambda,
                    temperature: a.knn_temperature,
                    search: SearchParams {
                        nprobe: a.nprobe,
                        rerank: None,
                    },
                },
            };
            let out = knn.generate(&prompt, a.max_new, &mut sampler, stop)?;
            println!("{}{}", a.prompt, knn.tokenizer.decode(&out)?);
            return Ok(());
        }
    };
    println!("{}{}", a.prompt, tok.decode(&out)?);
    Ok(())
}
