//! Quantized linear layers for batched inference on CPU: GGUF `Q4_0`, `Q4_1` and `Q8_0`
//! weights times activations quantized on the fly to 8 bits per block of 32 (as `Q8_1`), with
//! integer dot products (AVX2 `vpmaddubsw`, 32 products per instruction) and one float scale per
//! block. candle's `QMatMul` runs one row–column dot product at a time: on SmolLM2's scoring
//! benchmark (4 × 512 tokens) it is about 28 times slower.
//!
//! Every weight block is held as unsigned 4-bit codes, one per byte, with a scale `d` and an
//! offset `m` (`w = d·q + m`): `Q4_1` as stored, `Q4_0` with `m = −8d`, and `Q8_0` as two planes
//! of codes (`q + 128 = 16·hi + lo`, `m = −128d`). Products of a code (at most 15) and an 8-bit
//! activation (at most 127 in size) summed in pairs fit 16 bits eight times over, so a block's
//! 32 products accumulate in 16-bit lanes without saturating.

use super::{f32_slice, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

/// Values per quantization block (all supported types).
const BLOCK: usize = 32;
/// Output columns per packed panel (two AVX2 registers of f32).
const PANEL: usize = 16;
/// Code bytes per panel, block and plane.
const PANEL_BLOCK_BYTES: usize = PANEL * BLOCK;
/// Rows of activations each parallel task multiplies.
const TASK_ROWS: usize = 48;

/// A quantized weight matrix `[rows, cols]` packed for [`quant_linear`].
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    planes: usize,
    /// Per panel, block and plane: for each group of 4 values, 16 columns × 4 codes.
    codes: Vec<u8>,
    /// Per panel and block: 16 scales `d` then 16 offsets `m`.
    scales: Vec<f32>,
}

/// How one GGUF block type maps onto 4-bit codes.
#[derive(Clone, Copy)]
enum Layout4 {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl Layout4 {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    fn planes(self) -> usize {
        match self {
            Self::Q8_0 => 2,
            Self::Q4_0 | Self::Q4_1 => 1,
        }
    }

    /// `(d, m, codes)` of one stored block; `codes[p][i]` is value `i`'s code in plane `p`.
    fn decode(self, b: &[u8]) -> (f32, f32, [[u8; BLOCK]; 2]) {
        let half = |i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
        let d = half(0);
        let mut codes = [[0u8; BLOCK]; 2];
        let nibbles = |qs: &[u8], out: &mut [u8; BLOCK]| {
            for (j, &q) in qs.iter().enumerate() {
                out[j] = q & 15;
                out[j + BLOCK / 2] = q >> 4;
            }
        };
        match self {
            Self::Q4_0 => {
                nibbles(&b[2..18], &mut codes[0]);
                (d, -8.0 * d, codes)
            }
            Self::Q4_1 => {
                nibbles(&b[4..20], &mut codes[0]);
                (d, half(2), codes)
            }
            Self::Q8_0 => {
                for (i, &q) in b[2..34].iter().enumerate() {
                    let u = (q as i8 as i16 + 128) as u8;
                    codes[0][i] = u & 15;
                    codes[1][i] = u >> 4;
                }
                (d, -128.0 * d, codes)
            }
        }
    }
}

impl QuantMatrix {
    /// Packs a `[rows, cols]` quantized tensor, or `None` for block types other than `Q4_0`,
    /// `Q4_1` and `Q8_0`.
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        let Some(layout) = Layout4::of(q.dtype()) else {
            return Ok(None);
        };
        let (rows, cols) = q.shape().dims2()?;
        let data = q.data()?;
        Self::pack(layout, &data, rows, cols).map(Some)
    }

    fn pack(layout: Layout4, data: &[u8], rows: usize, cols: usize) -> Result<Self> {
        let blocks = cols / BLOCK;
        let row_bytes = blocks * layout.block_bytes();
        if !cols.is_multiple_of(BLOCK) || data.len() != rows * row_bytes {
            candle_core::bail!(
                "quantized matrix [{rows}, {cols}]: {} bytes do not hold whole blocks of {BLOCK}",
                data.len()
            );
        }
        let planes = layout.planes();
        let panels = rows.div_ceil(PANEL);
        let mut codes = vec![0u8; panels * blocks * planes * PANEL_BLOCK_BYTES];
        let mut scales = vec![0f32; panels * blocks * 2 * PANEL];
        codes
            .par_chunks_mut(blocks * planes * PANEL_BLOCK_BYTES)
            .zip(scales.par_chunks_mut(blocks * 2 * PANEL))
            .enumerate()
            .for_each(|(panel, (codes, scales))| {
                for c in 0..PANEL.min(rows - panel * PANEL) {
                    let row = &data[(panel * PANEL + c) * row_bytes..][..row_bytes];
                    for (b, stored) in row.chunks_exact(layout.block_bytes()).enumerate() {
                        let (d, m, block_codes) = layout.decode(stored);
                        scales[b * 2 * PANEL + c] = d;
                        scales[b * 2 * PANEL + PANEL + c] = m;
                        for (p, plane) in block_codes.iter().take(planes).enumerate() {
                            let dst = &mut codes[(b * planes + p) * PANEL_BLOCK_BYTES..];
                            for (i, &code) in plane.iter().enumerate() {
                                dst[code_offset(c, i)] = code;
                            }
                        }
                    }
                }
            });
        Ok(Self {
            rows,
            cols,
            planes,
            codes,
            scales,
        })
    }

    /// `x Wᵀ` for `x` `[m, cols]` (row-major), as `[m, rows]` ([`quant_linear`] checks the
    /// width).
    fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.cols, "input is not [m, cols]");
        let n = self.rows;
        if m == 0 || n == 0 {
            return vec![0.0; m * n];
        }
        let acts = QuantRows::quantize(x, m, self.cols);
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        let panels = n.div_ceil(PANEL);
        let row_tasks = m.div_ceil(TASK_ROWS);
        // Split the columns too when there are too few row tasks to share out.
        let want = 4 * rayon::current_num_threads();
        let col_tasks = want.div_ceil(row_tasks).clamp(1, panels);
        let panels_per_task = panels.div_ceil(col_tasks);
        let dst = SendPtr(out.as_mut_ptr());
        (0..row_tasks * col_tasks).into_par_iter().for_each(|task| {
            let rows = task / col_tasks * TASK_ROWS..((task / col_tasks + 1) * TASK_ROWS).min(m);
            let first = task % col_tasks * panels_per_task;
            for panel in first..(first + panels_per_task).min(panels) {
                // SAFETY: tasks write disjoint (row, panel) tiles of the m × n output.
                unsafe { self.panel_product(&acts, rows.clone(), panel, dst) };
            }
        });
        // SAFETY: the tasks above wrote every one of the m × n outputs.
        unsafe { out.set_len(m * n) };
        out
    }

    /// Writes `out[rows, panel's columns]`.
    ///
    /// # Safety
    /// `dst` must hold `acts.rows × self.rows` values that nobody else writes in this tile.
    unsafe fn panel_product(
        &self,
        acts: &QuantRows,
        rows: std::ops::Range<usize>,
        panel: usize,
        dst: SendPtr,
    ) {
        let width = PANEL.min(self.rows - panel * PANEL);
        let panel_ref = self.panel(panel);
        let mut r = rows.start;
        while r < rows.end {
            let count = if rows.end - r >= 2 { 2 } else { 1 };
            let mut tile = [[0f32; PANEL]; 2];
            tile_product(&panel_ref, acts, r, count, &mut tile);
            for (i, row) in tile.iter().take(count).enumerate() {
                let out = dst.0.add((r + i) * self.rows + panel * PANEL);
                std::ptr::copy_nonoverlapping(row.as_ptr(), out, width);
            }
            r += count;
        }
    }

    /// Panel `panel`'s codes and scales.
    fn panel(&self, panel: usize) -> Panel<'_> {
        let blocks = self.cols / BLOCK;
        let bytes = blocks * self.planes * PANEL_BLOCK_BYTES;
        Panel {
            planes: self.planes,
            codes: &self.codes[panel * bytes..][..bytes],
            scales: &self.scales[panel * blocks * 2 * PANEL..][..blocks * 2 * PANEL],
        }
    }

    /// The dense matrix these codes stand for.
    #[cfg(test)]
    fn dequantize(&self) -> Vec<f32> {
        let blocks = self.cols / BLOCK;
        let mut w = vec![0f32; self.rows * self.cols];
        for (row, out) in w.chunks_mut(self.cols).enumerate() {
            let (panel, c) = (row / PANEL, row % PANEL);
            for (i, v) in out.iter_mut().enumerate() {
                let b = panel * blocks + i / BLOCK;
                let code = |p: usize| {
                    let base = (b * self.planes + p) * PANEL_BLOCK_BYTES;
                    self.codes[base + code_offset(c, i % BLOCK)] as f32
                };
                let q = (0..self.planes)
                    .map(|p| code(p) * PLANE_WEIGHT[p] as f32)
                    .sum::<f32>();
                *v = self.scales[b * 2 * PANEL + c] * q + self.scales[b * 2 * PANEL + PANEL + c];
            }
        }
        w
    }
}

/// A raw output pointer shared by the parallel tasks, which write disjoint tiles.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used for disjoint writes, see `QuantMatrix::matmul`.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Weight of each plane's code in the value (`16·hi + lo`).
const PLANE_WEIGHT: [i32; 2] = [1, 16];

/// Where value `i` (0..32) of column `c` (0..16) sits in a panel block: groups of 4 values,
/// each holding columns 0–7 then 8–15, 4 bytes per column (the operand of one `vpmaddubsw`).
fn code_offset(c: usize, i: usize) -> usize {
    (i / 4) * 64 + (c / 8) * 32 + (c % 8) * 4 + i % 4
}

/// Activations quantized per block of 32: `x ≈ d·q`, with `s = d·Σq` per block.
struct QuantRows {
    cols: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

impl QuantRows {
    fn quantize(x: &[f32], rows: usize, cols: usize) -> Self {
        let blocks = cols / BLOCK;
        let mut q = vec![0i8; rows * cols];
        let mut d = vec![0f32; rows * blocks];
        let mut s = vec![0f32; rows * blocks];
        q.par_chunks_mut(BLOCK * 64)
            .zip(d.par_chunks_mut(64).zip(s.par_chunks_mut(64)))
            .zip(x.par_chunks(BLOCK * 64))
            .for_each(|((q, (d, s)), x)| quantize_blocks(x, q, d, s));
        Self { cols, q, d, s }
    }
}

/// Quantizes consecutive blocks of 32 values.
fn quantize_blocks(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2::quantize_blocks(x, q, d, s) };
    }
    quantize_blocks_portable(x, q, d, s)
}

/// The portable block loop (rounding half to even, as the AVX2 conversion does).
fn quantize_blocks_portable(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    for (((x, q), d), s) in x
        .chunks_exact(BLOCK)
        .zip(q.chunks_exact_mut(BLOCK))
        .zip(d.iter_mut())
        .zip(s.iter_mut())
    {
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0;
        for (qv, &xv) in q.iter_mut().zip(x) {
            let r = (xv * inv).round_ties_even() as i32;
            *qv = r as i8;
            sum += r;
        }
        *d = amax / 127.0;
        *s = *d * sum as f32;
    }
}

/// Whether the AVX2 kernels can run here.
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// One panel's codes and scales (all its blocks), with its number of code planes.
struct Panel<'a> {
    planes: usize,
    codes: &'a [u8],
    scales: &'a [f32],
}

/// `tile[i] = ` row `r + i` of the activations times the panel, for `count` (1 or 2) rows.
fn tile_product(
    panel: &Panel,
    acts: &QuantRows,
    r: usize,
    count: usize,
    tile: &mut [[f32; PANEL]; 2],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        let (codes, scales) = (panel.codes, panel.scales);
        // SAFETY: the CPU has AVX2 and FMA; the slices cover the blocks the kernel reads.
        unsafe {
            return match (panel.planes, count) {
                (1, 2) => avx2::tile::<1, 2>(acts, r, codes, scales, tile),
                (1, _) => avx2::tile::<1, 1>(acts, r, codes, scales, tile),
                (_, 2) => avx2::tile::<2, 2>(acts, r, codes, scales, tile),
                _ => avx2::tile::<2, 1>(acts, r, codes, scales, tile),
            };
        }
    }
    tile_portable(panel, acts, r, count, tile)
}

/// The same sums as the AVX2 kernel, one value at a time.
fn tile_portable(
    panel: &Panel,
    acts: &QuantRows,
    r: usize,
    count: usize,
    tile: &mut [[f32; PANEL]; 2],
) {
    let Panel {
        planes,
        codes,
        scales,
    } = *panel;
    let blocks = acts.cols / BLOCK;
    for (i, out) in tile.iter_mut().take(count).enumerate() {
        let row = r + i;
        for (c, o) in out.iter_mut().enumerate() {
            let mut acc = 0f32;
            for b in 0..blocks {
                let a = &acts.q[row * acts.cols + b * BLOCK..][..BLOCK];
                let dot: i32 = (0..planes)
                    .map(|p| {
                        let base = (b * planes + p) * PANEL_BLOCK_BYTES;
                        let s: i32 = (0..BLOCK)
                            .map(|k| codes[base + code_offset(c, k)] as i32 * a[k] as i32)
                            .sum();
                        s * PLANE_WEIGHT[p]
                    })
                    .sum();
                let (d, m) = (scales[b * 2 * PANEL + c], scales[b * 2 * PANEL + PANEL + c]);
                let da = acts.d[row * blocks + b];
                acc = (dot as f32).mul_add(d * da, acc);
                acc = m.mul_add(acts.s[row * blocks + b], acc);
            }
            *o = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{QuantRows, BLOCK, PANEL, PANEL_BLOCK_BYTES, PLANE_WEIGHT};
    use std::arch::x86_64::*;

    /// [`super::quantize_blocks_portable`] eight values per instruction.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantize_blocks(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]) {
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (((x, q), d), s) in x
            .chunks_exact(BLOCK)
            .zip(q.chunks_exact_mut(BLOCK))
            .zip(d.iter_mut())
            .zip(s.iter_mut())
        {
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(x.as_ptr().add(8 * i)));
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_and_ps(v[0], abs), _mm256_and_ps(v[1], abs)),
                _mm256_max_ps(_mm256_and_ps(v[2], abs), _mm256_and_ps(v[3], abs)),
            );
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
            let inv = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
            // Round half to even (the default rounding mode).
            let r: [__m256i; 4] =
                std::array::from_fn(|i| _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv)));
            let total =
                _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
            let t = _mm_add_epi32(
                _mm256_castsi256_si128(total),
                _mm256_extracti128_si256(total, 1),
            );
            let t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0b01_00_11_10));
            let sum = _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 0b10_11_00_01)));
            let packed = _mm256_packs_epi16(
                _mm256_packs_epi32(r[0], r[1]),
                _mm256_packs_epi32(r[2], r[3]),
            );
            let packed = _mm256_permutevar8x32_epi32(packed, order);
            _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, packed);
            *d = amax / 127.0;
            *s = *d * sum as f32;
        }
    }

    /// [`super::tile_product`] for `P` planes and `R` rows: per block, 16-bit sums of
    /// `vpmaddubsw` products (codes × activations), widened once, scaled and accumulated.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const P: usize, const R: usize>(
        acts: &QuantRows,
        r: usize,
        codes: &[u8],
        scales: &[f32],
        tile: &mut [[f32; PANEL]; 2],
    ) {
        let blocks = acts.cols / BLOCK;
        debug_assert!(codes.len() >= blocks * P * PANEL_BLOCK_BYTES);
        debug_assert!(scales.len() >= blocks * 2 * PANEL);
        debug_assert!(acts.q.len() >= (r + R) * acts.cols);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let weights = [
            _mm256_set1_epi16(PLANE_WEIGHT[0] as i16),
            _mm256_set1_epi16(PLANE_WEIGHT[1] as i16),
        ];
        let a = acts.q.as_ptr().add(r * acts.cols);
        let codes = codes.as_ptr();
        for b in 0..blocks {
            let mut sums = [[_mm256_setzero_si256(); 2]; R];
            for (p, weight) in weights.iter().enumerate().take(P) {
                let mut t = [[_mm256_setzero_si256(); 2]; R];
                let block = codes.add((b * P + p) * PANEL_BLOCK_BYTES);
                for g in 0..BLOCK / 4 {
                    for h in 0..2 {
                        let w = _mm256_loadu_si256(block.add(g * 64 + h * 32) as *const __m256i);
                        for (i, ti) in t.iter_mut().enumerate() {
                            let four = a.add(i * acts.cols + b * BLOCK + g * 4) as *const i32;
                            let x = _mm256_set1_epi32(four.read_unaligned());
                            ti[h] = _mm256_add_epi16(ti[h], _mm256_maddubs_epi16(w, x));
                        }
                    }
                }
                for (s, t) in sums.iter_mut().zip(&t) {
                    for h in 0..2 {
                        s[h] = _mm256_add_epi32(s[h], _mm256_madd_epi16(t[h], *weight));
                    }
                }
            }
            let sc = scales.as_ptr().add(b * 2 * PANEL);
            for h in 0..2 {
                let d = _mm256_loadu_ps(sc.add(8 * h));
                let m = _mm256_loadu_ps(sc.add(PANEL + 8 * h));
                for i in 0..R {
                    let da = _mm256_set1_ps(*acts.d.get_unchecked((r + i) * blocks + b));
                    let sa = _mm256_set1_ps(*acts.s.get_unchecked((r + i) * blocks + b));
                    let dot = _mm256_cvtepi32_ps(sums[i][h]);
                    acc[i][h] = _mm256_fmadd_ps(dot, _mm256_mul_ps(d, da), acc[i][h]);
                    acc[i][h] = _mm256_fmadd_ps(m, sa, acc[i][h]);
                }
            }
        }
        for (out, acc) in tile.iter_mut().zip(&acc) {
            _mm256_storeu_ps(out.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), acc[1]);
        }
    }
}

/// `x Wᵀ` over the last dimension of a CPU f32 tensor `x` `[.., cols]`.
pub fn quant_linear(x: &Tensor, w: &QuantMatrix) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&QuantLinear(w))
}

struct QuantLinear<'a>(&'a QuantMatrix);

impl CustomOp1 for QuantLinear<'_> {
    fn name(&self) -> &'static str {
        "ralm-quant-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        let w = self.0;
        let mut dims = layout.shape().dims().to_vec();
        if dims.last() != Some(&w.cols) {
            candle_core::bail!(
                "{}: input {:?} does not end in the weight's {} columns",
                self.name(),
                layout.shape(),
                w.cols
            );
        }
        let m = x.len() / w.cols.max(1);
        let y = w.matmul(x, m);
        *dims.last_mut().expect("checked above") = w.rows;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// A `[rows, cols]` matrix of the given type, quantized from seeded values.
    fn quantized(dtype: GgmlDType, rows: usize, cols: usize, seed: u64) -> QTensor {
        let w = super::super::test_data::values(rows * cols, seed, 1.0);
        let t = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
        QTensor::quantize(&t, dtype).unwrap()
    }

    const TYPES: [GgmlDType; 3] = [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0];

    #[test]
    fn packing_keeps_every_weight() {
        for dtype in TYPES {
            let q = quantized(dtype, 37, 96, 1);
            let packed = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
            let want = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap();
            let want = want.to_vec1::<f32>().unwrap();
            let got = packed.dequantize();
            let err = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0., f32::max);
            assert!(err < 1e-6, "{dtype:?}: {err}");
        }
    }

    /// `x Wᵀ` in f64 from the quantized activations and the dequantized weights.
    fn reference(w: &QuantMatrix, x: &[f32], m: usize) -> Vec<f64> {
        let acts = QuantRows::quantize(x, m, w.cols);
        let blocks = w.cols / BLOCK;
        let dense = w.dequantize();
        let mut out = vec![0f64; m * w.rows];
        for i in 0..m {
            for (j, wr) in dense.chunks(w.cols).enumerate() {
                out[i * w.rows + j] = wr
                    .iter()
                    .enumerate()
                    .map(|(k, &wv)| {
                        let da = acts.d[i * blocks + k / BLOCK] as f64;
                        wv as f64 * da * acts.q[i * w.cols + k] as f64
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn product_matches_the_dequantized_reference() {
        // Odd row and column counts: single-row tiles and part-filled panels.
        for dtype in TYPES {
            let (m, n, k) = (53, 45, 160);
            let w = QuantMatrix::from_qtensor(&quantized(dtype, n, k, 2))
                .unwrap()
                .unwrap();
            let mut x = super::super::test_data::values(m * k, 3, 1.0);
            x[5 * k..6 * k].iter_mut().for_each(|v| *v = 0.0); // an all-zero row
            x[7] = 40.0; // an outlier in one block
            let got = w.matmul(&x, m);
            let want = reference(&w, &x, m);
            for (g, r) in got.iter().zip(&want) {
                assert!(
                    (*g as f64 - r).abs() < 1e-4 * (1.0 + r.abs()),
                    "{dtype:?}: {g} vs {r}"
                );
            }
            let mut portable = vec![0f32; m * n];
            let acts = QuantRows::quantize(&x, m, k);
            for panel in 0..n.div_ceil(PANEL) {
                for r in 0..m {
                    let mut tile = [[0f32; PANEL]; 2];
                    tile_portable(&w.panel(panel), &acts, r, 1, &mut tile);
                    for c in 0..PANEL.min(n - panel * PANEL) {
                        portable[r * n + panel * PANEL + c] = tile[0][c];
                    }
                }
            }
            let err = got
                .iter()
                .zip(&portable)
                .map(|(a, b)| (a - b).abs())
                .fold(0., f32::max);
            assert!(err < 1e-4, "{dtype:?}: portable path differs by {err}");
        }
    }

    #[test]
    fn activation_quantization_is_the_same_on_every_path() {
        let mut x = super::super::test_data::values(BLOCK * 70, 8, 3.0);
        x[..BLOCK].iter_mut().for_each(|v| *v = 0.0); // an all-zero block
                                                      // A block scaled by exactly 1: halves round to even.
        x[BLOCK] = 127.0;
        x[BLOCK + 1..BLOCK + 5].copy_from_slice(&[2.5, -3.5, 0.5, -0.5]);
        let blocks = x.len() / BLOCK;
        type Quantize = fn(&[f32], &mut [i8], &mut [f32], &mut [f32]);
        let run = |f: Quantize| {
            let (mut q, mut d, mut s) = (vec![0i8; x.len()], vec![0.; blocks], vec![0.; blocks]);
            f(&x, &mut q, &mut d, &mut s);
            (q, d, s)
        };
        let want = run(quantize_blocks_portable);
        assert_eq!(&want.0[BLOCK..BLOCK + 5], &[127, 2, -4, 0, 0]);
        assert_eq!((want.1[0], want.2[0]), (0.0, 0.0));
        for (i, &q) in want.0.iter().enumerate() {
            let err = (q as f32 * want.1[i / BLOCK] - x[i]).abs();
            assert!(
                err <= want.1[i / BLOCK] / 2.0 + 1e-6,
                "value {i}: error {err}"
            );
        }
        assert_eq!(run(quantize_blocks), want);
    }

    #[test]
    fn quantization_error_is_small_against_f32() {
        let (m, n, k) = (64, 96, 576);
        let q = quantized(GgmlDType::Q4_1, n, k, 4);
        let w = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
        let x = super::super::test_data::values(m * k, 5, 1.0);
        let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
        let dense = q.dequantize(&Device::Cpu).unwrap();
        let want = xt.matmul(&dense.t().unwrap()).unwrap();
        let got = quant_linear(&xt, &w).unwrap();
        let scale = want.abs().unwrap().max_keepdim(1).unwrap().max(0).unwrap();
        let scale = scale.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        let err = super::super::test_data::max_diff(&want, &got);
        assert!(
            err < 0.02 * scale,
            "8-bit activations: {err} against outputs up to {scale}"
        );
    }

    #[test]
    fn mismatched_or_empty_input() {
        let w = QuantMatrix::from_qtensor(&quantized(GgmlDType::Q8_0, 16, 64, 6))
            .unwrap()
            .unwrap();
        let x = Tensor::zeros((3, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = quant_linear(&x, &w).unwrap_err().to_string();
        assert!(e.contains("64 columns"), "{e}");
        let empty = Tensor::zeros((2, 0, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(quant_linear(&empty, &w).unwrap().dims(), &[2, 0, 16]);
    }

    #[test]
    fn other_block_types_are_left_to_candle() {
        let q = quantized(GgmlDType::Q6K, 4, 256, 7);
        assert!(QuantMatrix::from_qtensor(&q).unwrap().is_none());
    }
}
