//! Similarity metrics and key storage types.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::error::IndexError;

/// How keys are compared with queries. Every metric's score is "higher is closer":
/// inner product → `q·k`, cosine → `cos(q, k)`, L2 → `−‖q−k‖²` (negated squared distance),
/// so a kNN-LM can use `p ∝ exp(score / T)` for all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Inner product (maximum inner-product search); spelled "ip".
    #[serde(rename = "ip")]
    InnerProduct,
    /// Negated squared Euclidean distance; spelled "l2".
    L2,
    /// Cosine similarity (keys and queries are normalised); spelled "cos".
    #[serde(rename = "cos")]
    Cosine,
}

impl Metric {
    /// The metric the kernels compute once cosine inputs are normalised (IP or L2).
    pub(crate) fn kernel(self) -> Metric {
        match self {
            Metric::Cosine => Metric::InnerProduct,
            m => m,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Metric::InnerProduct => "ip",
            Metric::L2 => "l2",
            Metric::Cosine => "cos",
        })
    }
}

impl FromStr for Metric {
    type Err = IndexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ip" => Ok(Metric::InnerProduct),
            "l2" => Ok(Metric::L2),
            "cos" => Ok(Metric::Cosine),
            _ => Err(IndexError::invalid(format!(
                "unknown metric {s:?} (expected ip, l2 or cos)"
            ))),
        }
    }
}

/// Element type of stored full-precision keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// 32-bit float keys.
    F32,
    /// 16-bit float keys (half the disk and memory; converted per block when scanned).
    F16,
}

impl KeyType {
    /// Bytes per stored element.
    pub fn size(self) -> usize {
        match self {
            KeyType::F32 => 4,
            KeyType::F16 => 2,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::F32 => "f32",
            KeyType::F16 => "f16",
        })
    }
}

impl FromStr for KeyType {
    type Err = IndexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(KeyType::F32),
            "f16" => Ok(KeyType::F16),
            _ => Err(IndexError::invalid(format!(
                "unknown key type {s:?} (expected f32 or f16)"
            ))),
        }
    }
}
