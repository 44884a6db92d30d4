// Runs the GPU top-k kernel (crates/index/src/gpu/topk.cu) on the CPU, one std::thread per CUDA
// thread and a std::barrier for __syncthreads, and checks every chunk's top-k against a sort.
// Built and run by tests/topk_emulation.rs, so the kernel's logic is tested without a GPU:
// random scores, heavy ties (few distinct levels), NaN and −inf, partial tiles and chunks,
// k from 1 to KMAX.
#include <atomic>
#include <barrier>
#include <thread>
#include <vector>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <random>
#include <cmath>
struct Dim { unsigned x, y, z; };
static thread_local Dim threadIdx;
static Dim blockIdx;
static std::barrier<>* bar;
#define __syncthreads() bar->arrive_and_wait()
#define __device__
#define __forceinline__
#define __global__
#define __launch_bounds__(x)
#define __restrict__
#define __shared__ static
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
#include "topk.cu"
int main() {
  std::mt19937 rng(1);
  int fails = 0;
  struct Case { long long ld; int chunk; int k; int l2; int levels; };
  std::vector<Case> cases = {{5000, 1024, 32, 1, 0}, {20000, 8192, 64, 0, 0}, {3001, 1024, 5, 1, 7},
    {100, 128, 64, 0, 0}, {70000, 65536, 32, 1, 3}, {1, 128, 3, 0, 0}, {9000, 4096, 1, 0, 0}, {40000, 40064, 17, 0, 50}};
  for (auto c : cases) {
    int nq = 2;
    std::vector<float> sc(nq * c.ld), norms(c.ld);
    for (auto& x : sc) x = c.levels ? float(rng() % c.levels) : std::uniform_real_distribution<float>(-1, 1)(rng);
    for (auto& x : norms) x = c.levels ? float(rng() % 2) : std::uniform_real_distribution<float>(0, 1)(rng);
    // a few NaN / -inf scores
    sc[c.ld / 2] = NAN; if (c.ld > 3) sc[3] = -INFINITY;
    int n_chunks = (c.ld + c.chunk - 1) / c.chunk;
    std::vector<float> os(nq * n_chunks * c.k); std::vector<int> orow(nq * n_chunks * c.k);
    for (unsigned q = 0; q < (unsigned)nq; ++q) for (unsigned b = 0; b < (unsigned)n_chunks; ++b) {
      blockIdx = {b, q, 0};
      std::barrier<> br(THREADS); bar = &br;
      std::vector<std::thread> ts;
      for (int t = 0; t < THREADS; ++t) ts.emplace_back([&, t] { threadIdx = {(unsigned)t, 0, 0};
        topk_chunks(sc.data(), c.ld, norms.data(), c.l2, 1000, c.chunk, c.k, 0, n_chunks, os.data(), orow.data()); });
      for (auto& t : ts) t.join();
      // reference
      long long s0 = (long long)b * c.chunk, e = std::min(s0 + c.chunk, c.ld);
      std::vector<std::pair<float,int>> v;
      for (long long j = s0; j < e; ++j) { float s = sc[q * c.ld + j]; if (c.l2) s = 2 * s - norms[j]; if (s > -INFINITY) v.push_back({s, 1000 + (int)j}); }
      std::sort(v.begin(), v.end(), [](auto a, auto b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
      for (int i = 0; i < c.k; ++i) {
        float es = i < (int)v.size() ? v[i].first : -INFINITY; int er = i < (int)v.size() ? v[i].second : -1;
        long long o = ((long long)q * n_chunks + b) * c.k + i;
        if (!(os[o] == es && orow[o] == er)) { if (fails++ < 10) printf("case ld=%lld k=%d q=%u chunk=%u i=%d: got (%g,%d) want (%g,%d)\n", c.ld, c.k, q, b, i, os[o], orow[o], es, er); }
      }
    }
    printf("case ld=%lld chunk=%d k=%d l2=%d levels=%d done\n", c.ld, c.chunk, c.k, c.l2, c.levels);
  }
  printf("%s (%d mismatches)\n", fails ? "FAIL" : "PASS", fails);
  return fails != 0;
}
