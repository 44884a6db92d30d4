//! kNN-LM work behind `/v1/lm/*`: scoring a text with a chosen λ, and generation one token at
//! a time (KV cache) so each token can be streamed as soon as it is drawn.
//!
//! `KnnLm::generate` returns the whole continuation and mixes with the datastore's own λ, so
//! the step here rebuilds its loop from the model's public pieces (forward with a KV cache,
//! logits, datastore search, `knn_distribution`, `mix_into_log_probs`) with a per-token callback
//! and the request's λ.

use candle_core::{DType, Tensor};
use ralm_knn::knnlm::mixture::{knn_distribution, mix_into_log_probs};
use ralm_knn::knnlm::KnnLm;
use ralm_models::llama::{ForwardOptions, KeyKind, Sampler};

use crate::api::ScoreResponse;
use crate::error::ApiError;

/// Windows per forward pass and targets per pipelined chunk when scoring a request's text.
const SCORE_BATCH: usize = 8;
const SCORE_CHUNK_TOKENS: usize = 1024;

fn model_err(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

fn perplexity(log_probs: &[f32]) -> f64 {
    let nll: f64 = log_probs.iter().map(|&l| -(l as f64)).sum();
    (nll / log_probs.len().max(1) as f64).exp()
}

/// Per-token log-probabilities of `text` under `knn` mixed with `lambda`, and under the LM alone.
pub fn score(
    knn: &KnnLm,
    name: &str,
    version: u64,
    text: &str,
    lambda: f32,
) -> Result<ScoreResponse, ApiError> {
    let ids = knn.tokenizer.encode(text)?;
    if ids.len() < 2 {
        return Err(ApiError::bad_request(
            "`text` must be at least two tokens long to score",
        ));
    }
    let opts = knn.default_scoring(SCORE_BATCH, SCORE_CHUNK_TOKENS);
    let scored = knn.score_ids(&ids, &opts, false, &mut |_, _| {})?;
    let t = knn.params.temperature;
    let n = scored.cache.len();
    let log_probs: Vec<f32> = (0..n)
        .map(|i| scored.cache.log_prob(i, lambda, t))
        .collect();
    let lm_log_probs: Vec<f32> = (0..n).map(|i| scored.cache.log_prob(i, 0.0, t)).collect();
    let tokens = ids[1..]
        .iter()
        .map(|&id| knn.tokenizer.decode(&[id]))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ScoreResponse {
        datastore: name.to_string(),
        version,
        lambda,
        tokens,
        perplexity: perplexity(&log_probs),
        lm_perplexity: perplexity(&lm_log_probs),
        log_probs,
        lm_log_probs,
    })
}

/// `log_softmax` of a logits vector.
fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln() + max;
    logits.iter().map(|&l| l - lse).collect()
}

/// Generation settings of one request.
pub struct GenerateSpec {
    /// Prompt token ids (non-empty).
    pub prompt: Vec<u32>,
    /// Most new tokens.
    pub max_new: usize,
    /// Weight of p_kNN.
    pub lambda: f32,
    /// Greedy or seeded temperature sampling.
    pub sampler: Sampler,
}

/// Draws up to `spec.max_new` tokens from the kNN-LM, calling `emit` with each as soon as it is
/// drawn; stops after the tokenizer's end-of-sequence token or when `emit` returns false.
pub fn generate(
    knn: &KnnLm,
    mut spec: GenerateSpec,
    emit: &mut dyn FnMut(u32) -> bool,
) -> Result<(), ApiError> {
    if spec.prompt.is_empty() {
        return Err(ApiError::bad_request("`prompt` encodes to no tokens"));
    }
    let lm = &knn.lm;
    let kind = knn.datastore.key_kind()?;
    let opts = ForwardOptions {
        capture_ffn_input: kind == KeyKind::FfnInput,
        left_padding: Vec::new(),
    };
    let p = &knn.params;
    let stop = knn.tokenizer.eos_id();
    let mut cache = lm.new_cache();
    let mut input = std::mem::take(&mut spec.prompt);
    let mut pos = 0;
    for _ in 0..spec.max_new {
        let t = input.len();
        let ids = Tensor::new(input.as_slice(), lm.device())
            .and_then(|x| x.unsqueeze(0))
            .map_err(model_err)?;
        let out = lm.forward_with(&ids, pos, Some(&mut cache), &opts)?;
        pos += t;
        let last = |x: &Tensor| x.get(0).and_then(|r| r.get(t - 1)).map_err(model_err);
        let hidden = last(&out.hidden)?;
        let key = match (kind, &out.ffn_input) {
            (KeyKind::FfnInput, Some(f)) => last(f)?,
            _ => hidden.clone(),
        };
        let logits = lm
            .logits(&hidden.unsqueeze(0).map_err(model_err)?)?
            .squeeze(0)
            .and_then(|l| l.to_dtype(DType::F32))
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(model_err)?;
        let mut lp = log_softmax(&logits);
        let q = key
            .to_dtype(DType::F32)
            .and_then(|k| k.to_vec1::<f32>())
            .map_err(model_err)?;
        let nb = knn.datastore.search(&q, p.k, &p.search)?;
        mix_into_log_probs(
            &mut lp,
            &knn_distribution(&nb.scores, &nb.tokens, p.temperature),
            spec.lambda,
        );
        let n = lp.len();
        let dist = Tensor::from_vec(lp, n, lm.device()).map_err(model_err)?;
        let next = spec.sampler.sample(&dist)?;
        if !emit(next) || Some(next) == stop {
            break;
        }
        input = vec![next];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_normalises() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let z: f32 = lp.iter().map(|l| l.exp()).sum();
        assert!((z - 1.0).abs() < 1e-6);
        assert!((lp[2] - lp[1] - 1.0).abs() < 1e-6);
        assert!((perplexity(&[-(2.0f32).ln(), -(2.0f32).ln()]) - 2.0).abs() < 1e-6);
    }
}
