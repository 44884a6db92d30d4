//! Deterministic inputs and comparisons for the kernel tests.

use candle_core::{Device, Tensor};

/// Pseudo-random values in [-scale, scale) from a fixed seed.
pub(crate) fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A CPU tensor of [`values`] in [-1, 1).
pub(crate) fn tensor(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(values(n, seed, 1.0), shape, &Device::Cpu).unwrap()
}

/// [`super::max_abs_diff`], unwrapped.
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    super::max_abs_diff(a, b).unwrap()
}
