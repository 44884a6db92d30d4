//! Adaptive kNN-MT (after Zheng et al. 2021): a small network that picks λ per step from the
//! neighbours' distances and the counts of distinct values among the top 1..K, trained on
//! teacher-forced dev pairs to maximise log(λ·p_kNN(y) + (1−λ)·p_MT(y)) of the reference token.
//!
//! Saved next to the datastore as `gate.safetensors` (weights) and `gate.json` (settings).

use super::decode::KnnMtParams;
use crate::datastore::kv::unit_hash;
use crate::datastore::{read_json, write_json, Neighbours};
use crate::error::{KnnError, Result};
use crate::mixture::knn_log_prob;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Weights file of a gate.
pub const GATE_WEIGHTS: &str = "gate.safetensors";
/// Settings file of a gate.
pub const GATE_CONFIG: &str = "gate.json";
/// Scaled distances are capped here (padding neighbours get the cap).
const MAX_DISTANCE: f32 = 10.0;

/// Shape of the gate and the mixing it was trained for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GateConfig {
    /// Neighbours whose distances and value counts are the features.
    pub feature_k: usize,
    /// Hidden units.
    pub hidden: usize,
    /// Distances are divided by this (the mean top-1 distance of the training data).
    pub distance_scale: f32,
    /// k and temperature of p_kNN (λ comes from the gate).
    pub knn: KnnMtParams,
}

impl GateConfig {
    /// Number of trainable parameters.
    pub fn parameters(&self) -> usize {
        let f = 2 * self.feature_k;
        f * self.hidden + self.hidden + self.hidden + 1
    }
}

/// Feature rows (`n × 2K`): K scaled distances, then distinct-value counts of the top 1..K over K.
pub fn features(nb: &Neighbours, feature_k: usize, scale: f32) -> Vec<f32> {
    let rows = nb.scores.len() / nb.k.max(1);
    let mut out = Vec::with_capacity(rows * 2 * feature_k);
    for i in 0..rows {
        let (s, t) = nb.row(i);
        for &score in &s[..feature_k] {
            out.push((-score / scale).min(MAX_DISTANCE));
        }
        let mut seen: Vec<u32> = Vec::with_capacity(feature_k);
        for &tok in &t[..feature_k] {
            if tok != u32::MAX && !seen.contains(&tok) {
                seen.push(tok);
            }
            out.push(seen.len() as f32 / feature_k as f32);
        }
    }
    out
}

/// λ = sigmoid(w2 · tanh(W1 x + b1) + b2) for feature rows `x [n, 2K]`, built from basic
/// (differentiable) ops.
fn forward(p: [&Tensor; 4], x: &Tensor) -> candle_core::Result<Tensor> {
    let [w1, b1, w2, b2] = p;
    let h = x.matmul(&w1.t()?)?.broadcast_add(b1)?.tanh()?;
    let z = h.matmul(&w2.t()?)?.broadcast_add(b2)?.squeeze(1)?;
    (z.neg()?.exp()? + 1.0)?.recip()
}

/// A trained gate.
pub struct Gate {
    config: GateConfig,
    params: [Tensor; 4],
}

/// Training data: features, p_kNN(reference) and p_MT(reference) of every position.
#[derive(Debug, Clone, Default)]
pub struct GateExamples {
    /// `n × 2K` features.
    pub features: Vec<f32>,
    /// p_kNN of the reference token.
    pub p_knn: Vec<f32>,
    /// p_MT of the reference token.
    pub p_mt: Vec<f32>,
}

impl GateExamples {
    /// Examples from neighbours (at least `feature_k` and `knn.k` per row), reference tokens and
    /// log p_MT of them; also returns the distance scale used.
    pub fn new(
        nb: &Neighbours,
        targets: &[u32],
        log_probs: &[f32],
        feature_k: usize,
        knn: KnnMtParams,
    ) -> Result<(Self, f32)> {
        if nb.k < feature_k.max(knn.k) || targets.len() * nb.k != nb.scores.len() {
            return Err(KnnError::Invalid(format!(
                "gate examples need {} neighbours for each of {} positions, got k = {} and {} scores",
                feature_k.max(knn.k),
                targets.len(),
                nb.k,
                nb.scores.len()
            )));
        }
        let top1: Vec<f32> = (0..targets.len())
            .map(|i| -nb.row(i).0[0])
            .filter(|d| d.is_finite())
            .collect();
        let scale = (top1.iter().sum::<f32>() / top1.len().max(1) as f32)
            .abs()
            .max(1e-6);
        let p_knn = (0..targets.len())
            .map(|i| {
                let (s, t) = nb.row(i);
                knn_log_prob(&s[..knn.k], &t[..knn.k], targets[i], knn.temperature).exp()
            })
            .collect();
        let ex = Self {
            features: features(nb, feature_k, scale),
            p_knn,
            p_mt: log_probs.iter().map(|l| l.exp()).collect(),
        };
        Ok((ex, scale))
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.p_mt.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.p_mt.is_empty()
    }

    /// Mean −log(λ·p_kNN + (1−λ)·p_MT) at a fixed λ (the baseline the gate must beat).
    pub fn fixed_loss(&self, lambda: f32) -> f64 {
        let n = self.len().max(1) as f64;
        self.p_knn
            .iter()
            .zip(&self.p_mt)
            .map(|(&k, &m)| -((lambda * k + (1.0 - lambda) * m) as f64 + 1e-9).ln())
            .sum::<f64>()
            / n
    }
}

/// Optimiser settings.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    /// Full-batch AdamW steps.
    pub steps: usize,
    /// Learning rate.
    pub lr: f64,
    /// Initialisation seed.
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            steps: 400,
            lr: 0.02,
            seed: 7,
        }
    }
}

fn mixture_loss(lambda: &Tensor, p_knn: &Tensor, p_mt: &Tensor) -> candle_core::Result<Tensor> {
    let mixed = ((lambda * p_knn)? + ((1.0 - lambda)? * p_mt)?)?;
    (mixed + 1e-9)?.log()?.mean_all()?.neg()
}

impl Gate {
    /// Trains a gate on `ex`; returns it and the mean loss before and after training.
    pub fn train(
        ex: &GateExamples,
        config: GateConfig,
        opts: TrainOptions,
    ) -> Result<(Self, [f64; 2])> {
        let dev = Device::Cpu;
        let f = 2 * config.feature_k;
        let n = ex.len();
        if n == 0 || ex.features.len() != n * f {
            return Err(KnnError::Invalid(format!(
                "{n} gate examples with {} feature values (expected {} each)",
                ex.features.len(),
                f
            )));
        }
        let mut salt = 0u64;
        let mut init = |dims: &[usize], fan_in: usize| -> Result<Var> {
            let a = (1.0 / fan_in as f64).sqrt();
            let len: usize = dims.iter().product();
            let data: Vec<f32> = (0..len as u64)
                .map(|i| ((unit_hash(i + (salt << 32), opts.seed) * 2.0 - 1.0) * a) as f32)
                .collect();
            salt += 1;
            Ok(Var::from_tensor(&Tensor::from_vec(data, dims, &dev)?)?)
        };
        let vars = [
            init(&[config.hidden, f], f)?,
            init(&[config.hidden], f)?,
            init(&[1, config.hidden], config.hidden)?,
            init(&[1], config.hidden)?,
        ];
        let x = Tensor::from_vec(ex.features.clone(), (n, f), &dev)?;
        let p_knn = Tensor::from_vec(ex.p_knn.clone(), n, &dev)?;
        let p_mt = Tensor::from_vec(ex.p_mt.clone(), n, &dev)?;
        let loss_of = |vars: &[Var; 4]| -> candle_core::Result<Tensor> {
            let lambda = forward(
                [&vars[0], &vars[1], &vars[2], &vars[3]].map(|v| v.as_tensor()),
                &x,
            )?;
            mixture_loss(&lambda, &p_knn, &p_mt)
        };
        let before = loss_of(&vars)?.to_scalar::<f32>()? as f64;
        let mut opt = candle_nn::AdamW::new(
            vars.to_vec(),
            candle_nn::ParamsAdamW {
                lr: opts.lr,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        for _ in 0..opts.steps {
            opt.backward_step(&loss_of(&vars)?)?;
        }
        let after = loss_of(&vars)?.to_scalar::<f32>()? as f64;
        let params = vars.map(|v| v.as_tensor().detach());
        Ok((Self { config, params }, [before, after]))
    }

    /// Settings.
    pub fn config(&self) -> &GateConfig {
        &self.config
    }

    /// Neighbours the features need.
    pub fn feature_k(&self) -> usize {
        self.config.feature_k
    }

    /// λ for every row of `nb`.
    pub fn lambdas(&self, nb: &Neighbours) -> Result<Vec<f32>> {
        let k = self.config.feature_k;
        if nb.k < k {
            return Err(KnnError::Invalid(format!(
                "the gate needs {k} neighbours, got {}",
                nb.k
            )));
        }
        let feats = features(nb, k, self.config.distance_scale);
        let rows = feats.len() / (2 * k);
        if rows == 0 {
            return Ok(Vec::new());
        }
        let x = Tensor::from_vec(feats, (rows, 2 * k), &Device::Cpu)?;
        let [a, b, c, d] = &self.params;
        Ok(forward([a, b, c, d], &x)?.to_vec1::<f32>()?)
    }

    /// Writes `gate.safetensors` (atomically: temporary name, fsync, rename) and `gate.json` in `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(GATE_WEIGHTS);
        let tmp = path.with_extension("tmp");
        let tensors: HashMap<String, Tensor> = ["w1", "b1", "w2", "b2"]
            .iter()
            .zip(&self.params)
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        candle_core::safetensors::save(&tensors, &tmp)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| KnnError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| KnnError::io(&path, e))?;
        write_json(&dir.join(GATE_CONFIG), &self.config)
    }

    /// Loads the gate saved in `dir`, checking every tensor's shape against `gate.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let cpath = dir.join(GATE_CONFIG);
        let config: GateConfig = read_json(&cpath)?.ok_or_else(|| {
            KnnError::format(&cpath, "missing: train a gate first (ralm knnmt eval)")
        })?;
        let wpath = dir.join(GATE_WEIGHTS);
        if !wpath.exists() {
            return Err(KnnError::format(&wpath, "missing gate weights"));
        }
        let mut t = candle_core::safetensors::load(&wpath, &Device::Cpu)
            .map_err(|e| KnnError::format(&wpath, e.to_string()))?;
        let (h, f) = (config.hidden, 2 * config.feature_k);
        let mut take = |name: &str, dims: &[usize]| -> Result<Tensor> {
            let x = t
                .remove(name)
                .ok_or_else(|| KnnError::format(&wpath, format!("no tensor {name:?}")))?;
            if x.dims() != dims {
                return Err(KnnError::format(
                    &wpath,
                    format!(
                        "tensor {name:?} has shape {:?}, gate.json implies {dims:?}",
                        x.dims()
                    ),
                ));
            }
            Ok(x.to_dtype(DType::F32)?)
        };
        let params = [
            take("w1", &[h, f])?,
            take("b1", &[h])?,
            take("w2", &[1, h])?,
            take("b2", &[1])?,
        ];
        Ok(Self { config, params })
    }
}
