// Batched log-domain Sinkhorn on the CPU: OpenMP over problems, per-problem early exit.
//
// Scaled potentials F = f/eps, G = g/eps and K = -C/eps:
//   F_i = log a_i - LSE_j(G_j + K_ij),   G_j = log b_j - LSE_i(F_i + K_ij).
// Each log-sum-exp is computed with the output index innermost (contiguous, vectorised):
// the row update reads K^T (m, n), the column update reads K (n, m). The marginal error of
// the current state is a by-product of the next row update, a_i |exp(F_i - F_i') - 1|, so
// checking convergence every iteration costs n exps, not a pass over the plan.
#include "sinkhorn_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "vec_math.h"

namespace pytransfer {
namespace {

// SIMD width in elements: rows of K and K^T are padded to a multiple so that every inner loop
// runs whole vectors (a scalar tail of a polynomial exp costs as much as the vector body).
template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);

inline int64_t padded(int64_t len, int64_t lanes) { return (len + lanes - 1) / lanes * lanes; }

// out_k = LSE over l in idx of (pot_l + M[l, k]) for k in [0, len); M row-major (rows, len).
template <typename T>
void lse_rows_into(const T* M, int64_t len, const std::vector<int64_t>& idx, const T* pot,
                   T* mx, T* acc, T* out) {
  std::fill(mx, mx + len, std::numeric_limits<T>::lowest());
  for (int64_t l : idx) {
    const T p = pot[l];
    const T* row = M + l * len;
#pragma omp simd
    for (int64_t k = 0; k < len; ++k) mx[k] = mx[k] > p + row[k] ? mx[k] : p + row[k];
  }
  std::fill(acc, acc + len, T(0));
  for (int64_t l : idx) {
    const T p = pot[l];
    const T* row = M + l * len;
#pragma omp simd
    for (int64_t k = 0; k < len; ++k) acc[k] += vexp(p + row[k] - mx[k]);
  }
  for (int64_t k = 0; k < len; ++k) out[k] = mx[k] + std::log(acc[k]);
}

// K = -C/eps as (n, mp) and K^T as (m, np); padding holds a large negative finite value.
template <typename T>
void scale_cost(const T* C, int64_t n, int64_t m, T eps, T* K, T* KT) {
  const int64_t np = padded(n, kLanes<T>), mp = padded(m, kLanes<T>);
  const T pad = -std::numeric_limits<T>::max() / 8;
  std::fill(K, K + n * mp, pad);
  std::fill(KT, KT + m * np, pad);
  const T inv = T(1) / eps;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      const T v = -C[i * m + j] * inv;
      K[i * mp + j] = v;
      KT[j * np + i] = v;
    }
}

template <typename T>
void solve_one(const T* a, const T* b, const T* K, const T* KT, int64_t n, int64_t m, T eps,
               int64_t max_iter, T tol, const T* g_init, T* f, T* g, int64_t* n_iter, T* err,
               T* work) {
  const int64_t np = padded(n, kLanes<T>), mp = padded(m, kLanes<T>);
  const int64_t len = std::max(np, mp);
  T* F = work;             // scaled potentials f/eps, g/eps (padded)
  T* G = F + len;
  T* lse = G + len;
  T* mx = lse + len;
  T* acc = mx + len;
  T* log_a = acc + len;    // log of the weights, 0 on zero-mass entries
  T* log_b = log_a + len;
  std::vector<int64_t> rows, cols;  // supports: zero-mass entries never enter an LSE
  T mass = 0;
  for (int64_t i = 0; i < n; ++i) {
    log_a[i] = a[i] > 0 ? std::log(a[i]) : T(0);
    if (a[i] > 0) { rows.push_back(i); mass += a[i]; }
  }
  for (int64_t j = 0; j < m; ++j) {
    log_b[j] = b[j] > 0 ? std::log(b[j]) : T(0);
    if (b[j] > 0) cols.push_back(j);
  }
  for (int64_t j = 0; j < m; ++j) G[j] = g_init != nullptr ? g_init[j] / eps : T(0);
  const T thr = tol * mass;
  int64_t it = 0;
  T e = 0;
  for (;; ++it) {
    lse_rows_into(KT, np, cols, G, mx, acc, lse);  // LSE_j(G_j + K_ij) for every row i
    if (it > 0) {  // row-marginal error of the state after `it` iterations
      e = 0;
#pragma omp simd reduction(+ : e)
      for (int64_t i = 0; i < n; ++i)
        e += a[i] > 0 ? std::abs(vexp(F[i] + lse[i]) - a[i]) : T(0);
      if ((tol > 0 && e <= thr) || it == max_iter) break;
    }
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) F[i] = log_a[i] - lse[i];
    lse_rows_into(K, mp, rows, F, mx, acc, lse);  // LSE_i(F_i + K_ij) for every column j
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) G[j] = log_b[j] - lse[j];
  }
  // Zero-mass rows carry the c-transform of the final G (zero-mass columns already do).
  for (int64_t i = 0; i < n; ++i) f[i] = eps * (a[i] > 0 ? F[i] : -lse[i]);
  for (int64_t j = 0; j < m; ++j) g[j] = eps * G[j];
  *n_iter = it;
  *err = e;
}
}  // namespace

template <typename T>
void sinkhorn_log_cpu(const T* a, const T* b, const T* cost, int64_t B, int64_t n, int64_t m,
                      bool shared_cost, T eps, int64_t max_iter, T tol, const T* g_init, T* f,
                      T* g, int64_t* n_iter, T* err, int threads) {
  const int64_t nm = n * m;
  const int64_t np = padded(n, kLanes<T>), mp = padded(m, kLanes<T>);
  const int64_t Ksize = n * mp, KTsize = m * np;
  std::vector<T> Kshared, KTshared;
  if (shared_cost) {
    Kshared.resize(Ksize);
    KTshared.resize(KTsize);
    scale_cost(cost, n, m, eps, Kshared.data(), KTshared.data());
  }
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> K(shared_cost ? 0 : Ksize), KT(shared_cost ? 0 : KTsize);
    std::vector<T> work(7 * std::max(np, mp));
#pragma omp for schedule(dynamic, 4)
    for (int64_t p = 0; p < B; ++p) {
      const T* Kp = Kshared.data();
      const T* KTp = KTshared.data();
      if (!shared_cost) {
        scale_cost(cost + p * nm, n, m, eps, K.data(), KT.data());
        Kp = K.data();
        KTp = KT.data();
      }
      solve_one(a + p * n, b + p * m, Kp, KTp, n, m, eps, max_iter, tol,
                g_init != nullptr ? g_init + p * m : nullptr, f + p * n, g + p * m, n_iter + p,
                err + p, work.data());
    }
  }
}

template void sinkhorn_log_cpu<float>(const float*, const float*, const float*, int64_t, int64_t,
                                      int64_t, bool, float, int64_t, float, const float*, float*,
                                      float*, int64_t*, float*, int);
template void sinkhorn_log_cpu<double>(const double*, const double*, const double*, int64_t,
                                       int64_t, int64_t, bool, double, int64_t, double,
                                       const double*, double*, double*, int64_t*, double*, int);

// The roofline's exp ceiling: y = vexp(x), `reps` passes over the same (cache-resident) array,
// threads splitting the elements. A static schedule gives every thread the same slice in every
// pass, so no barrier is needed between passes.
template <typename T>
void exp_throughput_cpu(const T* x, T* y, int64_t n, int64_t reps, int threads) {
#pragma omp parallel num_threads(threads)
  for (int64_t r = 0; r < reps; ++r) {
#pragma omp for simd schedule(static) nowait
    for (int64_t i = 0; i < n; ++i) y[i] = vexp(x[i]);
  }
}

}  // namespace pytransfer

// ------------------------------------------------------------------ Python bindings
#include <stdexcept>
#include <string>

#include "bindings.h"

PYTRANSFER_BINDINGS(bind_sinkhorn) {
  using pytransfer::ptr;
  m.def(
      "sinkhorn_log",
      [](const std::string& dtype, std::uintptr_t a, std::uintptr_t b, std::uintptr_t cost,
         int64_t B, int64_t n, int64_t m_, bool shared_cost, double eps, int64_t max_iter,
         double tol, std::uintptr_t g_init, std::uintptr_t f, std::uintptr_t g,
         std::uintptr_t n_iter, std::uintptr_t err, int threads) {
        if (dtype != "float32" && dtype != "float64")
          throw std::invalid_argument("sinkhorn_log: dtype must be float32 or float64");
        pybind11::gil_scoped_release nogil;
        if (dtype == "float32")
          pytransfer::sinkhorn_log_cpu<float>(
              ptr<const float>(a), ptr<const float>(b), ptr<const float>(cost), B, n, m_,
              shared_cost, static_cast<float>(eps), max_iter, static_cast<float>(tol),
              ptr<const float>(g_init), ptr<float>(f), ptr<float>(g), ptr<int64_t>(n_iter),
              ptr<float>(err), threads);
        else
          pytransfer::sinkhorn_log_cpu<double>(
              ptr<const double>(a), ptr<const double>(b), ptr<const double>(cost), B, n, m_,
              shared_cost, eps, max_iter, tol, ptr<const double>(g_init), ptr<double>(f),
              ptr<double>(g), ptr<int64_t>(n_iter), ptr<double>(err), threads);
      },
      "Batched log-domain Sinkhorn (see csrc/sinkhorn_cpu.h)");
}

PYTRANSFER_BINDINGS(bind_exp_throughput) {
  using pytransfer::ptr;
  m.def(
      "exp_throughput",
      [](const std::string& dtype, std::uintptr_t x, std::uintptr_t y, int64_t n, int64_t reps,
         int threads) {
        if (dtype != "float32" && dtype != "float64")
          throw std::invalid_argument("exp_throughput: dtype must be float32 or float64");
        pybind11::gil_scoped_release nogil;
        if (dtype == "float32")
          pytransfer::exp_throughput_cpu<float>(ptr<const float>(x), ptr<float>(y), n, reps,
                                                threads);
        else
          pytransfer::exp_throughput_cpu<double>(ptr<const double>(x), ptr<double>(y), n, reps,
                                                 threads);
      },
      "y = exp(x) with the kernels' vectorised exp, reps passes (the roofline's exp ceiling)");
}
