//! Architecture and decoding settings: from Marian's embedded `special:model.yml` and decoder
//! YAML, or from a Hugging Face `MarianMTModel` `config.json`.

use std::path::Path;

use serde::Deserialize;

use super::yaml::FlatYaml;
use crate::error::{ModelError, Result};

/// Activation of the feed-forward blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// x * sigmoid(x) (a.k.a. SiLU).
    Swish,
    /// Gaussian error linear unit.
    Gelu,
}

impl Activation {
    fn parse(name: &str, path: &Path) -> Result<Self> {
        match name {
            "relu" => Ok(Self::Relu),
            "swish" | "silu" => Ok(Self::Swish),
            "gelu" | "gelu_new" => Ok(Self::Gelu),
            other => Err(ModelError::format(
                path,
                format!("unsupported activation {other:?}"),
            )),
        }
    }
}

/// The decoder's autoregressive sub-layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autoregression {
    /// Masked multi-head self-attention with a key/value cache.
    SelfAttention,
    /// Marian's simpler simple recurrent unit: `c = f*c + (1-f)*Wx`, `h = relu(c)`.
    Ssru,
}

/// Which sinusoidal position table the model was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionStyle {
    /// Marian: frequency `10000^(-i/(d/2-1))`, `[sin | cos]` halves.
    Marian,
    /// Hugging Face Marian: frequency `10000^(-2i/d)`, `[sin | cos]` halves.
    HuggingFace,
}

/// What the decoder reads at the first step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderStart {
    /// A zero embedding (Marian).
    Zeros,
    /// The embedding of this token (Hugging Face: `decoder_start_token_id`).
    Token(u32),
}

/// Architecture of a post-norm transformer translation model with tied embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct MarianConfig {
    /// Model width.
    pub d_model: usize,
    /// Encoder layers.
    pub encoder_layers: usize,
    /// Decoder layers.
    pub decoder_layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Inner width of the feed-forward blocks.
    pub ffn_dim: usize,
    /// Shared source/target vocabulary size.
    pub vocab_size: usize,
    /// Feed-forward activation.
    pub activation: Activation,
    /// Decoder autoregressive layer type.
    pub autoregression: Autoregression,
    /// Sinusoidal position variant.
    pub positions: PositionStyle,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// Multiply embeddings by sqrt(d_model).
    pub scale_embedding: bool,
    /// First decoder input.
    pub decoder_start: DecoderStart,
    /// End-of-sentence id.
    pub eos_id: u32,
    /// Padding id for source batches.
    pub pad_id: u32,
}

fn expect(yaml: &FlatYaml, key: &str, want: &str, path: &Path) -> Result<()> {
    let got = yaml.scalar(key)?.unwrap_or("");
    if got != want {
        return Err(ModelError::format(
            path,
            format!("field `{key}`: only {want:?} is supported, found {got:?}"),
        ));
    }
    Ok(())
}

impl MarianConfig {
    /// Reads the architecture from Marian's `special:model.yml` (`path` names the model file).
    pub fn from_marian_yaml(text: &str, path: &Path) -> Result<Self> {
        let yaml = FlatYaml::parse(text, path)?;
        expect(&yaml, "type", "transformer", path)?;
        expect(&yaml, "transformer-postprocess", "dan", path)?;
        expect(&yaml, "transformer-preprocess", "", path)?;
        expect(&yaml, "transformer-postprocess-top", "", path)?;
        if !yaml.flag("tied-embeddings-all", false)? {
            return Err(ModelError::format(
                path,
                "field `tied-embeddings-all`: only models with all embeddings tied are supported",
            ));
        }
        if yaml.get_or("transformer-ffn-depth", 2usize)? != 2 {
            return Err(ModelError::format(
                path,
                "field `transformer-ffn-depth`: only 2 is supported",
            ));
        }
        let autoregression = match yaml
            .scalar("transformer-decoder-autoreg")?
            .unwrap_or("self-attention")
        {
            "self-attention" => Autoregression::SelfAttention,
            "rnn" => {
                expect(&yaml, "dec-cell", "ssru", path)?;
                Autoregression::Ssru
            }
            other => {
                return Err(ModelError::format(
                    path,
                    format!("field `transformer-decoder-autoreg`: unsupported {other:?}"),
                ))
            }
        };
        let vocabs = yaml.list("dim-vocabs")?;
        let vocab_size = match vocabs.as_slice() {
            [a, b] if a == b => a.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| {
            ModelError::format(
                path,
                format!("field `dim-vocabs`: expected two equal sizes, found {vocabs:?}"),
            )
        })?;
        let activation = Activation::parse(
            yaml.scalar("transformer-ffn-activation")?
                .unwrap_or("swish"),
            path,
        )?;
        let cfg = Self {
            d_model: yaml.get("dim-emb")?,
            encoder_layers: yaml.get("enc-depth")?,
            decoder_layers: yaml.get("dec-depth")?,
            heads: yaml.get("transformer-heads")?,
            ffn_dim: yaml.get("transformer-dim-ffn")?,
            vocab_size,
            activation,
            autoregression,
            positions: PositionStyle::Marian,
            layer_norm_eps: 1e-6,
            scale_embedding: true,
            decoder_start: DecoderStart::Zeros,
            eos_id: 0,
            pad_id: 0,
        };
        cfg.validate(path)
    }

    /// Checks the dimensions are usable.
    pub fn validate(self, path: &Path) -> Result<Self> {
        if self.d_model == 0
            || self.heads == 0
            || !self.d_model.is_multiple_of(self.heads)
            || !self.d_model.is_multiple_of(2)
        {
            return Err(ModelError::format(
                path,
                format!(
                    "model width {} must be even and divisible by the {} heads",
                    self.d_model, self.heads
                ),
            ));
        }
        if self.vocab_size == 0 || self.eos_id as usize >= self.vocab_size {
            return Err(ModelError::format(
                path,
                "empty vocabulary or eos id out of range",
            ));
        }
        Ok(self)
    }
}

/// The fields of a Hugging Face `MarianMTModel` `config.json` this loader uses.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct HfMarianConfig {
    /// Model width.
    pub d_model: usize,
    /// Encoder layers.
    pub encoder_layers: usize,
    /// Decoder layers.
    pub decoder_layers: usize,
    /// Encoder attention heads.
    pub encoder_attention_heads: usize,
    /// Decoder attention heads.
    pub decoder_attention_heads: usize,
    /// Encoder feed-forward width.
    pub encoder_ffn_dim: usize,
    /// Decoder feed-forward width.
    pub decoder_ffn_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Feed-forward activation name.
    #[serde(default = "default_activation")]
    pub activation_function: String,
    /// Padding id (also the decoder start by default).
    pub pad_token_id: u32,
    /// End-of-sentence id.
    pub eos_token_id: u32,
    /// First decoder input.
    pub decoder_start_token_id: Option<u32>,
    /// Multiply embeddings by sqrt(d_model).
    #[serde(default)]
    pub scale_embedding: bool,
}

fn default_activation() -> String {
    "swish".into()
}

impl HfMarianConfig {
    /// Converts to the shared architecture description (`path` names config.json in errors).
    pub fn to_config(&self, path: &Path) -> Result<MarianConfig> {
        if self.encoder_attention_heads != self.decoder_attention_heads
            || self.encoder_ffn_dim != self.decoder_ffn_dim
        {
            return Err(ModelError::format(
                path,
                "encoder and decoder must share head count and feed-forward width",
            ));
        }
        MarianConfig {
            d_model: self.d_model,
            encoder_layers: self.encoder_layers,
            decoder_layers: self.decoder_layers,
            heads: self.encoder_attention_heads,
            ffn_dim: self.encoder_ffn_dim,
            vocab_size: self.vocab_size,
            activation: Activation::parse(&self.activation_function, path)?,
            autoregression: Autoregression::SelfAttention,
            positions: PositionStyle::HuggingFace,
            layer_norm_eps: 1e-5,
            scale_embedding: self.scale_embedding,
            decoder_start: DecoderStart::Token(
                self.decoder_start_token_id.unwrap_or(self.pad_token_id),
            ),
            eos_id: self.eos_token_id,
            pad_id: self.pad_token_id,
        }
        .validate(path)
    }
}

/// Decoding settings (Marian decoder YAML names in brackets).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeConfig {
    /// Beam width (`beam-size`); 1 is greedy.
    pub beam_size: usize,
    /// Length-normalisation exponent (`normalize`): scores are divided by `len^normalize`.
    pub normalize: f32,
    /// Maximum output length as a multiple of the source length (`max-length-factor`).
    pub max_length_factor: f32,
    /// Absolute cap on output length.
    pub max_length: usize,
    /// Sentences per batch (`mini-batch`).
    pub batch_size: usize,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            beam_size: 1,
            normalize: 1.0,
            max_length_factor: 2.5,
            max_length: 256,
            batch_size: 32,
        }
    }
}

impl DecodeConfig {
    /// Reads Marian decoder settings from a parsed YAML file, defaulting absent fields.
    pub fn from_yaml(yaml: &FlatYaml) -> Result<Self> {
        let d = Self::default();
        Ok(Self {
            beam_size: yaml.get_or("beam-size", d.beam_size)?.max(1),
            normalize: yaml.get_or("normalize", d.normalize)?,
            max_length_factor: yaml.get_or("max-length-factor", d.max_length_factor)?,
            max_length: yaml.get_or("max-length", d.max_length)?,
            batch_size: yaml.get_or("mini-batch", d.batch_size)?.max(1),
        })
    }
}
