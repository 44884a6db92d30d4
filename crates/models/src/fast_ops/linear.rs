//! A linear layer for inference, `x Wᵀ + b`, as one matrix product into an output that is
//! never zero-filled, with the bias added in place (candle's `Linear` zero-fills the product and
//! then allocates a second tensor for the bias sum).

use super::{
    f32_slice, product, rows_per_task, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor,
};
use gemm::Parallelism;
use rayon::prelude::*;

/// `x Wᵀ + bias` over the last dimension of `x` `[.., in]`, with `weight` `[out, in]` and
/// `bias` `[out]`. On CPU f32 tensors it is the fused product; elsewhere candle's `Linear`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let cpu = [x, weight].into_iter().chain(bias).all(super::is_cpu_f32);
    if !cpu {
        return candle_core::Module::forward(
            &candle_nn::Linear::new(weight.clone(), bias.cloned()),
            x,
        );
    }
    let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
    x.contiguous()?
        .apply_op2_no_bwd(&weight.contiguous()?, &Linear { bias })
}

struct Linear {
    bias: Option<Vec<f32>>,
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "ralm-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let x = f32_slice(xs, xl, name)?;
        let w = f32_slice(ws, wl, name)?;
        let (out, width) = wl.shape().dims2()?;
        let mut dims = xl.shape().dims().to_vec();
        if dims.last() != Some(&width) || self.bias.as_ref().is_some_and(|b| b.len() != out) {
            candle_core::bail!(
                "{name}: input {:?}, weight {:?} and bias of {:?} values do not fit",
                xl.shape(),
                wl.shape(),
                self.bias.as_ref().map(Vec::len)
            );
        }
        let rows = x.len() / width.max(1);
        let mut y: Vec<f32> = Vec::with_capacity(rows * out);
        // SAFETY: `x` is rows × width and `w` out × width, both contiguous; gemm writes every
        // one of the rows × out outputs (it never reads `dst`) before `set_len` exposes them.
        unsafe {
            product(
                (rows, out, width),
                y.as_mut_ptr(),
                out,
                x.as_ptr(),
                (width, 1),
                w.as_ptr(),
                (1, width),
                1.0,
                Parallelism::Rayon(rayon::current_num_threads()),
            );
            y.set_len(rows * out);
        }
        if let Some(bias) = &self.bias {
            y.par_chunks_mut(rows_per_task(out) * out)
                .for_each(|chunk| {
                    for row in chunk.chunks_mut(out) {
                        row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
                    }
                });
        }
        if let Some(last) = dims.last_mut() {
            *last = out;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fast_ops::test_data::{max_diff, tensor};
    use candle_core::{DType, Module};

    #[test]
    fn matches_candle_linear_with_and_without_bias() {
        let x = tensor(&[3, 37, 48], 1);
        let w = tensor(&[70, 48], 2);
        let b = tensor(&[70], 3);
        for bias in [None, Some(&b)] {
            let want = candle_nn::Linear::new(w.clone(), bias.cloned())
                .forward(&x)
                .unwrap();
            let got = linear(&x, &w, bias).unwrap();
            assert_eq!(got.dims(), &[3, 37, 70]);
            assert!(max_diff(&got, &want) < 1e-5);
        }
        // A strided input and the candle route (f64) give the same.
        let xt = x.transpose(0, 1).unwrap();
        let want = candle_nn::Linear::new(w.clone(), Some(b.clone()))
            .forward(&xt)
            .unwrap();
        assert!(max_diff(&linear(&xt, &w, Some(&b)).unwrap(), &want) < 1e-5);
        let as64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let slow = linear(&as64(&x), &as64(&w), Some(&as64(&b))).unwrap();
        let want = candle_nn::Linear::new(w, Some(b)).forward(&x).unwrap();
        assert!(max_diff(&slow.to_dtype(DType::F32).unwrap(), &want) < 1e-5);
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let x = tensor(&[2, 5, 8], 4);
        let err = linear(&x, &tensor(&[6, 7], 5), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("do not fit"), "{err}");
        let err = linear(&x, &tensor(&[6, 8], 5), Some(&tensor(&[5], 6)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("do not fit"), "{err}");
    }
}
