// Scaling-form Sinkhorn over blocks of problems sharing K (issue 13), CPU.
//
// One SIMD vector holds one value of W problems (W = 16 float / 8 double lanes): the scalings
// are stored (n, W) and (m, W), so every load (broadcast) of an entry of the shared
// K = exp(-(C - min C)/eps) serves W problems, and a product K v is register-blocked over
// 8 outputs (8 independent FMA chains, one load of v per 8 FMAs). Lanes never interact: a
// problem's iterates are those of solving it alone, whichever problems share its block.
// Per-problem exit: a lane whose problem stops (converged, max_iter, or absorbed) is refilled
// with the next problem of the thread's range, so no lane idles while work is left; at the end
// of the range the live lanes move to a block of half the width (see solve_range).
// Absorption: a scaling outside [lo, hi] hands the problem to the log-domain kernel,
// warm-started from its last in-range v (as pytransfer.ot.scaling does).
// Warm start: g_init gives v = exp(g/eps); a problem whose v leaves [lo, hi] starts in the log
// domain from g_init itself.
// Fixed-point stop (unless disabled): once a lane's v is bit-for-bit that of the iteration
// before, its state (u, v) is an exact floating-point fixed point of the (deterministic, per
// lane) iteration, so every further iteration reproduces it: the lane finishes at once with the
// outputs of running to max_iter (n_iter = max_iter, unless the tolerance test stops it first,
// as it would have). Most float32 problems reach one long before 100 iterations.
// Values: <P, C> = u . (EC v) from the final scalings (W problems per block product) and the
// objective from P's row and column sums kept at finish; for a block holding a problem that
// finished in the log domain, from the potentials entry by entry (values_direct). O(n m) per
// problem either way. The objective may be deferred: the sums and copies of a and b are kept
// instead, and sinkhorn_block_objective computes it from them later with the same function
// (objective_of).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__SSE2__) || defined(__FMA__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "sinkhorn_cpu.h"
#include "vec_math.h"

// The vector helpers below pass and return SIMD vectors; they are internal and inlined, so the
// ABI note GCC gives for them on a target without AVX / AVX-512 does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace pytransfer {
namespace {

// W lanes of T in one SIMD vector of Bytes bytes.
template <typename T, int Bytes = 64>
struct Lanes {
  typedef T V __attribute__((vector_size(Bytes)));
  static constexpr int W = Bytes / sizeof(T);
};

// Whether any lane of a comparison mask is set: one OR over its 64 bytes, no lane loop.
template <typename M>
inline bool any(const M& mask) {
  uint64_t w[sizeof(M) / 8];
  std::memcpy(w, &mask, sizeof(M));
  uint64_t r = 0;
  for (uint64_t x : w) r |= x;
  return r != 0;
}

// a * b + c rounded once where the CPU has FMA, for every vector width alike. Written out, not
// left to the compiler's contraction of a * b + c, which it makes or not per width and per loop
// (GCC 12 leaves a remainder loop unfused at 32 bytes): a lane must compute the same bits in a
// block of any width (the tail of solve_range narrows it). Without FMA nothing is contracted.
#if defined(__FMA__)
inline __m256 fma256(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
inline __m256d fma256(__m256d a, __m256d b, __m256d c) { return _mm256_fmadd_pd(a, b, c); }
inline __m128 fma128(__m128 a, __m128 b, __m128 c) { return _mm_fmadd_ps(a, b, c); }
inline __m128d fma128(__m128d a, __m128d b, __m128d c) { return _mm_fmadd_pd(a, b, c); }
#endif
template <typename V>
__attribute__((always_inline)) inline V fmadd(const V& a, const V& b, const V& c) {
#if defined(__AVX512F__) || defined(__FMA__)
  typedef std::remove_cv_t<std::remove_reference_t<decltype(a[0])>> T;
#endif
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64 && sizeof(T) == 4) return _mm512_fmadd_ps(a, b, c);
  if constexpr (sizeof(V) == 64 && sizeof(T) == 8) return _mm512_fmadd_pd(a, b, c);
#endif
#if defined(__FMA__)
  typedef T H __attribute__((vector_size(32)));
  if constexpr (sizeof(V) == 16) {
    return fma128(a, b, c);
  } else if constexpr (sizeof(V) == 32) {
    return fma256(a, b, c);
  } else if constexpr (sizeof(V) == 64) {  // two 32-byte halves
    H x[2], y[2], z[2];
    std::memcpy(x, &a, 64), std::memcpy(y, &b, 64), std::memcpy(z, &c, 64);
    z[0] = fma256(x[0], y[0], z[0]), z[1] = fma256(x[1], y[1], z[1]);
    V r;
    std::memcpy(&r, z, 64);
    return r;
  }
#endif
  return a * b + c;
}

// fmadd of one lane's scalars, fused exactly where the vector fmadd is: a lane's scalar
// result has the bits of its vector lane.
template <typename T>
__attribute__((always_inline)) inline T fmadd1(T a, T b, T c) {
#if defined(__AVX512F__) || defined(__FMA__)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// fmadd with a scalar a, broadcast to every lane.
template <typename T, typename V>
__attribute__((always_inline)) inline V fmadd(T a, const V& b, const V& c) {
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64 && sizeof(T) == 4) return _mm512_fmadd_ps(_mm512_set1_ps(a), b, c);
  if constexpr (sizeof(V) == 64 && sizeof(T) == 8) return _mm512_fmadd_pd(_mm512_set1_pd(a), b, c);
#endif
#if defined(__FMA__)
  if constexpr (sizeof(V) == 32 && sizeof(T) == 4) return _mm256_fmadd_ps(_mm256_set1_ps(a), b, c);
  if constexpr (sizeof(V) == 32 && sizeof(T) == 8) return _mm256_fmadd_pd(_mm256_set1_pd(a), b, c);
  if constexpr (sizeof(V) == 16 && sizeof(T) == 4) return _mm_fmadd_ps(_mm_set1_ps(a), b, c);
  if constexpr (sizeof(V) == 16 && sizeof(T) == 8) return _mm_fmadd_pd(_mm_set1_pd(a), b, c);
  if constexpr (sizeof(V) == 64) return fmadd(V{} + a, b, c);
#endif
  return a * b + c;
}

// out(i0 + k, sum_j r[k, j] x[j]) for the R rows k < R of r (row-major, len): R independent FMA
// chains, one load of x[j] per R FMAs. (Always inlined, so the sums stay in registers.)
template <int R, typename T, typename V, typename Out>
__attribute__((always_inline)) inline void row_group(const T* r, const V* x, int64_t len,
                                                     int64_t i0, Out& out) {
  V c[R];
#pragma GCC unroll 8
  for (int k = 0; k < R; ++k) c[k] = V{};
  for (int64_t j = 0; j < len; ++j) {
    const V xj = x[j];
#pragma GCC unroll 8
    for (int k = 0; k < R; ++k) c[k] = fmadd(r[k * len + j], xj, c[k]);
  }
#pragma GCC unroll 8
  for (int k = 0; k < R; ++k) out(i0 + k, c[k]);
}

// out(i, sum_j M[i, j] x[j]) for i < rows; M row-major (rows, len), x a lane vector per column:
// groups of 8 rows, the 4 to 7 left as one group (enough chains to hide the FMA latency), and
// any last 1 to 3 rows with four partial sums each, so their FMAs do not wait on each other.
// (Always inlined, so the state of out stays in registers.)
template <typename T, typename V, typename Out>
__attribute__((always_inline)) inline void block_product_to(const T* M, const V* x, int64_t rows,
                                                            int64_t len, Out& out) {
  int64_t i = 0;
  for (; i + 8 <= rows; i += 8) row_group<8>(M + i * len, x, len, i, out);
  switch (rows - i) {
    case 7: row_group<7>(M + i * len, x, len, i, out), i += 7; break;
    case 6: row_group<6>(M + i * len, x, len, i, out), i += 6; break;
    case 5: row_group<5>(M + i * len, x, len, i, out), i += 5; break;
    case 4: row_group<4>(M + i * len, x, len, i, out), i += 4; break;
    default: break;
  }
  for (; i < rows; ++i) {
    const T* r = M + i * len;
    V c0 = {}, c1 = {}, c2 = {}, c3 = {};
    int64_t j = 0;
    for (; j + 4 <= len; j += 4) {
      c0 = fmadd(r[j], x[j], c0);
      c1 = fmadd(r[j + 1], x[j + 1], c1);
      c2 = fmadd(r[j + 2], x[j + 2], c2);
      c3 = fmadd(r[j + 3], x[j + 3], c3);
    }
    for (; j < len; ++j) c0 = fmadd(r[j], x[j], c0);
    out(i, (c0 + c1) + (c2 + c3));
  }
}

// out[i] = sum_j M[i, j] x[j] for i < rows; M row-major (rows, len), x and out lane vectors.
template <typename T, typename V>
inline void block_product(const T* M, const V* x, int64_t rows, int64_t len, V* out) {
  auto store = [out](int64_t i, const V& c) { out[i] = c; };
  block_product_to(M, x, rows, len, store);
}

// q > 0 ? q : 0 lane by lane, as one max instruction where the CPU has one for the width
// (x86 max(a, b) is exactly a > b ? a : b, NaN and signed zeros included; GCC compiles the
// conditional itself to a compare and a masked move, and on Zen 4 the compare takes an FMA
// pipe from the products).
template <typename V>
__attribute__((always_inline)) inline V positive_part(const V& q) {
  const V zero = {};
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64 && sizeof(q[0]) == 4) return _mm512_max_ps(q, zero);
  if constexpr (sizeof(V) == 64 && sizeof(q[0]) == 8) return _mm512_max_pd(q, zero);
#endif
#if defined(__AVX__)
  if constexpr (sizeof(V) == 32 && sizeof(q[0]) == 4) return _mm256_max_ps(q, zero);
  if constexpr (sizeof(V) == 32 && sizeof(q[0]) == 8) return _mm256_max_pd(q, zero);
#endif
#if defined(__SSE2__)
  if constexpr (sizeof(V) == 16 && sizeof(q[0]) == 4) return _mm_max_ps(q, zero);
  if constexpr (sizeof(V) == 16 && sizeof(q[0]) == 8) return _mm_max_pd(q, zero);
#endif
  return q > zero ? q : zero;
}

// Row k of x_new = w / den: x = w / c on the support (w > 0), 0 elsewhere, and the lane minimum
// and maximum of the supported quotients, all without a compare or masked op (on Zen 4 those
// take the FMA pipes, max / min / add do not; positive_part: -3 % per iteration at 78 x 22):
// c = (K x)_k >= 0, so w / c off the support is 0, -0, -inf or NaN (0 / 0), all of which
// max(w / c, 0) sends to 0 (and on the support it is w / c, +inf for c = 0, 0 if c
// overflowed); off[k] = 0 on the support and hi off it keeps the other rows out of the
// minimum.
template <typename T, typename V>
struct Quotients {
  const V *w, *off;
  V *den, *x_new;
  V low, high;
  __attribute__((always_inline)) inline void operator()(int64_t k, const V& c) {
    const V x = positive_part(w[k] / c), xs = x + off[k];
    low = xs < low ? xs : low;
    high = x > high ? x : high;
    den[k] = c;
    x_new[k] = x;
  }
};

// den = K x and x_new = w / den (0 off the support w > 0; off: 0 on it, hi off it), each
// quotient as soon as its row of the product is done, so the divider runs alongside the next
// rows' FMAs. Returns whether a lane has a supported quotient outside [lo, hi] (or not finite),
// and sets *bad to the mask of those lanes.
template <typename T, typename V, typename M>
inline bool product_divide(const T* K, const V* x, int64_t rows, int64_t len, const V* w,
                           const V* off, T lo, T hi, V* den, V* x_new, M* bad) {
  Quotients<T, V> q{w, off, den, x_new, V{} + hi, V{}};
  block_product_to(K, x, rows, len, q);
  *bad = (q.low < lo) | (q.high > hi);
  return any(*bad);
}

// <P, C> of problems [p0, p0 + count) from their potentials (cost units) and P's row and
// column sums r (B, n), c (B, m) for finish_problem (the path of a block holding a problem
// absorbed into the log domain, which has potentials only), entry by entry:
// P_ij = exp((f_i + g_j - C_ij) / eps), zero-mass rows and columns and +inf costs carrying no
// mass. (Factored as e^(Fmax + Gmax) diag(u) K diag(v), it would overflow T past
// (max C - min C) / eps ~ 88 in float32, and lose the small entries of K before that.)
template <typename T>
void values_direct(const T* a, const T* b, const T* cost, int64_t n, int64_t m, T eps,
                   const T* f, const T* g, int64_t count, T* transport, T* rows, T* cols) {
  const T inf = std::numeric_limits<T>::infinity();
  std::vector<T> x(m), colsum(m);
  for (int64_t l = 0; l < count; ++l) {
    const T *al = a + l * n, *bl = b + l * m, *fl = f + l * n, *gl = g + l * m;
    std::fill(colsum.begin(), colsum.end(), T(0));
    T tr = 0;
    for (int64_t i = 0; i < n; ++i) {
      const T* ci = cost + i * m;
      T rs = 0, ts = 0;
      if (al[i] > 0) {
        // (both branches evaluated and simd sums: the loop vectorises)
#pragma omp simd reduction(+ : rs, ts)
        for (int64_t j = 0; j < m; ++j) {
          const T e = vexp((fl[i] + gl[j] - ci[j]) / eps);
          const T pij = bl[j] > 0 && ci[j] < inf ? e : T(0);
          x[j] = pij, rs += pij, ts += pij > 0 ? pij * ci[j] : T(0);
        }
        for (int64_t j = 0; j < m; ++j) colsum[j] += x[j];
      }
      rows[l * n + i] = rs;
      tr += ts;
    }
    for (int64_t j = 0; j < m; ++j) cols[l * m + j] = colsum[j];
    transport[l] = tr;
  }
}

// sum x[0, len) in double, in eight partial sums (one SIMD vector of them; a single running sum
// waits on each add: a short row costs its length times the add latency).
template <typename T>
double mass_of(const T* x, int64_t len) {
  double s[8] = {};
  int64_t i = 0;
  for (; i + 8 <= len; i += 8)
    for (int k = 0; k < 8; ++k) s[k] += x[i + k];
  for (; i < len; ++i) s[i & 7] += x[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// Loads one side of a problem into lane l: weights W = w (all zero for w null: an empty lane),
// off = 0 on the support w > 0 and hi off it (see Quotients), and unless x is null, scalings
// x = x0 on the support and 0 off it.
template <typename T, typename V = typename Lanes<T>::V>
__attribute__((optimize("no-tree-vectorize"))) void load_lane(int l, const T* w, int64_t len, T hi,
                                                               V* W, V* off, V* x, T x0) {
  for (int64_t i = 0; i < len; ++i) {
    const T wi = w != nullptr ? w[i] : T(0);
    W[i][l] = wi;
    off[i][l] = wi > 0 ? T(0) : hi;
  }
  if (x != nullptr)
    for (int64_t i = 0; i < len; ++i) x[i][l] = W[i][l] > 0 ? x0 : T(0);
}

// out[i][l] = x[i] on the support w > 0, 0 off it (lane l of scalings back in a block).
template <typename T, typename V = typename Lanes<T>::V>
__attribute__((optimize("no-tree-vectorize"))) void to_lane(int l, const T* w, const T* x,
                                                             int64_t len, V* out) {
  for (int64_t i = 0; i < len; ++i) out[i][l] = w[i] > 0 ? x[i] : T(0);
}

// Lane l of a finished problem, one side (u, K v or v, K^T u): its scalings x into s (off the
// support, 1 / (K x'), the c-transform's) and, unless null, P's row (column) sums x (K x')
// into r. The support is x > 0: a lane finishes in the scaling form with its supported
// scalings in [lo, hi], and Quotients leaves 0 off the support. With the side's weights w
// (contiguous), returns the marginal error |x (K x') - w|_1, bit for bit as solve_range's
// vector marginal_error computes it for this lane (the same fused terms, summed in the same
// four partial sums), else 0. One scalar load per entry: vectorised, this gather of one lane
// of len vectors costs more than it moves.
template <typename T, typename V = typename Lanes<T>::V>
__attribute__((optimize("no-tree-vectorize"))) T finish_lane(int l, const V* x, const V* kx,
                                                              int64_t len, T* s, T* r,
                                                              const T* w) {
  T e[4] = {};
  const int64_t whole = len & ~int64_t(3);  // (marginal_error: the rest goes to the first sum)
  for (int64_t i = 0; i < len; ++i) {
    const T xi = x[i][l], ki = kx[i][l];
    s[i] = xi > 0 ? xi : T(1) / ki;
    if (r != nullptr) r[i] = xi * ki;
    if (w != nullptr) {
      const T d = fmadd1(xi, ki, -w[i]);
      e[i < whole ? (i & 3) : 0] += w[i] > 0 ? (d < 0 ? -d : d) : T(0);
    }
  }
  return (e[0] + e[1]) + (e[2] + e[3]);
}

template <typename T>
struct Problem {  // the shared inputs of one solve
  const T *a, *b, *cost, *E, *ET;
  int64_t n, m;
  T eps, cmin;
  int64_t max_iter;
  T tol, lo, hi;
  const T* g_init;  // (B, m) warm start, or nullptr
  bool fixed_stop;  // finish a lane at an exact fixed point (see the top of this file)
  T *f, *g;
  int64_t* n_iter;
  T* err;
  uint8_t* absorbed;
  T *rows, *cols;  // (B, n), (B, m) or nullptr: P's row and column sums at finish (values)
};

// A problem in progress, handed from a block of lanes to a narrower one: its index, the
// iterations done, its state (u, v) and K^T u (which finish() reads at the next exit test).
template <typename T>
struct Carried {
  int64_t p, done;
  std::vector<T> u, v, ktu;
};

// Solves problems [p0, p1) with one block of W lanes, refilled as problems finish. The lane
// bookkeeping stays off the per-iteration path: lane l has done iter - start[l] iterations,
// the exit test runs only when a lane may stop (some lane has an iteration behind it and
// tol > 0, or the earliest max_iter deadline is reached), a vector compare of the marginal
// errors with the thresholds decides whether any lane did, and the lanes are walked only
// when one stops, leaves the scalings' range, or must be refilled.
// The tail: once no problem is left to load and at most half of the lanes are live, the block
// hands them (``carried``, loaded first) to one of half the width, down to 16-byte vectors:
// on a 256-bit FPU (AMD Zen 4: a 64-byte FMA takes both of its 256-bit pipes, a 32- or
// 16-byte one either pipe) each halving halves the cost per iteration, elsewhere it costs the
// same or less. A lane's arithmetic does not depend on the width, so the outputs are the same.
template <typename T, int Bytes = 64>
void solve_range(const Problem<T>& P, int64_t p0, int64_t p1,
                 const std::vector<Carried<T>>& carried = {}) {
  typedef typename Lanes<T, Bytes>::V V;
  typedef decltype(V{} > V{}) M;
  constexpr int W = Lanes<T, Bytes>::W;
  const int64_t n = P.n, m = P.m;
  const T ninf = -std::numeric_limits<T>::infinity();
  // offa, offb: 0 on the supports of a, b, hi off them (see Quotients)
  std::vector<V> A(n), Bw(m), offa(n), offb(m), u(n), u_new(n), kv(n), v(m), v_new(m), ktu(m);
  std::vector<T> g_init(m);
  int64_t id[W], start[W];
  M watch = {};  // all ones on lanes whose fixed point is looked for (live)
  V thr;  // tol * mass on live lanes; -inf on the others, so e <= thr never holds there
  int64_t next = p0, iter = 0;
  int64_t deadline = std::numeric_limits<int64_t>::max();  // <= min over live start + max_iter
  int live = 0, young = 0, holes = 0;  // live lanes, those loaded for this iteration, emptied
  auto log_solve = [&](int64_t p, int64_t done, const T* g0) {  // the log domain from g0
    int64_t more = 0;
    sinkhorn_log_cpu<T>(P.a + p * n, P.b + p * m, P.cost, 1, n, m, true, P.eps,
                        std::max<int64_t>(P.max_iter - done, 1), P.tol, g0, P.f + p * n,
                        P.g + p * m, &more, P.err + p, 1);
    P.n_iter[p] = done + more;
    P.absorbed[p] = 1;
  };
  auto marginal_error = [&](V& out) {  // |u (K v) - a|_1 of each lane's state (u, v): kv = K v
    const V zero = {};
    auto term = [&](int64_t i) {
      const V d = fmadd(u[i], kv[i], -A[i]);
      return A[i] > zero ? (d < zero ? -d : d) : zero;
    };
    V e0 = {}, e1 = {}, e2 = {}, e3 = {};  // four partial sums: the adds do not wait on each other
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) e0 += term(i), e1 += term(i + 1), e2 += term(i + 2), e3 += term(i + 3);
    for (; i < n; ++i) e0 += term(i);
    out = (e0 + e1) + (e2 + e3);
  };
  auto threshold = [&](int64_t p) {  // tol * mass of problem p (tol = 0: 0, the mass unread)
    return P.tol > 0 ? P.tol * static_cast<T>(mass_of(P.a + p * n, n)) : T(0);
  };
  // Problem p (or, p < 0, an empty lane: all zero) into lane l, begun at iteration begin: its
  // weights and tolerance threshold, and v = 1 on the support of b with init_v. (No u: the
  // first product writes it before anything reads it, as the exit test skips a lane with no
  // iteration behind it.)
  auto place = [&](int l, int64_t p, int64_t begin, bool init_v) {
    id[l] = p;
    start[l] = begin;
    load_lane<T>(l, p >= 0 ? P.a + p * n : nullptr, n, P.hi, A.data(), offa.data(),
                 static_cast<V*>(nullptr), T(0));
    load_lane<T>(l, p >= 0 ? P.b + p * m : nullptr, m, P.hi, Bw.data(), offb.data(),
                 init_v ? v.data() : nullptr, T(1));
    thr[l] = p >= 0 ? threshold(p) : ninf;
    watch[l] = 0;
  };
  auto activate = [&](int l) {  // lane l's problem joins the iterations
    watch[l] = P.fixed_stop ? -1 : 0;
    ++live;
    deadline = std::min(deadline, start[l] + P.max_iter);
  };
  auto load = [&](int l) {  // the next problem into lane l (or an empty lane: all zero)
    for (;;) {
      const int64_t p = next < p1 ? next++ : -1;
      place(l, p, iter, true);
      bool in_range = true;
      if (p >= 0 && P.g_init != nullptr)
        for (int64_t j = 0; j < m; ++j) {
          const T x = std::exp(P.g_init[p * m + j] / P.eps);
          in_range &= !(Bw[j][l] > 0) || (x >= P.lo && x <= P.hi);
          v[j][l] = Bw[j][l] > 0 ? x : T(0);
        }
      if (p < 0) return;
      if (in_range) {
        activate(l);
        ++young;
        return;
      }
      log_solve(p, 0, P.g_init + p * m);  // warm start out of the scalings' range
    }
  };
  auto vacate = [&](int l) {
    id[l] = -1;
    thr[l] = ninf;
    watch[l] = 0;
    --live, ++holes;
  };
  // Lane l's problem done with its state (u, v): f, g hold the scalings until finish_problem;
  // n_iter = met if the tolerance test passes on its marginal error (computed here, with its
  // row sums), else otherwise.
  auto finish = [&](int l, int64_t met, int64_t otherwise) {
    const int64_t p = id[l];
    const T e = finish_lane<T>(l, u.data(), kv.data(), n, P.f + p * n,
                               P.rows != nullptr ? P.rows + p * n : nullptr, P.a + p * n);
    finish_lane<T>(l, v.data(), ktu.data(), m, P.g + p * m,
                   P.cols != nullptr ? P.cols + p * m : nullptr, static_cast<const T*>(nullptr));
    P.n_iter[p] = P.tol > 0 && e <= thr[l] ? met : otherwise;
    P.err[p] = e;
    P.absorbed[p] = 0;
    vacate(l);
  };
  auto absorb = [&](int l) {  // continue in the log domain from the (in-range) v of lane l
    const int64_t p = id[l];
    for (int64_t j = 0; j < m; ++j)
      g_init[j] = Bw[j][l] > 0 ? P.eps * std::log(v[j][l]) : T(0);
    log_solve(p, iter - start[l], g_init.data());
    vacate(l);
  };
  for (int l = 0; l < W; ++l) {
    if (l >= static_cast<int>(carried.size())) {
      load(l);
      continue;
    }
    const Carried<T>& c = carried[l];
    place(l, c.p, iter - c.done, false);
    for (int64_t i = 0; i < n; ++i) u[i][l] = c.u[i];
    for (int64_t j = 0; j < m; ++j) v[j][l] = c.v[j], ktu[j][l] = c.ktu[j];
    activate(l);
  }
  M bad;
  while (live) {
    // K v and u_new = a / K v (the absorptions wait for the exit test, which reads u and K v)
    const bool u_bad = product_divide<T>(P.E, v.data(), n, m, A.data(), offa.data(), P.lo,
                                         P.hi, kv.data(), u_new.data(), &bad);
    const bool at_deadline = iter >= deadline;
    if (at_deadline || (P.tol > 0 && live > young)) {
      // the errors of the state (u, v), a by-product of K v, for the tolerance test (tol = 0:
      // none; finish computes a finishing lane's own, the same bits)
      V e = {};
      if (P.tol > 0) marginal_error(e);
      if (at_deadline || (P.tol > 0 && any(e <= thr))) {
        deadline = std::numeric_limits<int64_t>::max();
        for (int l = 0; l < W; ++l) {
          if (id[l] < 0) continue;
          const int64_t it = iter - start[l];
          if ((it > 0 && P.tol > 0 && e[l] <= thr[l]) || it == P.max_iter)
            finish(l, it, P.max_iter);
          else
            deadline = std::min(deadline, start[l] + P.max_iter);
        }
      }
    }
    if (u_bad)
      for (int l = 0; l < W; ++l)
        if (bad[l] != 0 && id[l] >= 0) absorb(l);  // v is in range
    std::swap(u, u_new);
    // K^T u and v_new = b / K^T u
    if (product_divide<T>(P.ET, u.data(), m, n, Bw.data(), offb.data(), P.lo, P.hi, ktu.data(),
                          v_new.data(), &bad))
      for (int l = 0; l < W; ++l)
        if (bad[l] != 0 && id[l] >= 0) absorb(l);  // v (old) is in range
    if (any(watch)) {  // lanes whose v did not change: exact fixed points, finished now
      M moved = {};
      for (int64_t j = 0; j < m; ++j) moved |= v_new[j] != v[j];
      if (any(watch & ~moved)) {
        // The state after this iteration, (u, v_new) = (u, v), is that of every later one, and
        // kv = K v and ktu = K^T u are its products: finish with the outputs (err, n_iter
        // included) the next exit test, or the one at max_iter, would give.
        for (int l = 0; l < W; ++l)
          if (watch[l] != 0 && moved[l] == 0) finish(l, iter + 1 - start[l], P.max_iter);
      }
    }
    std::swap(v, v_new);
    ++iter;
    young = 0;
    if (holes) {  // refill the lanes emptied this iteration (all zero when no problem is left)
      holes = 0;
      for (int l = 0; l < W; ++l)
        if (id[l] < 0) load(l);
    }
    if constexpr (Bytes > 16) {
      if (next >= p1 && live > 0 && live <= W / 2) {  // the tail: half the width
        std::vector<Carried<T>> carry;
        for (int l = 0; l < W; ++l) {
          if (id[l] < 0) continue;
          Carried<T> c{id[l], iter - start[l], std::vector<T>(n), std::vector<T>(m),
                       std::vector<T>(m)};
          for (int64_t i = 0; i < n; ++i) c.u[i] = u[i][l];
          for (int64_t j = 0; j < m; ++j) c.v[j] = v[j][l], c.ktu[j] = ktu[j][l];
          carry.push_back(std::move(c));
        }
        solve_range<T, Bytes / 2>(P, p1, p1, carry);
        return;
      }
    }
  }
}

// <P, C> of problems [p0, p0 + count) that finished in the scaling form, from the scalings
// finish() left in f and g: u . (EC v) with P = diag(u) K diag(v), EC = K C, one block
// product for W problems.
template <typename T>
void transport_block(const T* a, const T* b, const T* EC, int64_t n, int64_t m, const T* f,
                     const T* g, int64_t count, T* transport) {
  typedef typename Lanes<T>::V V;
  std::vector<V> U(n), Vs(m), ECV(n);
  for (int64_t l = 0; l < count; ++l) {
    to_lane<T>(l, a + l * n, f + l * n, n, U.data());
    to_lane<T>(l, b + l * m, g + l * m, m, Vs.data());
  }
  block_product(EC, Vs.data(), n, m, ECV.data());
  V tc = {};
  for (int64_t i = 0; i < n; ++i) tc += U[i] * ECV[i];
  for (int64_t l = 0; l < count; ++l) transport[l] = tc[l];
}

// One problem's rows copied into buffers of a whole number of SIMD vectors, padded with
// neutral values, so the loops below vectorise with no scalar remainder (rows of 78 and 22
// entries would leave 14 and 6 of every row to scalar logs: most of the time of these passes).
template <typename T>
struct Padded {
  typedef typename Lanes<T>::V V;
  int64_t np, mp;        // n, m rounded up to whole vectors
  std::vector<V> store;  // a, f, r (np each), b, g, c (mp each)
  T *a, *f, *r, *b, *g, *c;
  Padded(int64_t n, int64_t m)
      : np((n + Lanes<T>::W - 1) / Lanes<T>::W * Lanes<T>::W),
        mp((m + Lanes<T>::W - 1) / Lanes<T>::W * Lanes<T>::W),
        store(3 * (np + mp) / Lanes<T>::W) {
    a = reinterpret_cast<T*>(store.data());
    f = a + np, r = f + np, b = r + np, g = b + mp, c = g + mp;
  }
};

// dst[0, len) = src, dst[len, padded) = pad.
template <typename T>
inline void copy_padded(T* dst, const T* src, int64_t len, int64_t padded, T pad) {
  std::memcpy(dst, src, len * sizeof(T));
  std::fill(dst + len, dst + padded, pad);
}

// The objective <P, C> + eps KL(P || a b^T) = sum_i r_i (f_i - eps log a_i)
// + sum_j c_j (g_j - eps log b_j) - eps sum r + eps |a| |b| of one problem from its potentials
// and weights (padded copies in s.f, s.g, s.a, s.b; off the supports, a = 0 and b = 0, every
// term is masked out, and the padding is such an entry) and P's row and column sums r, c.
template <typename T>
T objective_of(const T* rows, const T* cols, int64_t n, int64_t m, T eps, Padded<T>& s) {
  const int64_t np = s.np, mp = s.mp;
  const T *__restrict pa = s.a, *__restrict pb = s.b, *__restrict pf = s.f, *__restrict pg = s.g;
  T *__restrict pr = s.r, *__restrict pc = s.c;
  copy_padded(pr, rows, n, np, T(0));
  copy_padded(pc, cols, m, mp, T(0));
  T obj = 0, total = 0, ma = 0, mb = 0;
  // (both branches evaluated and simd sums: the loops vectorise)
#pragma omp simd aligned(pa, pf, pr : 64) reduction(+ : obj, total, ma)
  for (int64_t i = 0; i < np; ++i) {
    const T la = pf[i] - eps * vlog(pa[i]);
    obj += pa[i] > 0 ? pr[i] * la : T(0);
    total += pr[i], ma += pa[i];
  }
#pragma omp simd aligned(pb, pg, pc : 64) reduction(+ : obj, mb)
  for (int64_t j = 0; j < mp; ++j) {
    const T lb = pg[j] - eps * vlog(pb[j]);
    obj += pb[j] > 0 ? pc[j] * lb : T(0);
    mb += pb[j];
  }
  return obj - eps * total + eps * ma * mb;
}

// The potentials (padded in s.f, s.g) centred on the supports of a and b (padded in s.a, s.b)
// into fc (n), gc (m): JTLN eq. 11's dual gradients.
template <typename T>
void centre(int64_t n, int64_t m, const Padded<T>& s, T* fc, T* gc) {
  const int64_t np = s.np, mp = s.mp;
  const T *__restrict pa = s.a, *__restrict pb = s.b, *__restrict pf = s.f, *__restrict pg = s.g;
  T sf = 0, kf = 0, sg = 0, kg = 0;
#pragma omp simd aligned(pa, pf : 64) reduction(+ : sf, kf)
  for (int64_t i = 0; i < np; ++i) sf += pa[i] > 0 ? pf[i] : T(0), kf += pa[i] > 0 ? T(1) : T(0);
#pragma omp simd aligned(pb, pg : 64) reduction(+ : sg, kg)
  for (int64_t j = 0; j < mp; ++j) sg += pb[j] > 0 ? pg[j] : T(0), kg += pb[j] > 0 ? T(1) : T(0);
  const T mf = sf / kf, mg = sg / kg;
  for (int64_t i = 0; i < n; ++i) fc[i] = pf[i] - mf;
  for (int64_t j = 0; j < m; ++j) gc[j] = pg[j] - mg;
}

// x[0, len) = eps log x + shift: potentials from scalings.
template <typename T>
void potentials(T* __restrict x, int64_t len, T eps, T shift) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) x[i] = eps * vlog(x[i]) + shift;
}

// The rest of one problem after its solve, on padded copies of its rows:
// - with ``scalings``: the potentials f = eps log u + cmin, g = eps log v from the scalings
//   finish() left in f and g (off the supports, 1 / (K v) and 1 / (K^T u): the c-transforms);
// - with ``objective``: objective_of, from P's row and column sums r, c;
// - with ``fc``: the centred potentials fc, gc (after the objective: r, c may be fc, gc).
template <typename T>
void finish_problem(const T* a, const T* b, T* f, T* g, int64_t n, int64_t m, T eps, T cmin,
                    bool scalings, const T* rows, const T* cols, T* objective, T* fc, T* gc,
                    Padded<T>& s) {
  const int64_t np = s.np, mp = s.mp;
  T *__restrict pf = s.f, *__restrict pg = s.g;
  copy_padded(pf, f, n, np, T(1));
  copy_padded(pg, g, m, mp, T(1));
  if (scalings) {  // (on the padded rows: whole vectors, no scalar remainder of logs)
    potentials(pf, np, eps, cmin);
    potentials(pg, mp, eps, T(0));
    std::memcpy(f, pf, n * sizeof(T));
    std::memcpy(g, pg, m * sizeof(T));
  }
  if (objective == nullptr && fc == nullptr) return;
  copy_padded(s.a, a, n, np, T(0));
  copy_padded(s.b, b, m, mp, T(0));
  if (objective != nullptr) *objective = objective_of(rows, cols, n, m, eps, s);
  if (fc != nullptr) centre(n, m, s, fc, gc);
}

}  // namespace

template <typename T>
void sinkhorn_block_cpu(const T* a, const T* b, const T* cost, int64_t B, int64_t n, int64_t m,
                        T eps, int64_t max_iter, T tol, T lo, T hi, const T* g_init,
                        bool fixed_stop, T* f, T* g, int64_t* n_iter, T* err, uint8_t* absorbed,
                        uint8_t* converged, T* transport, T* objective, T* fc, T* gc,
                        T* rows, T* cols, T* a_out, T* b_out, int threads) {
  // Deferred objective (rows given): P's row and column sums go to rows, cols and copies of a,
  // b to a_out, b_out, for sinkhorn_block_objective; else the sums pass through fc, gc.
  const bool defer = rows != nullptr;
  if (defer) {
    std::memcpy(a_out, a, B * n * sizeof(T));
    std::memcpy(b_out, b, B * m * sizeof(T));
  } else {
    rows = fc, cols = gc;
  }
  T cmin = cost[0];
  for (int64_t k = 0; k < n * m; ++k) cmin = std::min(cmin, cost[k]);
  std::vector<T> E(n * m), ET(m * n), EC(n * m);
  for (int64_t k = 0; k < n * m; ++k) {  // (vectorised exp; +inf costs give 0 below)
    const T x = vexp(-(cost[k] - cmin) / eps);
    E[k] = cost[k] < std::numeric_limits<T>::infinity() ? x : T(0);
    EC[k] = cost[k] < std::numeric_limits<T>::infinity() ? x * cost[k] : T(0);
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) ET[j * n + i] = E[i * m + j];
  const Problem<T> P{a, b, cost, E.data(), ET.data(), n, m, eps, cmin, max_iter, tol, lo, hi,
                     g_init, fixed_stop, f, g, n_iter, err, absorbed, rows, cols};
  constexpr int64_t W = Lanes<T>::W;
  // Contiguous ranges of whole blocks, about two per thread.
  const int64_t blocks = (B + W - 1) / W;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(blocks, threads > 1 ? 2 * threads : 1));
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c)
      solve_range(P, std::min(B, blocks * c / chunks * W), std::min(B, blocks * (c + 1) / chunks * W));
    // Per block of W problems: <P, C> from the scalings, the potentials, then the objective
    // and the centred potentials from P's row and column sums (kept at finish; in a block
    // holding an absorbed problem, which has potentials only, <P, C> and the sums come from
    // the potentials: values_direct).
    Padded<T> rows_of(n, m);
#pragma omp for schedule(static)
    for (int64_t k = 0; k < blocks; ++k) {
      const int64_t p0 = k * W, count = std::min<int64_t>(W, B - p0);
      bool scaled = true;
      for (int64_t p = p0; p < p0 + count; ++p) scaled &= !absorbed[p];
      if (transport != nullptr && scaled)
        transport_block(a + p0 * n, b + p0 * m, EC.data(), n, m, f + p0 * n, g + p0 * m, count,
                        transport + p0);
      // (values_direct needs the block's potentials first: the objective waits for them)
      const bool now = transport != nullptr && scaled;
      auto at = [](T* x, int64_t offset) { return x != nullptr ? x + offset : nullptr; };
      if (scaled) {  // the block's potentials in one pass over its rows, which are contiguous
        potentials(f + p0 * n, count * n, eps, cmin);
        potentials(g + p0 * m, count * m, eps, T(0));
      }
      for (int64_t p = p0; p < p0 + count; ++p)
        if ((!scaled && !absorbed[p]) || now)
          finish_problem(a + p * n, b + p * m, f + p * n, g + p * m, n, m, eps, cmin,
                         !scaled, at(rows, p * n), at(cols, p * m),
                         now && !defer ? objective + p : nullptr, now ? fc + p * n : nullptr,
                         now ? gc + p * m : nullptr, rows_of);
      if (transport != nullptr && !scaled) {
        values_direct(a + p0 * n, b + p0 * m, cost, n, m, eps, f + p0 * n, g + p0 * m, count,
                      transport + p0, rows + p0 * n, cols + p0 * m);
        for (int64_t p = p0; p < p0 + count; ++p)
          finish_problem(a + p * n, b + p * m, f + p * n, g + p * m, n, m, eps, cmin, false,
                         rows + p * n, cols + p * m, defer ? nullptr : objective + p,
                         fc + p * n, gc + p * m, rows_of);
      }
    }
    if (converged != nullptr) {
#pragma omp for schedule(static)
      for (int64_t p = 0; p < B; ++p) {
        // (tol = 0: err <= 0 whatever the mass)
        const T mass = tol > 0 ? static_cast<T>(mass_of(a + p * n, n)) : T(0);
        converged[p] = err[p] <= tol * mass;
      }
    }
  }
}

// The weights' value checks of sinkhorn(check_inputs=True) in one pass over a and b: every
// entry finite and >= 0, every problem's masses > 0 and equal within rtol (relative, in
// double). (Vectorised: flags of entries outside [0, max] (NaN and inf included) over all of
// a and b at once, & not && so that no branch stops the vectoriser, then each problem's masses
// in double, mass_of.)
template <typename T>
bool weights_valid(const T* a, const T* b, int64_t B, int64_t n, int64_t m, double rtol) {
  const T top = std::numeric_limits<T>::max();
  int outside = 0;
#pragma omp simd reduction(| : outside)
  for (int64_t k = 0; k < B * n; ++k) outside |= !((a[k] >= 0) & (a[k] <= top));
#pragma omp simd reduction(| : outside)
  for (int64_t k = 0; k < B * m; ++k) outside |= !((b[k] >= 0) & (b[k] <= top));
  bool ok = outside == 0;
  for (int64_t p = 0; ok && p < B; ++p) {
    const double ma = mass_of(a + p * n, n), mb = mass_of(b + p * m, m);
    ok = ma > 0 && mb > 0 && std::abs(ma - mb) <= rtol * std::max(ma, mb);
  }
  return ok;
}

// The value checks of sinkhorn(check_inputs=True) in one pass over a, b (weights_valid) and
// cost (every entry finite). Returns whether all hold; *span = max C - min C (the exponent
// range of K times eps) and *big = max |C| (for the eps underflow check), so no second pass
// over the cost is needed.
template <typename T>
bool sinkhorn_check(const T* a, const T* b, const T* cost, int64_t B, int64_t n, int64_t m,
                    int64_t cost_count, double rtol, double* span, double* big) {
  const T top = std::numeric_limits<T>::max();
  const bool ok = weights_valid(a, b, B, n, m, rtol);
  T lo = cost[0], hi = cost[0];
  int bad = 0;
#pragma omp simd reduction(min : lo) reduction(max : hi) reduction(| : bad)
  for (int64_t k = 0; k < cost_count; ++k) {
    bad |= !((cost[k] >= -top) & (cost[k] <= top));
    lo = std::min(lo, cost[k]);
    hi = std::max(hi, cost[k]);
  }
  const bool finite = bad == 0;
  *span = static_cast<double>(hi) - static_cast<double>(lo);
  *big = std::max(std::abs(static_cast<double>(lo)), std::abs(static_cast<double>(hi)));
  return ok && finite;
}

template <typename T>
void sinkhorn_block_objective(const T* a, const T* b, const T* f, const T* g, const T* rows,
                              const T* cols, int64_t B, int64_t n, int64_t m, T eps,
                              T* objective) {
  Padded<T> s(n, m);
  for (int64_t p = 0; p < B; ++p) {
    copy_padded(s.f, f + p * n, n, s.np, T(0));
    copy_padded(s.g, g + p * m, m, s.mp, T(0));
    copy_padded(s.a, a + p * n, n, s.np, T(0));
    copy_padded(s.b, b + p * m, m, s.mp, T(0));
    objective[p] = objective_of(rows + p * n, cols + p * m, n, m, eps, s);
  }
}

#define PYTRANSFER_BLOCK(T)                                                                    \
  template void sinkhorn_block_cpu<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, \
                                      T, int64_t, T, T, T, const T*, bool, T*, T*, int64_t*,   \
                                      T*, uint8_t*, uint8_t*, T*, T*, T*, T*, T*, T*, T*, T*,  \
                                      int);                                                    \
  template void sinkhorn_block_objective<T>(const T*, const T*, const T*, const T*, const T*,  \
                                            const T*, int64_t, int64_t, int64_t, T, T*);
PYTRANSFER_BLOCK(float)
PYTRANSFER_BLOCK(double)
#undef PYTRANSFER_BLOCK

}  // namespace pytransfer

// ------------------------------------------------------------------ Python bindings
#include <stdexcept>
#include <string>

#include "bindings.h"

PYTRANSFER_BINDINGS(bind_sinkhorn_block) {
  using pytransfer::ptr;
  m.def(
      "sinkhorn_block",
      [](const std::string& dtype, std::uintptr_t a, std::uintptr_t b, std::uintptr_t cost,
         int64_t B, int64_t n, int64_t m_, double eps, int64_t max_iter, double tol, double lo,
         double hi, std::uintptr_t g_init, bool fixed_stop, double check_rtol, std::uintptr_t f,
         std::uintptr_t g, std::uintptr_t n_iter, std::uintptr_t err,
         std::uintptr_t absorbed, std::uintptr_t converged, std::uintptr_t transport,
         std::uintptr_t objective, std::uintptr_t rows, std::uintptr_t cols,
         std::uintptr_t a_out, std::uintptr_t b_out, std::uintptr_t fc, std::uintptr_t gc,
         int threads) {
        if (dtype != "float32" && dtype != "float64")
          throw std::invalid_argument("sinkhorn_block: dtype must be float32 or float64");
        if (!(lo > 0 && lo <= hi))  // (finish_lane reads the support off x > 0)
          throw std::invalid_argument("sinkhorn_block: the scalings' range needs 0 < lo <= hi");
        pybind11::gil_scoped_release nogil;
        // check_rtol >= 0: first a and b's value checks (weights_valid); if one fails, nothing
        // is solved or written and the call returns false
        if (check_rtol >= 0 &&
            !(dtype == "float32"
                  ? pytransfer::weights_valid<float>(ptr<const float>(a), ptr<const float>(b), B,
                                                     n, m_, check_rtol)
                  : pytransfer::weights_valid<double>(ptr<const double>(a),
                                                      ptr<const double>(b), B, n, m_,
                                                      check_rtol)))
          return false;
        if (dtype == "float32")
          pytransfer::sinkhorn_block_cpu<float>(
              ptr<const float>(a), ptr<const float>(b), ptr<const float>(cost), B, n, m_,
              static_cast<float>(eps), max_iter, static_cast<float>(tol), static_cast<float>(lo),
              static_cast<float>(hi), ptr<const float>(g_init), fixed_stop, ptr<float>(f), ptr<float>(g), ptr<int64_t>(n_iter),
              ptr<float>(err), ptr<uint8_t>(absorbed), ptr<uint8_t>(converged),
              ptr<float>(transport), ptr<float>(objective), ptr<float>(fc), ptr<float>(gc),
              ptr<float>(rows), ptr<float>(cols), ptr<float>(a_out), ptr<float>(b_out), threads);
        else
          pytransfer::sinkhorn_block_cpu<double>(
              ptr<const double>(a), ptr<const double>(b), ptr<const double>(cost), B, n, m_, eps,
              max_iter, tol, lo, hi, ptr<const double>(g_init), fixed_stop, ptr<double>(f), ptr<double>(g), ptr<int64_t>(n_iter),
              ptr<double>(err), ptr<uint8_t>(absorbed), ptr<uint8_t>(converged),
              ptr<double>(transport), ptr<double>(objective), ptr<double>(fc), ptr<double>(gc),
              ptr<double>(rows), ptr<double>(cols), ptr<double>(a_out), ptr<double>(b_out),
              threads);
        return true;
      },
      "Scaling-form Sinkhorn over blocks of problems sharing K, with values "
      "(see csrc/sinkhorn_cpu.h; fc, gc last: the dual gradients may lie in an allocation of "
      "their own); false: check_rtol >= 0 and a or b failed its value checks");
  m.def(
      "sinkhorn_block_objective",
      [](const std::string& dtype, std::uintptr_t a, std::uintptr_t b, std::uintptr_t f,
         std::uintptr_t g, std::uintptr_t rows, std::uintptr_t cols, int64_t B, int64_t n,
         int64_t m_, double eps, std::uintptr_t objective) {
        if (dtype != "float32" && dtype != "float64")
          throw std::invalid_argument(
              "sinkhorn_block_objective: dtype must be float32 or float64");
        pybind11::gil_scoped_release nogil;
        if (dtype == "float32")
          pytransfer::sinkhorn_block_objective<float>(
              ptr<const float>(a), ptr<const float>(b), ptr<const float>(f), ptr<const float>(g),
              ptr<const float>(rows), ptr<const float>(cols), B, n, m_, static_cast<float>(eps),
              ptr<float>(objective));
        else
          pytransfer::sinkhorn_block_objective<double>(
              ptr<const double>(a), ptr<const double>(b), ptr<const double>(f),
              ptr<const double>(g), ptr<const double>(rows), ptr<const double>(cols), B, n, m_,
              eps, ptr<double>(objective));
      },
      "The objectives of a deferred sinkhorn_block call (see csrc/sinkhorn_cpu.h)");
  m.def(
      "sinkhorn_check",
      [](const std::string& dtype, std::uintptr_t a, std::uintptr_t b, std::uintptr_t cost,
         int64_t B, int64_t n, int64_t m_, int64_t cost_count, double rtol) {
        if (dtype != "float32" && dtype != "float64")
          throw std::invalid_argument("sinkhorn_check: dtype must be float32 or float64");
        double span = 0, big = 0;
        bool ok;
        {
          pybind11::gil_scoped_release nogil;
          ok = dtype == "float32"
                   ? pytransfer::sinkhorn_check<float>(ptr<const float>(a), ptr<const float>(b),
                                                       ptr<const float>(cost), B, n, m_,
                                                       cost_count, rtol, &span, &big)
                   : pytransfer::sinkhorn_check<double>(ptr<const double>(a),
                                                        ptr<const double>(b),
                                                        ptr<const double>(cost), B, n, m_,
                                                        cost_count, rtol, &span, &big);
        }
        return pybind11::make_tuple(ok, span, big);
      },
      "One-pass value checks of sinkhorn's inputs: (all valid, max C - min C, max |C|)");
}
