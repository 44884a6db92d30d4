//! AdamW (decoupled weight decay) with global gradient-norm clipping, a linear warmup/decay
//! schedule, and an optimizer state that can be saved and restored for resuming.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use crate::error::{RealmError, Result};

mod fused;

/// AdamW hyper-parameters (the learning rate is given per step).
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decay of matrices (biases and norms are not decayed).
    pub weight_decay: f64,
    /// Gradients are scaled so their global L2 norm is at most this (0 = no clipping).
    pub max_grad_norm: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
        }
    }
}

struct Param {
    name: String,
    var: Var,
    lr_scale: f64,
    m: Tensor,
    v: Tensor,
}

/// AdamW over named variable groups, each with its own learning-rate multiplier.
pub struct AdamW {
    params: Vec<Param>,
    steps: usize,
    config: AdamWConfig,
}

impl AdamW {
    /// One parameter per variable of each `(name prefix, variables, lr multiplier)` group.
    pub fn new(groups: &[(&str, &VarMap, f64)], config: AdamWConfig) -> Result<Self> {
        let mut params = Vec::new();
        for &(prefix, varmap, lr_scale) in groups {
            let vars = varmap.data().lock().map_err(|_| {
                RealmError::Invalid("variable map poisoned by a panicking thread".into())
            })?;
            let mut names: Vec<&String> = vars.keys().collect();
            names.sort();
            for name in names {
                let var = vars[name].clone();
                params.push(Param {
                    name: format!("{prefix}{name}"),
                    m: var.zeros_like()?,
                    v: var.zeros_like()?,
                    var,
                    lr_scale,
                });
            }
        }
        Ok(Self {
            params,
            steps: 0,
            config,
        })
    }

    /// Updates taken so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Clips and applies `grads` with learning rate `lr`; returns the gradient norm before
    /// clipping. Variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<f64> {
        let mut sq = 0f64;
        for p in &self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                sq += if fused::applies(g) {
                    fused::sum_squares(g)?
                } else {
                    g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64
                };
            }
        }
        let norm = sq.sqrt();
        let clip = if self.config.max_grad_norm > 0.0 && norm > self.config.max_grad_norm {
            self.config.max_grad_norm / norm
        } else {
            1.0
        };
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let lr = lr * p.lr_scale;
            let decay = if p.var.rank() >= 2 {
                1.0 - lr * c.weight_decay
            } else {
                1.0
            };
            if [p.var.as_tensor(), &p.m, &p.v, g]
                .into_iter()
                .all(fused::applies)
            {
                let moment = |beta: f64, squared| fused::Moment {
                    beta: beta as f32,
                    scale: clip as f32,
                    squared,
                };
                p.m.inplace_op2(g, &moment(c.beta1, false))?;
                p.v.inplace_op2(g, &moment(c.beta2, true))?;
                let update = fused::Update {
                    decay: decay as f32,
                    lr: lr as f32,
                    bc1: bc1 as f32,
                    bc2: bc2 as f32,
                    eps: c.eps as f32,
                };
                p.var.as_tensor().inplace_op3(&p.m, &p.v, &update)?;
                continue;
            }
            let g = (g * clip)?;
            p.m = ((&p.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            p.v = ((&p.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&p.m / bc1)? / ((&p.v / bc2)?.sqrt()? + c.eps)?)?;
            let next = ((p.var.as_tensor() * decay)? - (update * lr)?)?;
            p.var.set(&next)?;
        }
        Ok(norm)
    }

    /// The moments (`m.<name>`, `v.<name>`) and the step count (`steps`, as f64), for saving.
    /// Private: on the CPU the moments are updated in place, so these views change with the
    /// next step.
    fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("m.{}", p.name), p.m.clone());
            out.insert(format!("v.{}", p.name), p.v.clone());
        }
        let device = self.params.first().map(|p| p.var.device().clone());
        let device = device.unwrap_or(candle_core::Device::Cpu);
        out.insert("steps".into(), Tensor::new(&[self.steps as f64], &device)?);
        Ok(out)
    }

    /// Writes the optimizer state to the safetensors file `path`.
    pub fn save_file(&self, path: &std::path::Path) -> Result<()> {
        Ok(ralm_models::weights::save_safetensors(
            path,
            &self.state()?,
        )?)
    }

    /// Restores the state saved in the safetensors file `path` (see
    /// [`save_file`](Self::save_file)); errors name the file.
    pub fn load_file(&mut self, path: &std::path::Path) -> Result<()> {
        let device = self.params.first().map(|p| p.var.device().clone());
        let device = device.unwrap_or(candle_core::Device::Cpu);
        let tensors = candle_core::safetensors::load(path, &device)
            .map_err(|e| RealmError::format(path, e.to_string()))?;
        self.load_state(&tensors)
            .map_err(|e| RealmError::format(path, e.to_string()))
    }

    /// Restores a state written by [`state`](Self::state); every moment must be present with
    /// the variable's shape.
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let get = |key: &str, like: &Var| -> Result<Tensor> {
            let t = state
                .get(key)
                .ok_or_else(|| RealmError::Invalid(format!("optimizer state lacks `{key}`")))?;
            if t.shape() != like.shape() {
                return Err(RealmError::Invalid(format!(
                    "optimizer state `{key}` has shape {:?}, expected {:?}",
                    t.dims(),
                    like.dims()
                )));
            }
            // A copy of its own: the fused step updates the moments in place.
            Ok(t.to_device(like.device())?.copy()?)
        };
        for p in &mut self.params {
            p.m = get(&format!("m.{}", p.name), &p.var)?;
            p.v = get(&format!("v.{}", p.name), &p.var)?;
        }
        let steps = state
            .get("steps")
            .ok_or_else(|| RealmError::Invalid("optimizer state lacks `steps`".into()))?;
        self.steps = steps.to_vec1::<f64>()?.first().copied().unwrap_or(0.0) as usize;
        Ok(())
    }
}

/// Linear warmup to `peak` over `warmup` steps, then linear decay to 0 at `total` steps.
pub fn linear_schedule(step: usize, warmup: usize, total: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let left = total.saturating_sub(step) as f64;
    let span = total.saturating_sub(warmup).max(1) as f64;
    peak * (left / span).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::{Init, VarBuilder};

    #[test]
    fn schedule_warms_up_linearly_then_decays_to_zero() {
        let lr = |s| linear_schedule(s, 4, 12, 1.0);
        assert_eq!([lr(0), lr(1), lr(3)], [0.25, 0.5, 1.0]);
        assert_eq!([lr(4), lr(8), lr(12), lr(20)], [1.0, 0.5, 0.0, 0.0]);
    }

    /// AdamW with clipping and decay on plain f64 slices: the definition the step follows.
    fn reference_steps(w: &mut [f64], targets: &[f64], steps: usize, lr: f64, c: AdamWConfig) {
        let (mut m, mut v) = (vec![0.0; w.len()], vec![0.0; w.len()]);
        for t in 1..=steps as i32 {
            // Loss Σ (w − target)², gradient 2 (w − target).
            let g: Vec<f64> = w.iter().zip(targets).map(|(w, y)| 2.0 * (w - y)).collect();
            let norm = g.iter().map(|g| g * g).sum::<f64>().sqrt();
            let clip = (c.max_grad_norm / norm).min(1.0);
            for i in 0..w.len() {
                let g = g[i] * clip;
                m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g;
                v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g * g;
                let m_hat = m[i] / (1.0 - c.beta1.powi(t));
                let v_hat = v[i] / (1.0 - c.beta2.powi(t));
                w[i] = w[i] * (1.0 - lr * c.weight_decay) - lr * m_hat / (v_hat.sqrt() + c.eps);
            }
        }
    }

    #[test]
    fn steps_match_the_definition_with_clipping_and_decay() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let init = Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        };
        let w = vb.get_with_hints((40, 30), "w", init).unwrap();
        let start: Vec<f32> = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let start: Vec<f64> = start.iter().map(|&x| x as f64).collect();
        let targets: Vec<f64> = (0..start.len()).map(|i| (i % 7) as f64 - 3.0).collect();
        let target = Tensor::from_vec(
            targets.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            (40, 30),
            &Device::Cpu,
        )
        .unwrap();
        let config = AdamWConfig::default();
        let mut opt = AdamW::new(&[("", &varmap, 1.0)], config).unwrap();
        for _ in 0..5 {
            let loss = (&w - &target).unwrap().sqr().unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap(), 0.05).unwrap();
        }
        let mut want = start;
        reference_steps(&mut want, &targets, 5, 0.05, config);
        let got: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(&g, &w)| (g as f64 - w).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-5, "worst difference {worst}");
        // The saved moments are the updated ones.
        let m = &opt.state().unwrap()["m.w"];
        assert!(
            m.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }

    #[test]
    fn first_step_moves_each_weight_by_the_learning_rate_against_its_gradient_sign() {
        // Bias-corrected Adam's first update is lr · g/(|g| + eps) = ±lr; no decay on vectors.
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let w = vb.get_with_hints(3, "w", Init::Const(1.0)).unwrap();
        let config = AdamWConfig {
            max_grad_norm: 0.0,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(&[("", &varmap, 0.5)], config).unwrap();
        let target = Tensor::new(&[2f32, 0.0, 1.0], &Device::Cpu).unwrap();
        let loss = (&w - &target).unwrap().sqr().unwrap().sum_all().unwrap();
        let norm = opt.step(&loss.backward().unwrap(), 0.2).unwrap();
        assert!((norm - 8f64.sqrt()).abs() < 1e-6, "gradient (-2, 2, 0)");
        let got: Vec<f32> = varmap.all_vars()[0].to_vec1().unwrap();
        // lr 0.2 scaled by the group's 0.5: ±0.1, and 0 where the gradient is 0.
        for (g, want) in got.iter().zip([1.1f32, 0.9, 1.0]) {
            assert!((g - want).abs() < 1e-5, "{got:?}");
        }
        assert_eq!(opt.steps(), 1);
    }
}
