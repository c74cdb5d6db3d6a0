// Batched log-domain Sinkhorn, CPU kernel. Raw pointers, no torch.
#pragma once
#include <cstdint>

namespace pytransfer {

// Solves B independent entropic OT problems
//   a (B, n), b (B, m) >= 0 with equal mass per problem; cost (B or 1, n, m), contiguous.
// Writes potentials f (B, n), g (B, m) in cost units with plan = exp((f_i + g_j - C_ij)/eps)
// (zero-mass entries carry the finite c-transform value and get no mass), the number of full
// iterations n_iter (B,) and the final marginal error ||plan 1 - a||_1 (B,).
// A problem stops on its own once its error is <= tol * mass (tol > 0), else at max_iter.
// g_init (B, m), optional (nullptr: g = 0): warm start, e.g. a problem handed over by the
// scaling form after absorbing its scalings. `threads`: OpenMP threads (the caller passes
// torch.get_num_threads(), so the kernel never oversubscribes what torch was told to use).
template <typename T>
void sinkhorn_log_cpu(const T* a, const T* b, const T* cost, int64_t B, int64_t n, int64_t m,
                      bool shared_cost, T eps, int64_t max_iter, T tol, const T* g_init, T* f,
                      T* g, int64_t* n_iter, T* err, int threads);

// Scaling form for a shared cost (n, m) over blocks of W problems sharing
// K = exp(-(C - min C)/eps) (issues 4, 13; csrc/sinkhorn_block_cpu.cpp): same outputs and
// iterates as sinkhorn_log_cpu, no exp in the loop. A problem whose scalings leave [lo, hi]
// (0 < lo <= hi) continues in the log domain from its last in-range potentials; absorbed[p]
// says so; converged[p] = err[p] <= tol * mass (unless nullptr). Plus the values
// transport[p] = <P, C>, objective[p] = <P, C> + eps KL(P || a b^T) and the potentials
// centred on the supports fc (B, n), gc (B, m) (the dual gradients), unless transport is nullptr.
// g_init (B, m) or nullptr: warm start v = exp(g/eps); a problem whose v is outside [lo, hi]
// starts in the log domain from g_init. fixed_stop: a problem whose iterate is an exact
// floating-point fixed point finishes there with the outputs of running on (bit for bit).
// Deferred objective: with rows (B, n), cols (B, m), a_out (B, n), b_out (B, m) (else all
// nullptr), objective is not computed; P's row and column sums and copies of a and b are kept
// there, from which sinkhorn_block_objective computes it later, bit for bit as it would have.
template <typename T>
void sinkhorn_block_cpu(const T* a, const T* b, const T* cost, int64_t B, int64_t n, int64_t m,
                        T eps, int64_t max_iter, T tol, T lo, T hi, const T* g_init,
                        bool fixed_stop, T* f, T* g, int64_t* n_iter, T* err, uint8_t* absorbed,
                        uint8_t* converged, T* transport, T* objective, T* fc, T* gc, T* rows,
                        T* cols, T* a_out, T* b_out, int threads);

// objective[p] of a sinkhorn_block_cpu call that deferred it, from what it kept: a, b (its
// copies), f, g and P's row and column sums rows, cols.
template <typename T>
void sinkhorn_block_objective(const T* a, const T* b, const T* f, const T* g, const T* rows,
                              const T* cols, int64_t B, int64_t n, int64_t m, T eps,
                              T* objective);

}  // namespace pytransfer
