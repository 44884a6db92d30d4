//! Bounded top-k selection with deterministic tie breaking (higher score, then smaller id).

use crate::kernel::{self, Affine};

/// Ranking order: higher score first, then smaller id.
#[inline]
fn rank(a: &(f32, u64), b: &(f32, u64)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1))
}

/// The best `k` (score, id) pairs seen so far. Candidates that reach the threshold are
/// appended to a buffer of up to `2k`; when it fills, it is cut back to its best `k` and the
/// threshold rises to the worst of those, so a push costs O(1) amortised.
#[derive(Clone, Debug)]
pub(crate) struct TopK {
    k: usize,
    buf: Vec<(f32, u64)>,
    /// A score below which a candidate cannot be among the best `k` (−∞ until the first cut);
    /// it may lag behind the `k`-th best score.
    thr: f32,
}

impl TopK {
    /// An empty selection of capacity `k`.
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            buf: Vec::with_capacity(2 * k),
            thr: f32::NEG_INFINITY,
        }
    }

    /// Offers a candidate; NaN scores are ignored.
    #[inline]
    pub fn push(&mut self, score: f32, id: u64) {
        if self.k == 0 || score.is_nan() || score < self.thr {
            return;
        }
        if self.buf.len() == 2 * self.k {
            self.cut();
        }
        self.buf.push((score, id));
    }

    /// Turns a block of raw `scores` into scores by `f` (in place, `kernel::select`) and offers
    /// each position `i` whose score reaches the threshold under the id `id(i)`, skipping the
    /// positions it gives `None` for (deleted rows); `pass` is scratch.
    pub fn offer_block(
        &mut self,
        scores: &mut [f32],
        f: Affine<'_>,
        pass: &mut Vec<u32>,
        id: impl Fn(usize) -> Option<u64>,
    ) {
        pass.clear();
        kernel::select(scores, f, self.thr, pass);
        for &i in pass.iter() {
            let (score, i) = (scores[i as usize], i as usize);
            if score >= self.thr {
                if let Some(id) = id(i) {
                    self.push(score, id);
                }
            }
        }
    }

    /// Offers every candidate of `other`.
    pub fn merge(&mut self, other: TopK) {
        for (s, id) in other.buf {
            self.push(s, id);
        }
    }

    /// The kept candidates, best first.
    pub fn into_sorted(mut self) -> Vec<(f32, u64)> {
        self.buf.sort_unstable_by(rank);
        self.buf.truncate(self.k);
        self.buf
    }

    /// Keeps the best `k` of the buffer and raises the threshold to the worst of them.
    fn cut(&mut self) {
        self.buf.select_nth_unstable_by(self.k - 1, rank);
        self.buf.truncate(self.k);
        self.thr = self.buf[self.k - 1].0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_best_with_smaller_id_on_ties() {
        let mut t = TopK::new(3);
        for (s, id) in [(1.0, 5), (2.0, 9), (2.0, 3), (0.5, 1), (2.0, 4), (3.0, 7)] {
            t.push(s, id);
        }
        assert_eq!(t.into_sorted(), vec![(3.0, 7), (2.0, 3), (2.0, 4)]);
    }

    #[test]
    fn equals_a_full_sort_on_random_streams_with_ties() {
        let mut rng = crate::rng::Rng::new(21);
        for k in [0, 1, 3, 32, 128] {
            for n in [0, 5, 64, 257, 3000] {
                // Scores on a coarse grid so that ties are common; some NaN.
                let items: Vec<(f32, u64)> = (0..n)
                    .map(|i| {
                        let s = (rng.uniform() * 20.0).floor();
                        (
                            if i % 97 == 5 { f32::NAN } else { s },
                            (i * 7919 % 4099) as u64,
                        )
                    })
                    .collect();
                let mut t = TopK::new(k);
                for &(s, id) in &items {
                    t.push(s, id);
                }
                let mut want: Vec<(f32, u64)> =
                    items.iter().copied().filter(|x| !x.0.is_nan()).collect();
                want.sort_by(rank);
                want.truncate(k);
                assert_eq!(t.into_sorted(), want, "k {k} n {n}");
            }
        }
    }
}
