//! Chunks of a sliding-window pass: consecutive windows grouped so each chunk can be scored,
//! stored or searched on its own while every token keeps the context the global plan gives it.

use crate::error::Result;
use ralm_models::llama::{plan_windows, KeyKind, LlamaModel, ScoreOptions};
use serde::{Deserialize, Serialize};

/// A run of consecutive windows: input tokens `begin..end`, targets `first_target..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// First input token.
    pub begin: usize,
    /// One past the last input (and target) token.
    pub end: usize,
    /// First scored token.
    pub first_target: usize,
}

impl Chunk {
    /// Number of scored tokens.
    pub fn targets(&self) -> usize {
        self.end - self.first_target
    }
}

/// Groups the windows of an `n`-token pass into chunks of at least `chunk_tokens` targets.
pub fn plan_chunks(
    n: usize,
    context_len: usize,
    stride: usize,
    chunk_tokens: usize,
) -> Result<Vec<Chunk>> {
    let mut out: Vec<Chunk> = Vec::new();
    let mut open = false;
    for w in plan_windows(n, context_len, stride)? {
        match out.last_mut() {
            Some(c) if open => {
                c.end = w.end;
                open = c.targets() < chunk_tokens;
            }
            _ => {
                out.push(Chunk {
                    begin: w.begin,
                    end: w.end,
                    first_target: w.first_target,
                });
                open = w.end - w.first_target < chunk_tokens;
            }
        }
    }
    Ok(out)
}

/// Per-target results of one chunk.
#[derive(Debug, Clone)]
pub struct ScoredChunk {
    /// The chunk.
    pub chunk: Chunk,
    /// log p_LM of each target.
    pub log_probs: Vec<f32>,
    /// `targets × dim` keys, row `i` predicted token `first_target + i`.
    pub keys: Vec<f32>,
}

/// How a pass runs the model.
#[derive(Debug, Clone, Copy)]
pub struct PassOptions {
    /// Longest window.
    pub context_len: usize,
    /// Distance between window starts.
    pub stride: usize,
    /// Windows per forward pass.
    pub batch: usize,
    /// Which hidden state is the key.
    pub key: KeyKind,
}

/// Runs the model over one chunk of `ids`.
pub fn score_chunk(
    lm: &LlamaModel,
    ids: &[u32],
    chunk: Chunk,
    opts: &PassOptions,
) -> Result<ScoredChunk> {
    let scored = lm.score_windows(
        &ids[chunk.begin..chunk.end],
        &ScoreOptions {
            context_len: opts.context_len,
            stride: opts.stride,
            batch: opts.batch,
            keys: Some(opts.key),
        },
    )?;
    // The sub-pass scores from the chunk's second token; the global plan starts later.
    let skip = chunk.first_target - chunk.begin - 1;
    let log_probs = scored.nll[skip..].iter().map(|x| -x).collect();
    let keys = match scored.keys {
        Some(k) => {
            let n = k.dim(0)?;
            k.narrow(0, skip, n - skip)?
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
        }
        None => Vec::new(),
    };
    Ok(ScoredChunk {
        chunk,
        log_probs,
        keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_target_once_like_the_global_plan() {
        for (n, ctx, stride, size) in [(1000, 64, 32, 100), (50, 16, 8, 1), (300, 32, 32, 1000)] {
            let chunks = plan_chunks(n, ctx, stride, size).unwrap();
            let windows = plan_windows(n, ctx, stride).unwrap();
            assert_eq!(chunks[0].first_target, 1);
            for pair in chunks.windows(2) {
                assert_eq!(pair[0].end, pair[1].first_target);
            }
            assert_eq!(chunks.last().unwrap().end, n);
            for c in &chunks {
                assert!(windows
                    .iter()
                    .any(|w| w.begin == c.begin && w.first_target == c.first_target));
                assert!(c.targets() >= size.min(c.targets()));
            }
            // Every chunk but the last holds at least `size` targets.
            assert!(chunks[..chunks.len() - 1]
                .iter()
                .all(|c| c.targets() >= size));
        }
    }
}
