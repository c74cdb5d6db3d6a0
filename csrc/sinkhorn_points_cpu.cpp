// Point-cloud Sinkhorn on the CPU (issue 12): every log-sum-exp is an online tiled pass.
//
// Cost C_ij = |x_i - y_j|^2 / 2 (p=2) or |x_i - y_j| (p=1), from the GEMM form
// |x_i|^2 + |y_j|^2 - 2 x_i.y_j clamped at 0. A pass computes, for every outer point i,
//   out_i = LSE_j(h_j - C_ij / eps)   (j over the supported inner points)
// tile by tile: a register-blocked micro-kernel forms an (R x W) block of dot products
// (R outer rows, one SIMD vector W of inner columns, accumulated over d), the tile of R x TJ
// arguments is reduced into a running max and a rescaled running sum per row (flash-attention
// style), so neither the (n, m) cost nor the plan is ever held: memory is O((n + m) d).
// With `cache`, the cost tiles are computed once per problem and reread every pass (n m + m n
// values), which trades the GEMM for memory traffic.
// Potentials are in cost units, plan_ij = exp((f_i + g_j - C_ij)/eps); iterations follow the
// eps schedule of pytransfer/ot/points_reference.py (the specification) exactly.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "vec_math.h"

namespace pytransfer {
namespace {

template <typename T>
constexpr int64_t kW = 64 / sizeof(T);  // columns per SIMD block (one 512-bit vector)
constexpr int64_t kR = 8;               // outer rows per micro-kernel block
constexpr int64_t kPad = 16;            // n, m padded to a multiple of kR and of kW
constexpr int64_t kTJ = 256;            // inner columns per tile (a multiple of kPad)
constexpr int64_t kTI = 64;             // outer rows per task (a multiple of kR)

inline int64_t padded(int64_t len) { return (len + kPad - 1) / kPad * kPad; }

// h of a zero-mass (or padding) inner point: far below any real argument yet finite, so the
// max loop needs no mask; its exp (clamped by vexp) is then multiplied by the 0/1 mask.
template <typename T>
constexpr T kMasked = std::numeric_limits<T>::lowest() / 4;

// One cloud, padded: rows (np, d) row-major; cols, the transpose packed in panels of kW
// points, (np / kW, d, kW), so the micro-kernel streams one contiguous panel (a plain
// (d, np) transpose has a 4 KiB stride at np = 1024 and thrashes L1); sq |x|^2 (np).
template <typename T>
struct Cloud {
  int64_t n = 0, np = 0, d = 0;
  std::vector<T> rows, cols, sq;
  Cloud(const T* x, int64_t n_, int64_t d_) : n(n_), np(padded(n_)), d(d_) {
    constexpr int64_t W = kW<T>;
    rows.assign(np * d, T(0));
    cols.assign(d * np, T(0));
    sq.assign(np, T(0));
    for (int64_t i = 0; i < n; ++i) {
      T s = 0;
      for (int64_t k = 0; k < d; ++k) {
        const T v = x[i * d + k];
        rows[i * d + k] = v;
        cols[(i / W) * d * W + k * W + i % W] = v;
        s += v * v;
      }
      sq[i] = s;
    }
  }
};

// cost tile: out[r][j] = C(outer i0 + r, inner j0 + j) for r < kR, j < tj (tj a multiple of kW)
template <typename T>
inline void cost_tile(const Cloud<T>& X, const Cloud<T>& Y, int64_t i0, int64_t j0, int64_t tj,
                      int p, T* out) {
  constexpr int64_t W = kW<T>;
  const int64_t d = X.d;
  const T* xr = X.rows.data() + i0 * d;
  for (int64_t jb = 0; jb < tj; jb += W) {
    T acc[kR][W] = {};
    const T* yc = Y.cols.data() + (j0 + jb) / W * d * W;  // this column block's panel
    for (int64_t k = 0; k < d; ++k) {
      const T* yk = yc + k * W;
#pragma GCC unroll 8
      for (int64_t r = 0; r < kR; ++r) {
        const T xv = xr[r * d + k];
#pragma omp simd
        for (int64_t w = 0; w < W; ++w) acc[r][w] += xv * yk[w];
      }
    }
    const T* sy = Y.sq.data() + j0 + jb;
    for (int64_t r = 0; r < kR; ++r) {
      const T sx = X.sq[i0 + r];
      T* o = out + r * kTJ + jb;
      if (p == 2) {
#pragma omp simd
        for (int64_t w = 0; w < W; ++w) {
          const T c = sx + sy[w] - 2 * acc[r][w];
          o[w] = (c > 0 ? c : T(0)) * T(0.5);
        }
      } else {
        // squared distances within the GEMM form's rounding error count as 0 (coincident
        // points cost exactly 0, not the square root of rounding noise)
        constexpr T tiny = 4 * std::numeric_limits<T>::epsilon();
#pragma omp simd
        for (int64_t w = 0; w < W; ++w) {
          const T c = sx + sy[w] - 2 * acc[r][w];
          o[w] = c > tiny * (sx + sy[w]) ? std::sqrt(c) : T(0);
        }
      }
    }
  }
}

// Inner-side data of a pass: h_j = potential/eps (0 on padding), mk_j = 1 on the support.
template <typename T>
struct Pass {
  const Cloud<T>* X;
  const Cloud<T>* Y;
  const T* cache;  // (X.np, Y.np) cost or nullptr
  const T* h;
  const T* mk;
};

// out_i = LSE_j(h_j - C_ij * inv) for rows [i0, i0 + kTI) (clipped to X.np).
template <typename T>
void lse_rows(const Pass<T>& ps, int p, T inv, int64_t i0, T* out) {
  const int64_t i1 = std::min(i0 + kTI, ps.X->np), mp = ps.Y->np;
  T mx[kTI], s[kTI];
  std::fill(mx, mx + kTI, std::numeric_limits<T>::lowest());
  std::fill(s, s + kTI, T(0));
  alignas(64) T tile[kR * kTJ];
  alignas(64) T args[kTJ];
  for (int64_t j0 = 0; j0 < mp; j0 += kTJ) {
    const int64_t tj = std::min(kTJ, mp - j0);
    const T* __restrict h = ps.h + j0;
    const T* __restrict mk = ps.mk + j0;
    for (int64_t ib = i0; ib < i1; ib += kR) {
      if (ps.cache == nullptr) cost_tile(*ps.X, *ps.Y, ib, j0, tj, p, tile);
      for (int64_t r = 0; r < kR; ++r) {
        const T* __restrict c =
            ps.cache != nullptr ? ps.cache + (ib + r) * mp + j0 : tile + r * kTJ;
        T* __restrict v = args;  // a separate buffer: no aliasing, so the loop vectorises
        T tmax = std::numeric_limits<T>::lowest();
#pragma omp simd reduction(max : tmax)
        for (int64_t j = 0; j < tj; ++j) {
          const T t = h[j] - c[j] * inv;  // h is kMasked off the support
          v[j] = t;
          tmax = tmax > t ? tmax : t;
        }
        const int64_t q = ib - i0 + r;
        if (tmax > mx[q]) {
          s[q] *= vexp(mx[q] - tmax);
          mx[q] = tmax;
        }
        const T m0 = mx[q];
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < tj; ++j) sum += mk[j] * vexp(v[j] - m0);
        s[q] += sum;
      }
    }
  }
  for (int64_t i = i0; i < i1; ++i) out[i] = mx[i - i0] + std::log(s[i - i0]);
}

// Row-side values of the plan P_ij = exp(F_i + h_j - C_ij * inv), F_i = f_i * inv:
// r_i = sum_j P_ij, t_i = sum_j P_ij C_ij and, if grad, grad_i = sum_j W_ij (x_i - y_j) with
// W = P (p=2) or P / C (p=1, 0 where C = 0): the envelope gradient of the objective in x.
template <typename T>
void values_rows(const Pass<T>& ps, int p, T inv, const T* F, const T* rowmk, int64_t i0,
                 T* r_out, T* t_out, T* grad) {
  const int64_t i1 = std::min(i0 + kTI, ps.X->n), mp = ps.Y->np, d = ps.X->d;
  alignas(64) T tile[kR * kTJ];
  std::vector<T> wy(grad != nullptr ? kR * d : 0);
  for (int64_t ib = i0; ib < i1; ib += kR) {
    T rs[kR] = {}, ts[kR] = {}, ws[kR] = {};
    std::fill(wy.begin(), wy.end(), T(0));
    for (int64_t j0 = 0; j0 < mp; j0 += kTJ) {
      const int64_t tj = std::min(kTJ, mp - j0);
      const T* h = ps.h + j0;
      const T* mk = ps.mk + j0;
      cost_tile(*ps.X, *ps.Y, ib, j0, tj, p, tile);
      for (int64_t r = 0; r < kR; ++r) {
        if (ib + r >= i1 || rowmk[ib + r] == 0) continue;
        const T* c = tile + r * kTJ;
        const T fr = F[ib + r];
        T pr[kTJ];
        T sr = 0, st = 0, sw = 0;
#pragma omp simd reduction(+ : sr, st, sw)
        for (int64_t j = 0; j < tj; ++j) {
          const T pij = mk[j] * vexp(fr + h[j] - c[j] * inv);
          sr += pij;
          st += pij * c[j];
          const T w = p == 2 ? pij : (c[j] > 0 ? pij / c[j] : T(0));
          pr[j] = w;
          sw += w;
        }
        rs[r] += sr;
        ts[r] += st;
        ws[r] += sw;
        if (grad != nullptr) {
          T* acc = wy.data() + r * d;
          const T* yrow = ps.Y->rows.data() + j0 * d;
          for (int64_t j = 0; j < tj; ++j) {
            const T w = pr[j];
            if (w == 0) continue;
#pragma omp simd
            for (int64_t k = 0; k < d; ++k) acc[k] += w * yrow[j * d + k];
          }
        }
      }
    }
    for (int64_t r = 0; r < kR && ib + r < i1; ++r) {
      const int64_t i = ib + r;
      r_out[i] = rs[r];
      t_out[i] = ts[r];
      if (grad != nullptr)
        for (int64_t k = 0; k < d; ++k)
          grad[i * d + k] = ws[r] * ps.X->rows[i * d + k] - wy[r * d + k];
    }
  }
}

// Cost (X.np, Y.np) of one problem, for the cached mode.
template <typename T>
void fill_cache(const Cloud<T>& X, const Cloud<T>& Y, int p, T* out, int threads) {
  const int64_t mp = Y.np;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t ib = 0; ib < X.np; ib += kR) {
    alignas(64) T tile[kR * kTJ];
    for (int64_t j0 = 0; j0 < mp; j0 += kTJ) {
      const int64_t tj = std::min(kTJ, mp - j0);
      cost_tile(X, Y, ib, j0, tj, p, tile);
      for (int64_t r = 0; r < kR; ++r)
        std::copy(tile + r * kTJ, tile + r * kTJ + tj, out + (ib + r) * mp + j0);
    }
  }
}

struct Task {
  int64_t problem, row;
};

}  // namespace

// B problems x (B, n, d), y (B, m, d), weights a (B, n), b (B, m) (positive total mass each).
// symmetric: y = x and b = a (the debiasing terms OT(a, a)): GeomLoss's averaged update
// f <- (f + T(f))/2 with g = f. sched (S,) eps values: iteration k runs at
// sched[min(k, S - 1)]; at most S - 1 + max_iter iterations; a problem stops once its
// row-marginal error at the final eps is <= tol * mass (tol > 0). Writes f (B, n), g (B, m)
// (zero-mass entries: the c-transform), n_iter (B,), err (B,).
template <typename T>
void points_solve(const T* x, const T* y, const T* a, const T* b, int64_t B, int64_t n, int64_t m,
                  int64_t d, int p, bool symmetric, const double* sched, int64_t S,
                  int64_t max_iter, T tol, bool cache, T* f, T* g, int64_t* n_iter, T* err,
                  int threads) {
  std::vector<Cloud<T>> X, Y;
  X.reserve(B);
  Y.reserve(B);
  for (int64_t q = 0; q < B; ++q) {
    X.emplace_back(x + q * n * d, n, d);
    if (!symmetric) Y.emplace_back(y + q * m * d, m, d);
  }
  const std::vector<Cloud<T>>& Yr = symmetric ? X : Y;
  const int64_t np = padded(n), mp = padded(m);
  std::vector<T> C, CT;  // cached costs (B, np, mp) and (B, mp, np)
  if (cache) {
    C.resize(B * np * mp);
    if (!symmetric) CT.resize(B * mp * np);
    for (int64_t q = 0; q < B; ++q) {
      fill_cache(X[q], Yr[q], p, C.data() + q * np * mp, threads);
      if (!symmetric) fill_cache(Yr[q], X[q], p, CT.data() + q * mp * np, threads);
    }
  }
  // per problem: potentials (cost units), masks, logs of the weights, LSE outputs, h
  std::vector<T> F(B * np, T(0)), G(B * mp, T(0)), mka(B * np, T(0)), mkb(B * mp, T(0));
  std::vector<T> la(B * np, T(0)), lb(B * mp, T(0)), lr(B * np, T(0)), lc(B * mp, T(0));
  std::vector<T> hr(B * mp, T(0)), hc(B * np, T(0)), thr(B, T(0));
  for (int64_t q = 0; q < B; ++q) {
    T mass = 0;
    for (int64_t i = 0; i < n; ++i) {
      const T w = a[q * n + i];
      mka[q * np + i] = w > 0;
      la[q * np + i] = w > 0 ? std::log(w) : T(0);
      mass += w;
    }
    for (int64_t j = 0; j < m; ++j) {
      const T w = b[q * m + j];
      mkb[q * mp + j] = w > 0;
      lb[q * mp + j] = w > 0 ? std::log(w) : T(0);
    }
    thr[q] = tol * mass;
  }
  const T* MKB = symmetric ? mka.data() : mkb.data();
  const int64_t mq = symmetric ? np : mp;  // stride of the row pass's inner side
  auto row_pass = [&](const std::vector<int64_t>& act, T e, bool sym_inner) {
    // LSE_j(G_j/e - C_ij/e) for the active problems (sym: the inner potential is F)
    std::vector<Task> tasks;
    for (int64_t q : act)
      for (int64_t i0 = 0; i0 < np; i0 += kTI) tasks.push_back({q, i0});
    const T inv = T(1) / e;
    for (int64_t q : act) {
      const T* pot = sym_inner ? F.data() + q * np : G.data() + q * mp;
      const T* mk = MKB + q * mq;
      for (int64_t j = 0; j < mq; ++j) hr[q * mp + j] = mk[j] > 0 ? pot[j] * inv : kMasked<T>;
    }
#pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (size_t k = 0; k < tasks.size(); ++k) {
      const int64_t q = tasks[k].problem;
      Pass<T> ps{&X[q], &Yr[q], cache ? C.data() + q * np * mq : nullptr, hr.data() + q * mp,
                 MKB + q * mq};
      lse_rows(ps, p, inv, tasks[k].row, lr.data() + q * np);
    }
  };
  auto col_pass = [&](const std::vector<int64_t>& act, T e) {
    std::vector<Task> tasks;
    for (int64_t q : act)
      for (int64_t j0 = 0; j0 < mp; j0 += kTI) tasks.push_back({q, j0});
    const T inv = T(1) / e;
    for (int64_t q : act)
      for (int64_t i = 0; i < np; ++i)
        hc[q * np + i] = mka[q * np + i] > 0 ? F[q * np + i] * inv : kMasked<T>;
#pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (size_t k = 0; k < tasks.size(); ++k) {
      const int64_t q = tasks[k].problem;
      Pass<T> ps{&Yr[q], &X[q], cache ? CT.data() + q * mp * np : nullptr, hc.data() + q * np,
                 mka.data() + q * np};
      lse_rows(ps, p, inv, tasks[k].row, lc.data() + q * mp);
    }
  };

  std::vector<int64_t> act(B);
  for (int64_t q = 0; q < B; ++q) act[q] = q;
  std::vector<T> cur_err(B, T(0));
  std::vector<int64_t> cur_it(B, 0);
  const int64_t total = S - 1 + max_iter;
  for (int64_t it = 0; it <= total && !act.empty(); ++it) {
    const T e = static_cast<T>(sched[std::min(it, S - 1)]);
    row_pass(act, e, symmetric);
    if (it >= S) {  // the state was produced at the final eps: its row-marginal error
      std::vector<int64_t> keep;
      for (int64_t q : act) {
        T s = 0;
        for (int64_t i = 0; i < n; ++i)
          if (mka[q * np + i] > 0)
            s += std::abs(std::exp(F[q * np + i] / e + lr[q * np + i]) - a[q * n + i]);
        cur_err[q] = s;
        cur_it[q] = it;
        if (!((tol > 0 && s <= thr[q]) || it == total)) keep.push_back(q);
      }
      act.swap(keep);
      if (act.empty()) break;
    }
    for (int64_t q : act)
      for (int64_t i = 0; i < n; ++i) {
        const int64_t k = q * np + i;
        const T t = mka[k] > 0 ? e * (la[k] - lr[k]) : T(0);
        F[k] = symmetric ? (F[k] + t) / 2 : t;
      }
    if (!symmetric) {
      col_pass(act, e);
      for (int64_t q : act)
        for (int64_t j = 0; j < m; ++j) {
          const int64_t k = q * mp + j;
          if (mkb[k] > 0) G[k] = e * (lb[k] - lc[k]);
        }
    }
  }
  const T e = static_cast<T>(sched[S - 1]);
  std::vector<int64_t> zero_cols;  // problems with zero-mass columns: their c-transform
  for (int64_t q = 0; q < B; ++q) {
    bool any = false;
    for (int64_t j = 0; j < m; ++j) any |= mkb[q * mp + j] == 0;
    if (any && !symmetric) zero_cols.push_back(q);
  }
  if (!zero_cols.empty()) col_pass(zero_cols, e);
  for (int64_t q = 0; q < B; ++q) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t k = q * np + i;
      f[q * n + i] = mka[k] > 0 ? F[k] : -e * lr[k];
    }
    for (int64_t j = 0; j < m; ++j) {
      const int64_t k = q * mp + j;
      g[q * m + j] = symmetric ? f[q * n + j] : (mkb[k] > 0 ? G[k] : -e * lc[k]);
    }
    n_iter[q] = cur_it[q];
    err[q] = cur_err[q];
  }
}

// Row-side values of B plans (see values_rows): r, t (B, n) and, if grad != nullptr, the
// gradient (B, n, d) of the objective with respect to x. One tiled pass.
template <typename T>
void points_values(const T* x, const T* y, const T* a, const T* b, const T* f, const T* g,
                   int64_t B, int64_t n, int64_t m, int64_t d, int p, T eps, T* r, T* t, T* grad,
                   int threads) {
  std::vector<Cloud<T>> X, Y;
  for (int64_t q = 0; q < B; ++q) {
    X.emplace_back(x + q * n * d, n, d);
    Y.emplace_back(y + q * m * d, m, d);
  }
  const int64_t np = padded(n), mp = padded(m);
  const T inv = T(1) / eps;
  std::vector<T> F(B * np, T(0)), mka(B * np, T(0)), h(B * mp, T(0)), mkb(B * mp, T(0));
  for (int64_t q = 0; q < B; ++q) {
    for (int64_t i = 0; i < n; ++i) {
      F[q * np + i] = f[q * n + i] * inv;
      mka[q * np + i] = a[q * n + i] > 0;
    }
    for (int64_t j = 0; j < m; ++j) {
      mkb[q * mp + j] = b[q * m + j] > 0;
      h[q * mp + j] = b[q * m + j] > 0 ? g[q * m + j] * inv : kMasked<T>;
    }
  }
  std::vector<Task> tasks;
  for (int64_t q = 0; q < B; ++q)
    for (int64_t i0 = 0; i0 < n; i0 += kTI) tasks.push_back({q, i0});
#pragma omp parallel for num_threads(threads) schedule(dynamic)
  for (size_t k = 0; k < tasks.size(); ++k) {
    const int64_t q = tasks[k].problem;
    Pass<T> ps{&X[q], &Y[q], nullptr, h.data() + q * mp, mkb.data() + q * mp};
    values_rows(ps, p, inv, F.data() + q * np, mka.data() + q * np, tasks[k].row, r + q * n,
                t + q * n, grad != nullptr ? grad + q * n * d : nullptr);
  }
}

}  // namespace pytransfer

// ------------------------------------------------------------------ Python bindings
#include <stdexcept>
#include <string>

#include "bindings.h"

PYTRANSFER_BINDINGS(bind_sinkhorn_points) {
  using pytransfer::ptr;
  m.def(
      "points_solve",
      [](const std::string& dtype, std::uintptr_t x, std::uintptr_t y, std::uintptr_t a,
         std::uintptr_t b, int64_t B, int64_t n, int64_t m_, int64_t d, int p, bool symmetric,
         std::uintptr_t sched, int64_t S, int64_t max_iter, double tol, bool cache,
         std::uintptr_t f, std::uintptr_t g, std::uintptr_t n_iter, std::uintptr_t err,
         int threads) {
        pybind11::gil_scoped_release nogil;
        if (dtype == "float32")
          pytransfer::points_solve<float>(
              ptr<const float>(x), ptr<const float>(y), ptr<const float>(a), ptr<const float>(b),
              B, n, m_, d, p, symmetric, ptr<const double>(sched), S, max_iter,
              static_cast<float>(tol), cache, ptr<float>(f), ptr<float>(g), ptr<int64_t>(n_iter),
              ptr<float>(err), threads);
        else if (dtype == "float64")
          pytransfer::points_solve<double>(
              ptr<const double>(x), ptr<const double>(y), ptr<const double>(a),
              ptr<const double>(b), B, n, m_, d, p, symmetric, ptr<const double>(sched), S,
              max_iter, tol, cache, ptr<double>(f), ptr<double>(g), ptr<int64_t>(n_iter),
              ptr<double>(err), threads);
        else
          throw std::invalid_argument("points_solve: dtype must be float32 or float64");
      },
      "Batched point-cloud Sinkhorn with an eps schedule (online or cached cost tiles)");
  m.def(
      "points_values",
      [](const std::string& dtype, std::uintptr_t x, std::uintptr_t y, std::uintptr_t a,
         std::uintptr_t b, std::uintptr_t f, std::uintptr_t g, int64_t B, int64_t n, int64_t m_,
         int64_t d, int p, double eps, std::uintptr_t r, std::uintptr_t t, std::uintptr_t grad,
         int threads) {
        pybind11::gil_scoped_release nogil;
        if (dtype == "float32")
          pytransfer::points_values<float>(
              ptr<const float>(x), ptr<const float>(y), ptr<const float>(a), ptr<const float>(b),
              ptr<const float>(f), ptr<const float>(g), B, n, m_, d, p, static_cast<float>(eps),
              ptr<float>(r), ptr<float>(t), ptr<float>(grad), threads);
        else if (dtype == "float64")
          pytransfer::points_values<double>(
              ptr<const double>(x), ptr<const double>(y), ptr<const double>(a),
              ptr<const double>(b), ptr<const double>(f), ptr<const double>(g), B, n, m_, d, p,
              eps, ptr<double>(r), ptr<double>(t), ptr<double>(grad), threads);
        else
          throw std::invalid_argument("points_values: dtype must be float32 or float64");
      },
      "Row marginals, <P, C> per row and the x-gradient of a point-cloud plan, one tiled pass");
}
