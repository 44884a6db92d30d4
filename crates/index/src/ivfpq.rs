//! IVF-PQ: a coarse k-means quantiser with `nlist` inverted lists holding residual product-quantised
//! codes, scanned with asymmetric distance tables; optional exact re-ranking from the full keys.
//! Codes are 8-bit (one byte per sub-quantiser, f32 tables) or 4-bit (blocks of 32 codes scanned
//! with byte tables, `fastscan`).

use rayon::prelude::*;
use std::borrow::Cow;

use crate::array::Array;
use crate::coarse::Coarse;
use crate::error::{IndexError, Result};
use crate::fastscan::{self, ByteTables};
use crate::flat::{check_ids, check_queries};
use crate::kernel;
use crate::kmeans;
use crate::metric::{KeyType, Metric};
use crate::pq;
use crate::rng::Rng;
use crate::rows::Rows;
use crate::topk::TopK;
use crate::{Hits, Index, SearchParams};

/// Training and layout parameters of an IVF-PQ index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IvfPqParams {
    /// Number of inverted lists (coarse centroids).
    pub nlist: usize,
    /// Number of PQ sub-quantisers (must divide the dimension).
    pub m: usize,
    /// Bits per sub-quantiser code: 8, or 4 (`m` even, at most 256) for the fast byte-table scan.
    pub nbits: u32,
    /// Seed of every random choice in training.
    pub seed: u64,
    /// Most vectors sampled to train the coarse quantiser; the codebooks train on at most
    /// `PQ_TRAIN` of them.
    pub max_train: usize,
    /// k-means iterations of the coarse quantiser.
    pub iters: usize,
    /// k-means iterations of each sub-quantiser's codebook.
    pub pq_iters: usize,
}

/// Most residuals the codebooks train on (256 per codeword of an 8-bit sub-quantiser).
pub const PQ_TRAIN: usize = 65_536;

impl IvfPqParams {
    /// 8-bit codes, trained as FAISS trains by default: the coarse quantiser on 256 vectors per
    /// list (at least 16k, at most 512k) for 10 iterations, the codebooks on `PQ_TRAIN` of
    /// them for 25.
    pub fn new(nlist: usize, m: usize, seed: u64) -> Self {
        IvfPqParams {
            nlist,
            m,
            nbits: 8,
            seed,
            max_train: (256 * nlist).clamp(16_384, 1 << 19),
            iters: 10,
            pq_iters: 25,
        }
    }

    /// The same parameters with `nbits`-bit codes.
    pub fn with_nbits(self, nbits: u32) -> Self {
        IvfPqParams { nbits, ..self }
    }

    /// Why these parameters cannot index vectors of `dim`, if they cannot.
    pub(crate) fn check(&self, dim: usize) -> std::result::Result<(), String> {
        let (m, nbits) = (self.m, self.nbits);
        if self.nlist == 0 {
            return Err("nlist must be at least 1".into());
        }
        if m == 0 || !dim.is_multiple_of(m) {
            return Err(format!("m = {m} does not divide dim {dim}"));
        }
        match nbits {
            8 => Ok(()),
            4 if m.is_multiple_of(2) && m <= fastscan::MAX_M => Ok(()),
            4 => Err(format!(
                "4-bit codes need an even m of at most {}, got {m}",
                fastscan::MAX_M
            )),
            _ => Err(format!("nbits must be 8 or 4, got {nbits}")),
        }
    }

    /// Whether codes are 4-bit, stored in blocks for the byte-table scan.
    fn blocked(&self) -> bool {
        self.nbits == 4
    }

    /// Bytes holding `n` codes of one list.
    pub(crate) fn list_bytes(&self, n: usize) -> usize {
        if self.blocked() {
            fastscan::blocks_bytes(n, self.m)
        } else {
            n * self.m
        }
    }

    /// Appends `code` (`m` unpacked values) to a list's `codes` that hold `len` codes.
    fn push_code(&self, codes: &mut Vec<u8>, len: usize, code: &[u8]) {
        if self.blocked() {
            fastscan::push(codes, len, code);
        } else {
            codes.extend_from_slice(code);
        }
    }

    /// Code number `i` of a list's `codes`, unpacked into `out` (`m` bytes).
    fn code(&self, codes: &[u8], i: usize, out: &mut [u8]) {
        if self.blocked() {
            fastscan::get(codes, i, out);
        } else {
            out.copy_from_slice(&codes[i * self.m..(i + 1) * self.m]);
        }
    }

    /// Byte offset of every list's codes given the list offsets (`nlist + 1` of them).
    pub(crate) fn code_starts(&self, offsets: &[u64]) -> Vec<usize> {
        let mut starts = vec![0];
        for w in offsets.windows(2) {
            let last = starts[starts.len() - 1];
            starts.push(last + self.list_bytes((w[1] - w[0]) as usize));
        }
        starts
    }
}

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
    coarse: Coarse,
    pub(crate) books: Array<f32>,
    /// `books` transposed to `m × dsub × ksub`, for building distance tables.
    books_t: Vec<f32>,
    pub(crate) offsets: Array<u64>,
    /// Byte offset of each list's codes in `codes` (`nlist + 1`).
    code_starts: Vec<usize>,
    pub(crate) codes: Array<u8>,
    /// Row number of each listed code, in list order (u32: at most `MAX_ROWS` rows).
    pub(crate) list_rows: Array<u32>,
    /// For L2, each listed code's query-independent distance term (`pq::code_term`), in list
    /// order; empty for the other metrics.
    terms: Vec<f32>,
    tails: Vec<Tail>,
    pub(crate) provenance: serde_json::Value,
}

/// Entries appended to one inverted list since it was last made contiguous.
#[derive(Clone, Default)]
struct Tail {
    codes: Vec<u8>,
    rows: Vec<u32>,
    terms: Vec<f32>,
}

/// A run of one inverted list's entries: codes (`m` bytes each, or blocks of 4-bit codes), row
/// numbers and, for L2, distance terms.
#[derive(Clone, Copy)]
pub(crate) struct ListPart<'a> {
    pub codes: &'a [u8],
    pub rows: &'a [u32],
    terms: &'a [f32],
}

impl<'a> ListPart<'a> {
    /// The L2 terms of entries `from..` (empty for the other metrics, which have none).
    fn terms_from(&self, from: usize) -> &'a [f32] {
        if self.terms.is_empty() {
            &[]
        } else {
            &self.terms[from..]
        }
    }
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
        params
            .check(dim)
            .map_err(|e| IndexError::invalid(format!("IVF-PQ: {e}")))?;
        let n = rows.len();
        check_row_count(n)?;
        let ksub = pq::ksub(params.nbits);
        let need = nlist.max(ksub);
        if n < need {
            return Err(IndexError::invalid(format!(
                "IVF-PQ with nlist {nlist} needs at least {need} vectors to train, got {n}"
            )));
        }
        let mut rng = Rng::new(params.seed);
        let mut pick = rng.sample(n, params.max_train.max(need).min(n));
        pick.sort_unstable();
        let sample = gather(&rows, &pick);
        let centroids = kmeans::kmeans(&sample, dim, nlist, params.iters, params.seed)?;
        let coarse = Coarse::new(&centroids, dim, rows.metric.kernel());
        // The codebooks train on the residuals of (at most `PQ_TRAIN` of) the sample.
        let pq_rows = pq_sample(&sample, dim, &mut rng);
        let assign = kmeans::assign(&coarse, &pq_rows);
        let residuals = residuals(&centroids, dim, &pq_rows, &assign);
        let books = pq::train(
            &residuals,
            dim,
            m,
            ksub,
            params.pq_iters,
            params.seed ^ 0x5051,
        )?;
        let mut idx = IvfPqIndex {
            params: params.clone(),
            centroids: centroids.into(),
            coarse,
            books_t: pq::transpose_books(&books, dim / m, ksub),
            books: books.into(),
            offsets: vec![0u64; nlist + 1].into(),
            code_starts: vec![0; nlist + 1],
            codes: Array::default(),
            list_rows: Array::default(),
            terms: Vec::new(),
            tails: vec![Tail::default(); nlist],
            provenance: serde_json::Value::Null,
            rows,
        };
        for r0 in (0..n).step_by(ENCODE_CHUNK) {
            let r1 = (r0 + ENCODE_CHUNK).min(n);
            idx.encode_rows(r0, r1);
            progress(r1, n);
        }
        idx.flatten_lists();
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
        list_rows: Array<u32>,
        provenance: serde_json::Value,
    ) -> Self {
        let coarse = Coarse::new(&centroids, rows.dim, rows.metric.kernel());
        let books_t = pq::transpose_books(&books, rows.dim / params.m, pq::ksub(params.nbits));
        let mut idx = IvfPqIndex {
            tails: vec![Tail::default(); params.nlist],
            code_starts: params.code_starts(&offsets),
            params,
            centroids,
            coarse,
            books,
            books_t,
            offsets,
            codes,
            list_rows,
            terms: Vec::new(),
            provenance,
            rows,
        };
        idx.terms = idx.listed_terms();
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
        let l2 = self.rows.metric == Metric::L2;
        for (i, (&list, code)) in assign
            .iter()
            .zip(codes.chunks_exact(self.params.m))
            .enumerate()
        {
            let l = list as usize;
            if l2 {
                let term = self.code_term(l, code);
                self.tails[l].terms.push(term);
            }
            let t = &mut self.tails[l];
            self.params.push_code(&mut t.codes, t.rows.len(), code);
            // `check_row_count` keeps every row number within u32.
            t.rows.push((r0 + i) as u32);
        }
    }

    /// The L2 distance term of `code` in list `l`.
    fn code_term(&self, l: usize, code: &[u8]) -> f32 {
        let dim = self.rows.dim;
        let centroid = &self.centroids[l * dim..(l + 1) * dim];
        pq::code_term(&self.books, self.dsub(), centroid, code)
    }

    /// The L2 distance terms of every code in the contiguous lists (empty for other metrics).
    fn listed_terms(&self) -> Vec<f32> {
        if self.rows.metric != Metric::L2 {
            return Vec::new();
        }
        let per_list: Vec<Vec<f32>> = (0..self.params.nlist)
            .into_par_iter()
            .map(|l| {
                let part = &self.list(l)[0];
                let mut code = vec![0u8; self.params.m];
                (0..part.rows.len())
                    .map(|i| {
                        self.params.code(part.codes, i, &mut code);
                        self.code_term(l, &code)
                    })
                    .collect()
            })
            .collect();
        per_list.concat()
    }

    /// Moves every list tail into the contiguous list arrays.
    fn flatten_lists(&mut self) {
        let (offsets, codes, list_rows) = self.merged_lists(&|r| Some(r));
        // Empty unless L2, in the same list order as the codes.
        let terms: Vec<f32> = (0..self.params.nlist)
            .flat_map(|l| self.list(l))
            .flat_map(|part| part.terms.iter().copied())
            .collect();
        self.code_starts = self.params.code_starts(&offsets);
        self.offsets = offsets.into();
        self.codes = codes.into();
        self.list_rows = list_rows.into();
        self.terms = terms;
        self.tails = vec![Tail::default(); self.params.nlist];
    }

    /// Every list's entries (contiguous part, then tail) as (offsets, codes, rows), each row
    /// renumbered by `renumber` and dropped where it gives `None`.
    pub(crate) fn merged_lists(
        &self,
        renumber: &dyn Fn(u32) -> Option<u32>,
    ) -> (Vec<u64>, Vec<u8>, Vec<u32>) {
        let p = &self.params;
        let mut offsets = Vec::with_capacity(p.nlist + 1);
        let mut codes = Vec::new();
        let mut rows = Vec::new();
        let mut code = vec![0u8; p.m];
        offsets.push(0);
        for l in 0..p.nlist {
            let mut list = Vec::new();
            let mut len = 0;
            for part in self.list(l) {
                for (i, &r) in part.rows.iter().enumerate() {
                    if let Some(nr) = renumber(r) {
                        p.code(part.codes, i, &mut code);
                        p.push_code(&mut list, len, &code);
                        rows.push(nr);
                        len += 1;
                    }
                }
            }
            codes.extend_from_slice(&list);
            offsets.push(rows.len() as u64);
        }
        (offsets, codes, rows)
    }

    /// The entries of list `l`: its contiguous part and its appended tail.
    pub(crate) fn list(&self, l: usize) -> [ListPart<'_>; 2] {
        let (a, b) = (self.offsets[l] as usize, self.offsets[l + 1] as usize);
        let t = &self.tails[l];
        [
            ListPart {
                codes: &self.codes[self.code_starts[l]..self.code_starts[l + 1]],
                rows: &self.list_rows[a..b],
                // Empty for inner product and cosine; for L2 one term per listed code.
                terms: if self.terms.is_empty() {
                    &[]
                } else {
                    &self.terms[a..b]
                },
            },
            ListPart {
                codes: &t.codes,
                rows: &t.rows,
                terms: &t.terms,
            },
        ]
    }

    /// Adds vectors, encoded with the existing codebooks; visible to the next search.
    pub fn append(&mut self, vectors: &[f32], ids: &[u64]) -> Result<()> {
        check_ids(&self.rows, vectors, ids)?;
        check_row_count(self.rows.len() + ids.len())?;
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

    /// Bytes per key of the searched structures: code, list row number (4 bytes) and, for L2,
    /// the code's distance term (block padding of 4-bit codes not counted).
    pub fn code_bytes_per_key(&self) -> usize {
        self.params.m * self.params.nbits as usize / 8
            + 4
            + if self.rows.metric == Metric::L2 { 4 } else { 0 }
    }

    /// Top candidates (score, row) of one prepared query over its probed lists (8-bit codes).
    ///
    /// A probe's base score is the coarse one (−‖q − c‖² for L2), and the table holds ⟨q_j, b⟩
    /// for every sub-quantiser j and codeword b (doubled for L2), so that a code's score is
    /// `base + Σ_j table[j][code_j]`, minus the code's term for L2: −‖q − c − r̂‖² in all.
    fn scan_query(&self, q: &[f32], probes: Vec<(f32, u64)>, cap: usize, s: &mut Scratch) -> TopK {
        let m = self.params.m;
        self.query_table(q, &mut s.table);
        let mut top = TopK::new(cap);
        for (base, list) in probes {
            for part in self.list(list as usize) {
                for (b0, rows) in (0..part.rows.len())
                    .step_by(ADC_BLOCK)
                    .zip(part.rows.chunks(ADC_BLOCK))
                {
                    let dists = &mut s.dists[..rows.len()];
                    pq::adc_many(&s.table, &part.codes[b0 * m..], m, dists);
                    let terms = part.terms_from(b0);
                    offer(&mut top, base, dists, terms, rows, &self.rows, &mut s.pass);
                }
            }
        }
        top
    }

    /// The query's table `⟨q_j, b⟩` (doubled for L2), as `scan_query` describes it.
    fn query_table(&self, q: &[f32], table: &mut [f32]) {
        pq::ip_table(&self.books_t, self.dsub(), q, table);
        if self.rows.metric == Metric::L2 {
            table.iter_mut().for_each(|x| *x *= 2.0);
        }
    }

    /// Top candidates of every prepared query in `q` over its probed lists (4-bit codes), with
    /// the tables of `scan_query` quantised to bytes. Each probed list is scanned once for all
    /// the queries that probe it, a chunk of codes at a time, so its codes are read from memory
    /// once per call rather than once per query, and two queries share each load of the codes
    /// into registers.
    fn scan_lists(&self, q: &[f32], probes: Vec<TopK>, cap: usize) -> Vec<TopK> {
        let m = self.params.m;
        let mut t = vec![0f32; m * 16];
        let tables: Vec<ByteTables> = q
            .chunks_exact(self.rows.dim)
            .map(|qv| {
                self.query_table(qv, &mut t);
                let mut b = ByteTables::new(m);
                b.quantise(&t);
                b
            })
            .collect();
        // (list, query, base score), grouped by list.
        let mut visits: Vec<(u64, usize, f32)> = probes
            .into_iter()
            .enumerate()
            .flat_map(|(qi, p)| p.into_sorted().into_iter().map(move |(b, l)| (l, qi, b)))
            .collect();
        visits.sort_unstable_by_key(|v| (v.0, v.1));
        let (mut tops, mut s) = (vec![TopK::new(cap); tables.len()], Scratch::new(0));
        for visits in visits.chunk_by(|a, b| a.0 == b.0) {
            for part in self.list(visits[0].0 as usize) {
                self.scan_blocks(&part, visits, &tables, &mut tops, &mut s);
            }
        }
        tops
    }

    /// Offers the 4-bit codes of `part` to the candidates of each of the `visits` (list, query,
    /// base score), `ADC_BLOCK` codes at a time for all of them.
    fn scan_blocks(
        &self,
        part: &ListPart<'_>,
        visits: &[(u64, usize, f32)],
        tables: &[ByteTables],
        tops: &mut [TopK],
        s: &mut Scratch,
    ) {
        let (m, block) = (self.params.m, fastscan::BLOCK);
        let block_bytes = fastscan::block_bytes(m);
        for (b0, rows) in (0..part.rows.len())
            .step_by(ADC_BLOCK)
            .zip(part.rows.chunks(ADC_BLOCK))
        {
            let nb = rows.len().div_ceil(block);
            let first = b0 / block * block_bytes;
            let codes = &part.codes[first..first + nb * block_bytes];
            let terms = part.terms_from(b0);
            let (d0, d1) = s.dists.split_at_mut(ADC_BLOCK);
            // Two queries per pass over the codes where the list has them.
            for pair in visits.chunks(2) {
                match *pair {
                    [(_, q0, _), (_, q1, _)] => {
                        let t = [&tables[q0], &tables[q1]];
                        fastscan::scores(t, codes, m, [&mut d0[..], &mut d1[..]]);
                    }
                    _ => fastscan::scores([&tables[pair[0].1]], codes, m, [&mut d0[..]]),
                }
                for (&(_, qi, base), d) in pair.iter().zip([&mut *d0, &mut *d1]) {
                    let dists = &mut d[..rows.len()];
                    offer(
                        &mut tops[qi],
                        base,
                        dists,
                        terms,
                        rows,
                        &self.rows,
                        &mut s.pass,
                    );
                }
            }
        }
    }

    /// The top `k` of each prepared query of `q` (searched on the calling thread).
    fn search_share(&self, q: &[f32], k: usize, params: &SearchParams) -> Vec<TopK> {
        let dim = self.rows.dim;
        let nprobe = params.nprobe.clamp(1, self.params.nlist);
        let probes = self.coarse.probe(q, nprobe);
        let cap = params.rerank.map_or(k, |r| r.max(k));
        let cands: Vec<TopK> = if self.params.blocked() {
            self.scan_lists(q, probes, cap)
        } else {
            let mut s = Scratch::new(self.params.m * pq::KSUB);
            q.chunks_exact(dim)
                .zip(probes)
                .map(|(qv, probe)| self.scan_query(qv, probe.into_sorted(), cap, &mut s))
                .collect()
        };
        q.chunks_exact(dim)
            .zip(cands)
            .map(|(qv, cands)| {
                if params.rerank.is_some() {
                    self.rerank(qv, cands, k)
                } else {
                    let mut top = TopK::new(k);
                    for (s, row) in cands.into_sorted() {
                        top.push(s, self.rows.id(row as usize));
                    }
                    top
                }
            })
            .collect()
    }

    /// The top `k` by exact score among the candidate rows `cands` of the prepared query `qv`.
    fn rerank(&self, qv: &[f32], cands: TopK, k: usize) -> TopK {
        let rows: Vec<u64> = cands.into_sorted().into_iter().map(|c| c.1).collect();
        let mut exact = Vec::with_capacity(rows.len());
        self.rows.scores(qv, &rows, &mut exact);
        // Ids are looked up (at random) only for the rows that can be kept.
        let least = kth_best(&mut exact, k);
        let mut top = TopK::new(k);
        for (s, row) in exact {
            if s >= least {
                top.push(s, self.rows.id(row as usize));
            }
        }
        top
    }
}

/// Rows one IVF-PQ index can hold: its lists number rows with u32.
pub const MAX_ROWS: usize = u32::MAX as usize + 1;

/// Refuses an index of `n` rows when its row numbers would not fit the lists' u32.
pub(crate) fn check_row_count(n: usize) -> Result<()> {
    if n > MAX_ROWS {
        return Err(IndexError::invalid(format!(
            "IVF-PQ holds at most {MAX_ROWS} keys per index (u32 row numbers), got {n}: \
             shard the datastore into several indexes"
        )));
    }
    Ok(())
}

/// Offers `base + dists[i] − terms[i]` (`terms` empty but for L2) for each of `rows` to `top`,
/// skipping deleted rows; `pass` is scratch.
fn offer(
    top: &mut TopK,
    base: f32,
    dists: &mut [f32],
    terms: &[f32],
    rows: &[u32],
    all: &Rows,
    pass: &mut Vec<u32>,
) {
    let f = kernel::Affine {
        scale: 1.0,
        offset: base,
        terms,
    };
    top.offer_block(dists, f, pass, |i| {
        let row = rows[i];
        (!all.is_dead(row as usize)).then_some(row as u64)
    });
}

/// The `k`-th best score of `scored` (−∞ if it holds `k` or fewer), reordering it; NaN scores
/// are dropped.
fn kth_best(scored: &mut Vec<(f32, u64)>, k: usize) -> f32 {
    scored.retain(|x| !x.0.is_nan());
    if k == 0 || scored.len() <= k {
        return f32::NEG_INFINITY;
    }
    scored.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
    scored[k - 1].0
}

/// Per-thread buffers of a search: an 8-bit query's distance table, a block of distances and
/// the positions in it that reach the top-k.
struct Scratch {
    table: Vec<f32>,
    dists: Vec<f32>,
    pass: Vec<u32>,
}

impl Scratch {
    /// Buffers for tables of `table` entries (none for 4-bit codes, whose tables are bytes).
    fn new(table: usize) -> Self {
        Scratch {
            table: vec![0f32; table],
            dists: vec![0f32; 2 * ADC_BLOCK],
            pass: Vec::with_capacity(ADC_BLOCK),
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

/// At most `PQ_TRAIN` rows of `data` (`n × dim`), drawn at random when there are more.
fn pq_sample<'a>(data: &'a [f32], dim: usize, rng: &mut Rng) -> Cow<'a, [f32]> {
    let n = data.len() / dim;
    if n <= PQ_TRAIN {
        return Cow::Borrowed(data);
    }
    let mut pick = rng.sample(n, PQ_TRAIN);
    pick.sort_unstable();
    let rows = pick.iter().flat_map(|&r| &data[r * dim..(r + 1) * dim]);
    Cow::Owned(rows.copied().collect())
}

/// Each row of `data` minus its assigned coarse centroid.
fn residuals(centroids: &[f32], dim: usize, data: &[f32], assign: &[u32]) -> Vec<f32> {
    let mut out = data.to_vec();
    for (row, &c) in out.chunks_exact_mut(dim).zip(assign) {
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
        // One share of the queries per thread, each searched start to end on its own: no
        // waiting between the steps, and no candidates to merge.
        let per_thread = (q.len() / dim)
            .div_ceil(rayon::current_num_threads())
            .max(1);
        let tops: Vec<TopK> = q
            .par_chunks(per_thread * dim)
            .flat_map_iter(|qs| self.search_share(qs, k, params))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code's score, computed the slow way: the list's centroid plus the decoded residual,
    /// scored against the query by the metric (−‖q − x̂‖² for L2, ⟨q, x̂⟩ otherwise).
    fn decoded_scores(idx: &IvfPqIndex, q: &[f32]) -> Vec<(f32, u64)> {
        let (dim, dsub, m) = (idx.rows.dim, idx.dsub(), idx.params.m);
        let ksub = pq::ksub(idx.params.nbits);
        let mut code = vec![0u8; m];
        let mut out = Vec::new();
        for l in 0..idx.params.nlist {
            for part in idx.list(l) {
                for (i, &row) in part.rows.iter().enumerate() {
                    idx.params.code(part.codes, i, &mut code);
                    let mut x = idx.centroids[l * dim..(l + 1) * dim].to_vec();
                    for (j, &c) in code.iter().enumerate() {
                        let b = &idx.books[(j * ksub + c as usize) * dsub..][..dsub];
                        for (xd, bd) in x[j * dsub..(j + 1) * dsub].iter_mut().zip(b) {
                            *xd += bd;
                        }
                    }
                    let s = match idx.rows.metric {
                        Metric::L2 => -q.iter().zip(&x).map(|(a, b)| (a - b).powi(2)).sum::<f32>(),
                        _ => q.iter().zip(&x).map(|(a, b)| a * b).sum(),
                    };
                    out.push((s, idx.rows.id(row as usize)));
                }
            }
        }
        out.sort_by(|a, b| b.0.total_cmp(&a.0));
        out
    }

    /// An index of random keys (8 lists, 6 sub-quantisers of `nbits`) with 50 rows appended,
    /// which live in the list tails until the next save, and 4 queries.
    fn appended_index(metric: Metric, nbits: u32) -> (IvfPqIndex, Vec<f32>) {
        let (dim, n) = (24, 3000);
        let mut rng = Rng::new(5);
        let keys: Vec<f32> = (0..n * dim).map(|_| rng.normal()).collect();
        let ids: Vec<u64> = (0..n as u64).map(|i| 7 * i + 3).collect();
        let queries: Vec<f32> = (0..4 * dim).map(|_| rng.normal()).collect();
        let params = IvfPqParams::new(8, 6, 2).with_nbits(nbits);
        let mut idx = IvfPqIndex::build(dim, metric, KeyType::F32, &keys, &ids, &params).unwrap();
        let extra: Vec<f32> = (0..50 * dim).map(|_| rng.normal()).collect();
        idx.append(&extra, &(0..50).map(|i| 100_000 + i).collect::<Vec<_>>())
            .unwrap();
        (idx, queries)
    }

    const ALL: SearchParams = SearchParams {
        nprobe: 8,
        rerank: None,
    };

    #[test]
    fn codebooks_train_on_a_spread_sample_of_at_most_pq_train_rows() {
        let (dim, n) = (2, PQ_TRAIN + 5000);
        let data: Vec<f32> = (0..n).flat_map(|r| [r as f32, -(r as f32)]).collect();
        let small = &data[..dim * 1000];
        assert!(matches!(pq_sample(small, dim, &mut Rng::new(1)), Cow::Borrowed(d) if d == small));
        let s = pq_sample(&data, dim, &mut Rng::new(1));
        let rows: Vec<usize> = s.chunks_exact(dim).map(|r| r[0] as usize).collect();
        assert_eq!(rows.len(), PQ_TRAIN);
        assert!(s.chunks_exact(dim).all(|r| r[1] == -r[0]));
        assert!(
            rows.windows(2).all(|w| w[0] < w[1]),
            "distinct rows, in order"
        );
        // Drawn from the whole sample, not its first rows.
        assert!(
            rows[PQ_TRAIN - 1] > PQ_TRAIN + 2000,
            "{}",
            rows[PQ_TRAIN - 1]
        );
    }

    #[test]
    fn row_numbers_beyond_u32_are_refused() {
        assert!(check_row_count(MAX_ROWS).is_ok());
        let e = check_row_count(MAX_ROWS + 1).unwrap_err().to_string();
        assert!(e.contains("4294967296") && e.contains("shard"), "{e}");
    }

    #[test]
    fn kth_best_keeps_ties_and_drops_nan() {
        let mut v = vec![
            (1.0, 0),
            (f32::NAN, 1),
            (3.0, 2),
            (2.0, 3),
            (2.0, 4),
            (0.5, 5),
        ];
        assert_eq!(kth_best(&mut v, 3), 2.0);
        assert_eq!(v.iter().filter(|x| x.0 >= 2.0).count(), 3);
        assert_eq!(v.len(), 5);
        assert_eq!(kth_best(&mut v, 5), f32::NEG_INFINITY);
        assert_eq!(kth_best(&mut v, 0), f32::NEG_INFINITY);
    }

    #[test]
    fn scores_are_distances_to_the_decoded_vectors() {
        for metric in [Metric::L2, Metric::InnerProduct] {
            let (idx, queries) = appended_index(metric, 8);
            let k = 40;
            let hits = idx.search(&queries, k, &ALL).unwrap();
            for (qi, q) in queries.chunks_exact(idx.rows.dim).enumerate() {
                let want = decoded_scores(&idx, q);
                for (i, (got, (ws, _))) in hits.scores[qi * k..(qi + 1) * k]
                    .iter()
                    .zip(&want)
                    .enumerate()
                {
                    let tol = 1e-4 * ws.abs().max(1.0);
                    assert!(
                        (got - ws).abs() <= tol,
                        "{metric} query {qi} rank {i}: {got} vs {ws}"
                    );
                }
            }
        }
    }

    #[test]
    fn four_bit_scores_are_decoded_distances_within_the_byte_tables_error() {
        for metric in [Metric::L2, Metric::InnerProduct] {
            let (idx, queries) = appended_index(metric, 4);
            let (k, m) = (40, idx.params.m);
            let hits = idx.search(&queries, k, &ALL).unwrap();
            for (qi, q) in queries.chunks_exact(idx.rows.dim).enumerate() {
                // The byte tables' rounding moves each entry by at most half a step.
                let mut table = vec![0f32; m * 16];
                pq::ip_table(&idx.books_t, idx.dsub(), q, &mut table);
                let mut bytes = ByteTables::new(m);
                bytes.quantise(&table);
                let scale = if metric == Metric::L2 { 2.0 } else { 1.0 };
                let want = decoded_scores(&idx, q);
                let tol = 0.5 * scale * bytes.unit * m as f32 + 1e-3 * want[0].0.abs().max(1.0);
                let decoded: std::collections::HashMap<u64, f32> =
                    want.iter().map(|&(s, id)| (id, s)).collect();
                let got = &hits.scores[qi * k..(qi + 1) * k];
                let got_ids = &hits.ids[qi * k..(qi + 1) * k];
                for (g, id) in got.iter().zip(got_ids) {
                    let d = decoded[id];
                    assert!(
                        (g - d).abs() <= tol,
                        "{metric} query {qi} id {id}: {g} vs {d}"
                    );
                    assert!(
                        d >= want[k - 1].0 - 2.0 * tol,
                        "{metric} query {qi} id {id}"
                    );
                }
            }
        }
    }
}
