//! The BERT transformer body (`BertModel` in HF terms): embeddings and encoder layers.

use super::checkpoint;
use super::config::{BertConfig, HiddenAct};
use super::nn::{activate, dropout, embedding, linear, Dense, LayerNorm, Mode};
use crate::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

/// Added to attention scores at padding positions.
const MASKED_SCORE: f64 = -1e9;

struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
    dropout: f64,
}

impl Embeddings {
    fn new(cfg: &BertConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        Ok(Self {
            word: embedding(cfg.vocab_size, h, std, vb.pp("word_embeddings"))?,
            position: embedding(
                cfg.max_position_embeddings,
                h,
                std,
                vb.pp("position_embeddings"),
            )?,
            token_type: embedding(cfg.type_vocab_size, h, std, vb.pp("token_type_embeddings"))?,
            norm: LayerNorm::for_config(cfg, vb.pp("LayerNorm"))?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    fn forward(&self, ids: &Tensor, type_ids: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.word.dim(1)?;
        let words = self.word.index_select(&ids.flatten_all()?, 0)?;
        let types = self.token_type.index_select(&type_ids.flatten_all()?, 0)?;
        let x = (words + types)?.reshape((b, t, h))?;
        let x = x.broadcast_add(&self.position.narrow(0, 0, t)?)?;
        dropout(&self.norm.forward(&x, mode)?, self.dropout, mode)
    }
}

struct SelfAttention {
    query: Dense,
    key: Dense,
    value: Dense,
    output: Dense,
    norm: LayerNorm,
    heads: usize,
    head_dim: usize,
    attn_dropout: f64,
    hidden_dropout: f64,
}

impl SelfAttention {
    fn new(cfg: &BertConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        let sv = vb.pp("self");
        Ok(Self {
            query: linear(h, h, std, sv.pp("query"))?,
            key: linear(h, h, std, sv.pp("key"))?,
            value: linear(h, h, std, sv.pp("value"))?,
            output: linear(h, h, std, vb.pp("output").pp("dense"))?,
            norm: LayerNorm::for_config(cfg, vb.pp("output").pp("LayerNorm"))?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            attn_dropout: cfg.attention_probs_dropout_prob,
            hidden_dropout: cfg.hidden_dropout_prob,
        })
    }

    /// `[b, t, h]` → `[b, heads, t, head_dim]` (a strided view).
    fn split_heads(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, self.heads, self.head_dim))?
            .transpose(1, 2)
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let q = self.split_heads(&self.query.forward(x, mode)?)?;
        let k = self.split_heads(&self.key.forward(x, mode)?)?;
        let v = self.split_heads(&self.value.forward(x, mode)?)?;
        let ctx = if mode == Mode::Inference {
            crate::fast_ops::attention(&q, &k, &v, Some(mask), scale as f32)?
        } else {
            let scores = (q * scale)?.matmul(&k.contiguous()?.t()?)?;
            let probs = crate::fast_ops::train::softmax_last_dim(&scores.broadcast_add(mask)?)?;
            let probs = dropout(&probs, self.attn_dropout, mode)?;
            probs
                .matmul(&v.contiguous()?)?
                .transpose(1, 2)?
                .reshape((b, t, h))?
        };
        let out = dropout(&self.output.forward(&ctx, mode)?, self.hidden_dropout, mode)?;
        self.norm.forward(&(out + x)?, mode)
    }
}

struct Layer {
    attention: SelfAttention,
    intermediate: Dense,
    output: Dense,
    norm: LayerNorm,
    act: HiddenAct,
    dropout: f64,
}

impl Layer {
    fn new(cfg: &BertConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, i, std) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.initializer_range,
        );
        Ok(Self {
            attention: SelfAttention::new(cfg, vb.pp("attention"))?,
            intermediate: linear(h, i, std, vb.pp("intermediate").pp("dense"))?,
            output: linear(i, h, std, vb.pp("output").pp("dense"))?,
            norm: LayerNorm::for_config(cfg, vb.pp("output").pp("LayerNorm"))?,
            act: cfg.hidden_act,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        let a = self.attention.forward(x, mask, mode)?;
        let inner = activate(&self.intermediate.forward(&a, mode)?, self.act, mode)?;
        let out = dropout(&self.output.forward(&inner, mode)?, self.dropout, mode)?;
        self.norm.forward(&(out + a)?, mode)
    }
}

/// BERT embeddings plus encoder layers, returning the last hidden state.
pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    config: BertConfig,
}

impl BertModel {
    /// Builds the model from `vb`, whose names are HF's without the `bert.` prefix. With a
    /// `VarMap`-backed builder every weight is a trainable variable initialised as HF does.
    pub fn new(config: &BertConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let embeddings = Embeddings::new(config, vb.pp("embeddings"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::new(config, vb.pp("encoder").pp("layer").pp(i)))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            embeddings,
            layers,
            config: config.clone(),
        })
    }

    /// Loads an HF BERT directory for inference (weights memory-mapped, `bert.` prefix detected).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_as(dir, DType::F32, device)
    }

    /// Loads an HF BERT directory with weights (and so activations) in `dtype`, e.g. bf16 on a
    /// GPU.
    pub fn load_as(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join(checkpoint::CONFIG_FILE))?;
        let (weights, prefix) = checkpoint::open_weights(dir)?;
        let path = weights.path().to_path_buf();
        Self::new(&config, weights.var_builder(&prefix, dtype, device))
            .map_err(|e| ModelError::format(&path, e.to_string()))
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The word-embedding table `[vocab, hidden]` (tied to the MLM decoder).
    pub fn word_embeddings(&self) -> &Tensor {
        &self.embeddings.word
    }

    /// Last hidden state `[b, t, hidden]` (in the weights' dtype) for token ids and token types
    /// `[b, t]` (u32) and an attention mask `[b, t]` (f32, 1 for tokens, 0 for padding).
    pub fn forward(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        mask: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.config.max_position_embeddings {
            return Err(ModelError::Invalid(format!(
                "sequence of {t} tokens exceeds max_position_embeddings {}",
                self.config.max_position_embeddings
            )));
        }
        let additive = mask
            .affine(-MASKED_SCORE, MASKED_SCORE)?
            .reshape((b, 1, 1, t))?
            .to_dtype(self.embeddings.word.dtype())?;
        let mut x = self.embeddings.forward(ids, type_ids, mode)?;
        for layer in &self.layers {
            x = layer.forward(&x, &additive, mode)?;
        }
        Ok(x)
    }
}
