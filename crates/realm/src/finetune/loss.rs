//! REALM's fine-tuning objective: the marginal likelihood of the gold answer over the top-k
//! passages and over every span in them that matches a gold answer,
//! `−log Σ_z p(z|x) Σ_{s ∈ z, s matches} p(s|z,x)`.

use candle_core::{Tensor, D};

use crate::error::Result;

/// `log Σ exp(x)` over a 1-D tensor, differentiable and stable.
pub fn logsumexp(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    Ok((x
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + max)?
        .squeeze(0)?)
}

/// The loss of one question. `log_p_z` `[k]` holds `log p(z|x)`; `span_scores[z]` the scores
/// `start[s] + end[e]` of every valid span of passage `z` (so `p(s|z,x)` is their softmax);
/// `matching[z]` the indices of those spans that match a gold answer. Passages without a
/// matching span contribute nothing; `None` when no passage has one.
pub fn marginal_loss(
    log_p_z: &Tensor,
    span_scores: &[Tensor],
    matching: &[Vec<u32>],
) -> Result<Option<Tensor>> {
    let mut terms = Vec::new();
    for (z, (scores, hits)) in span_scores.iter().zip(matching).enumerate() {
        if hits.is_empty() {
            continue;
        }
        let idx = Tensor::new(hits.as_slice(), scores.device())?;
        let log_match = (logsumexp(&scores.index_select(&idx, 0)?)? - logsumexp(scores)?)?;
        terms.push((log_p_z.get(z)? + log_match)?);
    }
    if terms.is_empty() {
        return Ok(None);
    }
    Ok(Some(logsumexp(&Tensor::stack(&terms, 0)?)?.neg()?))
}
