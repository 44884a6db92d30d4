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
use std::path::Path;
use weights::{mmap_safetensors, GgufSource, HfSource};

impl LlamaModel {
    /// Loads a `.gguf` file, or an HF directory (`config.json` + `model.safetensors`; dense
    /// modes only).
    pub fn load(path: &Path, mode: WeightMode, device: &Device) -> Result<Self> {
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
