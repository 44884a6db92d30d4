//! Full-precision keys with their ids, norms and tombstones: the part every index shares.
//! Rows are numbered across a (possibly memory-mapped) base segment and an in-memory tail
//! of appended rows.

use half::{f16, slice::HalfFloatSliceExt};
use std::collections::HashSet;

use crate::array::Array;
use crate::error::{IndexError, Result};
use crate::kernel::{self, KeyRows};
use crate::metric::{KeyType, Metric};

/// Keys scored together by `Rows::scores`.
const ROWS_AT_ONCE: usize = 8;

/// Stored keys of either precision.
pub(crate) enum Keys {
    /// f32 keys.
    F32(Array<f32>),
    /// f16 keys.
    F16(Array<f16>),
}

impl Keys {
    /// Empty keys of `ty`.
    pub fn empty(ty: KeyType) -> Self {
        match ty {
            KeyType::F32 => Keys::F32(Array::default()),
            KeyType::F16 => Keys::F16(Array::default()),
        }
    }

    /// Row-major view.
    pub fn rows(&self) -> KeyRows<'_> {
        match self {
            Keys::F32(a) => KeyRows::F32(a),
            Keys::F16(a) => KeyRows::F16(a),
        }
    }

    /// Appends f32 rows, rounding to f16 where needed.
    fn push(&mut self, v: &[f32]) {
        match self {
            Keys::F32(a) => a.make_mut().extend_from_slice(v),
            Keys::F16(a) => a.make_mut().extend(v.iter().map(|&x| f16::from_f32(x))),
        }
    }

    /// Raw bytes of rows `r0..r1`.
    pub fn row_bytes(&self, dim: usize, r0: usize, r1: usize) -> &[u8] {
        match self {
            Keys::F32(a) => bytemuck::cast_slice(&a[r0 * dim..r1 * dim]),
            Keys::F16(a) => bytemuck::cast_slice(&a[r0 * dim..r1 * dim]),
        }
    }
}

/// Copies row `r` of `rows` into `out` as f32.
pub(crate) fn row_f32(rows: KeyRows<'_>, dim: usize, r: usize, out: &mut [f32]) {
    match rows {
        KeyRows::F32(k) => out.copy_from_slice(&k[r * dim..(r + 1) * dim]),
        KeyRows::F16(k) => k[r * dim..(r + 1) * dim].convert_to_f32_slice(out),
    }
}

/// One run of rows: keys, ids and (for L2) squared key norms.
pub(crate) struct Segment {
    pub keys: Keys,
    pub ids: Array<u64>,
    pub norms: Array<f32>,
}

impl Segment {
    /// Rows in this segment.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
}

/// All rows of an index.
pub(crate) struct Rows {
    pub dim: usize,
    pub metric: Metric,
    pub key_type: KeyType,
    pub base: Segment,
    pub tail: Segment,
    dead: Vec<u64>,
    n_dead: usize,
}

impl Rows {
    /// Rows over an existing base segment (e.g. memory-mapped from disk).
    pub fn new(dim: usize, metric: Metric, key_type: KeyType, base: Segment) -> Self {
        Rows {
            dim,
            metric,
            key_type,
            base,
            tail: Segment {
                keys: Keys::empty(key_type),
                ids: Array::default(),
                norms: Array::default(),
            },
            dead: Vec::new(),
            n_dead: 0,
        }
    }

    /// No rows yet.
    pub fn empty(dim: usize, metric: Metric, key_type: KeyType) -> Self {
        Self::new(
            dim,
            metric,
            key_type,
            Segment {
                keys: Keys::empty(key_type),
                ids: Array::default(),
                norms: Array::default(),
            },
        )
    }

    /// Total rows including deleted ones.
    pub fn len(&self) -> usize {
        self.base.len() + self.tail.len()
    }

    /// Rows not deleted.
    pub fn live(&self) -> usize {
        self.len() - self.n_dead
    }

    /// Whether row `r` is deleted.
    #[inline]
    pub fn is_dead(&self, r: usize) -> bool {
        self.dead
            .get(r / 64)
            .is_some_and(|w| w >> (r % 64) & 1 == 1)
    }

    /// Segments with the number of their first row.
    pub fn segments(&self) -> [(usize, &Segment); 2] {
        [(0, &self.base), (self.base.len(), &self.tail)]
    }

    fn locate(&self, r: usize) -> (&Segment, usize) {
        if r < self.base.len() {
            (&self.base, r)
        } else {
            (&self.tail, r - self.base.len())
        }
    }

    /// The id of row `r`.
    pub fn id(&self, r: usize) -> u64 {
        let (s, i) = self.locate(r);
        s.ids[i]
    }

    /// Row `r` as f32.
    pub fn key(&self, r: usize, out: &mut [f32]) {
        let (s, i) = self.locate(r);
        row_f32(s.keys.rows(), self.dim, i, out)
    }

    /// Exact scores of a prepared query against each of `rows` (read at random), appended to
    /// `out` as (score, row). The first line of every key (and its norm) is requested up front,
    /// and keys are read `ROWS_AT_ONCE` at a time (`kernel::row_dots`), so that many reads
    /// overlap.
    pub fn scores(&self, q: &[f32], rows: &[u64], out: &mut Vec<(f32, u64)>) {
        let dim = self.dim;
        let l2 = self.metric == Metric::L2;
        let qnorm = if l2 { kernel::norm2(q) } else { 0.0 };
        for &r in rows {
            let (s, i) = self.locate(r as usize);
            kernel::prefetch(s.keys.row_bytes(dim, i, i + 1).as_ptr());
            if let Some(n) = s.norms.get(i) {
                kernel::prefetch(n);
            }
        }
        for group in rows.chunks(ROWS_AT_ONCE) {
            // A short last group repeats its last row.
            let at: [_; ROWS_AT_ONCE] =
                std::array::from_fn(|j| self.locate(group[j.min(group.len() - 1)] as usize));
            let dots = kernel::row_dots(q, at.map(|(s, i)| s.keys.rows().range(dim, i, i + 1)));
            for ((&row, d), (s, i)) in group.iter().zip(dots).zip(at) {
                let score = if l2 { 2.0 * d - qnorm - s.norms[i] } else { d };
                out.push((score, row));
            }
        }
    }

    /// Checks a row-major batch against the dimension and returns its row count.
    pub fn check_batch(&self, v: &[f32], what: &str) -> Result<usize> {
        if self.dim == 0 || !v.len().is_multiple_of(self.dim) {
            return Err(IndexError::invalid(format!(
                "{what}: {} floats is not a multiple of dim {}",
                v.len(),
                self.dim
            )));
        }
        Ok(v.len() / self.dim)
    }

    /// Queries as the kernels need them: cosine queries normalised.
    pub fn prepare(&self, v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        if self.metric == Metric::Cosine {
            normalize_rows(&mut v, self.dim);
        }
        v
    }

    /// Appends rows (already prepared) with their ids; returns the first new row number.
    pub fn append_prepared(&mut self, v: &[f32], ids: &[u64]) -> usize {
        let first = self.len();
        let start = self.tail.ids.len();
        self.tail.keys.push(v);
        self.tail.ids.make_mut().extend_from_slice(ids);
        if self.metric == Metric::L2 {
            // Norms of the stored (possibly f16-rounded) keys, so L2 scores are exact for them.
            let mut buf = vec![0.0; self.dim];
            for i in start..start + ids.len() {
                row_f32(self.tail.keys.rows(), self.dim, i, &mut buf);
                let n = kernel::norm2(&buf);
                self.tail.norms.make_mut().push(n);
            }
        }
        first
    }

    /// Marks every row whose id is in `ids` as deleted; returns how many rows were newly deleted.
    pub fn delete(&mut self, ids: &[u64]) -> usize {
        let set: HashSet<u64> = ids.iter().copied().collect();
        self.dead.resize(self.len().div_ceil(64), 0);
        let mut n = 0;
        for r in 0..self.len() {
            if !self.is_dead(r) && set.contains(&self.id(r)) {
                self.dead[r / 64] |= 1 << (r % 64);
                n += 1;
            }
        }
        self.n_dead += n;
        n
    }

    /// For each row, its number after dropping deleted rows (`None` when deleted).
    pub fn compaction_map(&self) -> Vec<Option<u64>> {
        let mut next = 0u64;
        (0..self.len())
            .map(|r| {
                (!self.is_dead(r)).then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect()
    }

    /// Calls `f` with the bytes of live rows in order, in runs as long as possible.
    pub fn for_live_runs(
        &self,
        mut f: impl FnMut(&Segment, usize, usize) -> Result<()>,
    ) -> Result<()> {
        for (off, seg) in self.segments() {
            let mut r = 0;
            while r < seg.len() {
                if self.is_dead(off + r) {
                    r += 1;
                    continue;
                }
                let start = r;
                while r < seg.len() && !self.is_dead(off + r) {
                    r += 1;
                }
                f(seg, start, r)?;
            }
        }
        Ok(())
    }
}

/// Scales each row to unit length (zero rows stay zero).
pub(crate) fn normalize_rows(v: &mut [f32], dim: usize) {
    for row in v.chunks_exact_mut(dim) {
        let n = kernel::norm2(row).sqrt();
        if n > 0.0 {
            row.iter_mut().for_each(|x| *x /= n);
        }
    }
}
