//! Teacher-forced decoding of tokenized (source, target) pairs in length-sorted batches: the
//! decoder's final hidden state before every target token (the kNN-MT key) and, on request,
//! the model's log-probability of that token.

use crate::error::Result;
use candle_core::{DType, Tensor, D};
use ralm_models::marian::{Transformer, Translator};

/// Source and target ids of pairs, each ending in EOS.
#[derive(Debug, Clone, Default)]
pub struct TokenPairs {
    /// Source ids per pair.
    pub sources: Vec<Vec<u32>>,
    /// Target ids per pair.
    pub targets: Vec<Vec<u32>>,
}

impl TokenPairs {
    /// Tokenizes both sides with the translator's vocabulary (EOS appended).
    pub fn encode(tr: &Translator, sources: &[String], targets: &[String]) -> Result<Self> {
        let enc = |xs: &[String]| -> Result<Vec<Vec<u32>>> {
            Ok(xs
                .iter()
                .map(|s| tr.encode_text(s))
                .collect::<ralm_models::Result<_>>()?)
        };
        Ok(Self {
            sources: enc(sources)?,
            targets: enc(targets)?,
        })
    }

    /// SHA-256 (hex) of both token streams, identifying the corpus and its tokenization.
    pub fn fingerprint(&self) -> String {
        let mut bytes = Vec::new();
        for (s, t) in self.sources.iter().zip(&self.targets) {
            for id in s.iter().chain([&u32::MAX]).chain(t).chain([&u32::MAX]) {
                bytes.extend_from_slice(&id.to_le_bytes());
            }
        }
        ralm_models::hash::sha256_hex(&bytes)
    }

    /// Pairs `range`.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        Self {
            sources: self.sources[range.clone()].to_vec(),
            targets: self.targets[range].to_vec(),
        }
    }

    /// Total target tokens (datastore entries).
    pub fn target_tokens(&self) -> usize {
        self.targets.iter().map(Vec::len).sum()
    }
}

/// Keys, target tokens and (optionally) log p_MT of every target position, in pair order.
#[derive(Debug, Clone, Default)]
pub struct Forced {
    /// `positions × d` keys.
    pub keys: Vec<f32>,
    /// The target token of each position.
    pub targets: Vec<u32>,
    /// log p_MT(target) of each position (empty unless asked for).
    pub log_probs: Vec<f32>,
}

/// Teacher-forces `pairs` through `model`, `batch` pairs per forward pass.
pub fn teacher_force(
    model: &Transformer,
    pairs: &TokenPairs,
    batch: usize,
    with_log_probs: bool,
) -> Result<Forced> {
    let n = pairs.targets.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (pairs.targets[i].len(), pairs.sources[i].len()));
    let mut per_pair: Vec<(Vec<f32>, Vec<f32>)> = vec![Default::default(); n];
    let pad = model.config.pad_id;
    for chunk in order.chunks(batch.max(1)) {
        let src: Vec<Vec<u32>> = chunk.iter().map(|&i| pairs.sources[i].clone()).collect();
        let width = chunk
            .iter()
            .map(|&i| pairs.targets[i].len())
            .max()
            .unwrap_or(0);
        // Padding after a row's end cannot change its earlier positions (the decoder is causal).
        let tgt: Vec<Vec<u32>> = chunk
            .iter()
            .map(|&i| {
                let mut t = pairs.targets[i].clone();
                t.resize(width, pad);
                t
            })
            .collect();
        let enc = model.encode(&src)?;
        let hidden = model.forward_teacher(&enc, &tgt)?;
        let lps = if with_log_probs {
            let lp = candle_nn::ops::log_softmax(&model.logits(&hidden)?, D::Minus1)?;
            let idx = Tensor::new(tgt.clone(), hidden.device())?.unsqueeze(2)?;
            Some(lp.gather(&idx, 2)?.squeeze(2)?.to_vec2::<f32>()?)
        } else {
            None
        };
        let rows = hidden.to_dtype(DType::F32)?.to_vec3::<f32>()?;
        for (j, &i) in chunk.iter().enumerate() {
            let len = pairs.targets[i].len();
            let keys = rows[j][..len].iter().flatten().copied().collect();
            let lp = lps.as_ref().map_or_else(Vec::new, |l| l[j][..len].to_vec());
            per_pair[i] = (keys, lp);
        }
    }
    let mut out = Forced::default();
    for (i, (keys, lp)) in per_pair.into_iter().enumerate() {
        out.keys.extend(keys);
        out.log_probs.extend(lp);
        out.targets.extend_from_slice(&pairs.targets[i]);
    }
    Ok(out)
}
