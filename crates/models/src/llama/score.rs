//! Sliding-window scoring of long token sequences: every token after the first is predicted
//! exactly once, with up to `context_len` tokens of left context.

use super::model::{ForwardOptions, LlamaModel};
use crate::{ModelError, Result};
use candle_core::{Tensor, D};

/// Which hidden state serves as the key of a scored position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The hidden state after the final RMSNorm.
    FinalHidden,
    /// The input of the last layer's feed-forward block.
    FfnInput,
}

/// Parameters of [`LlamaModel::score_windows`].
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// Longest window (left context plus scored tokens).
    pub context_len: usize,
    /// Distance between the starts of consecutive windows (`1..=context_len`; windows always
    /// overlap by at least one token, as a window cannot predict its own first token).
    pub stride: usize,
    /// Windows run together in one forward pass.
    pub batch: usize,
    /// Also return the key vector of every scored position.
    pub keys: Option<KeyKind>,
}

/// One window of a sliding-window pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First token of the window's input.
    pub begin: usize,
    /// One past the last token of the window's input.
    pub end: usize,
    /// First token scored in this window (tokens `first_target..end` are scored).
    pub first_target: usize,
}

/// Per-token results of a sliding-window pass over `n` tokens.
#[derive(Debug, Clone)]
pub struct WindowScores {
    /// `nll[i]` is the negative log-likelihood of token `i + 1` (`n - 1` values).
    pub nll: Vec<f32>,
    /// `[n - 1, d]` keys: row `i` is the state that predicted token `i + 1`.
    pub keys: Option<Tensor>,
}

/// The windows covering `n` tokens: each token `1..n` is a target of exactly one window.
pub fn plan_windows(n: usize, context_len: usize, stride: usize) -> Result<Vec<Window>> {
    if context_len < 2 || stride == 0 || stride > context_len {
        return Err(ModelError::Invalid(format!(
            "need context_len >= 2 and 1 <= stride <= context_len, got context {context_len}, stride {stride}"
        )));
    }
    let mut windows = Vec::new();
    let (mut begin, mut scored_to) = (0, 1);
    while scored_to < n {
        let end = (begin + context_len).min(n);
        if end > scored_to {
            windows.push(Window {
                begin,
                end,
                first_target: scored_to,
            });
            scored_to = end;
        }
        // A window's first token has no left context in it, so windows overlap by at least one.
        begin = (begin + stride).min(scored_to - 1);
    }
    Ok(windows)
}

impl LlamaModel {
    /// Scores `ids` with sliding windows; see [`WindowScores`].
    pub fn score_windows(&self, ids: &[u32], opts: &ScoreOptions) -> Result<WindowScores> {
        self.score_windows_with_progress(ids, opts, &mut |_| {})
    }

    /// [`score_windows`](Self::score_windows), calling `progress` with the number of tokens
    /// scored after each batch of windows.
    pub fn score_windows_with_progress(
        &self,
        ids: &[u32],
        opts: &ScoreOptions,
        progress: &mut dyn FnMut(usize),
    ) -> Result<WindowScores> {
        let mut all = self.score_texts_with_progress(&[ids], opts, progress)?;
        Ok(all.pop().expect("one text in, one result out"))
    }

    /// Scores several texts at once, [`score_windows`](Self::score_windows) for each: their
    /// windows share forward passes (`opts.batch` windows per pass, from any of the texts).
    pub fn score_texts(&self, texts: &[&[u32]], opts: &ScoreOptions) -> Result<Vec<WindowScores>> {
        self.score_texts_with_progress(texts, opts, &mut |_| {})
    }

    fn score_texts_with_progress(
        &self,
        texts: &[&[u32]],
        opts: &ScoreOptions,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<WindowScores>> {
        if opts.batch == 0 {
            return Err(ModelError::Invalid("batch must be positive".into()));
        }
        if opts.context_len > self.config().max_position_embeddings {
            return Err(ModelError::Invalid(format!(
                "context {} exceeds the model's {} positions",
                opts.context_len,
                self.config().max_position_embeddings
            )));
        }
        // Every window of every text, tagged with its text, in text order.
        let mut windows = Vec::new();
        for (t, ids) in texts.iter().enumerate() {
            let plan = plan_windows(ids.len(), opts.context_len, opts.stride)?;
            windows.extend(plan.into_iter().map(|w| (t, w)));
        }
        let fwd_opts = ForwardOptions {
            capture_ffn_input: opts.keys == Some(KeyKind::FfnInput),
            left_padding: Vec::new(),
        };
        let mut nll: Vec<Vec<f32>> = texts
            .iter()
            .map(|ids| Vec::with_capacity(ids.len().saturating_sub(1)))
            .collect();
        let mut keys: Vec<Vec<Tensor>> = vec![Vec::new(); texts.len()];
        let mut done = 0;
        for group in windows.chunks(opts.batch) {
            // Right padding: under the causal mask, real positions never see the padding.
            let width = group
                .iter()
                .map(|(_, w)| w.end - w.begin)
                .max()
                .unwrap_or(0);
            let mut input = Vec::with_capacity(group.len() * width);
            let mut rows = Vec::new();
            let mut targets = Vec::new();
            for (r, &(t, w)) in group.iter().enumerate() {
                let ids = texts[t];
                input.extend_from_slice(&ids[w.begin..w.end]);
                input.resize((r + 1) * width, 0);
                let scored = &ids[w.first_target..w.end];
                let first_row = r * width + w.first_target - w.begin - 1;
                rows.extend((first_row..first_row + scored.len()).map(|x| x as u32));
                targets.extend_from_slice(scored);
            }
            let dev = self.device();
            let input = Tensor::from_vec(input, (group.len(), width), dev)?;
            let out = self.forward_with(&input, 0, None, &fwd_opts)?;
            let rows = Tensor::from_vec(rows, targets.len(), dev)?;
            let pick = |t: &Tensor| -> Result<Tensor> {
                Ok(t.reshape(((), t.dim(D::Minus1)?))?.index_select(&rows, 0)?)
            };
            let hidden = pick(&out.hidden)?;
            let targets = Tensor::from_vec(targets, hidden.dim(0)?, dev)?;
            let lp = self
                .next_token_logprobs(&hidden, &targets)?
                .to_vec1::<f32>()?;
            let group_keys = match (opts.keys, &out.ffn_input) {
                (Some(KeyKind::FinalHidden), _) => Some(hidden),
                (Some(KeyKind::FfnInput), Some(f)) => Some(pick(f)?),
                _ => None,
            };
            // Hand each window's rows back to its text.
            let mut row = 0;
            for &(t, w) in group {
                let n = w.end - w.first_target;
                nll[t].extend(lp[row..row + n].iter().map(|x| -x));
                if let Some(k) = &group_keys {
                    keys[t].push(k.narrow(0, row, n)?);
                }
                row += n;
            }
            done += lp.len();
            progress(done);
        }
        nll.into_iter()
            .zip(keys)
            .map(|(nll, k)| {
                let keys = match opts.keys {
                    Some(_) if k.is_empty() => Some(Tensor::zeros(
                        (0, self.config().hidden_size),
                        candle_core::DType::F32,
                        self.device(),
                    )?),
                    Some(_) => Some(Tensor::cat(&k, 0)?),
                    None => None,
                };
                Ok(WindowScores { nll, keys })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_score_every_token_once_with_bounded_context() {
        for (n, ctx, stride) in [
            (0, 4, 2),
            (1, 4, 2),
            (5, 8, 4),
            (100, 16, 5),
            (37, 8, 8),
            (9, 2, 1),
        ] {
            let ws = plan_windows(n, ctx, stride).unwrap();
            let mut count = vec![0; n];
            for w in &ws {
                assert!(w.end - w.begin <= ctx && w.begin < w.first_target);
                (w.first_target..w.end).for_each(|p| count[p] += 1);
            }
            assert!(count.iter().skip(1).all(|&c| c == 1), "{n} {ctx} {stride}");
        }
        assert!(plan_windows(10, 4, 5).is_err());
        assert!(plan_windows(10, 4, 0).is_err());
    }
}
