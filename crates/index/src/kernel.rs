//! The blocked score kernel: query micro-blocks × packed key panels, written so LLVM
//! vectorises it (fixed-size accumulator tiles over contiguous f32), with an AVX2+FMA
//! version selected at run time on x86-64.

use half::{f16, slice::HalfFloatSliceExt};

/// Keys per packed panel (one accumulator row of the micro-kernel).
pub(crate) const PANEL: usize = 16;
/// Queries per micro-block.
pub(crate) const QB: usize = 6;

/// Packs `nq` row-major queries into micro-blocks laid out `[block][dim][QB]`, zero padded.
pub(crate) fn pack_queries(queries: &[f32], nq: usize, dim: usize) -> Vec<f32> {
    let nb = nq.div_ceil(QB);
    let mut out = vec![0.0; nb * dim * QB];
    for (q, row) in queries.chunks_exact(dim).take(nq).enumerate() {
        let base = (q / QB) * dim * QB + q % QB;
        for (d, &x) in row.iter().enumerate() {
            out[base + d * QB] = x;
        }
    }
    out
}

/// Row-major key rows of either precision.
#[derive(Clone, Copy)]
pub(crate) enum KeyRows<'a> {
    /// f32 rows.
    F32(&'a [f32]),
    /// f16 rows, converted to f32 while packing.
    F16(&'a [f16]),
}

impl<'a> KeyRows<'a> {
    /// Rows `r0..r1` of rows of `dim` values.
    pub fn range(self, dim: usize, r0: usize, r1: usize) -> Self {
        match self {
            KeyRows::F32(k) => KeyRows::F32(&k[r0 * dim..r1 * dim]),
            KeyRows::F16(k) => KeyRows::F16(&k[r0 * dim..r1 * dim]),
        }
    }

    /// Number of values.
    fn len(&self) -> usize {
        match self {
            KeyRows::F32(k) => k.len(),
            KeyRows::F16(k) => k.len(),
        }
    }
}

/// Packs `n` key rows into panels laid out `[panel][dim][PANEL]`, zero padded, into `out`
/// (f16 rows are converted a row at a time, with the CPU's vector conversion where it has one).
pub(crate) fn pack_keys(rows: KeyRows<'_>, n: usize, dim: usize, out: &mut Vec<f32>) {
    let np = n.div_ceil(PANEL);
    out.clear();
    out.resize(np * dim * PANEL, 0.0);
    let mut row = vec![
        0f32;
        if matches!(rows, KeyRows::F16(_)) {
            dim
        } else {
            0
        }
    ];
    for r in 0..n {
        let base = (r / PANEL) * dim * PANEL + r % PANEL;
        let src = match rows {
            KeyRows::F32(k) => &k[r * dim..(r + 1) * dim],
            KeyRows::F16(k) => {
                k[r * dim..(r + 1) * dim].convert_to_f32_slice(&mut row);
                &row
            }
        };
        for (d, &x) in src.iter().enumerate() {
            out[base + d * PANEL] = x;
        }
    }
}

/// `Q` queries (of a packed micro-block) × one panel; every score sums over `d` in order,
/// so a key's score never depends on its position or on how many queries share the block.
#[inline(always)]
fn micro<const Q: usize>(qp: &[f32], panel: &[f32], out: &mut [f32], ld: usize) {
    let mut acc = [[0f32; PANEL]; Q];
    for (kv, qv) in panel.chunks_exact(PANEL).zip(qp.chunks_exact(QB)) {
        for i in 0..Q {
            for j in 0..PANEL {
                acc[i][j] += qv[i] * kv[j];
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        out[i * ld..i * ld + PANEL].copy_from_slice(a);
    }
}

/// The AVX2+FMA micro-kernel: 2·`Q` vector accumulators, two key loads and `Q` broadcasts per
/// dimension (the same per-key summation order as [`micro`], fused).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_avx2<const Q: usize>(qp: &[f32], panel: &[f32], out: &mut [f32], ld: usize) {
    use std::arch::x86_64::*;
    let dim = panel.len() / PANEL;
    assert!(qp.len() >= dim * QB && out.len() >= (Q - 1) * ld + PANEL);
    let (kp, qptr) = (panel.as_ptr(), qp.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 2]; Q];
    for d in 0..dim {
        // SAFETY: d < dim, so the panel reads end at dim·PANEL and the query reads at dim·QB.
        let k0 = _mm256_loadu_ps(kp.add(d * PANEL));
        let k1 = _mm256_loadu_ps(kp.add(d * PANEL + 8));
        for (i, a) in acc.iter_mut().enumerate() {
            let q = _mm256_broadcast_ss(&*qptr.add(d * QB + i));
            a[0] = _mm256_fmadd_ps(q, k0, a[0]);
            a[1] = _mm256_fmadd_ps(q, k1, a[1]);
        }
    }
    for (i, a) in acc.iter().enumerate() {
        let o = &mut out[i * ld..i * ld + PANEL];
        _mm256_storeu_ps(o.as_mut_ptr(), a[0]);
        _mm256_storeu_ps(o.as_mut_ptr().add(8), a[1]);
    }
}

/// Calls `f` for each (query micro-block, panel) pair with the output slice it fills.
#[inline(always)]
fn tiles(
    qpack: &[f32],
    nq: usize,
    panels: &[f32],
    npanels: usize,
    dim: usize,
    out: &mut [f32],
    mut f: impl FnMut(usize, &[f32], &[f32], &mut [f32], usize),
) {
    let ld = npanels * PANEL;
    let pstride = dim * PANEL;
    for p in 0..npanels {
        let panel = &panels[p * pstride..(p + 1) * pstride];
        for b in 0..nq.div_ceil(QB) {
            let qp = &qpack[b * dim * QB..(b + 1) * dim * QB];
            let o = &mut out[b * QB * ld + p * PANEL..];
            f((nq - b * QB).min(QB), qp, panel, o, ld);
        }
    }
}

/// Inner products of `nq` packed queries with `npanels` packed key panels into `out`
/// (row-major `nq × npanels·PANEL`).
pub(crate) fn dots(
    qpack: &[f32],
    nq: usize,
    panels: &[f32],
    npanels: usize,
    dim: usize,
    out: &mut [f32],
) {
    assert!(out.len() >= nq * npanels * PANEL && qpack.len() >= nq.div_ceil(QB) * dim * QB);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        tiles(
            qpack,
            nq,
            panels,
            npanels,
            dim,
            out,
            |q, qp, panel, o, ld| {
                // SAFETY: the CPU supports AVX2 and FMA (checked above).
                unsafe {
                    match q {
                        6 => micro_avx2::<6>(qp, panel, o, ld),
                        5 => micro_avx2::<5>(qp, panel, o, ld),
                        4 => micro_avx2::<4>(qp, panel, o, ld),
                        3 => micro_avx2::<3>(qp, panel, o, ld),
                        2 => micro_avx2::<2>(qp, panel, o, ld),
                        _ => micro_avx2::<1>(qp, panel, o, ld),
                    }
                }
            },
        );
        return;
    }
    tiles(
        qpack,
        nq,
        panels,
        npanels,
        dim,
        out,
        |q, qp, panel, o, ld| match q {
            6 => micro::<6>(qp, panel, o, ld),
            5 => micro::<5>(qp, panel, o, ld),
            4 => micro::<4>(qp, panel, o, ld),
            3 => micro::<3>(qp, panel, o, ld),
            2 => micro::<2>(qp, panel, o, ld),
            _ => micro::<1>(qp, panel, o, ld),
        },
    );
}

/// Columns of [`dots_transposed`] kept in registers while the rows stream past.
const COLS: usize = 32;

/// `out[c] = Σ_d x[d]·t[d·k + c]` for the `k = out.len()` columns of a `dim × k` matrix `t`
/// (rows transposed so that every step is a broadcast over contiguous columns), `COLS`
/// columns at a time so that the sums stay in registers, then 16 at a time (the 16 centroids
/// of 4-bit codes).
#[inline(always)]
fn dots_transposed_generic(t: &[f32], x: &[f32], out: &mut [f32]) {
    let k = out.len();
    let wide = k - k % COLS;
    let narrow = k - k % 16;
    for c0 in (0..wide).step_by(COLS) {
        dots_columns::<COLS>(t, x, k, c0, out);
    }
    for c0 in (wide..narrow).step_by(16) {
        dots_columns::<16>(t, x, k, c0, out);
    }
    for (c, o) in out.iter_mut().enumerate().skip(narrow) {
        *o = x.iter().enumerate().map(|(d, &xd)| xd * t[d * k + c]).sum();
    }
}

/// Columns `c0..c0 + W` of [`dots_transposed_generic`], the `W` sums held in registers.
#[inline(always)]
fn dots_columns<const W: usize>(t: &[f32], x: &[f32], k: usize, c0: usize, out: &mut [f32]) {
    let mut acc = [0f32; W];
    for (d, &xd) in x.iter().enumerate() {
        let row: &[f32; W] = t[d * k + c0..d * k + c0 + W]
            .try_into()
            .expect("column block");
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += xd * v;
        }
    }
    out[c0..c0 + W].copy_from_slice(&acc);
}

/// [`dots_transposed_generic`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dots_transposed_avx2(t: &[f32], x: &[f32], out: &mut [f32]) {
    dots_transposed_generic(t, x, out)
}

/// `out[c] = Σ_d x[d]·t[d·k + c]`: one row `x` against the `k = out.len()` columns of a
/// transposed `dim × k` matrix (small dimensions: PQ sub-spaces and their tables).
pub(crate) fn dots_transposed(t: &[f32], x: &[f32], out: &mut [f32]) {
    assert!(t.len() >= x.len() * out.len());
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked above).
        return unsafe { dots_transposed_avx2(t, x, out) };
    }
    dots_transposed_generic(t, x, out)
}

/// The affine map `select` applies: `scale · d[i] + offset − terms[i]` (`terms` empty: none).
#[derive(Clone, Copy)]
pub(crate) struct Affine<'a> {
    pub scale: f32,
    pub offset: f32,
    pub terms: &'a [f32],
}

impl<'a> Affine<'a> {
    /// Products with a query turned into exact-search scores: `2⟨q, x⟩ − ‖q‖² − ‖x‖²` for L2
    /// (`qnorm` = ‖q‖², `norms[rows]` = each ‖x‖², unused otherwise), the product itself
    /// otherwise.
    pub fn exact(l2: bool, qnorm: f32, norms: &'a [f32], rows: std::ops::Range<usize>) -> Self {
        if l2 {
            Affine {
                scale: 2.0,
                offset: -qnorm,
                terms: &norms[rows],
            }
        } else {
            Affine {
                scale: 1.0,
                offset: 0.0,
                terms: &[],
            }
        }
    }
}

/// Turns `d` into scores by `f` in place and appends to `pass` the positions whose score
/// reaches `thr` (NaN never does).
pub(crate) fn select(d: &mut [f32], f: Affine<'_>, thr: f32, pass: &mut Vec<u32>) {
    assert!(f.terms.is_empty() || f.terms.len() >= d.len());
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked above); `terms` is empty or covers `d`.
        return unsafe { select_avx2(d, f, thr, pass) };
    }
    select_from(d, 0, f, thr, pass)
}

/// `select` from position `from` on, one value at a time.
fn select_from(d: &mut [f32], from: usize, f: Affine<'_>, thr: f32, pass: &mut Vec<u32>) {
    for (i, x) in d.iter_mut().enumerate().skip(from) {
        *x = f.scale * *x + f.offset - f.terms.get(i).copied().unwrap_or(0.0);
        if *x >= thr {
            pass.push(i as u32);
        }
    }
}

/// `select` eight values at a time: one compare and a bit mask per eight.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn select_avx2(d: &mut [f32], f: Affine<'_>, thr: f32, pass: &mut Vec<u32>) {
    use std::arch::x86_64::*;
    let (a, o, t) = (
        _mm256_set1_ps(f.scale),
        _mm256_set1_ps(f.offset),
        _mm256_set1_ps(thr),
    );
    let n = d.len() - d.len() % 8;
    let p = d.as_mut_ptr();
    for i in (0..n).step_by(8) {
        let mut v = _mm256_add_ps(o, _mm256_mul_ps(a, _mm256_loadu_ps(p.add(i))));
        if !f.terms.is_empty() {
            v = _mm256_sub_ps(v, _mm256_loadu_ps(f.terms.as_ptr().add(i)));
        }
        _mm256_storeu_ps(p.add(i), v);
        let mut mask = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(v, t)) as u32;
        while mask != 0 {
            pass.push(i as u32 + mask.trailing_zeros());
            mask &= mask - 1;
        }
    }
    select_from(d, n, f, thr, pass)
}

/// Inner products of `q` with `N` key rows (each at least `q.len()` long), read together so
/// that `N` streams of memory reads overlap (re-ranking reads rows at random).
pub(crate) fn row_dots<const N: usize>(q: &[f32], rows: [KeyRows<'_>; N]) -> [f32; N] {
    assert!(rows.iter().all(|r| r.len() >= q.len()));
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA are present (F16C too where f16 rows are read: checked below);
        // every row covers `q` (checked above).
        if let Some(rows) = each(&rows, |r| match r {
            KeyRows::F32(x) => Some(*x),
            KeyRows::F16(_) => None,
        }) {
            return unsafe { row_dots_f32_avx2(q, rows) };
        }
        if let Some(rows) = each(&rows, |r| match r {
            KeyRows::F16(x) => Some(*x),
            KeyRows::F32(_) => None,
        }) {
            if std::is_x86_feature_detected!("f16c") {
                return unsafe { row_dots_f16_avx2(q, rows) };
            }
        }
    }
    rows.map(|r| match r {
        KeyRows::F32(x) => q.iter().zip(x).map(|(a, b)| a * b).sum(),
        KeyRows::F16(x) => q.iter().zip(x).map(|(a, b)| a * b.to_f32()).sum(),
    })
}

/// `rows` all of one precision, if they are (`f` picks that precision's slice).
#[cfg(target_arch = "x86_64")]
fn each<'a, T, const N: usize>(
    rows: &[KeyRows<'a>; N],
    f: impl Fn(&KeyRows<'a>) -> Option<&'a [T]>,
) -> Option<[&'a [T]; N]> {
    let picked = rows.each_ref().map(f);
    picked
        .iter()
        .all(Option::is_some)
        .then(|| picked.map(Option::unwrap))
}

/// `row_dots` of f32 rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_dots_f32_avx2<const N: usize>(q: &[f32], rows: [&[f32]; N]) -> [f32; N] {
    use std::arch::x86_64::*;
    row_dots_lanes(q, rows, |p| _mm256_loadu_ps(p), |x| x)
}

/// `row_dots` of f16 rows, widened eight at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_dots_f16_avx2<const N: usize>(q: &[f32], rows: [&[f16]; N]) -> [f32; N] {
    use std::arch::x86_64::*;
    row_dots_lanes(
        q,
        rows,
        |p| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
        f16::to_f32,
    )
}

/// The body of `row_dots`: eight lanes per row, `load` reading eight values as f32 and
/// `widen` one, for the last `q.len() % 8`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn row_dots_lanes<T: Copy, const N: usize>(
    q: &[f32],
    rows: [&[T]; N],
    load: impl Fn(*const T) -> std::arch::x86_64::__m256,
    widen: impl Fn(T) -> f32,
) -> [f32; N] {
    use std::arch::x86_64::*;
    let n = q.len() - q.len() % 8;
    let mut acc = [_mm256_setzero_ps(); N];
    for i in (0..n).step_by(8) {
        let qv = _mm256_loadu_ps(q.as_ptr().add(i));
        for (a, r) in acc.iter_mut().zip(&rows) {
            *a = _mm256_fmadd_ps(qv, load(r.as_ptr().add(i)), *a);
        }
    }
    let mut out = [0f32; N];
    for ((o, a), r) in out.iter_mut().zip(acc).zip(&rows) {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), a);
        let tail: f32 = q[n..]
            .iter()
            .zip(&r[n..])
            .map(|(&x, &y)| x * widen(y))
            .sum();
        *o = lanes.iter().sum::<f32>() + tail;
    }
    out
}

/// Asks the CPU to start loading the cache line that holds `p` (a hint: no effect off x86-64).
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    // SAFETY: SSE is part of every x86-64 CPU, and a prefetch never faults, whatever the address.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
}

/// The first position of the largest value of `v` (not empty, no NaN) and that value; the
/// maximum is found eight lanes at a time.
pub(crate) fn argmax(v: &[f32]) -> (usize, f32) {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = v.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = if x > *l { x } else { *l };
        }
    }
    let best = lanes.into_iter().fold(tail, f32::max);
    (v.iter().position(|&x| x == best).unwrap_or(0), best)
}

/// Row-major `rows × cols` matrix `a` transposed to `cols × rows`.
pub(crate) fn transpose(a: &[f32], cols: usize) -> Vec<f32> {
    let rows = a.len() / cols;
    let mut out = vec![0f32; a.len()];
    for (r, row) in a.chunks_exact(cols).enumerate() {
        for (c, &x) in row.iter().enumerate() {
            out[c * rows + r] = x;
        }
    }
    out
}

/// Plain inner product with 16 independent accumulators (for re-ranking and small jobs).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..16 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Squared Euclidean norm.
pub(crate) fn norm2(a: &[f32]) -> f32 {
    dot(a, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_dots_match_naive() {
        let (nq, n, dim) = (13, 37, 19);
        let q: Vec<f32> = (0..nq * dim).map(|i| ((i * 7 % 11) as f32) - 5.0).collect();
        let k: Vec<f32> = (0..n * dim)
            .map(|i| ((i * 5 % 13) as f32) * 0.5 - 3.0)
            .collect();
        let qp = pack_queries(&q, nq, dim);
        let mut kp = Vec::new();
        pack_keys(KeyRows::F32(&k), n, dim, &mut kp);
        let np = n.div_ceil(PANEL);
        let mut out = vec![0.0; nq * np * PANEL];
        dots(&qp, nq, &kp, np, dim, &mut out);
        for i in 0..nq {
            for j in 0..n {
                let want: f32 = (0..dim).map(|d| q[i * dim + d] * k[j * dim + d]).sum();
                assert_eq!(out[i * np * PANEL + j], want, "query {i} key {j}");
            }
        }
    }

    #[test]
    fn select_scores_and_picks_what_reaches_the_threshold() {
        let mut rng = crate::rng::Rng::new(5);
        for n in [0, 3, 8, 29, 256] {
            let d: Vec<f32> = (0..n)
                .map(|i| if i == 4 { f32::NAN } else { rng.normal() })
                .collect();
            let terms: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            for t in [&terms[..], &[]] {
                let (mut got, mut pass) = (d.clone(), Vec::new());
                let f = Affine {
                    scale: 2.0,
                    offset: 0.25,
                    terms: t,
                };
                select(&mut got, f, 0.1, &mut pass);
                let want: Vec<f32> = d
                    .iter()
                    .enumerate()
                    .map(|(i, x)| 2.0 * x + 0.25 - t.get(i).unwrap_or(&0.0))
                    .collect();
                for (g, w) in got.iter().zip(&want) {
                    assert!(g == w || (g.is_nan() && w.is_nan()), "n {n}: {g} vs {w}");
                }
                let picked: Vec<u32> = (0..n as u32).filter(|&i| want[i as usize] >= 0.1).collect();
                assert_eq!(pass, picked, "n {n}");
            }
        }
    }

    #[test]
    fn row_dots_match_naive_for_each_precision_and_mixed() {
        let mut rng = crate::rng::Rng::new(12);
        for dim in [3, 37, 576] {
            let q: Vec<f32> = (0..dim).map(|_| rng.normal()).collect();
            let keys: Vec<Vec<f32>> = (0..8)
                .map(|_| (0..dim).map(|_| rng.normal()).collect())
                .collect();
            let halves: Vec<Vec<f16>> = keys
                .iter()
                .map(|k| k.iter().map(|&x| f16::from_f32(x)).collect())
                .collect();
            let naive = |k: &[f32]| q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>();
            // All f32, all f16, and a mix (which takes the one-value-at-a-time path).
            for mix in [0u32, 0xff, 0b1010_0110] {
                let rows: [KeyRows<'_>; 8] = std::array::from_fn(|j| {
                    if mix >> j & 1 == 1 {
                        KeyRows::F16(&halves[j])
                    } else {
                        KeyRows::F32(&keys[j])
                    }
                });
                for (j, got) in row_dots(&q, rows).into_iter().enumerate() {
                    let want = if mix >> j & 1 == 1 {
                        naive(&halves[j].iter().map(|x| x.to_f32()).collect::<Vec<_>>())
                    } else {
                        naive(&keys[j])
                    };
                    assert!((got - want).abs() <= 1e-4 * dim as f32, "dim {dim} row {j}");
                }
            }
        }
    }

    #[test]
    fn dots_transposed_matches_naive_for_every_width() {
        let mut rng = crate::rng::Rng::new(6);
        for (k, dim) in [(16, 4), (256, 3), (48, 2), (21, 5)] {
            let t: Vec<f32> = (0..k * dim).map(|_| rng.normal()).collect();
            let x: Vec<f32> = (0..dim).map(|_| rng.normal()).collect();
            let mut out = vec![0f32; k];
            dots_transposed(&t, &x, &mut out);
            for (c, o) in out.iter().enumerate() {
                let want: f32 = (0..dim).map(|d| x[d] * t[d * k + c]).sum();
                assert!((o - want).abs() < 1e-5, "k {k} column {c}");
            }
        }
    }
}
