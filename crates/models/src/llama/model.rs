//! The Llama decoder: RMSNorm, rotary grouped-query attention, SiLU-gated MLP, tied or separate
//! output head.

use super::cache::KvCache;
use super::config::LlamaConfig;
use super::weights::{LayerWeight, Proj, WeightKey, WeightMode, WeightSource};
use crate::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

/// What one forward pass returns.
#[derive(Debug, Clone)]
pub struct LlamaOutput {
    /// `[b, t, d]` hidden states after the final RMSNorm (the usual kNN-LM key).
    pub hidden: Tensor,
    /// `[b, t, d]` input of the last layer's feed-forward block (after its RMSNorm), when asked.
    pub ffn_input: Option<Tensor>,
}

/// Options of a forward pass beyond the inputs.
#[derive(Debug, Clone, Default)]
pub struct ForwardOptions {
    /// Also return the last layer's feed-forward input.
    pub capture_ffn_input: bool,
    /// Per sequence, the number of padding slots at the start of the row (left padding).
    /// Padded slots are never attended to and real tokens get positions counted from their
    /// first real slot. Empty means no padding. Must stay the same across cached steps.
    pub left_padding: Vec<usize>,
}

struct Layer {
    attn_norm: Tensor,
    qkv: Proj,
    o: Proj,
    ffn_norm: Tensor,
    gate_up: Proj,
    down: Proj,
}

/// A Llama-family causal language model.
pub struct LlamaModel {
    cfg: LlamaConfig,
    mode: WeightMode,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Proj,
    cos: Tensor,
    sin: Tensor,
    device: Device,
    weights_path: PathBuf,
}

impl LlamaModel {
    /// Builds the model from a weight source.
    pub(crate) fn from_source(
        cfg: LlamaConfig,
        src: &dyn WeightSource,
        mode: WeightMode,
        device: &Device,
    ) -> Result<Self> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let (nq, nkv) = (cfg.num_attention_heads * hd, cfg.kv_heads() * hd);
        let ff = cfg.intermediate_size;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let key = |w| WeightKey::Layer(i, w);
            let m = |w, rows, cols| src.matrix(key(w), rows, cols);
            layers.push(Layer {
                attn_norm: src
                    .vector(key(LayerWeight::AttnNorm), d)?
                    .to_dtype(mode.dtype())?,
                qkv: Proj::fused(
                    vec![
                        m(LayerWeight::Q, nq, d)?,
                        m(LayerWeight::K, nkv, d)?,
                        m(LayerWeight::V, nkv, d)?,
                    ],
                    mode,
                    device,
                )?,
                o: Proj::fused(vec![m(LayerWeight::O, d, nq)?], mode, device)?,
                ffn_norm: src
                    .vector(key(LayerWeight::FfnNorm), d)?
                    .to_dtype(mode.dtype())?,
                gate_up: Proj::fused(
                    vec![m(LayerWeight::Gate, ff, d)?, m(LayerWeight::Up, ff, d)?],
                    mode,
                    device,
                )?,
                down: Proj::fused(vec![m(LayerWeight::Down, d, ff)?], mode, device)?,
            });
        }
        let dtype = mode.dtype();
        let embed = src
            .matrix(WeightKey::Embed, cfg.vocab_size, d)?
            .dense(device)?
            .to_dtype(dtype)?;
        let tied = cfg.tie_word_embeddings || !src.has(WeightKey::LmHead);
        let lm_head = match (tied, mode) {
            (true, WeightMode::F32 | WeightMode::Bf16) => Proj::Dense(embed.clone()),
            (true, WeightMode::Quantized) => Proj::fused(
                vec![src.matrix(WeightKey::Embed, cfg.vocab_size, d)?],
                mode,
                device,
            )?,
            (false, _) => Proj::fused(
                vec![src.matrix(WeightKey::LmHead, cfg.vocab_size, d)?],
                mode,
                device,
            )?,
        };
        let (cos, sin) = rope_tables(&cfg, device)?;
        Ok(Self {
            norm: src.vector(WeightKey::Norm, d)?.to_dtype(dtype)?,
            mode,
            embed,
            layers,
            lm_head,
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
            device: device.clone(),
            weights_path: src.weights_path().to_path_buf(),
            cfg,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// How the matrix weights are held.
    pub fn mode(&self) -> WeightMode {
        self.mode
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The file the weights were read from.
    pub fn weights_path(&self) -> &Path {
        &self.weights_path
    }

    /// A fresh KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.num_hidden_layers)
    }

    /// Runs `input_ids` `[b, t]` (u32) whose first token sits at position `start_pos`.
    /// With a cache, its keys/values are used as left context and the new ones appended.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        start_pos: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<LlamaOutput> {
        self.forward_with(input_ids, start_pos, cache, &ForwardOptions::default())
    }

    /// [`forward`](Self::forward) with padding and key-capture options.
    pub fn forward_with(
        &self,
        input_ids: &Tensor,
        start_pos: usize,
        mut cache: Option<&mut KvCache>,
        opts: &ForwardOptions,
    ) -> Result<LlamaOutput> {
        let (b, t) = input_ids.dims2()?;
        if t == 0 {
            return Err(ModelError::Invalid("empty input sequence".into()));
        }
        let cached = cache.as_ref().map_or(0, |c| c.len());
        if cached != start_pos && cache.is_some() {
            return Err(ModelError::Invalid(format!(
                "start_pos {start_pos} does not match the {cached} cached positions"
            )));
        }
        if start_pos + t > self.cfg.max_position_embeddings {
            return Err(ModelError::Invalid(format!(
                "positions up to {} exceed the model's context of {}",
                start_pos + t,
                self.cfg.max_position_embeddings
            )));
        }
        if !opts.left_padding.is_empty() && opts.left_padding.len() != b {
            return Err(ModelError::Invalid(format!(
                "{} left-padding lengths for a batch of {b}",
                opts.left_padding.len()
            )));
        }
        let ids = input_ids.to_dtype(DType::U32)?;
        let max_id = ids.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        if max_id as usize >= self.cfg.vocab_size {
            return Err(ModelError::Invalid(format!(
                "token id {max_id} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((
            b,
            t,
            self.cfg.hidden_size,
        ))?;
        let (cos, sin) = self.rope_for(b, t, start_pos, &opts.left_padding)?;
        let bias = attention_bias(t, start_pos, &opts.left_padding, &self.device)?
            .map(|b| b.to_dtype(x.dtype()))
            .transpose()?;
        let eps = self.cfg.rms_norm_eps as f32;
        let mut ffn_input = None;
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let a = self.attention(
                i,
                layer,
                &h,
                &cos,
                &sin,
                bias.as_ref(),
                cache.as_deref_mut(),
            )?;
            x = (x + a)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let m = layer
                .down
                .forward(&crate::fast_ops::swiglu(&layer.gate_up.forward(&h)?)?)?;
            if i == last && opts.capture_ffn_input {
                ffn_input = Some(h);
            }
            x = (x + m)?;
        }
        Ok(LlamaOutput {
            hidden: candle_nn::ops::rms_norm(&x, &self.norm, eps)?,
            ffn_input,
        })
    }

    /// RoPE cos/sin for the new positions: `[t, hd/2]`, or `[b, t, hd/2]` with left padding.
    fn rope_for(
        &self,
        b: usize,
        t: usize,
        start_pos: usize,
        left_padding: &[usize],
    ) -> Result<(Tensor, Tensor)> {
        if left_padding.iter().all(|&p| p == 0) {
            return Ok((
                self.cos.narrow(0, start_pos, t)?,
                self.sin.narrow(0, start_pos, t)?,
            ));
        }
        let pos: Vec<u32> = left_padding
            .iter()
            .flat_map(|&p| (start_pos..start_pos + t).map(move |s| s.saturating_sub(p) as u32))
            .collect();
        let pos = Tensor::from_vec(pos, b * t, &self.device)?;
        let half = self.cfg.head_dim() / 2;
        Ok((
            self.cos.index_select(&pos, 0)?.reshape((b, t, half))?,
            self.sin.index_select(&pos, 0)?.reshape((b, t, half))?,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        i: usize,
        layer: &Layer,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        bias: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t, _) = h.dims3()?;
        let hd = self.cfg.head_dim();
        let (nh, nkv) = (self.cfg.num_attention_heads, self.cfg.kv_heads());
        let qkv = layer.qkv.forward(h)?;
        let heads = |start: usize, n: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, start * hd, n * hd)?
                .reshape((b, t, n, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = candle_nn::rotary_emb::rope(&heads(0, nh)?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&heads(nh, nkv)?, cos, sin)?;
        let v = heads(nh + nkv, nkv)?;
        let (k, v) = match cache {
            Some(c) => c.append(i, k, v)?,
            None => (k, v),
        };
        let scale = 1.0 / (hd as f32).sqrt();
        let out = crate::fast_ops::attention(&q, &k, &v, bias, scale)?;
        layer.o.forward(&out)
    }

    /// `[.., vocab]` output logits (f32 in every weight mode) for hidden states `[.., d]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?.to_dtype(DType::F32)?)
    }

    /// Log-probabilities `[..]` of `targets` `[..]` (u32) under the next-token distributions of
    /// `hidden` `[.., d]`. The log-softmax runs over chunks of positions so the full
    /// `positions × vocab` logit matrix never exists at once.
    pub fn next_token_logprobs(&self, hidden: &Tensor, targets: &Tensor) -> Result<Tensor> {
        const CHUNK: usize = 256;
        let d = self.cfg.hidden_size;
        let shape = targets.shape().clone();
        let h = hidden.reshape(((), d))?;
        let tg = targets.to_dtype(DType::U32)?.flatten_all()?;
        let n = h.dim(0)?;
        if tg.dim(0)? != n {
            return Err(ModelError::Invalid(format!(
                "{} targets for {n} hidden states",
                tg.dim(0)?
            )));
        }
        let mut parts = Vec::with_capacity(n.div_ceil(CHUNK));
        for start in (0..n).step_by(CHUNK) {
            let len = CHUNK.min(n - start);
            let logits = self.logits(&h.narrow(0, start, len)?)?;
            parts.push(crate::fast_ops::log_softmax_at(
                &logits,
                &tg.narrow(0, start, len)?,
            )?);
        }
        Ok(Tensor::cat(&parts, 0)?.reshape(shape)?)
    }
}

/// RoPE tables `[max_pos, head_dim / 2]` for HF's rotate-half layout.
fn rope_tables(cfg: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim();
    let inv: Vec<f32> = (0..hd / 2)
        .map(|i| (1.0 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32)
        .collect();
    let inv = Tensor::from_vec(inv, (1, hd / 2), device)?;
    let pos = Tensor::arange(0u32, cfg.max_position_embeddings as u32, device)?
        .to_dtype(DType::F32)?
        .unsqueeze(1)?;
    let freqs = pos.broadcast_mul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

/// Additive attention bias `[b | 1, 1, t, start_pos + t]` (`b` rows with left padding), as
/// [`crate::fast_ops::attention`] takes it: causal, and blind to left padding.
/// `None` when nothing needs masking (one new token, no padding).
fn attention_bias(
    t: usize,
    start_pos: usize,
    left_padding: &[usize],
    device: &Device,
) -> Result<Option<Tensor>> {
    let padded = left_padding.iter().any(|&p| p > 0);
    if t == 1 && !padded {
        return Ok(None);
    }
    let total = start_pos + t;
    let pads: Vec<usize> = if padded {
        left_padding.to_vec()
    } else {
        vec![0]
    };
    let mut bias = Vec::with_capacity(pads.len() * t * total);
    for &pad in &pads {
        for i in 0..t {
            let q = start_pos + i;
            for k in 0..total {
                // A padding slot attends to itself only, so its (unused) row stays finite.
                let visible = k <= q && (k >= pad || k == q);
                bias.push(if visible { 0f32 } else { f32::NEG_INFINITY });
            }
        }
    }
    Ok(Some(Tensor::from_vec(
        bias,
        (pads.len(), 1, t, total),
        device,
    )?))
}
