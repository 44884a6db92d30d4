//! Bounded top-k selection with deterministic tie breaking (higher score, then smaller id).

/// Whether `(s1, id1)` ranks strictly before `(s2, id2)`.
#[inline]
fn better(s1: f32, id1: u64, s2: f32, id2: u64) -> bool {
    s1 > s2 || (s1 == s2 && id1 < id2)
}

/// The best `k` (score, id) pairs seen so far, kept as a binary heap with the worst on top.
#[derive(Clone, Debug)]
pub(crate) struct TopK {
    k: usize,
    heap: Vec<(f32, u64)>,
}

impl TopK {
    /// An empty selection of capacity `k`.
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            heap: Vec::with_capacity(k),
        }
    }

    /// The score a candidate must reach to be considered (−∞ until full).
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.heap[0].0
        }
    }

    /// Offers a candidate; NaN scores are ignored.
    #[inline]
    pub fn push(&mut self, score: f32, id: u64) {
        if self.k == 0 || score.is_nan() {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push((score, id));
            self.sift_up(self.heap.len() - 1);
        } else {
            let (ws, wid) = self.heap[0];
            if better(score, id, ws, wid) {
                self.heap[0] = (score, id);
                self.sift_down(0);
            }
        }
    }

    /// Offers every candidate of `other`.
    pub fn merge(&mut self, other: TopK) {
        for (s, id) in other.heap {
            self.push(s, id);
        }
    }

    /// The kept candidates, best first.
    pub fn into_sorted(mut self) -> Vec<(f32, u64)> {
        self.heap
            .sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        self.heap
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let p = (i - 1) / 2;
            // Parent must be worse than (or equal to) child: the worst sits on top.
            let (cs, cid) = self.heap[i];
            let (ps, pid) = self.heap[p];
            if better(ps, pid, cs, cid) {
                self.heap.swap(i, p);
                i = p;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let l = 2 * i + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let mut worst = l;
            if r < n
                && better(
                    self.heap[l].0,
                    self.heap[l].1,
                    self.heap[r].0,
                    self.heap[r].1,
                )
            {
                worst = r;
            }
            let (ws, wid) = self.heap[worst];
            let (s, id) = self.heap[i];
            if better(s, id, ws, wid) {
                self.heap.swap(i, worst);
                i = worst;
            } else {
                break;
            }
        }
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
}
