//! IVF-PQ: a coarse k-means quantiser with `nlist` inverted lists holding residual product-quantised
//! codes, scanned with asymmetric distance tables; optional exact re-ranking from the full keys.

use rayon::prelude::*;

use crate::array::Array;
use crate::error::{IndexError, Result};
use crate::flat::{self, check_ids, check_queries};
use crate::kernel;
use crate::kmeans;
use crate::metric::{KeyType, Metric};
use crate::pq::{self, KSUB};
use crate::rng::Rng;
use crate::rows::Rows;
use crate::topk::TopK;
use crate::{Hits, Index, SearchParams};

/// Training and layout parameters of an IVF-PQ index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IvfPqParams {
    /// Number of inverted lists (coarse centroids).
    pub nlist: usize,
    /// Number of PQ sub-quantisers (must divide the dimension); 8 bits each.
    pub m: usize,
    /// Seed of every random choice in training.
    pub seed: u64,
    /// Most vectors sampled for training.
    pub max_train: usize,
    /// k-means iterations (coarse and PQ).
    pub iters: usize,
}

impl IvfPqParams {
    /// Parameters with the default sample size (64 per list, at least 16k) and 12 iterations.
    pub fn new(nlist: usize, m: usize, seed: u64) -> Self {
        IvfPqParams {
            nlist,
            m,
            seed,
            max_train: (64 * nlist).max(16_384),
            iters: 12,
        }
    }
}

/// Largest precomputed L2 term table kept in memory (floats); bigger ones are computed per probe.
const MAX_TERMS: usize = 1 << 26;
/// Codes scored per call of the distance kernel.
const ADC_BLOCK: usize = 256;
/// Rows encoded per progress step.
const ENCODE_CHUNK: usize = 16_384;

/// Progress callback: `(done, total)`.
pub type Progress<'a> = &'a dyn Fn(usize, usize);

/// Approximate index: coarse quantiser + residual PQ codes in contiguous inverted lists.
pub struct IvfPqIndex {
    pub(crate) rows: Rows,
    pub(crate) params: IvfPqParams,
    pub(crate) centroids: Array<f32>,
    coarse: Rows,
    pub(crate) books: Array<f32>,
    /// `books` transposed to `m × dsub × 256`, for building distance tables.
    books_t: Vec<f32>,
    pub(crate) offsets: Array<u64>,
    pub(crate) codes: Array<u8>,
    pub(crate) list_rows: Array<u64>,
    tails: Vec<(Vec<u8>, Vec<u64>)>,
    terms: Option<Vec<f32>>,
    pub(crate) provenance: serde_json::Value,
}

impl IvfPqIndex {
    /// Trains on and indexes `vectors` (`n × dim`) with their `ids`, keeping full keys for re-ranking.
    pub fn build(
        dim: usize,
        metric: Metric,
        key_type: KeyType,
        vectors: &[f32],
        ids: &[u64],
        params: &IvfPqParams,
    ) -> Result<Self> {
        let mut rows = Rows::empty(dim, metric, key_type);
        check_ids(&rows, vectors, ids)?;
        let v = rows.prepare(vectors);
        rows.append_prepared(&v, ids);
        Self::train_rows(rows, params, &|_, _| {})
    }

    /// Trains on a sample of `rows` and encodes all of them in chunks, reporting progress.
    pub(crate) fn train_rows(
        rows: Rows,
        params: &IvfPqParams,
        progress: Progress<'_>,
    ) -> Result<Self> {
        let dim = rows.dim;
        let (nlist, m) = (params.nlist, params.m);
        if m == 0 || !dim.is_multiple_of(m) {
            return Err(IndexError::invalid(format!(
                "IVF-PQ: m = {m} does not divide dim {dim}"
            )));
        }
        let n = rows.len();
        let need = nlist.max(KSUB);
        if nlist == 0 || n < need {
            return Err(IndexError::invalid(format!(
                "IVF-PQ with nlist {nlist} needs at least {need} vectors to train, got {n}"
            )));
        }
        let mut rng = Rng::new(params.seed);
        let mut pick = rng.sample(n, params.max_train.max(need).min(n));
        pick.sort_unstable();
        let sample = gather(&rows, &pick);
        let centroids = kmeans::kmeans(&sample, dim, nlist, params.iters, params.seed)?;
        let coarse = kmeans::centroid_rows(&centroids, dim, rows.metric.kernel());
        let residuals = residuals(&centroids, dim, &sample, &kmeans::assign(&coarse, &sample));
        let books = pq::train(&residuals, dim, m, params.iters, params.seed ^ 0x5051)?;
        let mut idx = IvfPqIndex {
            params: params.clone(),
            centroids: centroids.into(),
            coarse,
            books: books.into(),
            books_t: Vec::new(),
            offsets: vec![0u64; nlist + 1].into(),
            codes: Array::default(),
            list_rows: Array::default(),
            tails: vec![(Vec::new(), Vec::new()); nlist],
            terms: None,
            provenance: serde_json::Value::Null,
            rows,
        };
        for r0 in (0..n).step_by(ENCODE_CHUNK) {
            let r1 = (r0 + ENCODE_CHUNK).min(n);
            idx.encode_rows(r0, r1);
            progress(r1, n);
        }
        idx.flatten_lists();
        idx.prepare_tables();
        Ok(idx)
    }

    /// Reassembles an index from its saved parts.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        rows: Rows,
        params: IvfPqParams,
        centroids: Array<f32>,
        books: Array<f32>,
        offsets: Array<u64>,
        codes: Array<u8>,
        list_rows: Array<u64>,
        provenance: serde_json::Value,
    ) -> Self {
        let coarse = kmeans::centroid_rows(&centroids, rows.dim, rows.metric.kernel());
        let mut idx = IvfPqIndex {
            tails: vec![(Vec::new(), Vec::new()); params.nlist],
            params,
            centroids,
            coarse,
            books,
            books_t: Vec::new(),
            offsets,
            codes,
            list_rows,
            terms: None,
            provenance,
            rows,
        };
        idx.prepare_tables();
        idx
    }

    fn dsub(&self) -> usize {
        self.rows.dim / self.params.m
    }

    /// Encodes rows `r0..r1` into the list tails.
    fn encode_rows(&mut self, r0: usize, r1: usize) {
        let data = gather(&self.rows, &(r0..r1).collect::<Vec<_>>());
        let assign = kmeans::assign(&self.coarse, &data);
        let res = residuals(&self.centroids, self.rows.dim, &data, &assign);
        let codes = pq::encode(&self.books, self.rows.dim, self.params.m, &res);
        for (i, ((list, _), code)) in assign
            .iter()
            .zip(codes.chunks_exact(self.params.m))
            .enumerate()
        {
            let t = &mut self.tails[*list as usize];
            t.0.extend_from_slice(code);
            t.1.push((r0 + i) as u64);
        }
    }

    /// Moves every list tail into the contiguous list arrays.
    fn flatten_lists(&mut self) {
        let m = self.params.m;
        let mut offsets = Vec::with_capacity(self.params.nlist + 1);
        let mut codes = Vec::new();
        let mut list_rows = Vec::new();
        offsets.push(0);
        for l in 0..self.params.nlist {
            let (c, r) = self.list(l);
            codes.extend_from_slice(c.0);
            codes.extend_from_slice(c.1);
            list_rows.extend_from_slice(r.0);
            list_rows.extend_from_slice(r.1);
            offsets.push(list_rows.len() as u64);
        }
        debug_assert_eq!(codes.len(), list_rows.len() * m);
        self.offsets = offsets.into();
        self.codes = codes.into();
        self.list_rows = list_rows.into();
        self.tails = vec![(Vec::new(), Vec::new()); self.params.nlist];
    }

    /// Codes and rows of list `l`: the contiguous part and the appended tail.
    #[allow(clippy::type_complexity)]
    pub(crate) fn list(&self, l: usize) -> ((&[u8], &[u8]), (&[u64], &[u64])) {
        let (a, b) = (self.offsets[l] as usize, self.offsets[l + 1] as usize);
        let m = self.params.m;
        let t = &self.tails[l];
        (
            (&self.codes[a * m..b * m], &t.0),
            (&self.list_rows[a..b], &t.1),
        )
    }

    /// Transposes the codebooks and, for L2 when small enough, precomputes every list's term table.
    fn prepare_tables(&mut self) {
        let (dim, dsub) = (self.rows.dim, self.dsub());
        self.books_t = pq::transpose_books(&self.books, dsub);
        let size = self.params.nlist * self.params.m * KSUB;
        if self.rows.metric != Metric::L2 || size > MAX_TERMS {
            return;
        }
        let mut terms = vec![0f32; size];
        terms
            .par_chunks_mut(self.params.m * KSUB)
            .zip(self.centroids.par_chunks(dim))
            .for_each(|(t, c)| pq::l2_term(&self.books_t, dsub, c, t));
        self.terms = Some(terms);
    }

    /// Adds vectors, encoded with the existing codebooks; visible to the next search.
    pub fn append(&mut self, vectors: &[f32], ids: &[u64]) -> Result<()> {
        check_ids(&self.rows, vectors, ids)?;
        let v = self.rows.prepare(vectors);
        let first = self.rows.append_prepared(&v, ids);
        self.encode_rows(first, first + ids.len());
        Ok(())
    }

    /// Deletes every key with one of `ids` (tombstones until the next save); returns how many.
    pub fn delete(&mut self, ids: &[u64]) -> usize {
        self.rows.delete(ids)
    }

    /// A new index trained from scratch (new centroids and codebooks) on the current live keys.
    /// Takes `&self`, so it can run in a background thread while this index keeps serving.
    pub fn retrain(&self, seed: u64, progress: Progress<'_>) -> Result<Self> {
        let live: Vec<usize> = (0..self.rows.len())
            .filter(|&r| !self.rows.is_dead(r))
            .collect();
        let mut rows = Rows::empty(self.rows.dim, self.rows.metric, self.rows.key_type);
        for chunk in live.chunks(ENCODE_CHUNK) {
            let ids: Vec<u64> = chunk.iter().map(|&r| self.rows.id(r)).collect();
            rows.append_prepared(&gather(&self.rows, chunk), &ids);
        }
        let params = IvfPqParams {
            seed,
            ..self.params.clone()
        };
        let mut idx = Self::train_rows(rows, &params, progress)?;
        idx.provenance = self.provenance.clone();
        Ok(idx)
    }

    /// Training and layout parameters.
    pub fn params(&self) -> &IvfPqParams {
        &self.params
    }

    /// Precision of the stored full keys.
    pub fn key_type(&self) -> KeyType {
        self.rows.key_type
    }

    /// Free-form provenance saved in the manifest.
    pub fn provenance(&self) -> &serde_json::Value {
        &self.provenance
    }

    /// Replaces the provenance saved with the index.
    pub fn set_provenance(&mut self, p: serde_json::Value) {
        self.provenance = p;
    }

    /// Bytes per key of the searched structures (codes + list row numbers).
    pub fn code_bytes_per_key(&self) -> usize {
        self.params.m + 8
    }

    /// Top candidates (score, row) of one prepared query over its probed lists.
    fn scan_query(&self, q: &[f32], probes: Vec<(f32, u64)>, cap: usize, s: &mut Scratch) -> TopK {
        let (m, dim) = (self.params.m, self.rows.dim);
        let l2 = self.rows.metric == Metric::L2;
        pq::ip_table(&self.books_t, self.dsub(), q, &mut s.qtab);
        let mut top = TopK::new(cap);
        for (base, list) in probes {
            let l = list as usize;
            let ((c0, c1), (r0, r1)) = self.list(l);
            if r0.is_empty() && r1.is_empty() {
                continue;
            }
            // Inner product: the query's table serves every list. L2: 2⟨q, r⟩ − the list's term.
            let table = if l2 {
                let term = match &self.terms {
                    Some(t) => &t[l * m * KSUB..(l + 1) * m * KSUB],
                    None => {
                        let c = &self.centroids[l * dim..(l + 1) * dim];
                        pq::l2_term(&self.books_t, self.dsub(), c, &mut s.term);
                        &s.term
                    }
                };
                kernel::twice_minus(&s.qtab, term, &mut s.table);
                &s.table
            } else {
                &s.qtab
            };
            for (codes, rows) in [(c0, r0), (c1, r1)] {
                for (codes, rows) in codes.chunks(m * ADC_BLOCK).zip(rows.chunks(ADC_BLOCK)) {
                    let dists = &mut s.dists[..rows.len()];
                    pq::adc_many(table, codes, m, dists);
                    let mut thr = top.threshold();
                    for (&d, &row) in dists.iter().zip(rows) {
                        let score = base + d;
                        if score >= thr && !self.rows.is_dead(row as usize) {
                            top.push(score, row);
                            thr = top.threshold();
                        }
                    }
                }
            }
        }
        top
    }
}

/// Per-thread buffers of a search: the query's inner-product table, a list's distance table
/// and term (when not precomputed), the key buffer of re-ranking and a block of distances.
struct Scratch {
    qtab: Vec<f32>,
    table: Vec<f32>,
    term: Vec<f32>,
    key: Vec<f32>,
    dists: Vec<f32>,
}

impl Scratch {
    fn new(m: usize, dim: usize) -> Self {
        Scratch {
            qtab: vec![0f32; m * KSUB],
            table: vec![0f32; m * KSUB],
            term: vec![0f32; m * KSUB],
            key: vec![0f32; dim],
            dists: vec![0f32; ADC_BLOCK],
        }
    }
}

/// Rows `pick` of `rows` as a contiguous f32 matrix.
fn gather(rows: &Rows, pick: &[usize]) -> Vec<f32> {
    let dim = rows.dim;
    let mut out = vec![0f32; pick.len() * dim];
    for (o, &r) in out.chunks_exact_mut(dim).zip(pick) {
        rows.key(r, o);
    }
    out
}

/// Each row of `data` minus its assigned coarse centroid.
fn residuals(centroids: &[f32], dim: usize, data: &[f32], assign: &[(u64, f32)]) -> Vec<f32> {
    let mut out = data.to_vec();
    for (row, &(c, _)) in out.chunks_exact_mut(dim).zip(assign) {
        let c = &centroids[c as usize * dim..(c as usize + 1) * dim];
        for (x, y) in row.iter_mut().zip(c) {
            *x -= y;
        }
    }
    out
}

impl Index for IvfPqIndex {
    fn dim(&self) -> usize {
        self.rows.dim
    }
    fn len(&self) -> usize {
        self.rows.live()
    }
    fn metric(&self) -> Metric {
        self.rows.metric
    }
    fn search(&self, queries: &[f32], k: usize, params: &SearchParams) -> Result<Hits> {
        check_queries(&self.rows, queries)?;
        let dim = self.rows.dim;
        let q = self.rows.prepare(queries);
        let nprobe = params.nprobe.clamp(1, self.params.nlist);
        let probes = flat::scan(&self.coarse, &q, nprobe);
        let cap = params.rerank.map_or(k, |r| r.max(k));
        let tops: Vec<TopK> = q
            .par_chunks(dim)
            .zip(probes)
            .map_init(
                || Scratch::new(self.params.m, dim),
                |s, (qv, probe)| {
                    let cands = self.scan_query(qv, probe.into_sorted(), cap, s);
                    let mut top = TopK::new(k);
                    if params.rerank.is_some() {
                        let qn = if self.rows.metric == Metric::L2 {
                            kernel::norm2(qv)
                        } else {
                            0.0
                        };
                        for (_, row) in cands.into_sorted() {
                            let r = row as usize;
                            top.push(self.rows.score(qv, qn, r, &mut s.key), self.rows.id(r));
                        }
                    } else {
                        for (s, row) in cands.into_sorted() {
                            top.push(s, self.rows.id(row as usize));
                        }
                    }
                    top
                },
            )
            .collect();
        Ok(Hits::from_tops(k, tops))
    }
}

impl std::fmt::Debug for IvfPqIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IvfPqIndex")
            .field("dim", &self.rows.dim)
            .field("metric", &self.rows.metric)
            .field("params", &self.params)
            .field("live", &self.rows.live())
            .finish()
    }
}
