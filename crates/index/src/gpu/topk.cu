// Top-k of the rows of a score matrix, compiled at run time with NVRTC (no headers).
//
// scores is [nq, ld] row-major: query q against the ld keys of one key block, as the GEMM wrote
// it. One thread block handles one chunk of one row (grid: chunks of the block × queries). The
// block keeps its current top-k and their threshold (the k-th best score) in shared memory and
// scans the chunk in tiles of TILE keys: each thread turns its keys into scores (the L2 term
// fused in: 2·dot − ‖key‖²; the host adds −‖query‖²) and appends those above the threshold to a
// shared candidate buffer. When the buffer could overflow on the next tile, and at the end, a
// block-wide bitonic sort of candidates plus top-k yields the new top-k and threshold. After
// the first tiles the threshold passes few keys, so the scan runs at memory speed. The chunk's
// top-k, best first, goes to out[q, first_chunk + chunk, 0..k] as (score, global row); empty
// slots get (−inf, −1). Scores that are NaN or −inf never pass the threshold.

#define THREADS 128
#define ITEMS 8                  // keys per thread per tile
#define TILE (THREADS * ITEMS)
#define KMAX 64
#define BUF 2048                 // candidate buffer: holds a full tile on top of BUF − TILE − KMAX
#define NEG_INF (-__int_as_float(0x7f800000))

// Whether (s1, r1) ranks before (s2, r2): higher score, then smaller row. Row −1 (an empty
// slot) compares as the largest row, so it ranks after every real row of the same score.
__device__ __forceinline__ bool better(float s1, int r1, float s2, int r2) {
    return s1 > s2 || (s1 == s2 && (unsigned)r1 < (unsigned)r2);
}

// Sorts bs/br[0..n) best first; n is a power of two ≤ BUF. Ends with a barrier.
__device__ void sort_best_first(float* bs, int* br, int n) {
    for (int size = 2; size <= n; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < n; i += THREADS) {
                const int j = i ^ stride;
                if (j > i) {
                    // Runs of `size` alternate direction; the last run (size == n) is best first.
                    const bool best_first = (i & size) == 0;
                    const bool swap = best_first ? better(bs[j], br[j], bs[i], br[i])
                                                 : better(bs[i], br[i], bs[j], br[j]);
                    if (swap) {
                        const float s = bs[i];
                        const int r = br[i];
                        bs[i] = bs[j];
                        br[i] = br[j];
                        bs[j] = s;
                        br[j] = r;
                    }
                }
            }
            __syncthreads();
        }
    }
}

// Merges the c candidates in bs/br with the top-k in ts/tr (c + k ≤ BUF) into ts/tr, best
// first, and empties the buffer. Every thread calls it with the same c; it returns the new
// threshold (the k-th best score, −inf while fewer than k keys were seen).
__device__ float merge(float* bs, int* br, float* ts, int* tr, int* count, int c, int k) {
    const int m = c + k;
    int n = 1;
    while (n < m) n <<= 1;
    for (int i = threadIdx.x; i < k; i += THREADS) {
        bs[c + i] = ts[i];
        br[c + i] = tr[i];
    }
    for (int i = m + threadIdx.x; i < n; i += THREADS) {
        bs[i] = NEG_INF;
        br[i] = -1;
    }
    __syncthreads();
    sort_best_first(bs, br, n);
    for (int i = threadIdx.x; i < k; i += THREADS) {
        ts[i] = bs[i];
        tr[i] = br[i];
    }
    if (threadIdx.x == 0) *count = 0;
    __syncthreads();
    return ts[k - 1];
}

extern "C" __global__ void __launch_bounds__(THREADS) topk_chunks(
    const float* __restrict__ scores,  // [nq, ld]
    long long ld,                      // keys in this block (row stride of scores)
    const float* __restrict__ norms,   // [ld] squared key norms of this block
    int l2,                            // 1: score = 2·dot − norm; 0: score = dot
    int base_row,                      // global row of the block's first key
    int chunk,                         // keys per chunk (a multiple of THREADS)
    int k,                             // 1 ≤ k ≤ KMAX
    int first_chunk,                   // global chunk number of the block's first chunk
    int n_chunks,                      // chunks per query over all keys
    float* __restrict__ out_s,         // [nq, n_chunks, k]
    int* __restrict__ out_r)           // [nq, n_chunks, k]
{
    __shared__ float bs[BUF];
    __shared__ int br[BUF];
    __shared__ float ts[KMAX];
    __shared__ int tr[KMAX];
    __shared__ int count;
    const int tid = threadIdx.x;
    const long long start = (long long)blockIdx.x * chunk;
    long long end = start + chunk;
    if (end > ld) end = ld;
    const float* row = scores + (long long)blockIdx.y * ld;

    for (int i = tid; i < k; i += THREADS) {
        ts[i] = NEG_INF;
        tr[i] = -1;
    }
    if (tid == 0) count = 0;
    __syncthreads();
    // Every top-k entry comes from an earlier tile, so from a smaller row: a key whose score
    // equals the threshold can never displace it, and "s > thr" is the exact test.
    float thr = NEG_INF;
    for (long long t0 = start; t0 < end; t0 += TILE) {
#pragma unroll
        for (int u = 0; u < ITEMS; ++u) {
            const long long j = t0 + u * THREADS + tid;
            if (j < end) {
                float s = row[j];
                if (l2) s = 2.0f * s - norms[j];
                if (s > thr) {
                    const int p = atomicAdd(&count, 1);
                    bs[p] = s;
                    br[p] = base_row + (int)j;
                }
            }
        }
        __syncthreads();
        const int c = count;
        // Second barrier: nobody appends to the next tile before every thread has read c.
        __syncthreads();
        if (c > BUF - TILE - KMAX) thr = merge(bs, br, ts, tr, &count, c, k);
    }
    const int c = count;
    __syncthreads();
    merge(bs, br, ts, tr, &count, c, k);
    const long long o = ((long long)blockIdx.y * n_chunks + first_chunk + blockIdx.x) * k;
    for (int i = tid; i < k; i += THREADS) {
        out_s[o + i] = ts[i];
        out_r[o + i] = tr[i];
    }
}
