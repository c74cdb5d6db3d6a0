// MK-MMD CPU kernels. Raw pointers to contiguous row-major buffers.
//
// Kernels k_u(a, b) = exp(-gam[u] ||a - b||^2), combined with weights w[u]. Kernels are
// evaluated in the order given; where sq[u] != 0, gam[u] == 2 gam[u-1] and k_u is the square
// of k_{u-1} (one exp serves a run of power-of-two bandwidths; the caller bounds the run
// length so the squared rounding error stays a few ulp).
#pragma once
#include <cstdint>

namespace pytransfer {

// Linear-time quad-tuple estimator, P tuples z_p = (xs[2p], xs[2p+1], xt[2p], xt[2p+1]).
// Adds sum_p g_u(z_p) to h[u] (float64, U) and writes per tuple the four derivative
// coefficients coef[p, c] = sum_u w_u (-gam_u) e_u(D_c) for the distances
// D = (|s - s'|^2, |t - t'|^2, |s - t'|^2, |s' - t|^2): all the backward needs.
template <typename T>
void mmd_linear_fwd(const T* xs, const T* xt, int64_t P, int64_t d, const T* gam, const T* w,
                    const int32_t* sq, int64_t U, double* h, T* coef, int threads);

// Gradients of alpha * sum_p g(z_p) w.r.t. the 2P rows of xs and xt, from coef.
template <typename T>
void mmd_linear_bwd(const T* xs, const T* xt, const T* coef, int64_t P, int64_t d, T alpha,
                    T* gxs, T* gxt, int threads);

// One row tile of the quadratic estimator over the pooled X = [xs; xt] (N rows, the first ns
// from xs). Row i of the tile is global row row0 + i; G (R, N) holds the Gram block
// X[rows] X^T, rn (R) and cn (N) the squared row norms. Pair weights W_ij (i != j): wss for
// two source rows, wtt for two target rows, wst across. backward = false: adds
// sum_ij W_ij e_u(D_ij) to h[u]. backward = true: overwrites G with W_ij phi'(D_ij),
// phi' = -sum_u w_u gam_u e_u (zero on the diagonal).
template <typename T>
void mmd_tile(T* G, const T* rn, const T* cn, int64_t R, int64_t N, int64_t row0, int64_t ns,
              const T* gam, const T* w, const int32_t* sq, int64_t U, T wss, T wtt, T wst,
              bool backward, double* h, int threads);

// Bandwidth moments of x (N, d) about a shift row: colsum[k] += sum_i (x_ik - shift_k),
// *sq += sum_ik (x_ik - shift_k)^2, float64 accumulators, one pass.
template <typename T>
void mmd_moments(const T* x, int64_t N, int64_t d, const T* shift, double* colsum, double* sq,
                 int threads);

}  // namespace pytransfer
