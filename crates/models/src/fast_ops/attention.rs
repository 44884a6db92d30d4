//! Fused scaled dot-product attention for inference: scores, masked softmax and the weighted
//! sum of values in one parallel pass over (sequence, head, block of queries), with no
//! `[b, heads, t, s]` score tensor, no head transposes, and causal blocks that skip the keys
//! no query of the block can see.

use super::{product, softmax_in_place, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Queries per parallel task.
const BLOCK: usize = 64;

/// `softmax(scale · q kᵀ + bias) v` with heads merged: `q` `[b, heads, t, hd]`, `k` and `v`
/// `[b, kv_heads, s, hd]` (grouped-query attention when `kv_heads` divides `heads`: query head
/// `h` reads key/value head `h / (heads / kv_heads)`), `bias` additive `[b | 1, 1, t | 1, s]`
/// (−∞ masks), out `[b, t, heads · hd]`. Inputs may be strided views (e.g. transposes). On CPU
/// f32 tensors it is the fused kernel, in which fully masked keys at the end of a block of
/// queries are never computed (half the work of causal attention); elsewhere the same
/// computation in candle ops.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f32,
) -> Result<Tensor> {
    let cpu = [q, k, v].into_iter().chain(bias).all(super::is_cpu_f32);
    if cpu {
        let bias = bias.map(Tensor::contiguous).transpose()?;
        return q.apply_op3_no_bwd(k, v, &Attention { bias, scale });
    }
    let (b, nh, t, hd) = q.dims4()?;
    let (_, nkv, s, _) = k.dims4()?;
    let group = nh / nkv.max(1);
    let scores = (q
        .contiguous()?
        .reshape((b, nkv, group * t, hd))?
        .matmul(&k.t()?)?
        * f64::from(scale))?;
    let scores = match bias {
        Some(bias) => scores
            .reshape((b, nh, t, s))?
            .broadcast_add(&bias.to_dtype(scores.dtype())?)?,
        None => scores,
    };
    candle_nn::ops::softmax_last_dim(&scores)?
        .reshape((b, nkv, group * t, s))?
        .matmul(&v.contiguous()?)?
        .reshape((b, nh, t, hd))?
        .transpose(1, 2)?
        .reshape((b, t, nh * hd))
}

struct Attention {
    bias: Option<Tensor>,
    scale: f32,
}

/// A 4-D strided view: the data from its offset and the strides of its dimensions.
struct View<'a> {
    data: &'a [f32],
    stride: [usize; 4],
}

impl<'a> View<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<Self> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{op} needs f32 tensors");
        };
        let s = layout.stride();
        Ok(Self {
            data: &data[layout.start_offset()..],
            stride: [s[0], s[1], s[2], s[3]],
        })
    }

    /// The first element of matrix `[i, j, .., ..]`.
    fn matrix(&self, i: usize, j: usize) -> *const f32 {
        self.data[i * self.stride[0] + j * self.stride[1]..].as_ptr()
    }
}

/// The output pointer shared by the tasks, each of which writes its own rows and columns.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint (query rows × head columns) blocks of the output.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The element `offset` places in.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "ralm-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (b, nh, t, hd) = ql.shape().dims4()?;
        let (kb, nkv, s, khd) = kl.shape().dims4()?;
        if kb != b || khd != hd || s == 0 || nkv == 0 || nh % nkv != 0 || vl.shape() != kl.shape() {
            candle_core::bail!(
                "{name}: queries {:?}, keys {:?} and values {:?} do not fit",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        let (q, k, v) = (
            View::new(qs, ql, name)?,
            View::new(ks, kl, name)?,
            View::new(vs, vl, name)?,
        );
        let bias = self
            .bias
            .as_ref()
            .map(|bias| Bias::new(bias, b, t, s, name))
            .transpose()?;
        let group = nh / nkv;
        let width = nh * hd;
        let mut out = vec![0f32; b * t * width];
        let dst = Out(out.as_mut_ptr());
        let blocks = t.div_ceil(BLOCK);
        (0..b * nh * blocks)
            .into_par_iter()
            .for_each_init(Vec::new, |scores, task| {
                let (seq, head, block) = (task / (nh * blocks), task / blocks % nh, task % blocks);
                let rows = block * BLOCK..t.min((block + 1) * BLOCK);
                let keys = bias
                    .as_ref()
                    .map_or(s, |bias| bias.visible(seq, rows.clone()));
                let n = rows.len();
                scores.resize(n * keys, 0.0);
                let kv = head / group;
                let first_query = q.matrix(seq, head).wrapping_add(rows.start * q.stride[2]);
                // SAFETY: the views cover their tensors' layouts (checked by candle); `scores`
                // holds n × keys values; this task alone writes rows `rows` × columns of `head`.
                // One thread per product: the tasks are the parallelism.
                unsafe {
                    product(
                        (n, keys, hd),
                        scores.as_mut_ptr(),
                        keys,
                        first_query,
                        (q.stride[2], q.stride[3]),
                        k.matrix(seq, kv),
                        (k.stride[3], k.stride[2]),
                        self.scale,
                        Parallelism::None,
                    );
                }
                for (i, row) in scores.chunks_mut(keys).enumerate() {
                    if let Some(bias) = &bias {
                        let add = bias.row(seq, rows.start + i);
                        row.iter_mut().zip(add).for_each(|(x, b)| *x += b);
                    }
                    softmax_in_place(row);
                }
                let first_out = dst.at((seq * t + rows.start) * width + head * hd);
                // SAFETY: as above.
                unsafe {
                    product(
                        (n, hd, keys),
                        first_out,
                        width,
                        scores.as_ptr(),
                        (keys, 1),
                        v.matrix(seq, kv),
                        (v.stride[2], v.stride[3]),
                        1.0,
                        Parallelism::None,
                    );
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, t, width))))
    }
}

/// The additive mask, with how many leading keys each of its rows can see.
struct Bias {
    data: Vec<f32>,
    /// `[bias batch, bias row]`: one past the last key not masked with −∞ (all keys when
    /// none is visible, so such rows come out as the unfused computation's).
    visible: Vec<usize>,
    batches: usize,
    rows: usize,
    keys: usize,
}

impl Bias {
    fn new(bias: &Tensor, b: usize, t: usize, s: usize, op: &str) -> Result<Self> {
        let (bb, one, bt, bs) = bias.dims4()?;
        if one != 1 || bs != s || (bb != 1 && bb != b) || (bt != 1 && bt != t) {
            candle_core::bail!(
                "{op}: bias {:?} does not broadcast to scores [{b}, heads, {t}, {s}]",
                bias.shape()
            );
        }
        let data = bias.flatten_all()?.to_vec1::<f32>()?;
        let visible = data
            .chunks(s)
            .map(|row| {
                row.iter()
                    .rposition(|&x| x != f32::NEG_INFINITY)
                    .map_or(s, |last| last + 1)
            })
            .collect();
        Ok(Self {
            data,
            visible,
            batches: bb,
            rows: bt,
            keys: s,
        })
    }

    fn index(&self, seq: usize, row: usize) -> usize {
        let seq = if self.batches == 1 { 0 } else { seq };
        let row = if self.rows == 1 { 0 } else { row };
        seq * self.rows + row
    }

    /// Keys visible to any of `rows` of sequence `seq`.
    fn visible(&self, seq: usize, rows: std::ops::Range<usize>) -> usize {
        rows.map(|r| self.visible[self.index(seq, r)])
            .max()
            .unwrap_or(self.keys)
    }

    /// The first keys of the mask row for query `row` of sequence `seq` (zipped to length).
    fn row(&self, seq: usize, row: usize) -> &[f32] {
        let start = self.index(seq, row) * self.keys;
        &self.data[start..start + self.keys]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fast_ops::test_data::{max_diff, tensor};
    use candle_core::{DType, Device, IndexOp};

    /// The unfused reference: one matrix product per head, softmax, product with the values.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>, scale: f32) -> Tensor {
        let (b, nh, t, hd) = q.dims4().unwrap();
        let group = nh / k.dim(1).unwrap();
        let mut heads = Vec::new();
        for h in 0..nh {
            let (qh, kh, vh) = (
                q.i((.., h)).unwrap(),
                k.i((.., h / group)).unwrap(),
                v.i((.., h / group)).unwrap(),
            );
            let mut scores = (qh.matmul(&kh.t().unwrap()).unwrap() * f64::from(scale)).unwrap();
            if let Some(bias) = bias {
                scores = scores.broadcast_add(&bias.squeeze(1).unwrap()).unwrap();
            }
            let p = candle_nn::ops::softmax_last_dim(&scores).unwrap();
            heads.push(p.matmul(&vh.contiguous().unwrap()).unwrap());
        }
        Tensor::stack(&heads, 2)
            .unwrap()
            .reshape((b, t, nh * hd))
            .unwrap()
    }

    #[test]
    fn matches_unfused_attention_for_every_mask() {
        let (b, nh, nkv, t, hd) = (2, 6, 2, 150, 16);
        let q = tensor(&[b, nh, t, hd], 1);
        let k = tensor(&[b, nkv, t + 7, hd], 2);
        let v = tensor(&[b, nkv, t + 7, hd], 3);
        let s = t + 7;
        // Causal with 7 cached positions; per-sequence padding; padding of the keys only.
        let causal: Vec<f32> = (0..t)
            .flat_map(|i| (0..s).map(move |j| if j <= i + 7 { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let causal = Tensor::from_vec(causal, (1, 1, t, s), &Device::Cpu).unwrap();
        let padded: Vec<f32> = (0..b)
            .flat_map(|seq| {
                (0..t).flat_map(move |i| {
                    (0..s).map(move |j| {
                        let visible = j <= i + 7 && (j >= 3 * seq || j == i + 7);
                        if visible {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
            })
            .collect();
        let padded = Tensor::from_vec(padded, (b, 1, t, s), &Device::Cpu).unwrap();
        let keys_only = Tensor::from_vec(
            (0..b * s)
                .map(|i| if i % s < 5 { -10_000.0 } else { 0.0 })
                .collect::<Vec<f32>>(),
            (b, 1, 1, s),
            &Device::Cpu,
        )
        .unwrap();
        for bias in [None, Some(&causal), Some(&padded), Some(&keys_only)] {
            let fused = attention(&q, &k, &v, bias, 0.25).unwrap();
            let want = reference(&q, &k, &v, bias, 0.25);
            assert_eq!(fused.dims(), &[b, t, nh * hd]);
            assert!(
                max_diff(&fused, &want) < 1e-5,
                "{:?}",
                bias.map(Tensor::shape)
            );
        }
    }

    #[test]
    fn strided_views_and_the_candle_path_agree() {
        // Heads split out of `[b, t, heads · hd]` by a transpose view, not a copy.
        let (b, nh, t, hd) = (3, 4, 70, 8);
        let x = tensor(&[b, t, 3 * nh * hd], 4);
        let split = |i: usize| {
            x.narrow(2, i * nh * hd, nh * hd)
                .unwrap()
                .reshape((b, t, nh, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
        };
        let (q, k, v) = (split(0), split(1), split(2));
        assert!(!q.is_contiguous());
        let fused = attention(&q, &k, &v, None, 0.5).unwrap();
        let want = reference(
            &q.contiguous().unwrap(),
            &k.contiguous().unwrap(),
            &v,
            None,
            0.5,
        );
        assert!(max_diff(&fused, &want) < 1e-5);
        // The non-CPU route (exercised here through f64) computes the same thing.
        let as64 = |x: &Tensor| x.to_dtype(DType::F64).unwrap();
        let slow = attention(&as64(&q), &as64(&k), &as64(&v), None, 0.5).unwrap();
        assert!(max_diff(&slow.to_dtype(DType::F32).unwrap(), &want) < 1e-5);
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let q = tensor(&[1, 3, 4, 8], 5);
        let k = tensor(&[1, 2, 4, 8], 6);
        let err = attention(&q, &k, &k, None, 1.0).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
        let k = tensor(&[1, 3, 4, 8], 7);
        let bias = Tensor::zeros((1, 1, 4, 5), DType::F32, &Device::Cpu).unwrap();
        let err = attention(&q, &k, &k, Some(&bias), 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not broadcast"), "{err}");
    }
}
