// Fused elementwise half-step of the scaling-form Sinkhorn (issue 4), CPU.
//
// The GEMMs (K v and K^T u for the whole batch) run in BLAS through torch; this kernel does
// everything else of a half-step in one pass over the (B, len) scalings:
//   x_new = w / den        (0 where w == 0: zero-mass entries carry no scaling)
//   err   = sum |x_old * den - w|   (the marginal error of the state (x_old, .), optional)
//   bad   = some x_new outside [lo, hi] or not finite  (the problem must be absorbed);
//           returns whether any problem is bad
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "bindings.h"

namespace pytransfer {

template <typename T>
bool scaling_div_cpu(const T* w, const T* den, const T* x_old, T* x_new, int64_t B, int64_t len,
                     bool with_err, T* err, uint8_t* bad, T lo, T hi, int threads) {
  const int64_t total = B * len;
  int any_bad = 0;
  if (with_err) {
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : any_bad)
    for (int64_t p = 0; p < B; ++p) {
      const T* wp = w + p * len;
      const T* dp = den + p * len;
      const T* xo = x_old + p * len;
      T* xp = x_new + p * len;
      T e = 0;
#pragma omp simd reduction(+ : e) reduction(| : any_bad)
      for (int64_t i = 0; i < len; ++i) {
        const T xn = wp[i] > 0 ? wp[i] / dp[i] : T(0);
        e += std::abs(xo[i] * dp[i] - wp[i]);
        any_bad |= (wp[i] > 0) & !((xn >= lo) & (xn <= hi));
        xp[i] = xn;
      }
      err[p] = e;
    }
  } else {  // flat passes, no per-problem tails: the division alone, then the range check
#pragma omp parallel for simd num_threads(threads) schedule(static)
    for (int64_t k = 0; k < total; ++k) x_new[k] = w[k] > 0 ? w[k] / den[k] : T(0);
#pragma omp parallel for simd num_threads(threads) schedule(static) reduction(| : any_bad)
    for (int64_t k = 0; k < total; ++k)
      any_bad |= (w[k] > 0) & !((x_new[k] >= lo) & (x_new[k] <= hi));
  }
  // Which problems must be absorbed: only looked up when some scaling left the range (rare).
  for (int64_t p = 0; p < B; ++p) {
    uint8_t b = 0;
    if (any_bad)
      for (int64_t i = p * len; i < (p + 1) * len; ++i)
        b |= (w[i] > 0) & !((x_new[i] >= lo) & (x_new[i] <= hi));
    bad[p] = b;
  }
  return any_bad != 0;
}

}  // namespace pytransfer

PYTRANSFER_BINDINGS(bind_sinkhorn_scaling) {
  using pytransfer::ptr;
  m.def(
      "scaling_div",
      [](const std::string& dtype, std::uintptr_t w, std::uintptr_t den, std::uintptr_t x_old,
         std::uintptr_t x_new, int64_t B, int64_t len, bool with_err, std::uintptr_t err, std::uintptr_t bad,
         double lo, double hi, int threads) {
        if (dtype != "float32" && dtype != "float64")
          throw std::invalid_argument("scaling_div: dtype must be float32 or float64");
        pybind11::gil_scoped_release nogil;
        if (dtype == "float32")
          return pytransfer::scaling_div_cpu<float>(ptr<const float>(w), ptr<const float>(den),
                                             ptr<const float>(x_old), ptr<float>(x_new), B, len, with_err, ptr<float>(err),
                                             ptr<uint8_t>(bad), static_cast<float>(lo),
                                             static_cast<float>(hi), threads);
        return pytransfer::scaling_div_cpu<double>(ptr<const double>(w), ptr<const double>(den),
                                              ptr<const double>(x_old), ptr<double>(x_new), B, len, with_err,
                                              ptr<double>(err), ptr<uint8_t>(bad), lo, hi,
                                              threads);
      },
      "Fused half-step of the scaling-form Sinkhorn (see csrc/sinkhorn_scaling_cpu.cpp)");
}
