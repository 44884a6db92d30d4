//! [`GpuFlatIndex`]: exact search with the keys in GPU memory (cudarc: driver, NVRTC, cuBLAS).

use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublas::{result as cublas, sys as cublas_sys, CudaBlas};
use cudarc::driver::{
    sys as cu_sys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DriverError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};
use half::f16;

use super::host::{merge, padded_dim, round_rows, Plan, MAX_K, THREADS};
use crate::error::{IndexError, Result};
use crate::metric::Metric;
use crate::topk::TopK;
use crate::{Hits, Index, SearchParams};

/// Source of the top-k kernel, compiled with NVRTC when an index is created.
const TOPK_SOURCE: &str = include_str!("topk.cu");
/// Name of the kernel in [`TOPK_SOURCE`].
const TOPK_KERNEL: &str = "topk_chunks";
/// Default GPU memory for one query batch's score matrix.
const DEFAULT_SCORE_BUDGET: usize = 2 << 30;
/// Host staging per upload while building an index.
const UPLOAD_BYTES: usize = 64 << 20;

/// Where a search's time goes, when `RALM_GPU_TIMING` is set: each phase is followed by a
/// stream synchronisation (which slows the search a little) and timed on the host.
struct Timing {
    /// Seconds in the GEMMs, the top-k kernels, and the rest (uploads, downloads, merge).
    phases: Option<([f64; 3], std::time::Instant)>,
}

impl Timing {
    fn from_env() -> Self {
        let on = std::env::var_os("RALM_GPU_TIMING").is_some();
        Self {
            phases: on.then(|| ([0.0; 3], std::time::Instant::now())),
        }
    }

    /// Ends phase `i` (0 GEMM, 1 top-k, 2 other) now.
    fn lap(&mut self, stream: &CudaStream, i: usize) -> Result<()> {
        if let Some((acc, last)) = &mut self.phases {
            stream
                .synchronize()
                .map_err(driver_err("timing the search", 0))?;
            acc[i] += last.elapsed().as_secs_f64();
            *last = std::time::Instant::now();
        }
        Ok(())
    }

    fn report(&self, nq: usize, n: usize) {
        if let Some((acc, _)) = &self.phases {
            eprintln!(
                "gpu search timing ({nq} queries x {n} keys): GEMM {:.2} ms, top-k {:.2} ms, \
                 uploads/downloads/merge {:.2} ms",
                acc[0] * 1e3,
                acc[1] * 1e3,
                acc[2] * 1e3
            );
        }
    }
}

/// Bytes as GiB, for messages.
fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// A driver error while doing `what`, with out-of-memory spelled out.
fn driver_err(what: &str, need: usize) -> impl Fn(DriverError) -> IndexError + '_ {
    move |e| {
        if e.0 == cu_sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            IndexError::gpu(format!(
                "out of GPU memory: need {:.2} GiB for {what}",
                gib(need)
            ))
        } else {
            IndexError::gpu(format!("{what}: {e}"))
        }
    }
}

/// Fails with a clear message when the GPU has less than `need` bytes free.
fn ensure_free(ctx: &CudaContext, need: usize, what: &str) -> Result<()> {
    let (free, total) = ctx
        .mem_get_info()
        .map_err(driver_err("querying GPU memory", 0))?;
    if need > free {
        return Err(IndexError::gpu(format!(
            "out of GPU memory: need {:.2} GiB for {what}, {:.2} GiB free of {:.2} GiB",
            gib(need),
            gib(free),
            gib(total)
        )));
    }
    Ok(())
}

/// `v` as a C int for cuBLAS and the kernel.
fn c_int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| IndexError::gpu(format!("{what} = {v} is too large for the GPU kernels")))
}

/// Exact index over f16 keys held in GPU memory, with u64 ids on the host.
///
/// Scores follow [`Metric`] ("higher is closer"), computed from the f16-rounded keys and queries
/// with f32 accumulation: inner product, cosine (rows normalised before rounding) or
/// `−‖q−k‖²` (as `2·q·k − ‖k‖² − ‖q‖²`). Results are ordered and padded like every other index.
/// `k` is limited to 64. GPU memory: the keys (`2·dim + 4` bytes a row, rows padded to a multiple
/// of 8 halves) plus the last search's buffers, kept for the next one (mostly the score matrix,
/// at most the score budget).
pub struct GpuFlatIndex {
    dim: usize,
    /// Row length on the GPU: `dim` rounded up to 8 halves; padding is zero.
    dim_pad: usize,
    metric: Metric,
    ids: Vec<u64>,
    /// `[max(n, 1), dim_pad]` row-major f16 keys.
    keys: CudaSlice<f16>,
    /// `[max(n, 1)]` squared norms of the rounded keys.
    norms: CudaSlice<f32>,
    topk: CudaFunction,
    /// cuBLAS handle and search buffers; the lock also serialises concurrent searches.
    shared: Mutex<Shared>,
    stream: Arc<CudaStream>,
    /// Bytes of GPU memory one query batch's score matrix may use.
    score_budget: usize,
}

/// What searches share, behind one lock.
struct Shared {
    /// cuBLAS handle bound to the index's stream.
    blas: CudaBlas,
    /// The last search's buffers, reused while large enough.
    scratch: Option<Scratch>,
}

/// GPU buffers of a search: scores `[q_batch, key_block]`, f16 queries `[q_batch, dim_pad]`, and
/// candidate scores and rows `[q_batch, n_chunks, k]`.
struct Scratch {
    scores: CudaSlice<f32>,
    queries: CudaSlice<f16>,
    cand_s: CudaSlice<f32>,
    cand_r: CudaSlice<i32>,
}

impl Scratch {
    /// Buffers of `[scores, queries, candidates]` elements.
    fn alloc(
        stream: &Arc<CudaStream>,
        sizes: [usize; 3],
    ) -> std::result::Result<Self, DriverError> {
        Ok(Scratch {
            scores: stream.alloc_zeros(sizes[0])?,
            queries: stream.alloc_zeros(sizes[1])?,
            cand_s: stream.alloc_zeros(sizes[2])?,
            cand_r: stream.alloc_zeros(sizes[2])?,
        })
    }

    /// Whether these buffers hold `[scores, queries, candidates]` elements.
    fn fits(&self, sizes: [usize; 3]) -> bool {
        self.scores.len() >= sizes[0]
            && self.queries.len() >= sizes[1]
            && self.cand_s.len() >= sizes[2]
    }
}

impl GpuFlatIndex {
    /// An index on GPU `ordinal` over `vectors` (`n × dim` row-major) with their `ids`.
    /// Compiles the top-k kernel, and fails with "out of GPU memory: need X GiB ..." when the
    /// keys do not fit.
    pub fn from_vectors(
        vectors: &[f32],
        dim: usize,
        metric: Metric,
        ids: &[u64],
        ordinal: usize,
    ) -> Result<Self> {
        if dim == 0 || !vectors.len().is_multiple_of(dim) {
            return Err(IndexError::invalid(format!(
                "GPU index vectors: {} floats is not a multiple of dim {dim}",
                vectors.len()
            )));
        }
        let n = vectors.len() / dim;
        if n != ids.len() {
            return Err(IndexError::invalid(format!(
                "GPU index: {n} vectors but {} ids",
                ids.len()
            )));
        }
        c_int(n, "GPU index rows")?;
        let dim_pad = padded_dim(dim);
        c_int(dim_pad, "GPU index dim")?;
        let ctx = CudaContext::new(ordinal)
            .map_err(driver_err(&format!("opening CUDA device {ordinal}"), 0))?;
        let stream = ctx
            .new_stream()
            .map_err(driver_err("creating a CUDA stream", 0))?;
        let rows = n.max(1);
        let need = rows * (dim_pad * 2 + 4);
        let what = format!("{n} keys of dim {dim} as f16");
        ensure_free(&ctx, need, &what)?;
        let mut keys = stream
            .alloc_zeros::<f16>(rows * dim_pad)
            .map_err(driver_err(&what, need))?;
        let mut norms_host = Vec::with_capacity(n);
        let step = (UPLOAD_BYTES / (dim_pad * 2)).max(1);
        let mut staging = vec![f16::ZERO; step.min(n) * dim_pad];
        for r0 in (0..n).step_by(step) {
            let r1 = (r0 + step).min(n);
            let host = &mut staging[..(r1 - r0) * dim_pad];
            norms_host.extend(round_rows(
                &vectors[r0 * dim..r1 * dim],
                dim,
                dim_pad,
                metric == Metric::Cosine,
                host,
            ));
            let mut dst = keys.slice_mut(r0 * dim_pad..r1 * dim_pad);
            stream
                .memcpy_htod(&*host, &mut dst)
                .map_err(driver_err("uploading keys", need))?;
        }
        norms_host.resize(rows, 0.0);
        let norms = stream
            .clone_htod(&norms_host)
            .map_err(driver_err("uploading key norms", need))?;
        stream
            .synchronize()
            .map_err(driver_err("uploading keys", need))?;
        let topk = compile_topk(&ctx)?;
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| IndexError::gpu(format!("creating a cuBLAS handle: {e}")))?;
        Ok(GpuFlatIndex {
            dim,
            dim_pad,
            metric,
            ids: ids.to_vec(),
            keys,
            norms,
            topk,
            shared: Mutex::new(Shared {
                blas,
                scratch: None,
            }),
            stream,
            score_budget: DEFAULT_SCORE_BUDGET,
        })
    }

    /// Sets the GPU memory one query batch's score matrix may use (default 2 GiB). Smaller
    /// budgets cut the keys into more blocks; the results do not change.
    pub fn set_score_budget(&mut self, bytes: usize) {
        self.score_budget = bytes;
    }

    /// Top-`k` (`k` ≤ 64) of each query of `queries` (`nq × dim` row-major), best first; rows
    /// with fewer than `k` keys are padded as in [`Hits`].
    pub fn search(&self, queries: &[f32], k: usize) -> Result<Hits> {
        let dim = self.dim;
        if !queries.len().is_multiple_of(dim) {
            return Err(IndexError::invalid(format!(
                "search queries: {} floats is not a multiple of dim {dim}",
                queries.len()
            )));
        }
        if k > MAX_K {
            return Err(IndexError::invalid(format!(
                "GPU search supports k <= {MAX_K}, got k = {k}"
            )));
        }
        let nq = queries.len() / dim;
        let n = self.ids.len();
        if k == 0 || n == 0 || nq == 0 {
            return Ok(Hits::from_tops(k, vec![TopK::new(k); nq]));
        }
        // cuBLAS runs on the calling thread's current context, which may not be ours yet.
        self.stream
            .context()
            .bind_to_thread()
            .map_err(driver_err("binding the CUDA context", 0))?;
        let dp = self.dim_pad;
        let plan = Plan::new(n, nq, k, self.score_budget / 4);
        let per_query = plan.n_chunks * k;
        let sizes = [
            plan.q_batch * plan.key_block,
            plan.q_batch * dp,
            plan.q_batch * per_query,
        ];
        let mut shared = self
            .shared
            .lock()
            .map_err(|_| IndexError::gpu("a previous search panicked"))?;
        let Shared { blas, scratch } = &mut *shared;
        if !scratch.as_ref().is_some_and(|b| b.fits(sizes)) {
            // Free the smaller buffers before asking for the larger ones.
            *scratch = None;
            let need = plan.bytes(dp, k);
            let what = format!(
                "search buffers ({} queries x {} keys of f32 scores; a smaller score budget \
                 uses less)",
                plan.q_batch, plan.key_block
            );
            ensure_free(self.stream.context(), need, &what)?;
            *scratch = Some(Scratch::alloc(&self.stream, sizes).map_err(driver_err(&what, need))?);
        }
        let buf = scratch
            .as_mut()
            .ok_or_else(|| IndexError::gpu("search buffers missing"))?;
        let searching = driver_err("searching (GEMM + top-k kernel)", 0);
        let mut timing = Timing::from_env();
        let mut q_host = vec![f16::ZERO; plan.q_batch * dp];
        let mut tops = Vec::with_capacity(nq);
        for batch in queries.chunks(plan.q_batch * dim) {
            let qn = batch.len() / dim;
            let q_host = &mut q_host[..qn * dp];
            let qnorms = round_rows(batch, dim, dp, self.metric == Metric::Cosine, q_host);
            {
                let mut dst = buf.queries.slice_mut(..qn * dp);
                self.stream
                    .memcpy_htod(&*q_host, &mut dst)
                    .map_err(driver_err("uploading queries", 0))?;
            }
            for j0 in (0..n).step_by(plan.key_block) {
                let len = plan.key_block.min(n - j0);
                self.gemm(blas, &buf.queries, qn, j0, len, &mut buf.scores)?;
                timing.lap(&self.stream, 0)?;
                self.launch_topk(&plan, k, qn, j0, len, buf)?;
                timing.lap(&self.stream, 1)?;
            }
            let m = qn * per_query;
            let s = self
                .stream
                .clone_dtoh(&buf.cand_s.slice(..m))
                .map_err(&searching)?;
            let r = self
                .stream
                .clone_dtoh(&buf.cand_r.slice(..m))
                .map_err(&searching)?;
            self.stream.synchronize().map_err(&searching)?;
            let offsets: Vec<f32> = if self.metric == Metric::L2 {
                qnorms.iter().map(|&q| -q).collect()
            } else {
                vec![0.0; qn]
            };
            tops.extend(merge(&s, &r, per_query, k, &offsets, &self.ids));
            timing.lap(&self.stream, 2)?;
        }
        timing.report(nq, n);
        Ok(Hits::from_tops(k, tops))
    }

    /// `scores[q, j] = query q · key (j0 + j)` for `qn` queries and `len` keys: one GEMM with f16
    /// inputs and f32 accumulation and output. cuBLAS is column-major, so it computes the
    /// `len × qn` matrix `K_blockᵀ-stored · Q` with `ldc = len`, which is `[qn, len]` row-major.
    fn gemm(
        &self,
        blas: &CudaBlas,
        q: &CudaSlice<f16>,
        qn: usize,
        j0: usize,
        len: usize,
        scores: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let dp = self.dim_pad;
        let (m, n, kd) = (
            c_int(len, "key block")?,
            c_int(qn, "query batch")?,
            c_int(dp, "dim")?,
        );
        let keys = self.keys.slice(j0 * dp..(j0 + len) * dp);
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (a, _read_a) = keys.device_ptr(&self.stream);
        let (b, _read_b) = q.device_ptr(&self.stream);
        let (c, _write_c) = scores.device_ptr_mut(&self.stream);
        // SAFETY: A is `len` rows of `dp` halves, B `qn` rows of `dp` halves and C holds at least
        // `qn × len` floats (the plan sizes it); all live on the handle's stream.
        unsafe {
            cublas::gemm_ex(
                *blas.handle(),
                cublas_sys::cublasOperation_t::CUBLAS_OP_T,
                cublas_sys::cublasOperation_t::CUBLAS_OP_N,
                m,
                n,
                kd,
                (&alpha as *const f32).cast::<c_void>(),
                a as *const c_void,
                cublas_sys::cudaDataType_t::CUDA_R_16F,
                kd,
                b as *const c_void,
                cublas_sys::cudaDataType_t::CUDA_R_16F,
                kd,
                (&beta as *const f32).cast::<c_void>(),
                c as *mut c_void,
                cublas_sys::cudaDataType_t::CUDA_R_32F,
                m,
                cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| IndexError::gpu(format!("cuBLAS GEMM ({len} keys × {qn} queries): {e}")))
    }

    /// Runs the top-k kernel over the `[qn, len]` scores in `buf` of the key block starting at
    /// row `j0`, writing its chunks' candidates into `buf`.
    fn launch_topk(
        &self,
        plan: &Plan,
        k: usize,
        qn: usize,
        j0: usize,
        len: usize,
        buf: &mut Scratch,
    ) -> Result<()> {
        let norms = self.norms.slice(j0..j0 + len);
        let ld = len as i64;
        let l2 = i32::from(self.metric == Metric::L2);
        let base_row = c_int(j0, "key row")?;
        let chunk = c_int(plan.chunk, "chunk")?;
        let kk = c_int(k, "k")?;
        let first_chunk = c_int(j0 / plan.chunk, "chunk number")?;
        let n_chunks = c_int(plan.n_chunks, "chunks")?;
        let cfg = LaunchConfig {
            grid_dim: (
                len.div_ceil(plan.chunk) as u32,
                c_int(qn, "query batch")? as u32,
                1,
            ),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.topk);
        launch
            .arg(&buf.scores)
            .arg(&ld)
            .arg(&norms)
            .arg(&l2)
            .arg(&base_row)
            .arg(&chunk)
            .arg(&kk)
            .arg(&first_chunk)
            .arg(&n_chunks)
            .arg(&mut buf.cand_s)
            .arg(&mut buf.cand_r);
        // SAFETY: the arguments match `topk_chunks` in topk.cu one for one; the grid covers
        // `qn` rows of `len` scores and writes chunks `first_chunk..` of `n_chunks` per query,
        // inside the candidate buffers sized by the plan.
        unsafe { launch.launch(cfg) }
            .map(|_| ())
            .map_err(driver_err("launching the top-k kernel", 0))
    }
}

/// Compiles the top-k kernel with NVRTC for the device of `ctx` and loads it.
fn compile_topk(ctx: &Arc<CudaContext>) -> Result<CudaFunction> {
    let (major, minor) = ctx
        .compute_capability()
        .map_err(driver_err("querying the compute capability", 0))?;
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture=compute_{major}{minor}")],
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(TOPK_SOURCE, opts).map_err(|e| {
        IndexError::gpu(match e {
            CompileError::CompileError { nvrtc, log, .. } => format!(
                "NVRTC could not compile the top-k kernel ({nvrtc:?}):\n{}",
                log.to_string_lossy()
            ),
            e => format!("NVRTC: {e}"),
        })
    })?;
    let module = ctx.load_module(ptx).map_err(driver_err(
        "loading the top-k kernel (PTX from an NVRTC newer than the driver is refused)",
        0,
    ))?;
    module
        .load_function(TOPK_KERNEL)
        .map_err(driver_err("finding the top-k kernel", 0))
}

impl Index for GpuFlatIndex {
    fn dim(&self) -> usize {
        self.dim
    }
    fn len(&self) -> usize {
        self.ids.len()
    }
    fn metric(&self) -> Metric {
        self.metric
    }
    fn search(&self, queries: &[f32], k: usize, _params: &SearchParams) -> Result<Hits> {
        GpuFlatIndex::search(self, queries, k)
    }
}

impl std::fmt::Debug for GpuFlatIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuFlatIndex")
            .field("dim", &self.dim)
            .field("metric", &self.metric)
            .field("len", &self.ids.len())
            .field("device", &self.stream.context().ordinal())
            .finish()
    }
}
