//! Turning token-level hidden states into one vector per sequence.

use candle_core::{Result, Tensor, D};

/// How a sequence's hidden states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The hidden state at `[CLS]` (position 0).
    Cls,
    /// The mean over real (unmasked) tokens.
    Mean,
}

impl Pooling {
    /// Pools `hidden` `[b, t, h]` with attention mask `[b, t]` (f32) into `[b, h]`.
    pub fn pool(self, hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
        match self {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?.contiguous(),
            Pooling::Mean => {
                let m = mask.unsqueeze(D::Minus1)?;
                let sum = hidden.broadcast_mul(&m)?.sum(1)?;
                sum.broadcast_div(&m.sum(1)?)
            }
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cls" => Ok(Pooling::Cls),
            "mean" => Ok(Pooling::Mean),
            _ => Err(format!("unknown pooling `{s}` (expected `cls` or `mean`)")),
        }
    }
}

/// Scales each row of `x` `[n, d]` to unit L2 norm (rows of zeros stay zero).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    x.broadcast_div(&norm)
}
