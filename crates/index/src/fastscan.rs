//! 4-bit PQ codes in blocks of 32, scanned with byte-shuffle table lookups ("fast scan"): each
//! sub-quantiser's 16 distances are quantised to bytes, so one 16-entry table fits a vector
//! register and one shuffle looks up 16 codes at once; sums are kept in u16.
//!
//! Block layout (`block_bytes(m)` bytes for 32 codes of `m` sub-quantisers, `m` even): each pair
//! of sub-quantisers (2p, 2p + 1) takes 32 bytes, the first 16 for sub-quantiser 2p and the last
//! 16 for 2p + 1; byte b of each half holds code b in its low nibble and code b + 16 in its high
//! nibble. The query's tables are laid out `m × 16` bytes, so the 32 table bytes of a pair line up
//! with the pair's 32 code bytes.

/// Codes per block.
pub(crate) const BLOCK: usize = 32;
/// Most sub-quantisers a u16 sum of byte table entries can hold (`m · 255 ≤ 65,535`).
pub(crate) const MAX_M: usize = 256;

/// Bytes of one block of `BLOCK` codes of `m` sub-quantisers.
pub(crate) fn block_bytes(m: usize) -> usize {
    BLOCK * m / 2
}

/// Bytes of the blocks holding `n` codes.
pub(crate) fn blocks_bytes(n: usize, m: usize) -> usize {
    n.div_ceil(BLOCK) * block_bytes(m)
}

/// Byte index and bit shift of sub-quantiser `j` of code `i` within its block.
#[inline]
fn nibble(i: usize, j: usize) -> (usize, u32) {
    let i = i % BLOCK;
    (
        32 * (j / 2) + 16 * (j % 2) + i % 16,
        if i < 16 { 0 } else { 4 },
    )
}

/// Appends `code` (`m` values below 16) as code number `len` of the blocked list `blocks`.
pub(crate) fn push(blocks: &mut Vec<u8>, len: usize, code: &[u8]) {
    let m = code.len();
    if len.is_multiple_of(BLOCK) {
        blocks.resize(blocks.len() + block_bytes(m), 0);
    }
    let block = blocks.len() - block_bytes(m);
    for (j, &c) in code.iter().enumerate() {
        debug_assert!(c < 16);
        let (b, shift) = nibble(len, j);
        blocks[block + b] |= c << shift;
    }
}

/// Code number `i` of the blocked list `blocks`, unpacked into `out` (`m` bytes).
pub(crate) fn get(blocks: &[u8], i: usize, out: &mut [u8]) {
    let block = &blocks[(i / BLOCK) * block_bytes(out.len())..];
    for (j, o) in out.iter_mut().enumerate() {
        let (b, shift) = nibble(i, j);
        *o = (block[b] >> shift) & 15;
    }
}

/// A query's tables quantised to bytes: an entry `t` of sub-quantiser `j` is
/// `min_j + unit · lut[j·16 + c]`, so a code's table sum is `bias + unit · Σ lut`.
pub(crate) struct ByteTables {
    /// `m × 16` quantised entries.
    pub lut: Vec<u8>,
    /// Value of one quantisation step.
    pub unit: f32,
    /// Sum of every sub-quantiser's smallest entry.
    pub bias: f32,
}

impl ByteTables {
    /// Room for the tables of `m` sub-quantisers.
    pub fn new(m: usize) -> Self {
        ByteTables {
            lut: vec![0; m * 16],
            unit: 1.0,
            bias: 0.0,
        }
    }

    /// Quantises `table` (`m × 16` f32 entries) with one step for all sub-quantisers, the
    /// widest range over 255 steps, rounding to the nearest step.
    pub fn quantise(&mut self, table: &[f32]) {
        assert!(table.len() == self.lut.len() && table.len() <= MAX_M * 16);
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present; the tables are whole 16-entry rows of equal count.
            unsafe { self.quantise_avx2(table) };
            return;
        }
        self.quantise_portable(table)
    }

    /// `quantise`, one entry at a time.
    fn quantise_portable(&mut self, table: &[f32]) {
        let range = |t: &[f32]| {
            t.iter().fold((t[0], t[0]), |(lo, hi), &x| {
                (if x < lo { x } else { lo }, if x > hi { x } else { hi })
            })
        };
        let mut lows = [0f32; MAX_M];
        let (mut widest, mut bias) = (0f32, 0f32);
        for (t, low) in table.chunks_exact(16).zip(&mut lows) {
            let (lo, hi) = range(t);
            widest = widest.max(hi - lo);
            bias += lo;
            *low = lo;
        }
        let inv = self.set_unit(widest, bias);
        for ((t, q), &lo) in table
            .chunks_exact(16)
            .zip(self.lut.chunks_exact_mut(16))
            .zip(&lows)
        {
            for (x, y) in t.iter().zip(q) {
                // In 0..=255.5 and non-negative, so truncating after adding a half rounds.
                *y = ((x - lo) * inv + 0.5) as u8;
            }
        }
    }

    /// Sets the step and bias from the widest range and the sum of minima; returns 1 / step.
    fn set_unit(&mut self, widest: f32, bias: f32) -> f32 {
        self.unit = if widest > 0.0 { widest / 255.0 } else { 1.0 };
        self.bias = bias;
        1.0 / self.unit
    }

    /// `quantise` a table (16 entries, two registers) at a time, with the same arithmetic.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn quantise_avx2(&mut self, table: &[f32]) {
        use std::arch::x86_64::*;
        // Every lane of the result holds the smallest (largest) of the 8 lanes of `v`.
        let all = |v: __m256, f: unsafe fn(__m256, __m256) -> __m256| {
            let v = f(v, _mm256_permute2f128_ps::<1>(v, v));
            let v = f(v, _mm256_shuffle_ps::<0b0100_1110>(v, v));
            f(v, _mm256_shuffle_ps::<0b1011_0001>(v, v))
        };
        let p = table.as_ptr();
        let m = table.len() / 16;
        let mut lows = [_mm256_setzero_ps(); MAX_M];
        let (mut widest, mut bias) = (0f32, 0f32);
        for (j, lo) in lows.iter_mut().enumerate().take(m) {
            let (a, b) = (
                _mm256_loadu_ps(p.add(16 * j)),
                _mm256_loadu_ps(p.add(16 * j + 8)),
            );
            *lo = all(_mm256_min_ps(a, b), |x, y| _mm256_min_ps(x, y));
            let hi = all(_mm256_max_ps(a, b), |x, y| _mm256_max_ps(x, y));
            widest = widest.max(_mm256_cvtss_f32(_mm256_sub_ps(hi, *lo)));
            bias += _mm256_cvtss_f32(*lo);
        }
        let inv = _mm256_set1_ps(self.set_unit(widest, bias));
        let half = _mm256_set1_ps(0.5);
        let out = self.lut.as_mut_ptr();
        for (j, &lo) in lows.iter().enumerate().take(m) {
            let step = |x: __m256| {
                _mm256_cvttps_epi32(_mm256_add_ps(
                    _mm256_mul_ps(_mm256_sub_ps(x, lo), inv),
                    half,
                ))
            };
            let a = step(_mm256_loadu_ps(p.add(16 * j)));
            let b = step(_mm256_loadu_ps(p.add(16 * j + 8)));
            // i32 → i16 (lanes interleaved by 128-bit half, put back in order) → u8.
            let w = _mm256_permute4x64_epi64::<0b1101_1000>(_mm256_packs_epi32(a, b));
            let bytes =
                _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
            _mm_storeu_si128(out.add(16 * j).cast(), bytes);
        }
    }
}

/// Table sums `bias + unit · Σ lut` of all 32 codes of each block in `blocks` (`m` even, at
/// most `MAX_M`) under each of `Q` queries' tables `t`, into `out` (32 per block, in code
/// order). Several queries share each load of the codes.
pub(crate) fn scores<const Q: usize>(
    t: [&ByteTables; Q],
    blocks: &[u8],
    m: usize,
    mut out: [&mut [f32]; Q],
) {
    debug_assert!(m.is_multiple_of(2) && m <= MAX_M);
    assert!(t.iter().all(|t| t.lut.len() == m * 16));
    assert!(out
        .iter()
        .all(|o| o.len() >= blocks.len() / block_bytes(m) * BLOCK));
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present, and the kernel reads only whole blocks of `blocks`, pairs of
        // each `lut` and writes 32 entries of each `out` per block, all within the slices
        // (checked above).
        unsafe { scores_avx2(t, blocks, m, out) };
        return;
    }
    for (t, o) in t.into_iter().zip(out.iter_mut()) {
        scores_portable(t, blocks, m, o);
    }
}

/// `scores` for one query, one lookup at a time.
fn scores_portable(t: &ByteTables, blocks: &[u8], m: usize, out: &mut [f32]) {
    let mut code = vec![0u8; m];
    for (blk, o) in blocks
        .chunks_exact(block_bytes(m))
        .zip(out.chunks_exact_mut(BLOCK))
    {
        for (i, oi) in o.iter_mut().enumerate() {
            get(blk, i, &mut code);
            let sum: u32 = code
                .iter()
                .enumerate()
                .map(|(j, &c)| t.lut[j * 16 + c as usize] as u32)
                .sum();
            *oi = t.bias + t.unit * sum as f32;
        }
    }
}

/// `scores` with AVX2: per pair of sub-quantisers and query, two shuffles look up 64 entries
/// (low and high nibbles), added as whole 16-bit lanes (even + 256 · odd entry) and, shifted,
/// as the odd entries alone, into four u16 accumulators; each block's 32 sums per query are
/// then separated, interleaved back into code order and scaled to f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scores_avx2<const Q: usize>(
    t: [&ByteTables; Q],
    blocks: &[u8],
    m: usize,
    mut out: [&mut [f32]; Q],
) {
    use std::arch::x86_64::*;
    let nib = _mm256_set1_epi8(0x0f);
    for (b, blk) in blocks.chunks_exact(block_bytes(m)).enumerate() {
        let mut acc = [[_mm256_setzero_si256(); 4]; Q];
        for p in 0..m / 2 {
            let c = _mm256_loadu_si256(blk.as_ptr().add(32 * p) as *const __m256i);
            let (cl, ch) = (
                _mm256_and_si256(c, nib),
                _mm256_and_si256(_mm256_srli_epi16(c, 4), nib),
            );
            for (a, t) in acc.iter_mut().zip(&t) {
                let t = _mm256_loadu_si256(t.lut.as_ptr().add(32 * p) as *const __m256i);
                let (lo, hi) = (_mm256_shuffle_epi8(t, cl), _mm256_shuffle_epi8(t, ch));
                a[0] = _mm256_add_epi16(a[0], lo);
                a[1] = _mm256_add_epi16(a[1], _mm256_srli_epi16(lo, 8));
                a[2] = _mm256_add_epi16(a[2], hi);
                a[3] = _mm256_add_epi16(a[3], _mm256_srli_epi16(hi, 8));
            }
        }
        for ((a, t), o) in acc.iter().zip(&t).zip(out.iter_mut()) {
            // Even entries: whole lanes minus the odd ones moved up a byte (mod 2^16, exact).
            let even = |w: __m256i, odd: __m256i| _mm256_sub_epi16(w, _mm256_slli_epi16(odd, 8));
            // Lane 0 holds the even sub-quantisers' sums, lane 1 the odd ones': add the halves.
            let fold = |a: __m256i| {
                _mm_add_epi16(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1))
            };
            let (even_lo, odd_lo) = (fold(even(a[0], a[1])), fold(a[1]));
            let (even_hi, odd_hi) = (fold(even(a[2], a[3])), fold(a[3]));
            let (unit, bias) = (_mm256_set1_ps(t.unit), _mm256_set1_ps(t.bias));
            let dst = o.as_mut_ptr().add(b * BLOCK);
            for (i, sums) in [
                _mm_unpacklo_epi16(even_lo, odd_lo),
                _mm_unpackhi_epi16(even_lo, odd_lo),
                _mm_unpacklo_epi16(even_hi, odd_hi),
                _mm_unpackhi_epi16(even_hi, odd_hi),
            ]
            .into_iter()
            .enumerate()
            {
                let x = _mm256_cvtepi32_ps(_mm256_cvtepu16_epi32(sums));
                _mm256_storeu_ps(dst.add(8 * i), _mm256_add_ps(bias, _mm256_mul_ps(unit, x)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random_codes(rng: &mut Rng, n: usize, m: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| (0..m).map(|_| (rng.uniform() * 16.0) as u8 % 16).collect())
            .collect()
    }

    #[test]
    fn blocked_codes_read_back_as_written() {
        let mut rng = Rng::new(3);
        for m in [2, 6, 96] {
            let codes = random_codes(&mut rng, 77, m);
            let mut blocks = Vec::new();
            for (i, c) in codes.iter().enumerate() {
                push(&mut blocks, i, c);
            }
            assert_eq!(blocks.len(), blocks_bytes(77, m));
            let mut out = vec![0u8; m];
            for (i, c) in codes.iter().enumerate() {
                get(&blocks, i, &mut out);
                assert_eq!(&out, c, "m {m} code {i}");
            }
        }
    }

    #[test]
    fn scans_sum_the_table_entries_of_every_code() {
        let mut rng = Rng::new(8);
        for m in [2, 4, 10, 144, MAX_M] {
            let n = 70;
            let codes = random_codes(&mut rng, n, m);
            let mut blocks = Vec::new();
            for (i, c) in codes.iter().enumerate() {
                push(&mut blocks, i, c);
            }
            // Entries up to 255 so that the widest sums reach the u16 limit at MAX_M.
            let lut: Vec<u8> = (0..m * 16)
                .map(|i| {
                    if i % 5 == 0 {
                        255
                    } else {
                        (rng.uniform() * 256.0) as u8
                    }
                })
                .collect();
            let nb = n.div_ceil(BLOCK);
            let t = ByteTables {
                lut,
                unit: 1.0,
                bias: 0.0,
            };
            // What `scores` should give: bias + unit · Σ table bytes, code by code.
            let expected = |t: &ByteTables| -> Vec<f32> {
                codes
                    .iter()
                    .map(|c| {
                        let sum: u32 = c
                            .iter()
                            .enumerate()
                            .map(|(j, &x)| t.lut[j * 16 + x as usize] as u32)
                            .sum();
                        t.bias + t.unit * sum as f32
                    })
                    .collect()
            };
            let want = expected(&t);
            // The second query's tables are the first's reversed, scaled and shifted.
            let mut lut2 = t.lut.clone();
            lut2.reverse();
            let t2 = ByteTables {
                lut: lut2,
                unit: 0.5,
                bias: -3.0,
            };
            let want2 = expected(&t2);
            let mut out = vec![0f32; nb * BLOCK];
            scores_portable(&t, &blocks, m, &mut out);
            assert_eq!(out[..n], want[..], "m {m} portable");
            scores([&t], &blocks, m, [&mut out]);
            assert_eq!(out[..n], want[..], "m {m} one query");
            let mut out2 = vec![0f32; nb * BLOCK];
            scores([&t, &t2], &blocks, m, [&mut out, &mut out2]);
            assert_eq!(out[..n], want[..], "m {m} first of two");
            assert_eq!(out2[..n], want2[..], "m {m} second of two");
        }
    }

    #[test]
    fn byte_tables_are_within_half_a_step_of_the_floats() {
        let mut rng = Rng::new(4);
        let m = 12;
        let table: Vec<f32> = (0..m * 16).map(|_| 3.0 * rng.normal()).collect();
        let mut bt = ByteTables::new(m);
        bt.quantise(&table);
        let code: Vec<u8> = (0..m).map(|j| (j * 5 % 16) as u8).collect();
        let exact: f32 = code
            .iter()
            .enumerate()
            .map(|(j, &c)| table[j * 16 + c as usize])
            .sum();
        let sum: u32 = code
            .iter()
            .enumerate()
            .map(|(j, &c)| bt.lut[j * 16 + c as usize] as u32)
            .sum();
        let approx = bt.bias + bt.unit * sum as f32;
        assert!(
            (approx - exact).abs() <= 0.5 * bt.unit * m as f32 + 1e-4,
            "{approx} vs {exact}"
        );
        assert!(bt.lut.contains(&255) && bt.lut.contains(&0));
    }

    #[test]
    fn byte_tables_are_the_same_on_every_path() {
        let mut rng = Rng::new(5);
        for m in [1, 2, 7, 96, MAX_M] {
            let mut table: Vec<f32> = (0..m * 16).map(|_| 5.0 * rng.normal()).collect();
            let (mut fast, mut plain) = (ByteTables::new(m), ByteTables::new(m));
            fast.quantise(&table);
            plain.quantise_portable(&table);
            assert_eq!(fast.lut, plain.lut, "m {m}");
            assert_eq!((fast.unit, fast.bias), (plain.unit, plain.bias), "m {m}");
            // Constant tables: zero range, step 1, all entries 0.
            table.iter_mut().for_each(|x| *x = 2.5);
            fast.quantise(&table);
            assert!(
                fast.lut.iter().all(|&b| b == 0) && fast.unit == 1.0,
                "m {m}"
            );
        }
    }
}
