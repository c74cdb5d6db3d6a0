// Batched log-domain Sinkhorn, CUDA: one thread block per problem, per-problem early exit.
// Same iteration, stopping rule and outputs as csrc/sinkhorn_cpu.cpp (see its header).
// No torch headers: compiled to cubin as a check in CI; linked into pytransfer._C only for a
// CUDA build of the extension (PYTRANSFER_CUDA=1 with a CUDA torch).
#include <cuda_runtime.h>

#include <cstdint>

namespace {

constexpr int kThreads = 128;
constexpr float kFloor = -80.0f;  // keep expf arguments out of the subnormal range

__device__ float block_sum(float v, float* scratch) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < kThreads / 32; ++w) total += scratch[w];
  return total;
}

// out[k] = LSE over l (support of `ok`, length L) of pot[l] + K(l, k); k spans `len` outputs.
// K(l, k) = -C[l * ls + k * ks] / eps with (ls, ks) chosen for rows or columns.
__device__ void lse_pass(const float* __restrict__ C, int64_t ls, int64_t ks, int len, int L,
                         const float* pot, const float* w, float inv_eps, float* out) {
  for (int k = threadIdx.x; k < len; k += kThreads) {
    float mx = -INFINITY;
    for (int l = 0; l < L; ++l)
      if (w[l] > 0.0f) mx = fmaxf(mx, pot[l] - C[l * ls + k * ks] * inv_eps);
    float s = 0.0f;
    for (int l = 0; l < L; ++l)
      if (w[l] > 0.0f) s += __expf(fmaxf(pot[l] - C[l * ls + k * ks] * inv_eps - mx, kFloor));
    out[k] = mx + __logf(s);
  }
}

__global__ void sinkhorn_log_kernel(const float* __restrict__ a, const float* __restrict__ b,
                                    const float* __restrict__ cost, int n, int m,
                                    int64_t cost_stride, float eps, int64_t max_iter, float tol,
                                    float* f, float* g, int64_t* n_iter, float* err) {
  extern __shared__ float smem[];
  float* F = smem;          // n: f / eps
  float* G = F + n;         // m: g / eps
  float* lse = G + m;       // max(n, m)
  float* aw = lse + (n > m ? n : m);
  float* bw = aw + n;
  __shared__ float scratch[kThreads / 32];
  const int64_t p = blockIdx.x;
  const float* C = cost + p * cost_stride;
  const float inv_eps = 1.0f / eps;
  for (int i = threadIdx.x; i < n; i += kThreads) aw[i] = a[p * n + i];
  for (int j = threadIdx.x; j < m; j += kThreads) { bw[j] = b[p * m + j]; G[j] = 0.0f; }
  __syncthreads();
  float mass = 0.0f;
  for (int i = threadIdx.x; i < n; i += kThreads) mass += aw[i];
  const float thr = tol * block_sum(mass, scratch);
  float e = 0.0f;
  int64_t it = 0;
  for (;; ++it) {
    lse_pass(C, 1, m, n, m, G, bw, inv_eps, lse);  // rows: LSE_j(G_j + K_ij)
    __syncthreads();
    if (it > 0) {
      float part = 0.0f;
      for (int i = threadIdx.x; i < n; i += kThreads)
        if (aw[i] > 0.0f) part += fabsf(__expf(F[i] + lse[i]) - aw[i]);
      e = block_sum(part, scratch);
      if ((tol > 0.0f && e <= thr) || it == max_iter) break;
    }
    for (int i = threadIdx.x; i < n; i += kThreads)
      F[i] = (aw[i] > 0.0f ? __logf(aw[i]) : 0.0f) - lse[i];
    __syncthreads();
    lse_pass(C, m, 1, m, n, F, aw, inv_eps, lse);  // columns: LSE_i(F_i + K_ij)
    __syncthreads();
    for (int j = threadIdx.x; j < m; j += kThreads)
      G[j] = (bw[j] > 0.0f ? __logf(bw[j]) : 0.0f) - lse[j];
    __syncthreads();
  }
  for (int i = threadIdx.x; i < n; i += kThreads)
    f[p * n + i] = eps * (aw[i] > 0.0f ? F[i] : -lse[i]);
  for (int j = threadIdx.x; j < m; j += kThreads) g[p * m + j] = eps * G[j];
  if (threadIdx.x == 0) {
    n_iter[p] = it;
    err[p] = e;
  }
}

}  // namespace

// Host launcher on raw device pointers (float32); returns the launch's cudaError_t.
extern "C" int pytransfer_sinkhorn_log_cuda(const float* a, const float* b, const float* cost,
                                            int64_t B, int64_t n, int64_t m, bool shared_cost,
                                            float eps, int64_t max_iter, float tol, float* f,
                                            float* g, int64_t* n_iter, float* err,
                                            cudaStream_t stream) {
  const size_t smem = sizeof(float) * (2 * n + 2 * m + (n > m ? n : m));
  sinkhorn_log_kernel<<<static_cast<unsigned>(B), kThreads, smem, stream>>>(
      a, b, cost, static_cast<int>(n), static_cast<int>(m), shared_cost ? 0 : n * m, eps,
      max_iter, tol, f, g, n_iter, err);
  return static_cast<int>(cudaGetLastError());
}
