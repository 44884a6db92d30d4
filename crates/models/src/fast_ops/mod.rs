//! CPU kernels for what candle 0.11 runs slowly (scalar, one thread, or as chains of
//! allocating ops): inference linear layers (f32 and quantized), attention, GELU, SwiGLU and
//! next-token log-probabilities here, fused differentiable training ops in [`train`].

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

mod attention;
mod linear;
mod quant;
pub mod train;

#[cfg(test)]
mod test_data;

pub use attention::attention;
pub use linear::linear;
pub use quant::{quant_linear, QuantMatrix};

/// Elements per parallel task: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 16 * 1024;

/// Whole rows of `width` per parallel task: about [`CHUNK`] elements, at least one row.
fn rows_per_task(width: usize) -> usize {
    (CHUNK / width.max(1)).max(1)
}

/// `dst = beta · lhs · rhs` (f32, through gemm, `dst` not read), every matrix given by its
/// first element and its row and column strides (`dst`'s columns are adjacent).
///
/// # Safety
/// Each pointer must cover its matrix: `m × k` for `lhs`, `k × n` for `rhs`, `m × n` for `dst`,
/// at the given strides; `dst` must not overlap the inputs or be written by anyone else meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    beta: f32,
    parallelism: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        false,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        0.0,
        beta,
        false,
        false,
        false,
        parallelism,
    )
}

/// Exact-erf GELU, `x · (1 + erf(x / √2)) / 2`, for inference. On CPU f32 tensors it runs a
/// vectorisable erf (absolute error below 3e-7) on all cores; elsewhere it is candle's
/// `gelu_erf`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(x) {
        x.contiguous()?.apply_op1_no_bwd(&GeluErf)
    } else {
        x.gelu_erf()
    }
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "ralm-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, self.name())?;
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(o, s)| gelu_slice(s, o));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Softmax of `row`, in place, with the vectorisable exp.
pub(crate) fn softmax_in_place(row: &mut [f32]) {
    let max = lanes(row, f32::NEG_INFINITY, |x| x, f32::max);
    row.iter_mut().for_each(|o| *o = exp_non_positive(*o - max));
    let inv = 1.0 / lanes(row, 0.0, |x| x, |a, b| a + b);
    row.iter_mut().for_each(|o| *o *= inv);
}

/// Width of the partial results [`lanes`] keeps, so reductions vectorise.
const LANES: usize = 16;

/// `fold` over `map(x)` for every `x` of `xs` with `LANES` independent partial results: a
/// plain float reduction is one serial chain the compiler may not reorder, hence not vectorise.
#[inline(always)]
fn lanes(xs: &[f32], init: f32, map: impl Fn(f32) -> f32, fold: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = fold(*a, map(x));
        }
    }
    let mut total = tail.iter().fold(init, |a, &x| fold(a, map(x)));
    for a in acc {
        total = fold(total, a);
    }
    total
}

/// SwiGLU over the last dimension: with `x = [a, b]` split in halves, `silu(a) · b`, for
/// inference. On CPU f32 tensors it is one parallel pass with the vectorisable exp (candle's
/// version makes the two halves, `silu(a)` and the product as separate full-size passes);
/// elsewhere it is candle's `swiglu`.
pub fn swiglu(x: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(x) {
        x.contiguous()?.apply_op1_no_bwd(&SwiGlu)
    } else {
        candle_nn::ops::swiglu(x)
    }
}

struct SwiGlu;

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "ralm-swiglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, self.name())?;
        let mut dims = layout.shape().dims().to_vec();
        let width = dims.last().copied().unwrap_or(0);
        if width % 2 != 0 {
            candle_core::bail!("{}: odd last dimension {width}", self.name());
        }
        let half = width / 2;
        let rows = rows_per_task(width);
        let mut out = vec![0f32; src.len() / 2];
        out.par_chunks_mut(rows * half)
            .zip(src.par_chunks(rows * width))
            .for_each(|(o, s)| {
                for (o, s) in o.chunks_mut(half).zip(s.chunks(width)) {
                    let (gate, up) = s.split_at(half);
                    for ((o, &a), &b) in o.iter_mut().zip(gate).zip(up) {
                        // sigmoid from e^−|a| ≤ 1, so the exp never overflows.
                        let e = exp_non_positive(-a.abs());
                        let sigmoid = if a >= 0.0 { 1.0 } else { e } / (1.0 + e);
                        *o = a * sigmoid * b;
                    }
                }
            });
        if let Some(last) = dims.last_mut() {
            *last = half;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// `log softmax(logits)[target]` of each row: `logits` `[n, v]` (f32), `targets` `[n]` (u32),
/// out `[n]`. On the CPU it is one parallel pass per row with the vectorisable exp, instead of
/// candle's five single-threaded full-size ops; elsewhere it is that chain.
pub fn log_softmax_at(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(logits) && targets.dtype() == DType::U32 {
        return logits
            .contiguous()?
            .apply_op2_no_bwd(&targets.contiguous()?, &LogSoftmaxAt);
    }
    let max = logits.max_keepdim(candle_core::D::Minus1)?;
    let lse = (logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(candle_core::D::Minus1)?
        .log()?
        + &max)?;
    let picked = logits.gather(&targets.unsqueeze(1)?, 1)?;
    (picked - lse)?.squeeze(1)
}

struct LogSoftmaxAt;

impl CustomOp2 for LogSoftmaxAt {
    fn name(&self) -> &'static str {
        "ralm-log-softmax-at"
    }

    fn cpu_fwd(
        &self,
        ls: &CpuStorage,
        ll: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let logits = f32_slice(ls, ll, self.name())?;
        let targets = match (ts, tl.contiguous_offsets()) {
            (CpuStorage::U32(t), Some((start, end))) => &t[start..end],
            _ => candle_core::bail!("{}: targets must be contiguous u32", self.name()),
        };
        let (n, v) = ll.shape().dims2()?;
        if targets.len() != n {
            candle_core::bail!("{}: {} targets for {n} rows", self.name(), targets.len());
        }
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("{}: target {bad} outside the {v} columns", self.name());
        }
        let out: Vec<f32> = logits
            .par_chunks(v)
            .zip(targets.par_iter())
            .map(|(row, &target)| {
                let max = lanes(row, f32::NEG_INFINITY, |x| x, f32::max);
                let sum = lanes(row, 0.0, |x| exp_non_positive(x - max), |a, b| a + b);
                row[target as usize] - max - sum.ln()
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

/// The largest absolute difference between two tensors of one shape, as the kernels here (and
/// the models' parity tests) are checked against reference computations.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F32)?
        .to_scalar()
}

/// The contiguous f32 data of a CPU tensor, or an error naming `op`.
pub fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("{op} needs a contiguous f32 tensor"),
    }
}

/// Whether the fused CPU kernels apply to `x` (an f32 tensor on the CPU).
pub fn is_cpu_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

fn gelu_slice(src: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(src) {
        *o = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7), written branch-free so the
/// compiler vectorises it.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * exp_non_positive(-ax * ax);
    y.copysign(x)
}

/// `e^y` for `y ≤ 0` (relative error about 2e-7; exactly 0 below −87, −∞ included),
/// branch-free.
#[inline(always)]
fn exp_non_positive(y: f32) -> f32 {
    // Round-to-nearest by adding 1.5·2^23; the low mantissa bits then hold the integer.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const LOWEST: f32 = -87.0;
    let clamped = y.max(LOWEST);
    let shifted = clamped * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let k = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    // Taylor series of e^r on |r| ≤ ln2/2 to degree 6.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let e = p * f32::from_bits(((k + 127) << 23) as u32);
    if y < LOWEST {
        0.0
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn gelu_matches_candle_exact_gelu() {
        let xs: Vec<f32> = (0..40_001).map(|i| -20.0 + i as f32 * 1e-3).collect();
        let x = Tensor::from_vec(xs.clone(), xs.len(), &Device::Cpu).unwrap();
        let ours: Vec<f32> = gelu_erf(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let reference: Vec<f32> = x
            .gelu_erf()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let worst = ours
            .iter()
            .zip(&reference)
            .zip(&xs)
            .map(|((a, b), x)| (a - b).abs() / x.abs().max(1.0))
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "worst scaled error {worst}");
    }

    #[test]
    fn exp_is_accurate_and_underflows_cleanly() {
        for i in 0..=1740 {
            let y = -(i as f32) * 0.05;
            let (ours, std) = (exp_non_positive(y), y.exp());
            assert!(
                (ours - std).abs() <= 1e-6 * std + 1e-38,
                "e^{y}: {ours} vs {std}"
            );
        }
        assert!(exp_non_positive(-87.0) > 0.0);
        assert_eq!(exp_non_positive(-87.5), 0.0);
        assert_eq!(exp_non_positive(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn log_softmax_at_matches_candle() {
        let (n, v) = (37, 1001);
        let logits = Tensor::randn(0f32, 4.0, (n, v), &Device::Cpu).unwrap();
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 131) % v as u32).collect();
        let targets = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
        let ours: Vec<f32> = log_softmax_at(&logits, &targets)
            .unwrap()
            .to_vec1()
            .unwrap();
        let reference: Vec<f32> = candle_nn::ops::log_softmax(&logits, 1)
            .unwrap()
            .gather(&targets.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, r) in ours.iter().zip(&reference) {
            assert!((a - r).abs() < 1e-4, "{a} vs {r}");
        }
        let outside = Tensor::new(&[v as u32; 37], &Device::Cpu).unwrap();
        let err = log_softmax_at(&logits, &outside).unwrap_err().to_string();
        assert!(err.contains("outside"), "{err}");
    }

    #[test]
    fn swiglu_matches_candle() {
        let x = Tensor::randn(0f32, 5.0, (3, 5, 2 * 97), &Device::Cpu).unwrap();
        let ours: Vec<f32> = swiglu(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let reference = candle_nn::ops::swiglu(&x).unwrap();
        assert_eq!(reference.dims(), &[3, 5, 97]);
        let reference: Vec<f32> = reference.flatten_all().unwrap().to_vec1().unwrap();
        for (a, r) in ours.iter().zip(&reference) {
            assert!((a - r).abs() <= 1e-5 * r.abs().max(1.0), "{a} vs {r}");
        }
        let odd = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(swiglu(&odd).is_err());
    }

    #[test]
    fn non_contiguous_input_is_handled() {
        let x = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .affine(0.5, -3.0)
            .unwrap()
            .reshape((3, 4))
            .unwrap()
            .t()
            .unwrap();
        let ours: Vec<Vec<f32>> = gelu_erf(&x).unwrap().to_vec2().unwrap();
        let reference: Vec<Vec<f32>> = x.gelu_erf().unwrap().to_vec2().unwrap();
        for (a, b) in ours.iter().flatten().zip(reference.iter().flatten()) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
