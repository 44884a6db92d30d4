//! Weight sources for the Llama decoder (GGUF files and HF safetensors) and the projections
//! built from them (dense f32 or quantized).

use super::config::LlamaConfig;
use crate::fast_ops::QuantMatrix;
use crate::gguf::{permute_rows, unpermute_qk_order, GgufFile};
use crate::{ModelError, Result};
use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How matrix weights are held and multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightMode {
    /// Dequantized to f32 dense matrices (exact parity with the f32 reference).
    F32,
    /// Kept in their stored GGUF type and multiplied with quantized kernels (GGUF only).
    Quantized,
    /// Dense bf16 matrices and activations (for GPUs; not bit-exact with the f32 reference).
    Bf16,
}

impl WeightMode {
    /// Spelling of the mode in manifests: `f32`, `quantized` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Quantized => "quantized",
            Self::Bf16 => "bf16",
        }
    }

    /// The dtype of dense weights and activations in this mode.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 | Self::Quantized => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }
}

/// One matrix weight as read from a file.
pub(crate) enum RawMatrix {
    Dense(Tensor),
    Quant(QTensor),
}

impl RawMatrix {
    pub(crate) fn dense(self, device: &Device) -> Result<Tensor> {
        match self {
            Self::Dense(t) => Ok(t),
            Self::Quant(q) => Ok(q.dequantize(device)?),
        }
    }
}

/// A linear map without bias, `y = x Wᵀ`.
#[derive(Debug, Clone)]
pub(crate) enum Proj {
    Dense(Tensor),
    /// Packed for ralm's quantized kernel (CPU; `Q4_0`, `Q4_1`, `Q8_0`).
    Packed(Arc<QuantMatrix>),
    /// Any other quantized type, or another device: candle's kernels.
    Quant(QMatMul),
}

impl Proj {
    /// Stacks the rows of `parts` into one projection (fused q/k/v, gate/up).
    pub(crate) fn fused(parts: Vec<RawMatrix>, mode: WeightMode, device: &Device) -> Result<Self> {
        let all_quant = parts.iter().all(|p| matches!(p, RawMatrix::Quant(_)));
        if mode == WeightMode::Quantized && all_quant {
            let qs: Vec<QTensor> = parts
                .into_iter()
                .filter_map(|p| match p {
                    RawMatrix::Quant(q) => Some(q),
                    RawMatrix::Dense(_) => None,
                })
                .collect();
            let q = concat_rows(&qs)?;
            if device.is_cpu() {
                if let Some(packed) = QuantMatrix::from_qtensor(&q)? {
                    return Ok(Self::Packed(Arc::new(packed)));
                }
            }
            return Ok(Self::Quant(QMatMul::from_qtensor(q)?));
        }
        let mut dense = parts
            .into_iter()
            .map(|p| Ok(p.dense(device)?.to_dtype(mode.dtype())?))
            .collect::<Result<Vec<_>>>()?;
        if dense.len() == 1 {
            return Ok(Self::Dense(dense.remove(0)));
        }
        Ok(Self::Dense(Tensor::cat(&dense, 0)?))
    }

    /// Applies the map to the last dimension of `x`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let k = dims.pop().unwrap_or(1);
        let rows = x.elem_count() / k.max(1);
        let x2 = x.reshape((rows, k))?;
        let y = match self {
            Self::Dense(w) => crate::fast_ops::linear(&x2, w, None)?,
            Self::Packed(q) => crate::fast_ops::quant_linear(&x2, q)?,
            Self::Quant(q) => q.forward(&x2)?,
        };
        dims.push(y.dim(1)?);
        Ok(y.reshape(dims)?)
    }
}

/// Stacks the rows of quantized matrices of one type and width.
fn concat_rows(parts: &[QTensor]) -> Result<QTensor> {
    let first = parts
        .first()
        .ok_or_else(|| ModelError::Invalid("no matrices to stack".into()))?;
    let cols = first.shape().dims2()?.1;
    let mut rows = 0;
    let mut bytes = Vec::new();
    for p in parts {
        let (r, c) = p.shape().dims2()?;
        if c != cols || p.dtype() != first.dtype() {
            return Err(ModelError::Invalid(format!(
                "cannot stack {:?} {:?} onto {:?} {:?}",
                p.dtype(),
                p.shape(),
                first.dtype(),
                first.shape()
            )));
        }
        rows += r;
        bytes.extend_from_slice(&p.data()?);
    }
    let storage = QStorage::from_data(Cow::Owned(bytes), &first.device(), first.dtype())?;
    Ok(QTensor::new(storage, (rows, cols))?)
}

/// The weights of one decoder layer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LayerWeight {
    AttnNorm,
    Q,
    K,
    V,
    O,
    FfnNorm,
    Gate,
    Up,
    Down,
}

/// A named weight of the decoder.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WeightKey {
    Embed,
    Norm,
    LmHead,
    Layer(usize, LayerWeight),
}

impl WeightKey {
    fn gguf_name(self) -> String {
        match self {
            Self::Embed => "token_embd.weight".into(),
            Self::Norm => "output_norm.weight".into(),
            Self::LmHead => "output.weight".into(),
            Self::Layer(i, w) => {
                let n = match w {
                    LayerWeight::AttnNorm => "attn_norm",
                    LayerWeight::Q => "attn_q",
                    LayerWeight::K => "attn_k",
                    LayerWeight::V => "attn_v",
                    LayerWeight::O => "attn_output",
                    LayerWeight::FfnNorm => "ffn_norm",
                    LayerWeight::Gate => "ffn_gate",
                    LayerWeight::Up => "ffn_up",
                    LayerWeight::Down => "ffn_down",
                };
                format!("blk.{i}.{n}.weight")
            }
        }
    }

    /// The tensor name in HF `LlamaForCausalLM` checkpoints.
    pub(crate) fn hf_name(self) -> String {
        match self {
            Self::Embed => "model.embed_tokens.weight".into(),
            Self::Norm => "model.norm.weight".into(),
            Self::LmHead => "lm_head.weight".into(),
            Self::Layer(i, w) => {
                let n = match w {
                    LayerWeight::AttnNorm => "input_layernorm",
                    LayerWeight::Q => "self_attn.q_proj",
                    LayerWeight::K => "self_attn.k_proj",
                    LayerWeight::V => "self_attn.v_proj",
                    LayerWeight::O => "self_attn.o_proj",
                    LayerWeight::FfnNorm => "post_attention_layernorm",
                    LayerWeight::Gate => "mlp.gate_proj",
                    LayerWeight::Up => "mlp.up_proj",
                    LayerWeight::Down => "mlp.down_proj",
                };
                format!("model.layers.{i}.{n}.weight")
            }
        }
    }
}

/// Where the decoder's tensors come from.
pub(crate) trait WeightSource {
    /// A `rows × cols` matrix in HF layout (rotary halves of q/k already un-interleaved).
    fn matrix(&self, key: WeightKey, rows: usize, cols: usize) -> Result<RawMatrix>;
    /// A vector of length `len` as f32.
    fn vector(&self, key: WeightKey, len: usize) -> Result<Tensor>;
    /// Whether the source holds `key`.
    fn has(&self, key: WeightKey) -> bool;
    /// The file the weights come from (hashed for datastore manifests).
    fn weights_path(&self) -> &Path;
}

/// Weights in a GGUF file.
pub(crate) struct GgufSource<'a> {
    pub(crate) file: &'a GgufFile,
    pub(crate) cfg: &'a LlamaConfig,
    pub(crate) device: &'a Device,
}

impl WeightSource for GgufSource<'_> {
    fn matrix(&self, key: WeightKey, rows: usize, cols: usize) -> Result<RawMatrix> {
        let q = self
            .file
            .qtensor(&key.gguf_name(), &[rows, cols], self.device)?;
        let heads = match key {
            WeightKey::Layer(_, LayerWeight::Q) => Some(self.cfg.num_attention_heads),
            WeightKey::Layer(_, LayerWeight::K) => Some(self.cfg.kv_heads()),
            _ => None,
        };
        let q = match heads {
            Some(h) => permute_rows(&q, &unpermute_qk_order(rows, h))?,
            None => q,
        };
        Ok(RawMatrix::Quant(q))
    }

    fn vector(&self, key: WeightKey, len: usize) -> Result<Tensor> {
        self.file.tensor(&key.gguf_name(), &[len], self.device)
    }

    fn has(&self, key: WeightKey) -> bool {
        self.file.has_tensor(&key.gguf_name())
    }

    fn weights_path(&self) -> &Path {
        self.file.path()
    }
}

/// Weights in HF safetensors files (or in memory), read through a `VarBuilder`.
pub(crate) struct HfSource<'a> {
    pub(crate) vb: VarBuilder<'a>,
    pub(crate) path: PathBuf,
}

impl HfSource<'_> {
    fn get(&self, key: WeightKey, shape: &[usize]) -> Result<Tensor> {
        let name = key.hf_name();
        self.vb
            .get(shape, &name)
            .map_err(|e| ModelError::format(&self.path, format!("tensor `{name}`: {e}")))
    }
}

impl WeightSource for HfSource<'_> {
    fn matrix(&self, key: WeightKey, rows: usize, cols: usize) -> Result<RawMatrix> {
        self.get(key, &[rows, cols]).map(RawMatrix::Dense)
    }

    fn vector(&self, key: WeightKey, len: usize) -> Result<Tensor> {
        self.get(key, &[len])
    }

    fn has(&self, key: WeightKey) -> bool {
        self.vb.contains_tensor(&key.hf_name())
    }

    fn weights_path(&self) -> &Path {
        &self.path
    }
}

/// Opens HF safetensors files for reading through a `VarBuilder`.
pub(crate) fn mmap_safetensors(path: &Path, device: &Device) -> Result<VarBuilder<'static>> {
    // SAFETY: the file is mapped read-only; like every mmap-based loader we assume it is not
    // modified by another process while the model is loading.
    unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) }
        .map_err(|e| ModelError::format(path, format!("not a readable safetensors file: {e}")))
}
