// MK-MMD on the CPU: the fused linear-time quad-tuple estimator
// (OpenMP over tuples, SIMD over d) and the element-wise part of a quadratic-estimator tile
// (OpenMP over rows, SIMD over columns; the Gram block comes from a BLAS GEMM in Python).
// One exp per run of power-of-two bandwidths, the rest by squaring (see mmd_cpu.h).
#include "mmd_cpu.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings.h"
#include "vec_math.h"

namespace pytransfer {
namespace {

// Squared kernel values below this are flushed to zero: never subnormal (slow), and
// negligible against the kernel's maximum of 1.
template <typename T> constexpr T kTiny = T(1e-30);
template <> constexpr double kTiny<double> = 1e-300;

template <typename T>
inline T next_kernel(T e, T gam, T D, bool square) {
  if (square) {
    const T s = e * e;
    return s < kTiny<T> ? T(0) : s;
  }
  return vexp(-gam * D);
}

}  // namespace

template <typename T>
void mmd_linear_fwd(const T* xs, const T* xt, int64_t P, int64_t d, const T* gam, const T* w,
                    const int32_t* sq, int64_t U, double* h, T* coef, int threads) {
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> hl(U, 0.0);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < P; ++p) {
      const T* s = xs + 2 * p * d;
      const T* s2 = s + d;
      const T* t = xt + 2 * p * d;
      const T* t2 = t + d;
      T d0 = 0, d1 = 0, d2 = 0, d3 = 0;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
      for (int64_t k = 0; k < d; ++k) {
        const T a = s[k] - s2[k], b = t[k] - t2[k], c = s[k] - t2[k], e = s2[k] - t[k];
        d0 += a * a;
        d1 += b * b;
        d2 += c * c;
        d3 += e * e;
      }
      T e0 = 0, e1 = 0, e2 = 0, e3 = 0, c0 = 0, c1 = 0, c2 = 0, c3 = 0;
      for (int64_t u = 0; u < U; ++u) {
        const bool squ = sq[u] != 0;
        e0 = next_kernel(e0, gam[u], d0, squ);
        e1 = next_kernel(e1, gam[u], d1, squ);
        e2 = next_kernel(e2, gam[u], d2, squ);
        e3 = next_kernel(e3, gam[u], d3, squ);
        hl[u] += static_cast<double>(e0) + e1 - e2 - e3;
        const T wg = w[u] * gam[u];
        c0 -= wg * e0;
        c1 -= wg * e1;
        c2 -= wg * e2;
        c3 -= wg * e3;
      }
      T* cp = coef + 4 * p;
      cp[0] = c0;
      cp[1] = c1;
      cp[2] = c2;
      cp[3] = c3;
    }
#pragma omp critical
    for (int64_t u = 0; u < U; ++u) h[u] += hl[u];
  }
}

template <typename T>
void mmd_linear_bwd(const T* xs, const T* xt, const T* coef, int64_t P, int64_t d, T alpha,
                    T* gxs, T* gxt, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t p = 0; p < P; ++p) {
    const int64_t o = 2 * p * d;
    const T *s = xs + o, *s2 = s + d, *t = xt + o, *t2 = t + d;
    T *gs = gxs + o, *gs2 = gs + d, *gt = gxt + o, *gt2 = gt + d;
    const T* cp = coef + 4 * p;
    const T c0 = alpha * cp[0], c1 = alpha * cp[1], c2 = alpha * cp[2], c3 = alpha * cp[3];
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) {
      const T a = s[k] - s2[k], b = t[k] - t2[k], c = s[k] - t2[k], e = s2[k] - t[k];
      gs[k] = c0 * a - c2 * c;
      gs2[k] = -c0 * a - c3 * e;
      gt[k] = c1 * b + c3 * e;
      gt2[k] = -c1 * b + c2 * c;
    }
  }
}

template <typename T>
void mmd_tile(T* G, const T* rn, const T* cn, int64_t R, int64_t N, int64_t row0, int64_t ns,
              const T* gam, const T* w, const int32_t* sq, int64_t U, T wss, T wtt, T wst,
              bool backward, double* h, int threads) {
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> D(N), E(N), C(backward ? N : 0);
    std::vector<double> hl(U, 0.0);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < R; ++i) {
      const int64_t gi = row0 + i;
      const bool src = gi < ns;
      T* g = G + i * N;
      const T r = rn[i];
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) {
        const T v = r + cn[j] - T(2) * g[j];
        D[j] = v > T(0) ? v : T(0);
      }
      if (backward) std::fill(C.begin(), C.end(), T(0));
      for (int64_t u = 0; u < U; ++u) {
        const bool squ = sq[u] != 0;
        const T gu = gam[u];
        T* e = E.data();
        const T* dd = D.data();
        if (squ) {
#pragma omp simd
          for (int64_t j = 0; j < N; ++j) {
            const T s = e[j] * e[j];
            e[j] = s < kTiny<T> ? T(0) : s;
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < N; ++j) e[j] = vexp(-gu * dd[j]);
        }
        if (backward) {
          const T wg = w[u] * gu;
          T* c = C.data();
#pragma omp simd
          for (int64_t j = 0; j < N; ++j) c[j] -= wg * e[j];
        } else {
          T ss = 0, st = 0;
#pragma omp simd reduction(+ : ss)
          for (int64_t j = 0; j < ns; ++j) ss += e[j];
#pragma omp simd reduction(+ : st)
          for (int64_t j = ns; j < N; ++j) st += e[j];
          if (src)
            ss -= e[gi];
          else
            st -= e[gi];
          hl[u] += src ? static_cast<double>(wss) * ss + static_cast<double>(wst) * st
                       : static_cast<double>(wst) * ss + static_cast<double>(wtt) * st;
        }
      }
      if (backward) {
        const T ws = src ? wss : wst, wt = src ? wst : wtt;
#pragma omp simd
        for (int64_t j = 0; j < ns; ++j) g[j] = ws * C[j];
#pragma omp simd
        for (int64_t j = ns; j < N; ++j) g[j] = wt * C[j];
        g[gi] = 0;
      }
    }
    if (!backward) {
#pragma omp critical
      for (int64_t u = 0; u < U; ++u) h[u] += hl[u];
    }
  }
}

template <typename T>
void mmd_moments(const T* x, int64_t N, int64_t d, const T* shift, double* colsum, double* sq,
                 int threads) {
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> cs(d, 0.0);
    double q = 0;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const T* row = x + i * d;
      double* c = cs.data();
#pragma omp simd reduction(+ : q)
      for (int64_t k = 0; k < d; ++k) {
        const double z = static_cast<double>(row[k]) - static_cast<double>(shift[k]);
        c[k] += z;
        q += z * z;
      }
    }
#pragma omp critical
    {
      for (int64_t k = 0; k < d; ++k) colsum[k] += cs[k];
      *sq += q;
    }
  }
}

template void mmd_moments<float>(const float*, int64_t, int64_t, const float*, double*, double*,
                                 int);
template void mmd_moments<double>(const double*, int64_t, int64_t, const double*, double*,
                                  double*, int);
template void mmd_linear_fwd<float>(const float*, const float*, int64_t, int64_t, const float*,
                                    const float*, const int32_t*, int64_t, double*, float*, int);
template void mmd_linear_fwd<double>(const double*, const double*, int64_t, int64_t,
                                     const double*, const double*, const int32_t*, int64_t,
                                     double*, double*, int);
template void mmd_linear_bwd<float>(const float*, const float*, const float*, int64_t, int64_t,
                                    float, float*, float*, int);
template void mmd_linear_bwd<double>(const double*, const double*, const double*, int64_t,
                                     int64_t, double, double*, double*, int);
template void mmd_tile<float>(float*, const float*, const float*, int64_t, int64_t, int64_t,
                              int64_t, const float*, const float*, const int32_t*, int64_t,
                              float, float, float, bool, double*, int);
template void mmd_tile<double>(double*, const double*, const double*, int64_t, int64_t,
                               int64_t, int64_t, const double*, const double*, const int32_t*,
                               int64_t, double, double, double, bool, double*, int);

}  // namespace pytransfer

namespace {
void check_dtype(const std::string& dtype, const char* op) {
  if (dtype != "float32" && dtype != "float64")
    throw std::invalid_argument(std::string(op) + ": dtype must be float32 or float64");
}
}  // namespace

PYTRANSFER_BINDINGS(bind_mmd) {
  using pytransfer::ptr;
  using u = std::uintptr_t;
  m.def(
      "mmd_linear_fwd",
      [](const std::string& dtype, u xs, u xt, int64_t P, int64_t d, u gam, u w, u sq,
         int64_t U, u h, u coef, int threads) {
        check_dtype(dtype, "mmd_linear_fwd");
        pybind11::gil_scoped_release nogil;
        if (dtype == "float32")
          pytransfer::mmd_linear_fwd(ptr<const float>(xs), ptr<const float>(xt), P, d,
                                     ptr<const float>(gam), ptr<const float>(w),
                                     ptr<const int32_t>(sq), U, ptr<double>(h),
                                     ptr<float>(coef), threads);
        else
          pytransfer::mmd_linear_fwd(ptr<const double>(xs), ptr<const double>(xt), P, d,
                                     ptr<const double>(gam), ptr<const double>(w),
                                     ptr<const int32_t>(sq), U, ptr<double>(h),
                                     ptr<double>(coef), threads);
      },
      "Fused linear-time MK-MMD forward (see csrc/mmd_cpu.h)");
  m.def(
      "mmd_linear_bwd",
      [](const std::string& dtype, u xs, u xt, u coef, int64_t P, int64_t d, double alpha,
         u gxs, u gxt, int threads) {
        check_dtype(dtype, "mmd_linear_bwd");
        pybind11::gil_scoped_release nogil;
        if (dtype == "float32")
          pytransfer::mmd_linear_bwd(ptr<const float>(xs), ptr<const float>(xt),
                                     ptr<const float>(coef), P, d, static_cast<float>(alpha),
                                     ptr<float>(gxs), ptr<float>(gxt), threads);
        else
          pytransfer::mmd_linear_bwd(ptr<const double>(xs), ptr<const double>(xt),
                                     ptr<const double>(coef), P, d, alpha, ptr<double>(gxs),
                                     ptr<double>(gxt), threads);
      },
      "Fused linear-time MK-MMD backward (see csrc/mmd_cpu.h)");
  m.def(
      "mmd_moments",
      [](const std::string& dtype, u x, int64_t N, int64_t d, u shift, u colsum, u sq,
         int threads) {
        check_dtype(dtype, "mmd_moments");
        pybind11::gil_scoped_release nogil;
        if (dtype == "float32")
          pytransfer::mmd_moments(ptr<const float>(x), N, d, ptr<const float>(shift),
                                  ptr<double>(colsum), ptr<double>(sq), threads);
        else
          pytransfer::mmd_moments(ptr<const double>(x), N, d, ptr<const double>(shift),
                                  ptr<double>(colsum), ptr<double>(sq), threads);
      },
      "Shifted column sums and sum of squares, float64 accumulators (see csrc/mmd_cpu.h)");
  m.def(
      "mmd_tile",
      [](const std::string& dtype, u G, u rn, u cn, int64_t R, int64_t N, int64_t row0,
         int64_t ns, u gam, u w, u sq, int64_t U, double wss, double wtt, double wst,
         bool backward, u h, int threads) {
        check_dtype(dtype, "mmd_tile");
        pybind11::gil_scoped_release nogil;
        if (dtype == "float32")
          pytransfer::mmd_tile(ptr<float>(G), ptr<const float>(rn), ptr<const float>(cn), R, N,
                               row0, ns, ptr<const float>(gam), ptr<const float>(w),
                               ptr<const int32_t>(sq), U, static_cast<float>(wss),
                               static_cast<float>(wtt), static_cast<float>(wst), backward,
                               ptr<double>(h), threads);
        else
          pytransfer::mmd_tile(ptr<double>(G), ptr<const double>(rn), ptr<const double>(cn), R,
                               N, row0, ns, ptr<const double>(gam), ptr<const double>(w),
                               ptr<const int32_t>(sq), U, wss, wtt, wst, backward,
                               ptr<double>(h), threads);
      },
      "Element-wise pass of one quadratic MK-MMD tile (see csrc/mmd_cpu.h)");
}
