//! CPU kernels for what candle 0.11 runs slowly (scalar, one thread, or as chains of
//! allocating ops): inference GELU here, fused differentiable training ops in [`train`].

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

pub mod train;

/// Elements per parallel task: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 16 * 1024;

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

/// `e^y` for `y ≤ 0` (relative error about 2e-7; underflows to 0 below −87), branch-free.
#[inline(always)]
fn exp_non_positive(y: f32) -> f32 {
    // Round-to-nearest by adding 1.5·2^23; the low mantissa bits then hold the integer.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let y = y.max(-87.0);
    let shifted = y * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let k = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = y - n * LN2_HI - n * LN2_LO;
    // Taylor series of e^r on |r| ≤ ln2/2 to degree 6.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((k + 127) << 23) as u32)
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
        assert_eq!(exp_non_positive(-1e4), exp_non_positive(-87.0));
        assert!(exp_non_positive(-1e4) < 2e-38);
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
