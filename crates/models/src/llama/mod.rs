//! Llama-family causal LMs (SmolLM2 and friends) from GGUF files or HF directories.

pub mod cache;
pub mod config;
pub mod generate;
pub mod model;
pub mod score;
mod weights;

pub use cache::KvCache;
pub use config::LlamaConfig;
pub use generate::Sampler;
pub use model::{ForwardOptions, LlamaModel, LlamaOutput};
pub use score::{plan_windows, KeyKind, ScoreOptions, Window, WindowScores};
pub use weights::WeightMode;

use crate::gguf::GgufFile;
use crate::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use weights::{mmap_safetensors, GgufSource, HfSource};

/// The file or directory a model path stands for: a directory without `config.json` that
/// holds exactly one `.gguf` file stands for that file; anything else for itself.
pub fn resolve_model_path(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() || path.join("config.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let io = |e| ModelError::io(path, e);
    let mut ggufs = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if p.extension().is_some_and(|e| e == "gguf") && p.is_file() {
            ggufs.push(p);
        }
    }
    match ggufs.len() {
        1 => Ok(ggufs.remove(0)),
        0 => Err(ModelError::format(
            path,
            "neither an HF model directory (no config.json) nor a directory holding a .gguf file",
        )),
        n => Err(ModelError::format(
            path,
            format!("holds {n} .gguf files and no config.json: name the file to load"),
        )),
    }
}

impl LlamaModel {
    /// Loads a `.gguf` file, a directory holding one, or an HF directory (`config.json` +
    /// `model.safetensors`; dense modes only).
    pub fn load(path: &Path, mode: WeightMode, device: &Device) -> Result<Self> {
        let path = &resolve_model_path(path)?;
        if !path.is_dir() {
            return Self::from_gguf(path, mode, device);
        }
        if mode == WeightMode::Quantized {
            return Err(ModelError::Invalid(format!(
                "{}: quantized matmul needs a GGUF file, not an HF directory",
                path.display()
            )));
        }
        Self::from_hf_dir_as(path, mode, device)
    }

    /// Loads a GGUF file; q/k rows are un-permuted to HF's rotate-half layout.
    pub fn from_gguf(path: &Path, mode: WeightMode, device: &Device) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let cfg = LlamaConfig::from_gguf(&file)?;
        let src = GgufSource {
            file: &file,
            cfg: &cfg,
            device,
        };
        Self::from_source(cfg.clone(), &src, mode, device)
    }

    /// Loads an HF directory holding `config.json` and `model.safetensors`, in f32.
    pub fn from_hf_dir(dir: &Path, device: &Device) -> Result<Self> {
        Self::from_hf_dir_as(dir, WeightMode::F32, device)
    }

    /// Loads an HF directory in a dense weight mode (f32 or bf16).
    pub fn from_hf_dir_as(dir: &Path, mode: WeightMode, device: &Device) -> Result<Self> {
        let cfg = LlamaConfig::from_json_file(&dir.join("config.json"))?;
        let path = dir.join("model.safetensors");
        if !path.is_file() {
            return Err(ModelError::format(&path, "missing weight file"));
        }
        let src = HfSource {
            vb: mmap_safetensors(&path, device)?,
            path,
        };
        Self::from_source(cfg, &src, mode, device)
    }

    /// Builds a model from in-memory tensors named as in HF checkpoints.
    pub fn from_hf_tensors(
        cfg: LlamaConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let src = HfSource {
            vb: candle_nn::VarBuilder::from_tensors(tensors, DType::F32, device),
            path: "<memory>".into(),
        };
        Self::from_source(cfg, &src, WeightMode::F32, device)
    }

    /// SHA-256 (hex) of the weight file, for datastore manifests.
    pub fn model_hash(&self) -> Result<String> {
        crate::hash::file_sha256(self.weights_path())
    }
}
