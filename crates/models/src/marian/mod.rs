//! Marian / Bergamot translation models: the binary format with int8 matrices (dequantised at
//! load), Hugging Face `MarianMTModel` checkpoints, greedy/beam search and kNN-MT hooks.

pub mod binary;
pub mod config;
pub mod search;
pub mod transformer;
pub mod weights;
pub mod yaml;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

pub use config::{DecodeConfig, HfMarianConfig, MarianConfig};
pub use search::{Hypothesis, SearchOptions, StepHook};
pub use transformer::Transformer;
pub use weights::Precision;

use crate::error::{ModelError, Result};
use yaml::FlatYaml;

/// Teacher-forced decoding of one (source, target) pair.
#[derive(Debug, Clone)]
pub struct ForcedDecoding {
    /// Decoder final hidden states `[t, d]`; row `i` is the state that predicts `targets[i]`.
    pub keys: Tensor,
    /// Target token ids including the final EOS.
    pub targets: Vec<u32>,
}

/// A translation model with its tokenizer and decoding defaults.
pub struct Translator {
    /// The network.
    pub model: Transformer,
    tokenizer: Tokenizer,
    /// Decoding defaults (from the decoder YAML for Marian models).
    pub decode: DecodeConfig,
    unk_id: Option<u32>,
}

fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if !path.exists() {
        return Err(ModelError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
        ));
    }
    let mut tok =
        Tokenizer::from_file(path).map_err(|e| ModelError::format(path, e.to_string()))?;
    tok.with_padding(None);
    tok.with_truncation(None)
        .map_err(|e| ModelError::format(path, e.to_string()))?;
    Ok(tok)
}

/// Finds the Marian decoder YAML in `dir`: a `*.yml` file with a `models:` entry.
fn find_decoder_yaml(dir: &Path) -> Result<Option<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    found.sort();
    for p in found {
        let text = std::fs::read_to_string(&p).map_err(|e| ModelError::io(&p, e))?;
        if text.lines().any(|l| l.starts_with("models:")) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

impl Translator {
    /// Loads a model directory: a Marian/Bergamot directory (decoder `*.yml` naming the `.bin`
    /// model, plus `tokenizer.json`) or a Hugging Face one (`config.json`, `model.safetensors`,
    /// `tokenizer.json`).
    pub fn load(dir: &Path, precision: Precision) -> Result<Self> {
        if dir.join("config.json").exists() {
            return Self::load_hf(dir);
        }
        let yml = find_decoder_yaml(dir)?.ok_or_else(|| {
            ModelError::format(
                dir,
                "no config.json and no Marian decoder *.yml with a `models:` list",
            )
        })?;
        let text = std::fs::read_to_string(&yml).map_err(|e| ModelError::io(&yml, e))?;
        let decoder_yaml = FlatYaml::parse(&text, &yml)?;
        let decode = DecodeConfig::from_yaml(&decoder_yaml)?;
        let model_name = decoder_yaml
            .list("models")?
            .into_iter()
            .next()
            .ok_or_else(|| ModelError::format(&yml, "field `models`: empty"))?;
        let model = load_marian_binary(&dir.join(model_name), precision)?;
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"))?;
        let unk_id = tokenizer.token_to_id("<unk>");
        let eos = tokenizer.token_to_id("</s>");
        if eos != Some(model.config.eos_id) {
            return Err(ModelError::format(
                &dir.join("tokenizer.json"),
                format!(
                    "`</s>` has id {eos:?}, the model expects {}",
                    model.config.eos_id
                ),
            ));
        }
        Ok(Self {
            model,
            tokenizer,
            decode,
            unk_id,
        })
    }

    /// Loads a Hugging Face `MarianMTModel` directory.
    pub fn load_hf(dir: &Path) -> Result<Self> {
        let model = load_hf_model(dir)?;
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"))?;
        let unk_id = tokenizer.token_to_id("<unk>");
        Ok(Self {
            model,
            tokenizer,
            decode: DecodeConfig::default(),
            unk_id,
        })
    }

    /// Search options from the decoding defaults with beam width `beam` (or the default).
    pub fn search_options(&self, beam: Option<usize>) -> SearchOptions {
        SearchOptions {
            beam_size: beam.unwrap_or(self.decode.beam_size).max(1),
            normalize: self.decode.normalize,
            max_length_factor: self.decode.max_length_factor,
            max_length: self.decode.max_length,
            suppress: self.unk_id,
        }
    }

    /// Source token ids of `text` followed by EOS.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        ids.push(self.model.config.eos_id);
        Ok(ids)
    }

    /// Detokenises ids (SentencePiece semantics: `▁` becomes a space, leading space dropped).
    pub fn decode_ids(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Translates sentences in batches of `decode.batch_size` (sorted by length internally).
    pub fn translate(&self, sentences: &[&str], opts: &SearchOptions) -> Result<Vec<String>> {
        self.translate_with_hook(sentences, opts, None)
    }

    /// Like [`Translator::translate`], calling `hook` at every step of every batch.
    pub fn translate_with_hook(
        &self,
        sentences: &[&str],
        opts: &SearchOptions,
        mut hook: Option<&mut StepHook<'_>>,
    ) -> Result<Vec<String>> {
        let src = sentences
            .iter()
            .map(|s| self.encode_text(s))
            .collect::<Result<Vec<_>>>()?;
        let mut order: Vec<usize> = (0..src.len()).collect();
        order.sort_by_key(|&i| src[i].len());
        let mut out = vec![String::new(); src.len()];
        for chunk in order.chunks(self.decode.batch_size.max(1)) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| src[i].clone()).collect();
            let hyps = search::search(&self.model, &batch, opts, hook.as_deref_mut())?;
            for (&i, h) in chunk.iter().zip(hyps) {
                out[i] = self.decode_ids(&h.tokens)?;
            }
        }
        Ok(out)
    }

    /// Teacher-forced decoding of `target` given `source`: all datastore keys and target ids.
    pub fn teacher_force(&self, source: &str, target: &str) -> Result<ForcedDecoding> {
        let src = self.encode_text(source)?;
        let targets = self.encode_text(target)?;
        let enc = self.model.encode(&[src])?;
        let keys = self
            .model
            .forward_teacher(&enc, std::slice::from_ref(&targets))?
            .squeeze(0)?;
        Ok(ForcedDecoding { keys, targets })
    }
}

/// Loads a Marian binary model (`.bin`) whose config is embedded as `special:model.yml`.
pub fn load_marian_binary(path: &Path, precision: Precision) -> Result<Transformer> {
    let items = binary::read_items(path)?;
    let index = weights::MarianItems::new(&items, path, precision);
    let yml = index.item("special:model.yml")?;
    let text = std::str::from_utf8(&yml.data)
        .map_err(|_| ModelError::format(path, "special:model.yml is not UTF-8"))?;
    let cfg = MarianConfig::from_marian_yaml(
        text.trim_end_matches('\0'),
        &path.join("special:model.yml"),
    )?;
    index.build(cfg)
}

/// Loads a Hugging Face `MarianMTModel` (config.json + model.safetensors) from `dir`.
pub fn load_hf_model(dir: &Path) -> Result<Transformer> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
    let hf: HfMarianConfig =
        serde_json::from_str(&text).map_err(|e| ModelError::format(&cfg_path, e.to_string()))?;
    let cfg = hf.to_config(&cfg_path)?;
    let weights_path = dir.join("model.safetensors");
    if !weights_path.exists() {
        return Err(ModelError::io(
            &weights_path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "model.safetensors not found"),
        ));
    }
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&weights_path, &Device::Cpu)
            .map_err(|e| ModelError::format(&weights_path, e.to_string()))?;
    weights::HfTensors::new(&tensors, &weights_path).build(cfg)
}
