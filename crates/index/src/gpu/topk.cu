// Top-k of the rows of a score matrix, compiled at run time with NVRTC (no headers).
//
// scores is [nq, ld] row-major: query q against the ld keys of one key block, as the GEMM wrote
// it. One thread block handles one chunk of one row (grid: chunks of the block × queries). Each
// thread scans a strided part of the chunk keeping a private sorted top-k, with the L2 term
// fused in (2·dot − ‖key‖²; the host adds −‖query‖²); then the block merges its threads' lists
// in k rounds of a block-wide arg-max and writes the chunk's top-k, best first, to
// out[q, first_chunk + chunk, 0..k] as (score, global row). Empty slots get (−inf, −1).

#define THREADS 128
#define WARPS (THREADS / 32)
#define KMAX 64
#define NEG_INF (-__int_as_float(0x7f800000))

// Whether (s1, r1) ranks before (s2, r2): higher score, then smaller row. Row −1 (an empty
// slot) compares as the largest row, so it ranks after every real row of the same score.
__device__ __forceinline__ bool better(float s1, int r1, float s2, int r2) {
    return s1 > s2 || (s1 == s2 && (unsigned)r1 < (unsigned)r2);
}

// Inserts (s, r), known to beat the last of the k entries, into a list kept best first;
// returns the new score of the last entry (the threshold). Equal scores stay behind earlier
// (smaller) rows because each thread visits its rows in increasing order.
__device__ __forceinline__ float offer(float* ls, int* lr, int k, float s, int r) {
    int p = k - 1;
    while (p > 0 && s > ls[p - 1]) {
        ls[p] = ls[p - 1];
        lr[p] = lr[p - 1];
        --p;
    }
    ls[p] = s;
    lr[p] = r;
    return ls[k - 1];
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
    const int tid = threadIdx.x;
    const long long start = (long long)blockIdx.x * chunk;
    long long end = start + chunk;
    if (end > ld) end = ld;
    const float* row = scores + (long long)blockIdx.y * ld;

    float ls[KMAX];
    int lr[KMAX];
    for (int t = 0; t < k; ++t) {
        ls[t] = NEG_INF;
        lr[t] = -1;
    }
    float thr = NEG_INF;  // NaN and −inf never pass "s > thr"

    long long j = start + tid;
    // Four independent loads in flight per thread, then the tail; rows stay in increasing order.
    for (; j + 3 * THREADS < end; j += 4 * THREADS) {
        float v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const float s = row[j + u * THREADS];
            v[u] = l2 ? 2.0f * s - norms[j + u * THREADS] : s;
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            if (v[u] > thr) thr = offer(ls, lr, k, v[u], base_row + (int)(j + u * THREADS));
        }
    }
    for (; j < end; j += THREADS) {
        float s = row[j];
        if (l2) s = 2.0f * s - norms[j];
        if (s > thr) thr = offer(ls, lr, k, s, base_row + (int)j);
    }

    // Block merge: k rounds; each finds the best head among the threads' lists (warp shuffles,
    // then one value per warp in shared memory), thread 0 writes it out and names the winner,
    // whose list advances. Two barriers per round: red_* are rewritten only after thread 0 has
    // read them (second barrier), winner only after every thread has read it (first barrier
    // of the next round).
    __shared__ float red_s[WARPS];
    __shared__ int red_r[WARPS];
    __shared__ int red_t[WARPS];
    __shared__ int winner;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const long long o = ((long long)blockIdx.y * n_chunks + first_chunk + blockIdx.x) * k;
    int pos = 0;
    for (int i = 0; i < k; ++i) {
        float s = pos < k ? ls[pos] : NEG_INF;
        int r = pos < k ? lr[pos] : -1;
        int t = tid;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const float s2 = __shfl_down_sync(0xffffffffu, s, off);
            const int r2 = __shfl_down_sync(0xffffffffu, r, off);
            const int t2 = __shfl_down_sync(0xffffffffu, t, off);
            if (better(s2, r2, s, r)) {
                s = s2;
                r = r2;
                t = t2;
            }
        }
        if (lane == 0) {
            red_s[warp] = s;
            red_r[warp] = r;
            red_t[warp] = t;
        }
        __syncthreads();
        if (tid == 0) {
            for (int w = 1; w < WARPS; ++w) {
                if (better(red_s[w], red_r[w], s, r)) {
                    s = red_s[w];
                    r = red_r[w];
                    t = red_t[w];
                }
            }
            out_s[o + i] = s;
            out_r[o + i] = r;
            winner = t;
        }
        __syncthreads();
        if (tid == winner) ++pos;
    }
}
