// Gibbs-expectation kernels on the CPU: OpenMP over data rows x.
//
//   gibbs_weights:  log w_s = l_s - LSE_s(l),  l_s = -H_s - log e_s       (X, S)
//   backward:       g_l = w_s sum_r g_r - g_s is d/dH (and d/d log e) of <g, log w>
//   gibbs_moments:  m = sum_s w_s f_s (X, K), cov = sum_s w_s (f_s - m)(f_s - m)^T (X, K, K)
//   backward:       see pytransfer/free_energy/reference.py (gibbs_moments_backward_reference)
// Tensors cross as raw pointers to contiguous row-major buffers; the Python wrappers validate.
// Every kernel takes its thread count (torch.get_num_threads() from the wrapper); scratch is
// allocated once per thread, never per datum.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings.h"

namespace pytransfer {
namespace {

template <typename T>
void weights_fwd(const T* H, const T* logq, int64_t X, int64_t S, T* out, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t x = 0; x < X; ++x) {
    const T* h = H + x * S;
    const T* q = logq + x * S;
    T* o = out + x * S;
    T mx = -std::numeric_limits<T>::infinity();
    for (int64_t s = 0; s < S; ++s) {
      o[s] = -h[s] - q[s];
      mx = o[s] > mx ? o[s] : mx;
    }
    T acc = 0;
    for (int64_t s = 0; s < S; ++s) acc += std::exp(o[s] - mx);
    const T lse = mx + std::log(acc);
    for (int64_t s = 0; s < S; ++s) o[s] -= lse;
  }
}

template <typename T>
void weights_bwd(const T* grad, const T* logw, int64_t X, int64_t S, T* out, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t x = 0; x < X; ++x) {
    const T* g = grad + x * S;
    T total = 0;
    for (int64_t s = 0; s < S; ++s) total += g[s];
    for (int64_t s = 0; s < S; ++s) out[x * S + s] = std::exp(logw[x * S + s]) * total - g[s];
  }
}

template <typename T>
void moments_fwd(const T* w, const T* f, int64_t X, int64_t S, int64_t K, T* means, T* cov,
                 int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t x = 0; x < X; ++x) {
    const T* wx = w + x * S;
    const T* fx = f + x * S * K;
    T* m = means + x * K;
    T* c = cov + x * K * K;
    for (int64_t k = 0; k < K; ++k) m[k] = 0;
    for (int64_t s = 0; s < S; ++s)
      for (int64_t k = 0; k < K; ++k) m[k] += wx[s] * fx[s * K + k];
    for (int64_t k = 0; k < K * K; ++k) c[k] = 0;
    for (int64_t s = 0; s < S; ++s) {
      const T* fs = fx + s * K;
      for (int64_t k = 0; k < K; ++k) {
        const T wd = wx[s] * (fs[k] - m[k]);
        for (int64_t l = 0; l < K; ++l) c[k * K + l] += wd * (fs[l] - m[l]);
      }
    }
  }
}

template <typename T>
void moments_bwd(const T* w, const T* f, const T* means, const T* gm, const T* gc, int64_t X,
                 int64_t S, int64_t K, T* gw, T* gf, int threads) {
#pragma omp parallel num_threads(threads)
  {
  std::vector<T> d(S * K), q(S * K), p(K);  // per-thread scratch, reused for every datum
#pragma omp for schedule(static)
  for (int64_t x = 0; x < X; ++x) {
    const T* wx = w + x * S;
    const T* fx = f + x * S * K;
    const T* m = means + x * K;
    const T* gmx = gm + x * K;
    const T* gcx = gc + x * K * K;
    std::fill(p.begin(), p.end(), T(0));
    for (int64_t s = 0; s < S; ++s)
      for (int64_t k = 0; k < K; ++k) d[s * K + k] = fx[s * K + k] - m[k];
    for (int64_t s = 0; s < S; ++s)
      for (int64_t k = 0; k < K; ++k) {
        T acc = 0;
        for (int64_t l = 0; l < K; ++l) acc += (gcx[k * K + l] + gcx[l * K + k]) * d[s * K + l];
        q[s * K + k] = acc;
        p[k] += wx[s] * acc;
      }
    for (int64_t s = 0; s < S; ++s) {
      T acc = 0;
      for (int64_t k = 0; k < K; ++k) {
        acc += fx[s * K + k] * (gmx[k] - p[k]);
        T row = 0;
        for (int64_t l = 0; l < K; ++l) row += gcx[k * K + l] * d[s * K + l];
        acc += d[s * K + k] * row;
        gf[(x * S + s) * K + k] = wx[s] * (gmx[k] + q[s * K + k] - p[k]);
      }
      gw[x * S + s] = acc;
    }
  }
  }
}

void check_dtype(const std::string& dtype, const char* op) {
  if (dtype != "float32" && dtype != "float64")
    throw std::invalid_argument(std::string(op) + ": dtype must be float32 or float64");
}

}  // namespace
}  // namespace pytransfer

PYTRANSFER_BINDINGS(bind_gibbs) {
  using pytransfer::ptr;
  using u = std::uintptr_t;
  m.def("gibbs_weights_fwd", [](const std::string& dtype, u H, u logq, int64_t X, int64_t S,
                                u out, int threads) {
    pytransfer::check_dtype(dtype, "gibbs_weights_fwd");
    pybind11::gil_scoped_release nogil;
    if (dtype == "float32")
      pytransfer::weights_fwd(ptr<const float>(H), ptr<const float>(logq), X, S, ptr<float>(out),
                              threads);
    else
      pytransfer::weights_fwd(ptr<const double>(H), ptr<const double>(logq), X, S,
                              ptr<double>(out), threads);
  });
  m.def("gibbs_weights_bwd", [](const std::string& dtype, u grad, u logw, int64_t X, int64_t S,
                                u out, int threads) {
    pytransfer::check_dtype(dtype, "gibbs_weights_bwd");
    pybind11::gil_scoped_release nogil;
    if (dtype == "float32")
      pytransfer::weights_bwd(ptr<const float>(grad), ptr<const float>(logw), X, S,
                              ptr<float>(out), threads);
    else
      pytransfer::weights_bwd(ptr<const double>(grad), ptr<const double>(logw), X, S,
                              ptr<double>(out), threads);
  });
  m.def("gibbs_moments_fwd", [](const std::string& dtype, u w, u f, int64_t X, int64_t S,
                                int64_t K, u means, u cov, int threads) {
    pytransfer::check_dtype(dtype, "gibbs_moments_fwd");
    pybind11::gil_scoped_release nogil;
    if (dtype == "float32")
      pytransfer::moments_fwd(ptr<const float>(w), ptr<const float>(f), X, S, K,
                              ptr<float>(means), ptr<float>(cov), threads);
    else
      pytransfer::moments_fwd(ptr<const double>(w), ptr<const double>(f), X, S, K,
                              ptr<double>(means), ptr<double>(cov), threads);
  });
  m.def("gibbs_moments_bwd", [](const std::string& dtype, u w, u f, u means, u gm, u gc,
                                int64_t X, int64_t S, int64_t K, u gw, u gf, int threads) {
    pytransfer::check_dtype(dtype, "gibbs_moments_bwd");
    pybind11::gil_scoped_release nogil;
    if (dtype == "float32")
      pytransfer::moments_bwd(ptr<const float>(w), ptr<const float>(f), ptr<const float>(means),
                              ptr<const float>(gm), ptr<const float>(gc), X, S, K,
                              ptr<float>(gw), ptr<float>(gf), threads);
    else
      pytransfer::moments_bwd(ptr<const double>(w), ptr<const double>(f),
                              ptr<const double>(means), ptr<const double>(gm),
                              ptr<const double>(gc), X, S, K, ptr<double>(gw), ptr<double>(gf),
                              threads);
  });
}
