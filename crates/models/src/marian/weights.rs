//! Building a [`Transformer`] from Marian binary items (int8 dequantised at load) or from a
//! Hugging Face `MarianMTModel` safetensors checkpoint.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::binary::{Item, TYPE_FLOAT32, TYPE_INTGEMM8};
use super::config::{Autoregression, MarianConfig};
use super::transformer::{
    Attention, AutoregLayer, DecoderLayer, Dense, EncoderLayer, FeedForward, LayerNorm, Ssru,
    Transformer,
};
use crate::error::{ModelError, Result};

/// How to run matrices that Marian stores as int8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Dequantised weights, float activations (closest to the engine's outputs in practice).
    #[default]
    Float32,
    /// Dequantised weights, activations rounded to int8 with the model's stored multipliers
    /// (`*_QuantMultA`), emulating Marian's `int8shiftAlphaAll` mode.
    Int8Activations,
}

/// Named Marian items with typed accessors that name the file in errors.
pub struct MarianItems<'a> {
    items: HashMap<&'a str, &'a Item>,
    path: &'a Path,
    precision: Precision,
}

fn le_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

impl<'a> MarianItems<'a> {
    /// Indexes `items` (read from `path`).
    pub fn new(items: &'a [Item], path: &'a Path, precision: Precision) -> Self {
        Self {
            items: items.iter().map(|i| (i.name.as_str(), i)).collect(),
            path,
            precision,
        }
    }

    fn err(&self, name: &str, msg: impl std::fmt::Display) -> ModelError {
        ModelError::format(self.path, format!("item {name}: {msg}"))
    }

    /// The raw item `name`.
    pub fn item(&self, name: &str) -> Result<&'a Item> {
        self.items
            .get(name)
            .copied()
            .ok_or_else(|| ModelError::format(self.path, format!("missing item {name}")))
    }

    /// Values of an int8 intgemm matrix in storage order, divided by its trailing quantisation multiplier.
    fn dequantise(&self, item: &Item) -> Result<Vec<f32>> {
        let n = item.elements();
        let tail = item.data.get(n..n + 4).ok_or_else(|| {
            self.err(
                &item.name,
                "int8 data shorter than its shape plus the multiplier",
            )
        })?;
        let quant_mult = f32::from_le_bytes(tail.try_into().expect("4 bytes"));
        if !quant_mult.is_finite() || quant_mult <= 0.0 {
            return Err(self.err(
                &item.name,
                format!("invalid quantisation multiplier {quant_mult}"),
            ));
        }
        Ok(item.data[..n]
            .iter()
            .map(|&b| f32::from(b as i8) / quant_mult)
            .collect())
    }

    fn floats(&self, item: &Item) -> Result<Vec<f32>> {
        let n = item.elements();
        let bytes = item
            .data
            .get(..n * 4)
            .ok_or_else(|| self.err(&item.name, "float data shorter than its shape"))?;
        Ok(le_f32s(bytes))
    }

    fn check_type(&self, item: &Item, allowed: &[u64]) -> Result<()> {
        if allowed.contains(&item.type_code) {
            Ok(())
        } else {
            Err(self.err(
                &item.name,
                format!("unsupported type code {:#x}", item.type_code),
            ))
        }
    }

    fn dims2(&self, item: &Item) -> Result<(usize, usize)> {
        match item.shape.as_slice() {
            [r, c] => Ok((*r, *c)),
            s => Err(self.err(&item.name, format!("expected a matrix, shape {s:?}"))),
        }
    }

    /// Weight `[out, in]` of Marian matrix `name` (stored `[in, out]`; intgemm stores it transposed).
    pub fn matrix(&self, name: &str) -> Result<Tensor> {
        let item = self.item(name)?;
        self.check_type(item, &[TYPE_FLOAT32, TYPE_INTGEMM8])?;
        let (rows, cols) = self.dims2(item)?;
        let t = if item.type_code == TYPE_INTGEMM8 {
            // intgemm items hold B^T row-major: [cols, rows] is already [out, in].
            Tensor::from_vec(self.dequantise(item)?, (cols, rows), &Device::Cpu)?
        } else {
            Tensor::from_vec(self.floats(item)?, (rows, cols), &Device::Cpu)?
                .t()?
                .contiguous()?
        };
        Ok(t)
    }

    /// The embedding matrix `[V, d]` (intgemm embeddings are stored untransposed).
    pub fn embeddings(&self, name: &str) -> Result<Tensor> {
        let item = self.item(name)?;
        self.check_type(item, &[TYPE_FLOAT32, TYPE_INTGEMM8])?;
        let (rows, cols) = self.dims2(item)?;
        let values = if item.type_code == TYPE_INTGEMM8 {
            self.dequantise(item)?
        } else {
            self.floats(item)?
        };
        Ok(Tensor::from_vec(values, (rows, cols), &Device::Cpu)?)
    }

    /// A float vector (bias, norm scale) flattened to `[n]`, checked to have `len` values.
    pub fn vector(&self, name: &str, len: usize) -> Result<Tensor> {
        let item = self.item(name)?;
        self.check_type(item, &[TYPE_FLOAT32])?;
        if item.elements() != len {
            return Err(self.err(
                name,
                format!("expected {len} values, shape {:?}", item.shape),
            ));
        }
        Ok(Tensor::from_vec(self.floats(item)?, len, &Device::Cpu)?)
    }

    /// The activation multiplier stored for matrix `name`, if running with int8 activations.
    fn input_quant(&self, name: &str) -> Result<Option<f32>> {
        if self.precision == Precision::Float32 {
            return Ok(None);
        }
        let Some(item) = self.items.get(format!("{name}_QuantMultA").as_str()) else {
            return Ok(None);
        };
        let v = self.floats(item)?.first().copied();
        Ok(v.filter(|q| q.is_finite() && *q > 0.0))
    }

    /// Dense layer from matrix `{prefix}{w}` and optional bias `{prefix}{b}`.
    pub fn dense(&self, prefix: &str, w: &str, b: Option<&str>) -> Result<Dense> {
        let wname = format!("{prefix}{w}");
        let weight = self.matrix(&wname)?;
        let bias = match b {
            Some(b) => Some(self.vector(&format!("{prefix}{b}"), weight.dim(0)?)?),
            None => None,
        };
        Ok(Dense::new(weight, bias).with_input_quant(self.input_quant(&wname)?))
    }

    fn norm(&self, prefix: &str, d: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            gamma: self.vector(&format!("{prefix}_ln_scale"), d)?,
            beta: self.vector(&format!("{prefix}_ln_bias"), d)?,
            eps: eps as f32,
        })
    }

    fn attention(&self, prefix: &str, heads: usize) -> Result<Attention> {
        Ok(Attention {
            q: self.dense(prefix, "_Wq", Some("_bq"))?,
            k: self.dense(prefix, "_Wk", Some("_bk"))?,
            v: self.dense(prefix, "_Wv", Some("_bv"))?,
            o: self.dense(prefix, "_Wo", Some("_bo"))?,
            heads,
        })
    }

    fn ffn(&self, prefix: &str, cfg: &MarianConfig) -> Result<FeedForward> {
        Ok(FeedForward {
            w1: self.dense(prefix, "_W1", Some("_b1"))?,
            w2: self.dense(prefix, "_W2", Some("_b2"))?,
            activation: cfg.activation,
        })
    }

    /// Builds the whole model.
    pub fn build(&self, cfg: MarianConfig) -> Result<Transformer> {
        let d = cfg.d_model;
        let eps = cfg.layer_norm_eps;
        let embeddings = self.embeddings("Wemb")?;
        if embeddings.dims() != [cfg.vocab_size, d] {
            return Err(self.err(
                "Wemb",
                format!("shape {:?} != [{}, {d}]", embeddings.dims(), cfg.vocab_size),
            ));
        }
        let encoder = (1..=cfg.encoder_layers)
            .map(|i| {
                let p = format!("encoder_l{i}");
                Ok(EncoderLayer {
                    attention: self.attention(&format!("{p}_self"), cfg.heads)?,
                    attention_norm: self.norm(&format!("{p}_self_Wo"), d, eps)?,
                    ffn: self.ffn(&format!("{p}_ffn"), &cfg)?,
                    ffn_norm: self.norm(&format!("{p}_ffn_ffn"), d, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let decoder = (1..=cfg.decoder_layers)
            .map(|i| {
                let p = format!("decoder_l{i}");
                let (autoreg, autoreg_norm) = match cfg.autoregression {
                    Autoregression::Ssru => {
                        let r = format!("{p}_rnn");
                        let cell = Ssru {
                            w: self.dense(&r, "_W", None)?,
                            wf: self.dense(&r, "_Wf", Some("_bf"))?,
                        };
                        (
                            AutoregLayer::Ssru(cell),
                            self.norm(&format!("{r}_ffn"), d, eps)?,
                        )
                    }
                    Autoregression::SelfAttention => {
                        let s = format!("{p}_self");
                        (
                            AutoregLayer::SelfAttention(self.attention(&s, cfg.heads)?),
                            self.norm(&format!("{s}_Wo"), d, eps)?,
                        )
                    }
                };
                Ok(DecoderLayer {
                    autoreg,
                    autoreg_norm,
                    cross: self.attention(&format!("{p}_context"), cfg.heads)?,
                    cross_norm: self.norm(&format!("{p}_context_Wo"), d, eps)?,
                    ffn: self.ffn(&format!("{p}_ffn"), &cfg)?,
                    ffn_norm: self.norm(&format!("{p}_ffn_ffn"), d, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let bias = self.vector("decoder_ff_logit_out_b", cfg.vocab_size)?;
        let out_quant = match self.precision {
            Precision::Float32 => None,
            Precision::Int8Activations => self.input_quant("none")?,
        };
        let output = Dense::new(embeddings.clone(), Some(bias)).with_input_quant(out_quant);
        Ok(Transformer {
            config: cfg,
            embeddings,
            encoder,
            decoder,
            output,
        })
    }
}

/// Named Hugging Face tensors with accessors that name the checkpoint in errors.
pub struct HfTensors<'a> {
    tensors: &'a HashMap<String, Tensor>,
    path: &'a Path,
}

impl<'a> HfTensors<'a> {
    /// Wraps tensors loaded from `path`.
    pub fn new(tensors: &'a HashMap<String, Tensor>, path: &'a Path) -> Self {
        Self { tensors, path }
    }

    fn get(&self, name: &str, dims: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::format(self.path, format!("missing tensor {name}")))?;
        if t.dims() != dims {
            return Err(ModelError::format(
                self.path,
                format!("tensor {name}: shape {:?}, expected {dims:?}", t.dims()),
            ));
        }
        Ok(t.to_dtype(candle_core::DType::F32)?)
    }

    fn dense(&self, prefix: &str, out: usize, inp: usize) -> Result<Dense> {
        Ok(Dense::new(
            self.get(&format!("{prefix}.weight"), &[out, inp])?,
            Some(self.get(&format!("{prefix}.bias"), &[out])?),
        ))
    }

    fn norm(&self, prefix: &str, d: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            gamma: self.get(&format!("{prefix}.weight"), &[d])?,
            beta: self.get(&format!("{prefix}.bias"), &[d])?,
            eps: eps as f32,
        })
    }

    fn attention(&self, prefix: &str, cfg: &MarianConfig) -> Result<Attention> {
        let d = cfg.d_model;
        Ok(Attention {
            q: self.dense(&format!("{prefix}.q_proj"), d, d)?,
            k: self.dense(&format!("{prefix}.k_proj"), d, d)?,
            v: self.dense(&format!("{prefix}.v_proj"), d, d)?,
            o: self.dense(&format!("{prefix}.out_proj"), d, d)?,
            heads: cfg.heads,
        })
    }

    fn ffn(&self, prefix: &str, cfg: &MarianConfig) -> Result<FeedForward> {
        Ok(FeedForward {
            w1: self.dense(&format!("{prefix}.fc1"), cfg.ffn_dim, cfg.d_model)?,
            w2: self.dense(&format!("{prefix}.fc2"), cfg.d_model, cfg.ffn_dim)?,
            activation: cfg.activation,
        })
    }

    /// Builds the whole model (`model.shared.weight` tied to input and output embeddings).
    pub fn build(&self, cfg: MarianConfig) -> Result<Transformer> {
        let (d, v, eps) = (cfg.d_model, cfg.vocab_size, cfg.layer_norm_eps);
        let embeddings = self.get("model.shared.weight", &[v, d])?;
        let encoder = (0..cfg.encoder_layers)
            .map(|i| {
                let p = format!("model.encoder.layers.{i}");
                Ok(EncoderLayer {
                    attention: self.attention(&format!("{p}.self_attn"), &cfg)?,
                    attention_norm: self.norm(&format!("{p}.self_attn_layer_norm"), d, eps)?,
                    ffn: self.ffn(&p, &cfg)?,
                    ffn_norm: self.norm(&format!("{p}.final_layer_norm"), d, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let decoder = (0..cfg.decoder_layers)
            .map(|i| {
                let p = format!("model.decoder.layers.{i}");
                Ok(DecoderLayer {
                    autoreg: AutoregLayer::SelfAttention(
                        self.attention(&format!("{p}.self_attn"), &cfg)?,
                    ),
                    autoreg_norm: self.norm(&format!("{p}.self_attn_layer_norm"), d, eps)?,
                    cross: self.attention(&format!("{p}.encoder_attn"), &cfg)?,
                    cross_norm: self.norm(&format!("{p}.encoder_attn_layer_norm"), d, eps)?,
                    ffn: self.ffn(&p, &cfg)?,
                    ffn_norm: self.norm(&format!("{p}.final_layer_norm"), d, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let bias = self.get("final_logits_bias", &[1, v])?.flatten_all()?;
        let output = Dense::new(embeddings.clone(), Some(bias));
        Ok(Transformer {
            config: cfg,
            embeddings,
            encoder,
            decoder,
            output,
        })
    }
}
