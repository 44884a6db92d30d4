//! kNN-LM work behind `/v1/lm/*`: scoring a text with a chosen λ, and generation one token at
//! a time (`KnnLm::generate_with`: KV cache, the request's λ) so each token can be streamed as
//! soon as it is drawn.

use ralm_knn::knnlm::KnnLm;
use ralm_models::llama::Sampler;

use crate::api::ScoreResponse;
use crate::error::ApiError;

/// Windows per forward pass and targets per chunk when scoring requests' texts.
const SCORE_BATCH: usize = 8;
const SCORE_CHUNK_TOKENS: usize = 1024;

fn perplexity(log_probs: &[f32]) -> f64 {
    let nll: f64 = log_probs.iter().map(|&l| -(l as f64)).sum();
    (nll / log_probs.len().max(1) as f64).exp()
}

/// One scoring request of a batch: the text and the λ to mix with.
pub struct ScoreJob {
    /// Text to score.
    pub text: String,
    /// Weight of p_kNN.
    pub lambda: f32,
}

/// Per-token log-probabilities of each job's text under `knn` mixed with its λ, and under the
/// LM alone. The texts share forward passes and one datastore search; a job whose text is bad
/// fails alone.
pub fn score_batch(
    knn: &KnnLm,
    name: &str,
    version: u64,
    jobs: &[ScoreJob],
) -> Vec<Result<ScoreResponse, ApiError>> {
    let encoded: Vec<Result<Vec<u32>, ApiError>> = jobs
        .iter()
        .map(|j| {
            let ids = knn.tokenizer.encode(&j.text)?;
            if ids.len() < 2 {
                return Err(ApiError::bad_request(
                    "`text` must be at least two tokens long to score",
                ));
            }
            Ok(ids)
        })
        .collect();
    let texts: Vec<&[u32]> = encoded.iter().flatten().map(Vec::as_slice).collect();
    let mut scored = match texts.is_empty() {
        true => Vec::new(),
        false => {
            let opts = knn.default_scoring(SCORE_BATCH, SCORE_CHUNK_TOKENS);
            match knn.score_many(&texts, &opts) {
                Ok(s) => s,
                Err(e) => {
                    let e = ApiError::from(e);
                    return jobs.iter().map(|_| Err(e.clone())).collect();
                }
            }
        }
    }
    .into_iter();
    let t = knn.params.temperature;
    jobs.iter()
        .zip(encoded)
        .map(|(job, ids)| {
            let ids = ids?;
            let cache = scored
                .next()
                .ok_or_else(|| ApiError::internal("scoring returned too few texts"))?
                .cache;
            let n = cache.len();
            let log_probs: Vec<f32> = (0..n).map(|i| cache.log_prob(i, job.lambda, t)).collect();
            let lm_log_probs: Vec<f32> = (0..n).map(|i| cache.log_prob(i, 0.0, t)).collect();
            let tokens = ids[1..]
                .iter()
                .map(|&id| knn.tokenizer.decode(&[id]))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ScoreResponse {
                datastore: name.to_string(),
                version,
                lambda: job.lambda,
                tokens,
                perplexity: perplexity(&log_probs),
                lm_perplexity: perplexity(&lm_log_probs),
                log_probs,
                lm_log_probs,
            })
        })
        .collect()
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

/// Draws up to `spec.max_new` tokens from the kNN-LM with the request's λ, calling `emit` with
/// each as soon as it is drawn; stops after the tokenizer's end-of-sequence token or when `emit`
/// returns false.
pub fn generate(
    knn: &KnnLm,
    mut spec: GenerateSpec,
    emit: &mut dyn FnMut(u32) -> bool,
) -> Result<(), ApiError> {
    if spec.prompt.is_empty() {
        return Err(ApiError::bad_request("`prompt` encodes to no tokens"));
    }
    knn.generate_with(
        &spec.prompt,
        spec.max_new,
        spec.lambda,
        &mut spec.sampler,
        knn.tokenizer.eos_id(),
        emit,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perplexity_is_the_exponentiated_mean_negative_log_probability() {
        assert!((perplexity(&[-(2.0f32).ln(), -(2.0f32).ln()]) - 2.0).abs() < 1e-6);
        assert!((perplexity(&[-(2.0f32).ln(), -(8.0f32).ln()]) - 4.0).abs() < 1e-6);
    }
}
