//! Batched greedy and beam search over a [`Transformer`], with a hook that may rewrite each
//! step's next-token log-probabilities (kNN-MT interpolation).

use candle_core::Tensor;

use super::transformer::Transformer;
use crate::error::Result;

/// Search settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOptions {
    /// Beam width; 1 is greedy.
    pub beam_size: usize,
    /// Finished hypotheses are ranked by `score / len^normalize` (len counts the EOS step).
    pub normalize: f32,
    /// Maximum output steps as a multiple of the source length (including its EOS).
    pub max_length_factor: f32,
    /// Absolute cap on output steps.
    pub max_length: usize,
    /// Token never produced (Marian suppresses `<unk>` unless told otherwise).
    pub suppress: Option<u32>,
}

/// A finished translation in token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// Output tokens without the final EOS.
    pub tokens: Vec<u32>,
    /// Sum of log-probabilities (including EOS when produced).
    pub score: f32,
}

/// Called at every step with the decoder's final hidden states `[rows, d]` (before the output
/// layer) and the next-token log-probabilities `[rows, V]`, which it may replace.
pub type StepHook<'a> = dyn FnMut(&Tensor, &mut Tensor) -> Result<()> + 'a;

struct Row {
    sentence: usize,
    tokens: Vec<u32>,
    score: f32,
}

/// Translates a batch of source rows (each ending in EOS), returning the best hypothesis each.
pub fn search(
    model: &Transformer,
    src: &[Vec<u32>],
    opts: &SearchOptions,
    mut hook: Option<&mut StepHook<'_>>,
) -> Result<Vec<Hypothesis>> {
    let eos = model.config.eos_id;
    let beam = opts.beam_size.max(1);
    let max_len: Vec<usize> = src
        .iter()
        .map(|s| {
            ((s.len() as f32 * opts.max_length_factor) as usize).clamp(1, opts.max_length.max(1))
        })
        .collect();
    let enc = model.encode(src)?;
    let mut state = model.start(&enc)?;
    let mut rows: Vec<Row> = (0..src.len())
        .map(|sentence| Row {
            sentence,
            tokens: Vec::new(),
            score: 0.0,
        })
        .collect();
    let mut finished: Vec<Vec<Hypothesis>> = vec![Vec::new(); src.len()];
    let mut first = true;
    while !rows.is_empty() {
        let prev: Vec<u32> = rows
            .iter()
            .map(|r| r.tokens.last().copied().unwrap_or(eos))
            .collect();
        let hidden = model.step(&mut state, if first { None } else { Some(&prev) })?;
        first = false;
        let mut logprobs = candle_nn::ops::log_softmax(&model.logits(&hidden)?, 1)?;
        if let Some(h) = hook.as_deref_mut() {
            h(&hidden, &mut logprobs)?;
        }
        let mut lp = logprobs.to_vec2::<f32>()?;
        if let Some(s) = opts.suppress {
            for r in lp.iter_mut() {
                if let Some(v) = r.get_mut(s as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        // Candidates per sentence: (score, parent row, token).
        let mut next_rows = Vec::new();
        let mut parents = Vec::new();
        let mut start = 0;
        while start < rows.len() {
            let sentence = rows[start].sentence;
            let end = start
                + rows[start..]
                    .iter()
                    .take_while(|r| r.sentence == sentence)
                    .count();
            let width = beam - finished[sentence].len();
            let mut cands: Vec<(f32, usize, u32)> = Vec::new();
            for (r, row_lp) in (start..end).zip(&lp[start..end]) {
                for (tok, score) in top_k(row_lp, width) {
                    cands.push((rows[r].score + score, r, tok));
                }
            }
            cands.sort_by(|a, b| b.0.total_cmp(&a.0));
            cands.truncate(width);
            for (score, r, tok) in cands {
                let mut tokens = rows[r].tokens.clone();
                let at_limit = tokens.len() + 1 >= max_len[sentence];
                if tok == eos || at_limit {
                    if tok != eos {
                        tokens.push(tok);
                    }
                    finished[sentence].push(Hypothesis { tokens, score });
                } else {
                    tokens.push(tok);
                    next_rows.push(Row {
                        sentence,
                        tokens,
                        score,
                    });
                    parents.push(r as u32);
                }
            }
            start = end;
        }
        if !parents.is_empty() {
            state = state.select(&parents)?;
        }
        rows = next_rows;
    }
    Ok(finished
        .into_iter()
        .map(|hyps| {
            hyps.into_iter()
                .max_by(|a, b| {
                    normalised(a, opts.normalize).total_cmp(&normalised(b, opts.normalize))
                })
                .unwrap_or(Hypothesis {
                    tokens: Vec::new(),
                    score: f32::NEG_INFINITY,
                })
        })
        .collect())
}

fn normalised(h: &Hypothesis, alpha: f32) -> f32 {
    if alpha == 0.0 {
        h.score
    } else {
        h.score / ((h.tokens.len() + 1) as f32).powf(alpha)
    }
}

/// The `k` largest entries of `xs` as (index, value), best first; NaN and -inf are skipped.
fn top_k(xs: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (i, &v) in xs.iter().enumerate() {
        if v.is_nan() || v == f32::NEG_INFINITY || (best.len() == k && v <= best[k - 1].1) {
            continue;
        }
        let pos = best.partition_point(|&(_, b)| b >= v);
        best.insert(pos, (i as u32, v));
        best.truncate(k);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::top_k;

    #[test]
    fn top_k_orders_and_skips_neg_inf() {
        let xs = [0.5, f32::NEG_INFINITY, 2.0, -1.0, 2.0, 1.0];
        assert_eq!(top_k(&xs, 3), vec![(2, 2.0), (4, 2.0), (5, 1.0)]);
        assert_eq!(top_k(&xs, 1), vec![(2, 2.0)]);
        assert_eq!(top_k(&[f32::NEG_INFINITY], 2), vec![]);
    }
}
