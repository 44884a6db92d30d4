//! The coarse quantiser of IVF: its centroids, packed once into the exact kernel's panels, and
//! the choice of the lists each query probes.

use crate::kernel::{self, KeyRows, PANEL, QB};
use crate::metric::Metric;
use crate::topk::TopK;

/// Queries scored together against all centroids (a multiple of the kernel's micro-block).
const QUERY_CHUNK: usize = 8 * QB;
/// Centroids scored per tile, so that a chunk's tile of scores stays in cache.
const CENTROID_BLOCK: usize = 64 * PANEL;

/// Centroids offered to a query's selection at a time.
const SELECT_STEP: usize = 64;

/// Coarse centroids with ids `0..nlist`, scored by inner product or (negated squared) L2.
pub(crate) struct Coarse {
    dim: usize,
    metric: Metric,
    /// The centroids packed into panels (`kernel::pack_keys`).
    panels: Vec<f32>,
    /// Squared norms of the centroids (for L2).
    norms: Vec<f32>,
}

impl Coarse {
    /// The quantiser of `centroids` (`nlist × dim`) under `metric` (IP or L2).
    pub fn new(centroids: &[f32], dim: usize, metric: Metric) -> Self {
        let n = centroids.len() / dim;
        let mut panels = Vec::new();
        kernel::pack_keys(KeyRows::F32(centroids), n, dim, &mut panels);
        Coarse {
            dim,
            metric,
            panels,
            norms: centroids.chunks_exact(dim).map(kernel::norm2).collect(),
        }
    }

    /// Dimension of the centroids.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The `nprobe` best lists (score, list) of each prepared query (`nq × dim`), scored as the
    /// exact search scores them (on the calling thread).
    pub fn probe(&self, queries: &[f32], nprobe: usize) -> Vec<TopK> {
        let dim = self.dim;
        let l2 = self.metric == Metric::L2;
        let nlist = self.norms.len();
        queries
            .chunks(QUERY_CHUNK * dim)
            .flat_map(|qs| {
                let nc = qs.len() / dim;
                let qpack = kernel::pack_queries(qs, nc, dim);
                let qnorms: Vec<f32> = qs.chunks_exact(dim).map(kernel::norm2).collect();
                let mut tops = vec![TopK::new(nprobe); nc];
                let (mut out, mut pass) = (Vec::new(), Vec::new());
                for c0 in (0..nlist).step_by(CENTROID_BLOCK) {
                    let c1 = (c0 + CENTROID_BLOCK).min(nlist);
                    let np = (c1 - c0).div_ceil(PANEL);
                    let ld = np * PANEL;
                    let panels = &self.panels[c0 * dim..];
                    out.resize(nc * ld, 0.0);
                    kernel::dots(&qpack, nc, panels, np, dim, &mut out);
                    for ((top, row), &qn) in
                        tops.iter_mut().zip(out.chunks_exact_mut(ld)).zip(&qnorms)
                    {
                        // A few centroids at a time, so that the threshold rises early.
                        for s0 in (c0..c1).step_by(SELECT_STEP) {
                            let s1 = (s0 + SELECT_STEP).min(c1);
                            let f = kernel::Affine::exact(l2, qn, &self.norms, s0..s1);
                            let scores = &mut row[s0 - c0..s1 - c0];
                            top.offer_block(scores, f, &mut pass, |j| Some((s0 + j) as u64));
                        }
                    }
                }
                tops
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flat;
    use crate::kmeans::centroid_rows;
    use crate::rng::Rng;

    #[test]
    fn probes_are_the_exact_search_over_the_centroids() {
        let mut rng = Rng::new(8);
        // More centroids than a tile and not a whole number of panels; more queries than a chunk.
        let (dim, nlist, nq) = (20, CENTROID_BLOCK + 77, QUERY_CHUNK + 13);
        let centroids: Vec<f32> = (0..nlist * dim).map(|_| rng.normal()).collect();
        let queries: Vec<f32> = (0..nq * dim).map(|_| rng.normal()).collect();
        for metric in [Metric::InnerProduct, Metric::L2] {
            let coarse = Coarse::new(&centroids, dim, metric);
            for nprobe in [1, 8, 100] {
                let got: Vec<_> = coarse.probe(&queries, nprobe);
                let want = flat::scan(&centroid_rows(&centroids, dim, metric), &queries, nprobe);
                for (g, w) in got.into_iter().zip(want) {
                    assert_eq!(
                        g.into_sorted(),
                        w.into_sorted(),
                        "{metric:?} nprobe {nprobe}"
                    );
                }
            }
        }
    }
}
