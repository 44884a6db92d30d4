//! Token generation with a KV cache: greedy or temperature sampling.

use super::model::LlamaModel;
use crate::{ModelError, Result};
use candle_core::{DType, Tensor, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the next token is chosen from the logits.
#[derive(Debug, Clone)]
pub enum Sampler {
    /// The most likely token.
    Greedy,
    /// A draw from `softmax(logits / temperature)` with a seeded generator.
    Temperature {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// The random generator.
        rng: Box<StdRng>,
    },
}

impl Sampler {
    /// Temperature sampling with a fixed seed.
    pub fn temperature(temperature: f64, seed: u64) -> Result<Self> {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(ModelError::Invalid(format!(
                "temperature must be positive, got {temperature}"
            )));
        }
        Ok(Self::Temperature {
            temperature,
            rng: Box::new(StdRng::seed_from_u64(seed)),
        })
    }

    /// Picks a token id from `[vocab]` logits.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        match self {
            Self::Greedy => Ok(logits.argmax(D::Minus1)?.to_scalar::<u32>()?),
            Self::Temperature { temperature, rng } => {
                let probs = candle_nn::ops::softmax_last_dim(
                    &(logits.to_dtype(DType::F32)? / *temperature)?.unsqueeze(0)?,
                )?
                .squeeze(0)?
                .to_vec1::<f32>()?;
                let mut u: f32 = rng.random();
                for (i, p) in probs.iter().enumerate() {
                    if u < *p {
                        return Ok(i as u32);
                    }
                    u -= p;
                }
                Ok(probs.len().saturating_sub(1) as u32)
            }
        }
    }
}

impl LlamaModel {
    /// Continues `prompt_ids` by up to `max_new` tokens (stopping after `stop` if given);
    /// returns only the new tokens. The prompt is run once, then one token per step.
    pub fn generate(
        &self,
        prompt_ids: &[u32],
        max_new: usize,
        sampler: &mut Sampler,
        stop: Option<u32>,
    ) -> Result<Vec<u32>> {
        if prompt_ids.is_empty() {
            return Err(ModelError::Invalid(
                "generation needs a non-empty prompt".into(),
            ));
        }
        let mut cache = self.new_cache();
        let mut out = Vec::with_capacity(max_new);
        let mut input = prompt_ids.to_vec();
        let mut pos = 0;
        while out.len() < max_new {
            let ids = Tensor::new(input.as_slice(), self.device())?.unsqueeze(0)?;
            let hidden = self.forward(&ids, pos, Some(&mut cache))?.hidden;
            pos += input.len();
            let last = hidden.get(0)?.get(input.len() - 1)?;
            let next = sampler.sample(&self.logits(&last.unsqueeze(0)?)?.squeeze(0)?)?;
            out.push(next);
            if Some(next) == stop {
                break;
            }
            input = vec![next];
        }
        Ok(out)
    }
}
