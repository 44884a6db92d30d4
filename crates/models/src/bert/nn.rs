//! Small building blocks shared by the BERT body and its heads, each with an inference path
//! (fused kernels, no dropout) and a differentiable training path.

use super::config::{BertConfig, HiddenAct};
use candle_core::{Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};

/// Whether a forward pass is for inference (fused, no dropout) or training (differentiable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fused layer norm and softmax, dropout off. No backward pass.
    Inference,
    /// Differentiable layer norm, softmax and GELU (fused on the CPU), dropout on.
    Train,
}

/// A linear layer. On GPUs, and for training on the CPU, it runs as one 2-D matrix product over
/// all leading dimensions, so the weight's gradient is one product too (candle's `Linear` runs a
/// batched product against a broadcast weight for 3-D inputs, whose gradient is then summed over
/// the batch in a slow strided reduction). CPU inference uses [`crate::fast_ops::linear`].
#[derive(Debug, Clone)]
pub(crate) struct Dense(Linear);

impl Dense {
    pub(crate) fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let dims = x.dims();
        if mode == Mode::Inference && (dims.len() <= 2 || x.device().is_cpu()) {
            return crate::fast_ops::linear(x, self.0.weight(), self.0.bias());
        }
        let width = dims[dims.len() - 1];
        let x2 = x.reshape((x.elem_count() / width, width))?;
        let y = x2.matmul(&self.0.weight().t()?)?;
        // Reached on the CPU in training only; elsewhere `add_bias` is candle's broadcast add.
        let y = match self.0.bias() {
            Some(b) => crate::fast_ops::train::add_bias(&y, b)?,
            None => y,
        };
        let mut out = dims.to_vec();
        out[dims.len() - 1] = y.dim(1)?;
        y.reshape(out)
    }
}

/// A linear layer initialised as HF BERT does: weight ~ N(0, std), bias zero.
pub(crate) fn linear(in_dim: usize, out_dim: usize, std: f64, vb: VarBuilder) -> Result<Dense> {
    let w = vb.get_with_hints(
        (out_dim, in_dim),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: std,
        },
    )?;
    let b = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
    Ok(Dense(Linear::new(w, Some(b))))
}

/// An embedding table initialised as HF BERT does: N(0, std).
pub(crate) fn embedding(rows: usize, dim: usize, std: f64, vb: VarBuilder) -> Result<Tensor> {
    vb.get_with_hints(
        (rows, dim),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: std,
        },
    )
}

/// Layer norm over the last dimension (`weight`/`bias`, initialised to ones/zeros).
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub(crate) fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(size, "bias", Init::Const(0.0))?,
            eps: eps as f32,
        })
    }

    /// A `hidden_size` layer norm with the config's epsilon.
    pub(crate) fn for_config(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        Self::new(cfg.hidden_size, cfg.layer_norm_eps, vb)
    }

    pub(crate) fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Inference => candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps),
            Mode::Train => {
                crate::fast_ops::train::layer_norm(x, &self.weight, &self.bias, self.eps)
            }
        }
    }
}

/// Dropout with probability `p`, applied only in training mode.
pub(crate) fn dropout(x: &Tensor, p: f64, mode: Mode) -> Result<Tensor> {
    match mode {
        Mode::Train if p > 0.0 => crate::fast_ops::train::dropout(x, p as f32),
        _ => Ok(x.clone()),
    }
}

/// Applies the configured activation.
pub(crate) fn activate(x: &Tensor, act: HiddenAct, mode: Mode) -> Result<Tensor> {
    match act {
        HiddenAct::Gelu if mode == Mode::Inference => crate::fast_ops::gelu_erf(x),
        HiddenAct::Gelu => crate::fast_ops::train::gelu_erf(x),
        HiddenAct::GeluNew => x.gelu(),
        HiddenAct::Relu => x.relu(),
    }
}
