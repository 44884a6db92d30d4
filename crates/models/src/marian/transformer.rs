//! The encoder–decoder network: post-norm transformer encoder, decoder with SSRU or self-attention,
//! cross-attention, and a tied output layer with bias.

use candle_core::{DType, Device, Tensor};

use super::config::{Activation, DecoderStart, MarianConfig, PositionStyle};
use crate::error::{ModelError, Result};

/// A dense layer `y = x W^T + b`, optionally simulating int8 quantisation of its input.
#[derive(Debug, Clone)]
pub struct Dense {
    linear: candle_nn::Linear,
    input_quant: Option<f32>,
}

impl Dense {
    /// Builds from a weight `[out, in]` and optional bias `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            linear: candle_nn::Linear::new(weight, bias),
            input_quant: None,
        }
    }

    /// Rounds inputs to the int8 grid of multiplier `quant_mult` before multiplying (as intgemm does).
    pub fn with_input_quant(mut self, quant_mult: Option<f32>) -> Self {
        self.input_quant = quant_mult;
        self
    }

    /// Applies the layer.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = match self.input_quant {
            Some(q) => fake_quant_int8(x, q)?,
            None => x.clone(),
        };
        Ok(crate::fast_ops::linear(
            &x,
            self.linear.weight(),
            self.linear.bias(),
        )?)
    }
}

/// `clamp(round(x * q), -127, 127) / q`: the value intgemm multiplies after quantising `x`.
pub fn fake_quant_int8(x: &Tensor, quant_mult: f32) -> Result<Tensor> {
    let q = f64::from(quant_mult);
    Ok((x * q)?
        .round()?
        .clamp(-127f32, 127f32)?
        .affine(1.0 / q, 0.0)?)
}

/// Layer normalisation with learned scale and bias.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// Scale `[d]`.
    pub gamma: Tensor,
    /// Bias `[d]`.
    pub beta: Tensor,
    /// Epsilon inside the square root.
    pub eps: f32,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(
            &x.contiguous()?,
            &self.gamma,
            &self.beta,
            self.eps,
        )?)
    }
}

/// Multi-head attention projections.
#[derive(Debug, Clone)]
pub struct Attention {
    /// Query projection.
    pub q: Dense,
    /// Key projection.
    pub k: Dense,
    /// Value projection.
    pub v: Dense,
    /// Output projection.
    pub o: Dense,
    /// Number of heads.
    pub heads: usize,
}

impl Attention {
    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let (n, t, d) = x.dims3()?;
        Ok(x.reshape((n, t, self.heads, d / self.heads))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Keys and values `[n, heads, s, d/heads]` of a memory `[n, s, d]`.
    fn keys_values(&self, memory: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.split(&self.k.forward(memory)?)?,
            self.split(&self.v.forward(memory)?)?,
        ))
    }

    /// Attends queries `x [n, t, d]` over `k`/`v`; `mask` is additive, `[n | 1, 1, t | 1, s]`.
    fn attend(&self, x: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let d = x.dim(2)?;
        let q = self.split(&self.q.forward(x)?)?;
        let scale = 1.0 / ((d / self.heads) as f32).sqrt();
        self.o
            .forward(&crate::fast_ops::attention(&q, k, v, mask, scale)?)
    }
}

/// The two-layer feed-forward block.
#[derive(Debug, Clone)]
pub struct FeedForward {
    /// Expansion.
    pub w1: Dense,
    /// Projection back to the model width.
    pub w2: Dense,
    /// Activation between them.
    pub activation: Activation,
}

impl FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.w1.forward(x)?;
        let h = match self.activation {
            Activation::Relu => h.relu()?,
            Activation::Swish => candle_nn::ops::silu(&h)?,
            Activation::Gelu => crate::fast_ops::gelu_erf(&h)?,
        };
        self.w2.forward(&h)
    }
}

/// One post-norm encoder layer.
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    /// Self-attention.
    pub attention: Attention,
    /// Norm after the attention residual.
    pub attention_norm: LayerNorm,
    /// Feed-forward block.
    pub ffn: FeedForward,
    /// Norm after the feed-forward residual.
    pub ffn_norm: LayerNorm,
}

/// The SSRU cell: `f = sigmoid(Wf x + bf)`, `c' = f*c + (1-f)*(W x)`, `h = relu(c')`.
#[derive(Debug, Clone)]
pub struct Ssru {
    /// Candidate projection (no bias).
    pub w: Dense,
    /// Forget-gate projection with bias.
    pub wf: Dense,
}

/// The decoder's autoregressive sub-layer.
#[derive(Debug, Clone)]
pub enum AutoregLayer {
    /// Masked self-attention.
    SelfAttention(Attention),
    /// Recurrent SSRU cell.
    Ssru(Ssru),
}

/// One post-norm decoder layer.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    /// Autoregressive sub-layer (self-attention or SSRU).
    pub autoreg: AutoregLayer,
    /// Norm after the autoregressive residual.
    pub autoreg_norm: LayerNorm,
    /// Cross-attention over the encoder output.
    pub cross: Attention,
    /// Norm after the cross-attention residual.
    pub cross_norm: LayerNorm,
    /// Feed-forward block.
    pub ffn: FeedForward,
    /// Norm after the feed-forward residual.
    pub ffn_norm: LayerNorm,
}

/// A whole translation model.
#[derive(Debug, Clone)]
pub struct Transformer {
    /// Architecture.
    pub config: MarianConfig,
    /// Tied embedding matrix `[V, d]`.
    pub embeddings: Tensor,
    /// Encoder layers.
    pub encoder: Vec<EncoderLayer>,
    /// Decoder layers.
    pub decoder: Vec<DecoderLayer>,
    /// Output layer (weight = the embeddings) with its bias.
    pub output: Dense,
}

/// Encoder output for a batch.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Contextual states `[n, s, d]`.
    pub states: Tensor,
    /// Additive padding mask `[n, 1, 1, s]` (0 for tokens, a large negative for padding).
    pub mask: Tensor,
}

/// Per-layer decoder memory during incremental decoding.
#[derive(Debug, Clone)]
enum LayerCache {
    /// SSRU cell state `[n, d]`.
    Cell(Tensor),
    /// Self-attention keys and values `[n, h, t, dh]` (none before the first step).
    KeyValue(Option<(Tensor, Tensor)>),
}

/// Incremental decoding state for `n` rows (hypotheses).
#[derive(Debug, Clone)]
pub struct DecoderState {
    caches: Vec<LayerCache>,
    cross: Vec<(Tensor, Tensor)>,
    mask: Tensor,
    position: usize,
}

impl DecoderState {
    /// Number of rows.
    pub fn rows(&self) -> Result<usize> {
        Ok(self.mask.dim(0)?)
    }

    /// Keeps (and reorders/duplicates) rows `rows` of the state, e.g. the parents of beam survivors.
    pub fn select(&self, rows: &[u32]) -> Result<Self> {
        let idx = Tensor::new(rows, self.mask.device())?;
        let pick = |t: &Tensor| -> Result<Tensor> { Ok(t.index_select(&idx, 0)?) };
        let caches = self
            .caches
            .iter()
            .map(|c| {
                Ok(match c {
                    LayerCache::Cell(c) => LayerCache::Cell(pick(c)?),
                    LayerCache::KeyValue(None) => LayerCache::KeyValue(None),
                    LayerCache::KeyValue(Some((k, v))) => {
                        LayerCache::KeyValue(Some((pick(k)?, pick(v)?)))
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let cross = self
            .cross
            .iter()
            .map(|(k, v)| Ok((pick(k)?, pick(v)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            caches,
            cross,
            mask: pick(&self.mask)?,
            position: self.position,
        })
    }

    /// Number of target positions already decoded.
    pub fn position(&self) -> usize {
        self.position
    }
}

/// Sinusoidal position signals for positions `start..start+len`, `[len, d]`.
fn positions(
    style: PositionStyle,
    start: usize,
    len: usize,
    d: usize,
    device: &Device,
) -> Result<Tensor> {
    let half = d / 2;
    let mut data = vec![0f32; len * d];
    for p in 0..len {
        let pos = (start + p) as f32;
        for i in 0..half {
            let freq = match style {
                PositionStyle::Marian => {
                    let inc = 10000f32.ln() / (half as f32 - 1.0).max(1.0);
                    (-(i as f32) * inc).exp()
                }
                PositionStyle::HuggingFace => 10000f32.powf(-2.0 * i as f32 / d as f32),
            };
            let v = pos * freq;
            data[p * d + i] = v.sin();
            data[p * d + half + i] = v.cos();
        }
    }
    Ok(Tensor::from_vec(data, (len, d), device)?)
}

fn ids_tensor(ids: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let width = ids.first().map_or(0, Vec::len);
    if ids.iter().any(|r| r.len() != width) {
        return Err(ModelError::Invalid(
            "token rows must have equal length".into(),
        ));
    }
    let flat: Vec<u32> = ids.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (ids.len(), width), device)?)
}

impl Transformer {
    fn device(&self) -> &Device {
        self.embeddings.device()
    }

    /// Embeds `ids [n, t]` at positions `start..`, scaled and with position signals added.
    fn embed(&self, ids: &Tensor, start: usize) -> Result<Tensor> {
        let (n, t) = ids.dims2()?;
        let d = self.config.d_model;
        let e = self
            .embeddings
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((n, t, d))?;
        self.add_positions(e, start)
    }

    fn add_positions(&self, e: Tensor, start: usize) -> Result<Tensor> {
        let (_, t, d) = e.dims3()?;
        let e = if self.config.scale_embedding {
            (e * (d as f64).sqrt())?
        } else {
            e
        };
        let pos = positions(self.config.positions, start, t, d, self.device())?;
        Ok(e.broadcast_add(&pos)?)
    }

    /// Encodes source rows (each ending in EOS); shorter rows are padded with `pad_id` and masked.
    pub fn encode(&self, src: &[Vec<u32>]) -> Result<Encoded> {
        let width = src.iter().map(Vec::len).max().unwrap_or(0);
        if width == 0 {
            return Err(ModelError::Invalid(
                "cannot encode an empty batch or empty rows".into(),
            ));
        }
        let vocab = self.config.vocab_size as u32;
        let mut padded = Vec::with_capacity(src.len());
        let mut mask = Vec::with_capacity(src.len() * width);
        for row in src {
            if let Some(&bad) = row.iter().find(|&&t| t >= vocab) {
                return Err(ModelError::Invalid(format!(
                    "token id {bad} outside the vocabulary of {vocab}"
                )));
            }
            let mut r = row.clone();
            r.resize(width, self.config.pad_id);
            padded.push(r);
            mask.extend((0..width).map(|i| if i < row.len() { 0f32 } else { -1e9 }));
        }
        let mask = Tensor::from_vec(mask, (src.len(), 1, 1, width), self.device())?;
        let mut x = self.embed(&ids_tensor(&padded, self.device())?, 0)?;
        for layer in &self.encoder {
            let (k, v) = layer.attention.keys_values(&x)?;
            let a = layer.attention.attend(&x, &k, &v, Some(&mask))?;
            x = layer.attention_norm.forward(&(a + &x)?)?;
            let f = layer.ffn.forward(&x)?;
            x = layer.ffn_norm.forward(&(f + &x)?)?;
        }
        Ok(Encoded { states: x, mask })
    }

    /// A fresh decoding state for the encoded batch (cross-attention keys/values precomputed).
    pub fn start(&self, enc: &Encoded) -> Result<DecoderState> {
        let n = enc.states.dim(0)?;
        let d = self.config.d_model;
        let caches = self
            .decoder
            .iter()
            .map(|l| {
                Ok(match l.autoreg {
                    AutoregLayer::Ssru(_) => {
                        LayerCache::Cell(Tensor::zeros((n, d), DType::F32, self.device())?)
                    }
                    AutoregLayer::SelfAttention(_) => LayerCache::KeyValue(None),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let cross = self
            .decoder
            .iter()
            .map(|l| l.cross.keys_values(&enc.states))
            .collect::<Result<Vec<_>>>()?;
        Ok(DecoderState {
            caches,
            cross,
            mask: enc.mask.clone(),
            position: 0,
        })
    }

    /// Decoder inputs `[n, t, d]` for the given previous tokens at positions `start..`;
    /// `None` in place of the first column means "the start input".
    fn decoder_inputs(&self, prev: &[Vec<u32>], with_start: bool, start: usize) -> Result<Tensor> {
        let n = prev.len();
        let d = self.config.d_model;
        let tokens: Vec<Vec<u32>> = match (with_start, self.config.decoder_start) {
            (true, DecoderStart::Token(s)) => prev
                .iter()
                .map(|r| {
                    std::iter::once(s)
                        .chain(r.iter().copied())
                        .collect::<Vec<u32>>()
                })
                .collect(),
            _ => prev.to_vec(),
        };
        let e = if tokens.first().is_some_and(|r| !r.is_empty()) {
            let ids = ids_tensor(&tokens, self.device())?;
            let (_, t) = ids.dims2()?;
            Some(
                self.embeddings
                    .index_select(&ids.flatten_all()?, 0)?
                    .reshape((n, t, d))?,
            )
        } else {
            None
        };
        let e = match (with_start, self.config.decoder_start, e) {
            (true, DecoderStart::Zeros, e) => {
                let z = Tensor::zeros((n, 1, d), DType::F32, self.device())?;
                match e {
                    Some(e) => Tensor::cat(&[&z, &e], 1)?,
                    None => z,
                }
            }
            (_, _, Some(e)) => e,
            (_, _, None) => return Err(ModelError::Invalid("no decoder input".into())),
        };
        self.add_positions(e, start)
    }

    /// Runs the decoder layers on inputs `x [n, t, d]`, updating `state` (whose caches hold the
    /// history before these positions); returns the final hidden states `[n, t, d]`.
    fn decode_layers(&self, state: &mut DecoderState, mut x: Tensor) -> Result<Tensor> {
        let (_, t, _) = x.dims3()?;
        let past = state.position;
        for ((layer, cache), (ck, cv)) in self
            .decoder
            .iter()
            .zip(state.caches.iter_mut())
            .zip(&state.cross)
        {
            let a = match (&layer.autoreg, cache) {
                (AutoregLayer::Ssru(cell), LayerCache::Cell(c)) => {
                    let cand = cell.w.forward(&x)?;
                    let gate = candle_nn::ops::sigmoid(&cell.wf.forward(&x)?)?;
                    let mut outs = Vec::with_capacity(t);
                    for i in 0..t {
                        let f = gate.narrow(1, i, 1)?.squeeze(1)?;
                        let xc = cand.narrow(1, i, 1)?.squeeze(1)?;
                        // c' = f*c + (1-f)*x = x + f*(c - x)
                        *c = (&xc + (f * (&*c - &xc)?)?)?;
                        outs.push(c.relu()?);
                    }
                    Tensor::stack(&outs, 1)?
                }
                (AutoregLayer::SelfAttention(att), LayerCache::KeyValue(kv)) => {
                    let (k_new, v_new) = att.keys_values(&x)?;
                    let (k, v) = match kv.take() {
                        Some((k, v)) => (
                            Tensor::cat(&[&k, &k_new], 2)?,
                            Tensor::cat(&[&v, &v_new], 2)?,
                        ),
                        None => (k_new, v_new),
                    };
                    let mask = causal_mask(past, t, self.device())?;
                    let out = att.attend(&x, &k, &v, mask.as_ref())?;
                    *kv = Some((k, v));
                    out
                }
                _ => {
                    return Err(ModelError::Invalid(
                        "decoder cache does not match its layer".into(),
                    ))
                }
            };
            x = layer.autoreg_norm.forward(&(a + &x)?)?;
            let c = layer.cross.attend(&x, ck, cv, Some(&state.mask))?;
            x = layer.cross_norm.forward(&(c + &x)?)?;
            let f = layer.ffn.forward(&x)?;
            x = layer.ffn_norm.forward(&(f + &x)?)?;
        }
        state.position += t;
        Ok(x)
    }

    /// One incremental step: `prev` holds each row's previous token (`None` at the first step).
    /// Returns the final decoder hidden states `[n, d]` (the kNN-MT datastore keys).
    pub fn step(&self, state: &mut DecoderState, prev: Option<&[u32]>) -> Result<Tensor> {
        let n = state.rows()?;
        let rows: Vec<Vec<u32>> = match prev {
            Some(p) if p.len() == n => p.iter().map(|&t| vec![t]).collect(),
            Some(p) => {
                return Err(ModelError::Invalid(format!(
                    "{} previous tokens for {n} rows",
                    p.len()
                )))
            }
            None => vec![Vec::new(); n],
        };
        let first = prev.is_none();
        if first != (state.position == 0) {
            return Err(ModelError::Invalid(
                "previous tokens are required after the first step".into(),
            ));
        }
        let x = self.decoder_inputs(&rows, first, state.position)?;
        Ok(self.decode_layers(state, x)?.squeeze(1)?)
    }

    /// Teacher-forced decoding from a fresh state: `targets [n, t]` are the tokens to predict;
    /// returns hidden states `[n, t, d]` where position `i` predicts `targets[.., i]`.
    pub fn forward_teacher(&self, enc: &Encoded, targets: &[Vec<u32>]) -> Result<Tensor> {
        let mut state = self.start(enc)?;
        let prev: Vec<Vec<u32>> = targets
            .iter()
            .map(|r| r[..r.len().saturating_sub(1)].to_vec())
            .collect();
        if targets.first().is_none_or(Vec::is_empty) {
            return Err(ModelError::Invalid(
                "teacher forcing needs at least one target token".into(),
            ));
        }
        let x = self.decoder_inputs(&prev, true, 0)?;
        self.decode_layers(&mut state, x)
    }

    /// Output logits for hidden states `[.., d]` -> `[.., V]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.output.forward(hidden)
    }
}

/// Additive causal mask `[1, 1, t, past + t]` for `t` new positions after `past` cached ones.
fn causal_mask(past: usize, t: usize, device: &Device) -> Result<Option<Tensor>> {
    if t == 1 {
        return Ok(None);
    }
    let total = past + t;
    let data: Vec<f32> = (0..t)
        .flat_map(|i| (0..total).map(move |j| if j <= past + i { 0.0 } else { -1e9 }))
        .collect();
    Ok(Some(Tensor::from_vec(data, (1, 1, t, total), device)?))
}
