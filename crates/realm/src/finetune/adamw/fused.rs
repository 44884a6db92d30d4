//! AdamW's per-step arithmetic as in-place CPU passes: the squared gradient norm in one read,
//! and the moment and weight updates without temporaries. Tensor-op AdamW allocates about a
//! dozen parameter-sized temporaries per variable per step, a fifth of a MiniLM training step.

use candle_core::{CpuStorage, CustomOp1, InplaceOp2, InplaceOp3, Layout, Result, Shape, Tensor};
use ralm_models::fast_ops::{f32_slice, is_cpu_f32};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 64 * 1024;

/// Whether the fused kernels apply: a contiguous f32 tensor on the CPU.
pub(super) fn applies(t: &Tensor) -> bool {
    is_cpu_f32(t) && t.is_contiguous()
}

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(d), Some((a, b))) => Ok(&mut d[a..b]),
        _ => candle_core::bail!("{op} needs a contiguous f32 tensor"),
    }
}

/// Σ g² of a CPU f32 tensor, accumulated in f64.
pub(super) fn sum_squares(g: &Tensor) -> Result<f64> {
    let s = g.contiguous()?.apply_op1_no_bwd(&SumSquares)?;
    Ok(s.to_vec1::<f64>()?[0])
}

struct SumSquares;

impl CustomOp1 for SumSquares {
    fn name(&self) -> &'static str {
        "ralm-sum-squares"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(s, l, self.name())?;
        let total: f64 = g
            .par_chunks(CHUNK)
            .map(|c| c.iter().map(|&x| x * x).sum::<f32>() as f64)
            .sum();
        Ok((CpuStorage::F64(vec![total]), Shape::from(1)))
    }
}

/// `m ← β·m + (1 − β)·(scale·g)^power` in place (power 1 for the first moment, 2 for the second).
pub(super) struct Moment {
    pub beta: f32,
    pub scale: f32,
    pub squared: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "ralm-adamw-moment"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<()> {
        let m = slice_mut(dst, dst_l, self.name())?;
        let g = f32_slice(gs, gl, self.name())?;
        let (beta, rest) = (self.beta, 1.0 - self.beta);
        m.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(m, g)| {
                for (m, &g) in m.iter_mut().zip(g) {
                    let g = g * self.scale;
                    let g = if self.squared { g * g } else { g };
                    *m = beta * *m + rest * g;
                }
            });
        Ok(())
    }
}

/// `p ← decay·p − lr·(m / bc1) / (sqrt(v / bc2) + eps)` in place.
pub(super) struct Update {
    pub decay: f32,
    pub lr: f32,
    pub bc1: f32,
    pub bc2: f32,
    pub eps: f32,
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "ralm-adamw-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        ms: &CpuStorage,
        ml: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<()> {
        let p = slice_mut(dst, dst_l, self.name())?;
        let (m, v) = (
            f32_slice(ms, ml, self.name())?,
            f32_slice(vs, vl, self.name())?,
        );
        let (inv_bc1, inv_bc2) = (1.0 / self.bc1, 1.0 / self.bc2);
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(p, (m, v))| {
                for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                    let step = m * inv_bc1 / ((v * inv_bc2).sqrt() + self.eps);
                    *p = self.decay * *p - self.lr * step;
                }
            });
        Ok(())
    }
}
