//! Fused, differentiable CPU kernels for training: softmax over the last dimension, layer norm,
//! exact-erf GELU, bias addition and dropout. Each runs forward and backward as one pass over
//! the data, where candle's differentiable versions (`ops::softmax`, `layer_norm_slow`,
//! `gelu_erf`) chain five to ten allocating element-wise ops each way. Off the CPU, or for other
//! dtypes, they fall back to candle's versions.

use super::{erf, exp_non_positive, f32_slice, is_cpu_f32, rows_per_task, softmax_in_place, CHUNK};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::{Mutex, PoisonError};

/// Softmax over the last dimension, with a backward pass.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(x) {
        x.contiguous()?.apply_op1(Softmax)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

/// Layer norm over the last dimension, `(x − mean) / sqrt(var + eps) · weight + bias`, with
/// gradients for all three inputs.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    if is_cpu_f32(x) && is_cpu_f32(weight) && is_cpu_f32(bias) {
        x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            LayerNorm { eps },
        )
    } else {
        candle_nn::ops::layer_norm_slow(x, weight, bias, eps)
    }
}

/// Exact-erf GELU with a backward pass (the forward is [`super::gelu_erf`]'s kernel).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(x) {
        x.contiguous()?.apply_op1(Gelu)
    } else {
        x.gelu_erf()
    }
}

/// `x + bias` with `bias` broadcast over the rows of the last dimension, with gradients for both;
/// the bias's gradient (the column sums) is one parallel pass instead of a strided reduction.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(x) && is_cpu_f32(bias) {
        x.contiguous()?.apply_op2(&bias.contiguous()?, AddBias)
    } else {
        x.broadcast_add(bias)
    }
}

/// Inverted dropout: each element zeroed with probability `p`, the others scaled by `1/(1−p)`,
/// with a backward pass. On the CPU the mask is a hash of a per-call seed (the next of the
/// stream [`seed_dropout`] sets) and the element's index, drawn in the same pass (candle's
/// version draws uniforms on one thread and makes four full-size temporaries) and recomputed,
/// not stored, for the backward pass.
pub fn dropout(x: &Tensor, p: f32) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout probability {p} is not in [0, 1)");
    }
    if !is_cpu_f32(x) {
        return candle_nn::ops::dropout(x, p);
    }
    x.contiguous()?.apply_op1(Dropout {
        // Elements whose 32-bit hash falls below this are dropped.
        threshold: (p as f64 * 4_294_967_296.0) as u64,
        scale: 1.0 / (1.0 - p),
        seed: next_dropout_seed(),
    })
}

/// The process's dropout stream: its base seed and the masks drawn from it so far.
static DROPOUT_STREAM: Mutex<Option<(u64, u64)>> = Mutex::new(None);

/// Seeds the CPU dropout masks: those drawn afterwards depend only on `seed` and the order of
/// the calls, so a training run that seeds the same way repeats its masks exactly. Unseeded,
/// each process draws its own base seed at random.
pub fn seed_dropout(seed: u64) {
    *DROPOUT_STREAM
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some((seed, 0));
}

/// The seed of the next dropout mask.
fn next_dropout_seed() -> u64 {
    let mut stream = DROPOUT_STREAM
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let (base, calls) = stream.get_or_insert_with(|| (rand::random(), 0));
    *calls += 1;
    mix(mix(*base).wrapping_add(*calls))
}

/// SplitMix64's finaliser: a bijective, well-mixed hash of `z`.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Dropout {
    threshold: u64,
    scale: f32,
    seed: u64,
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "ralm-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, self.name())?;
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(chunk, (o, s))| {
                let first = (chunk * CHUNK) as u64;
                for (i, (o, &x)) in o.iter_mut().zip(s).enumerate() {
                    let keep = mix(self.seed ^ (first + i as u64)) >> 32 >= self.threshold;
                    *o = if keep { x * self.scale } else { 0.0 };
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    /// Dropout is linear in its input: the gradient goes through the same mask and scale.
    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

/// Elements per parallel task rounded to whole rows of `width` (at least one row).
fn row_chunk(width: usize) -> usize {
    rows_per_task(width) * width.max(1)
}

/// Runs `f(input rows, output rows)` over chunks of whole rows of width `width`, in parallel.
fn for_rows(src: &[f32], out: &mut [f32], width: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) {
    let rows = row_chunk(width);
    out.par_chunks_mut(rows)
        .zip(src.par_chunks(rows))
        .for_each(|(o, s)| f(s, o));
}

/// Width of the last dimension of `layout`.
fn last_dim(layout: &Layout) -> Result<usize> {
    layout.shape().dims().last().copied().ok_or_else(|| {
        candle_core::Error::Msg("a last-dimension op needs at least one dimension".into())
    })
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "ralm-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, self.name())?;
        let width = last_dim(layout)?;
        let mut out = vec![0f32; src.len()];
        for_rows(src, &mut out, width, |s, o| {
            for (row, out) in s.chunks(width).zip(o.chunks_mut(width)) {
                out.copy_from_slice(row);
                softmax_in_place(out);
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            y.apply_op2_no_bwd(&grad.contiguous()?, &SOFTMAX_GRAD)?,
        ))
    }
}

/// A backward kernel `(saved, g) → input gradient` over rows of the last dimension: `apply`
/// gets the saved tensor's data, the output gradient to turn into the input's in place, and the
/// row width.
struct GradKernel {
    name: &'static str,
    apply: fn(&[f32], &mut [f32], usize),
}

impl CustomOp2 for GradKernel {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        saved: &CpuStorage,
        sl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = f32_slice(saved, sl, self.name)?;
        let mut out = f32_slice(gs, gl, self.name)?.to_vec();
        (self.apply)(a, &mut out, last_dim(sl)?);
        Ok((CpuStorage::F32(out), sl.shape().clone()))
    }
}

/// Softmax's input gradient from its output `y`: `g ← y · (g − Σ g·y)` per row.
const SOFTMAX_GRAD: GradKernel = GradKernel {
    name: "ralm-softmax-grad",
    apply: |y, out, width| {
        for_rows(y, out, width, |y, o| {
            for (y, o) in y.chunks(width).zip(o.chunks_mut(width)) {
                let dot: f32 = y.iter().zip(o.iter()).map(|(y, g)| y * g).sum();
                o.iter_mut().zip(y).for_each(|(o, y)| *o = y * (*o - dot));
            }
        })
    },
};

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "ralm-add-bias"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, self.name())?;
        let b = f32_slice(bs, bl, self.name())?;
        let width = last_dim(xl)?;
        if b.len() != width {
            candle_core::bail!("{}: bias {} for rows of {width}", self.name(), b.len());
        }
        let mut out = x.to_vec();
        for_rows(x, &mut out, width, |_, o| {
            for o in o.chunks_mut(width) {
                o.iter_mut().zip(b).for_each(|(o, b)| *o += b);
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let sums = grad.contiguous()?.apply_op1_no_bwd(&ColumnSums {
            width: bias.elem_count(),
        })?;
        Ok((Some(grad.clone()), Some(sums)))
    }
}

/// Sums of the columns of a tensor seen as rows of `width`.
struct ColumnSums {
    width: usize,
}

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "ralm-column-sums"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(storage, layout, self.name())?;
        let width = self.width.max(1);
        let chunk = row_chunk(width);
        let sums = g
            .par_chunks(chunk)
            .map(|c| {
                let mut acc = vec![0f32; width];
                for row in c.chunks(width) {
                    acc.iter_mut().zip(row).for_each(|(a, g)| *a += g);
                }
                acc
            })
            .reduce(
                || vec![0f32; width],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        Ok((CpuStorage::F32(sums), Shape::from(self.width)))
    }
}

struct LayerNorm {
    eps: f32,
}

/// Mean and `1 / sqrt(var + eps)` of one row.
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "ralm-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, self.name())?;
        let (w, b) = (
            f32_slice(ws, wl, self.name())?,
            f32_slice(bs, bl, self.name())?,
        );
        let width = last_dim(xl)?;
        if w.len() != width || b.len() != width {
            candle_core::bail!(
                "{}: weight {} and bias {} for rows of {width}",
                self.name(),
                w.len(),
                b.len()
            );
        }
        let mut out = vec![0f32; x.len()];
        for_rows(x, &mut out, width, |s, o| {
            for (row, out) in s.chunks(width).zip(o.chunks_mut(width)) {
                let (mean, rstd) = moments(row, self.eps);
                for (((o, &v), &w), &b) in out.iter_mut().zip(row).zip(w).zip(b) {
                    *o = (v - mean) * rstd * w + b;
                }
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let width = weight.elem_count();
        let rows = x.elem_count() / width;
        // Rows 0..rows: the input's gradient; then the weight's and the bias's.
        let all = x.apply_op3_no_bwd(
            weight,
            &grad.contiguous()?,
            &LayerNormGrad { eps: self.eps },
        )?;
        Ok((
            Some(all.narrow(0, 0, rows)?.reshape(x.shape())?),
            Some(all.get(rows)?),
            Some(all.get(rows + 1)?),
        ))
    }
}

/// Layer norm's backward pass from `(x, weight, grad)`: a `[rows + 2, width]` tensor holding
/// the input's gradient, then the weight's and the bias's.
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "ralm-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, self.name())?;
        let w = f32_slice(ws, wl, self.name())?;
        let g = f32_slice(gs, gl, self.name())?;
        let width = w.len().max(1);
        let rows = x.len() / width;
        let mut out = vec![0f32; x.len() + 2 * width];
        let (grad_x, grad_wb) = out.split_at_mut(x.len());
        let chunk = row_chunk(width);
        let zeros = || (vec![0f32; width], vec![0f32; width]);
        let (grad_w, grad_b) = grad_x
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
            .map(|(gx, (x, g))| {
                let (mut gw, mut gb) = zeros();
                for ((gx, x), g) in gx
                    .chunks_mut(width)
                    .zip(x.chunks(width))
                    .zip(g.chunks(width))
                {
                    let (mean, rstd) = moments(x, self.eps);
                    // With x̂ = (x − mean)·rstd and h = g·w: dx = rstd·(h − mean(h) − x̂·mean(h·x̂)).
                    let (mut sum_h, mut sum_hx) = (0f32, 0f32);
                    for (((gw, gb), (&x, &g)), &w) in
                        gw.iter_mut().zip(gb.iter_mut()).zip(x.iter().zip(g)).zip(w)
                    {
                        let xh = (x - mean) * rstd;
                        *gw += g * xh;
                        *gb += g;
                        sum_h += g * w;
                        sum_hx += g * w * xh;
                    }
                    let (mean_h, mean_hx) = (sum_h / width as f32, sum_hx / width as f32);
                    for ((gx, (&x, &g)), &w) in gx.iter_mut().zip(x.iter().zip(g)).zip(w) {
                        let xh = (x - mean) * rstd;
                        *gx = rstd * (g * w - mean_h - xh * mean_hx);
                    }
                }
                (gw, gb)
            })
            .reduce(zeros, |(mut aw, mut ab), (bw, bb)| {
                aw.iter_mut().zip(&bw).for_each(|(a, b)| *a += b);
                ab.iter_mut().zip(&bb).for_each(|(a, b)| *a += b);
                (aw, ab)
            });
        grad_wb[..width].copy_from_slice(&grad_w);
        grad_wb[width..].copy_from_slice(&grad_b);
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, width))))
    }
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "ralm-gelu-erf-train"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        super::GeluErf.cpu_fwd(storage, layout)
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GELU_GRAD)?))
    }
}

/// GELU's input gradient from its input `x`: `g ← g · (Φ(x) + x·φ(x))`.
const GELU_GRAD: GradKernel = GradKernel {
    name: "ralm-gelu-erf-grad",
    apply: |x, out, _| {
        // 1 / sqrt(2π).
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, x)| {
                for (o, &x) in o.iter_mut().zip(x) {
                    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                    let pdf = INV_SQRT_2PI * exp_non_positive(-0.5 * x * x);
                    *o *= cdf + x * pdf;
                }
            });
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fast_ops::test_data::{max_diff, values};
    use candle_core::{Device, Var};

    fn var(shape: &[usize], seed: u64, scale: f32) -> Var {
        let n = shape.iter().product();
        Var::from_vec(values(n, seed, scale), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn dropout_zeroes_a_share_p_scales_the_rest_and_masks_the_gradient_alike() {
        let x = var(&[64, 1000], 7, 1.0);
        let p = 0.1;
        let y = dropout(x.as_tensor(), p).unwrap();
        let (xs, ys): (Vec<f32>, Vec<f32>) = (
            x.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
            y.flatten_all().unwrap().to_vec1().unwrap(),
        );
        let dropped = ys.iter().filter(|&&v| v == 0.0).count() as f64 / ys.len() as f64;
        // 64,000 draws: the share is within 0.006 of p at about five standard deviations.
        assert!((dropped - p as f64).abs() < 0.006, "dropped {dropped}");
        for (a, b) in xs.iter().zip(&ys) {
            assert!(*b == 0.0 || (b - a / (1.0 - p)).abs() < 1e-6, "{a} -> {b}");
        }
        // Each call draws a new mask.
        let again = dropout(x.as_tensor(), p).unwrap();
        assert!(max_diff(&y, &again) > 0.0);
        // d(Σ y·c)/dx = c / (1 − p) where kept, 0 where dropped.
        let c = var(&[64, 1000], 8, 1.0);
        let grads = (&y * c.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g: Vec<f32> = grads
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let cs: Vec<f32> = c.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..ys.len() {
            let want = if ys[i] == 0.0 { 0.0 } else { cs[i] / (1.0 - p) };
            assert!(
                (g[i] - want).abs() < 1e-6,
                "element {i}: {} vs {want}",
                g[i]
            );
        }
        assert!(dropout(x.as_tensor(), 1.0).is_err());
        assert_eq!(
            max_diff(&dropout(x.as_tensor(), 0.0).unwrap(), x.as_tensor()),
            0.0
        );
    }

    /// Forward values and the gradients of `Σ y·c` (c random) for each input in `vars` agree
    /// between `ours` and `reference`.
    fn same_values_and_gradients(
        vars: &[&Var],
        ours: impl Fn() -> Tensor,
        reference: impl Fn() -> Tensor,
        tol: f32,
    ) {
        let (a, b) = (ours(), reference());
        assert!(
            max_diff(&a, &b) < tol,
            "forward differs by {}",
            max_diff(&a, &b)
        );
        let c = Tensor::from_vec(values(a.elem_count(), 99, 1.0), a.shape(), &Device::Cpu).unwrap();
        let ga = (&a * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * &c).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, v) in vars.iter().enumerate() {
            let (ga, gb) = (
                ga.get(v.as_tensor()).unwrap(),
                gb.get(v.as_tensor()).unwrap(),
            );
            let scale = gb.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let scale: f32 = scale.to_scalar::<f32>().unwrap().max(1.0);
            let d = max_diff(ga, gb) / scale;
            assert!(d < tol, "gradient of input {i} differs by {d} (relative)");
        }
    }

    #[test]
    fn softmax_matches_candle_in_value_and_gradient() {
        // Attention-like rows with a masked (very negative) tail.
        let x = var(&[3, 4, 37], 1, 6.0);
        let mask: Vec<f32> = (0..37).map(|i| if i > 30 { -1e9 } else { 0.0 }).collect();
        let mask = Tensor::new(mask.as_slice(), &Device::Cpu).unwrap();
        let input = || x.as_tensor().broadcast_add(&mask).unwrap();
        same_values_and_gradients(
            &[&x],
            || softmax_last_dim(&input()).unwrap(),
            || candle_nn::ops::softmax(&input(), D::Minus1).unwrap(),
            1e-5,
        );
    }

    #[test]
    fn layer_norm_matches_candle_in_value_and_gradients() {
        let x = var(&[5, 3, 48], 2, 3.0);
        let w = var(&[48], 3, 1.5);
        let b = var(&[48], 4, 0.5);
        // A transposed view exercises the contiguous copy.
        let input = || x.as_tensor().transpose(0, 1).unwrap();
        same_values_and_gradients(
            &[&x, &w, &b],
            || layer_norm(&input(), &w, &b, 1e-12).unwrap(),
            || candle_nn::ops::layer_norm_slow(&input(), &w, &b, 1e-12).unwrap(),
            2e-4,
        );
    }

    #[test]
    fn bias_addition_matches_candle_in_value_and_gradients() {
        let x = var(&[300, 17], 9, 2.0);
        let b = var(&[17], 10, 1.0);
        same_values_and_gradients(
            &[&x, &b],
            || add_bias(&x, &b).unwrap(),
            || x.as_tensor().broadcast_add(&b).unwrap(),
            1e-5,
        );
    }

    #[test]
    fn gelu_matches_candle_in_value_and_gradient() {
        let x = var(&[7, 301], 5, 8.0);
        same_values_and_gradients(
            &[&x],
            || gelu_erf(&x).unwrap(),
            || x.as_tensor().gelu_erf().unwrap(),
            1e-5,
        );
    }

    #[test]
    fn gradients_flow_through_a_chain_of_fused_ops() {
        // layer norm → GELU → softmax, against the same chain of candle's ops.
        let x = var(&[6, 64], 6, 2.0);
        let w = var(&[64], 7, 1.0);
        let b = var(&[64], 8, 0.3);
        same_values_and_gradients(
            &[&x, &w, &b],
            || {
                let h = gelu_erf(&layer_norm(&x, &w, &b, 1e-5).unwrap()).unwrap();
                softmax_last_dim(&h).unwrap()
            },
            || {
                let h = candle_nn::ops::layer_norm_slow(&x, &w, &b, 1e-5).unwrap();
                candle_nn::ops::softmax(&h.gelu_erf().unwrap(), D::Minus1).unwrap()
            },
            2e-5,
        );
    }
}
