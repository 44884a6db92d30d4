//! Decoding with retrieval: at every (beam) step one batched search for all live hypotheses,
//! then p = λ·p_kNN + (1−λ)·p_MT per row, λ fixed or from the adaptive gate.

use super::datastore::MtDatastore;
use super::gate::Gate;
use crate::error::{KnnError, Result};
use crate::mixture::{knn_distribution, mix_into_log_probs};
use candle_core::{DType, Tensor};
use ralm_index::SearchParams;
use ralm_models::ModelError;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Mixing parameters of kNN-MT.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KnnMtParams {
    /// Neighbours forming p_kNN.
    pub k: usize,
    /// Weight of p_kNN (ignored when a gate picks λ per step).
    pub lambda: f32,
    /// Softmax temperature over neighbour scores.
    pub temperature: f32,
}

/// Retrieval state of one decoding run: datastore, parameters, optional gate and counters.
pub struct Retrieval<'a> {
    datastore: &'a MtDatastore,
    params: KnnMtParams,
    search: SearchParams,
    gate: Option<&'a Gate>,
    /// Seconds spent in search and mixing.
    pub seconds: f64,
    /// Steps (search calls) so far.
    pub steps: usize,
    /// Queries (hypotheses) searched so far.
    pub queries: usize,
    /// Sum of the λ used over all queries (for the mean λ of a gate).
    pub lambda_sum: f64,
}

impl<'a> Retrieval<'a> {
    /// Retrieval from `datastore` with fixed λ, or λ per step from `gate` when given.
    pub fn new(
        datastore: &'a MtDatastore,
        params: KnnMtParams,
        search: SearchParams,
        gate: Option<&'a Gate>,
    ) -> Result<Self> {
        if params.k == 0 || params.temperature <= 0.0 || !(0.0..=1.0).contains(&params.lambda) {
            return Err(KnnError::Invalid(format!(
                "need k > 0, temperature > 0 and 0 <= lambda <= 1, got {params:?}"
            )));
        }
        Ok(Self {
            datastore,
            params,
            search,
            gate,
            seconds: 0.0,
            steps: 0,
            queries: 0,
            lambda_sum: 0.0,
        })
    }

    /// Mixes p_kNN into one step's next-token log-probabilities `[rows, V]`, given the decoder's
    /// final hidden states `[rows, d]`.
    pub fn mix_step(&mut self, hidden: &Tensor, logprobs: &mut Tensor) -> Result<()> {
        let start = Instant::now();
        let (rows, vocab) = logprobs.dims2()?;
        let queries = hidden
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let k = self.params.k;
        let searched = k.max(self.gate.map_or(0, Gate::feature_k));
        let nb = self.datastore.search(&queries, searched, &self.search)?;
        let lambdas = match self.gate {
            Some(g) => g.lambdas(&nb)?,
            None => vec![self.params.lambda; rows],
        };
        let mut lp = logprobs.flatten_all()?.to_vec1::<f32>()?;
        for (i, row) in lp.chunks_mut(vocab).enumerate() {
            let lambda = lambdas[i];
            self.lambda_sum += lambda as f64;
            if lambda <= 0.0 {
                continue;
            }
            let (s, t) = nb.row(i);
            let knn = knn_distribution(&s[..k], &t[..k], self.params.temperature);
            mix_into_log_probs(row, &knn, lambda);
        }
        *logprobs = Tensor::from_vec(lp, (rows, vocab), logprobs.device())?;
        self.steps += 1;
        self.queries += rows;
        self.seconds += start.elapsed().as_secs_f64();
        Ok(())
    }

    /// The body of a [`ralm_models::marian::StepHook`]: [`Retrieval::mix_step`] with model errors.
    pub fn hook(&mut self, hidden: &Tensor, logprobs: &mut Tensor) -> ralm_models::Result<()> {
        self.mix_step(hidden, logprobs).map_err(|e| match e {
            KnnError::Model(m) => m,
            other => ModelError::Invalid(other.to_string()),
        })
    }

    /// Mean λ over all queries so far.
    pub fn mean_lambda(&self) -> f64 {
        self.lambda_sum / self.queries.max(1) as f64
    }
}
