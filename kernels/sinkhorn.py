"""Batched log-domain Sinkhorn in Triton: one program per problem, the whole (n, m) problem in
registers (padded to powers of two), per-problem early exit.

Same iteration, stopping rule and outputs as ``pytransfer.ot.reference.sinkhorn_log_reference``.
Inputs of any float dtype are upcast on load; accumulation is float32 (float64 for float64
inputs). Exponent arguments are clamped at -80 (float32) so exp never goes subnormal.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _lse_rows(G, K, col_ok, floor):
    """LSE_j(G_j + K_ij) over supported columns, for every row i."""
    x = tl.where(col_ok[None, :], G[None, :] + K, float("-inf"))
    mx = tl.max(x, 1)
    e = tl.where(col_ok[None, :], tl.exp(tl.maximum(x - mx[:, None], floor)), 0.0)
    return mx + tl.log(tl.sum(e, 1))


@triton.jit
def _lse_cols(F, K, row_ok, floor):
    """LSE_i(F_i + K_ij) over supported rows, for every column j."""
    x = tl.where(row_ok[:, None], F[:, None] + K, float("-inf"))
    mx = tl.max(x, 0)
    e = tl.where(row_ok[:, None], tl.exp(tl.maximum(x - mx[None, :], floor)), 0.0)
    return mx + tl.log(tl.sum(e, 0))


@triton.jit
def _sinkhorn_log_kernel(
    a_ptr, b_ptr, c_ptr, g0_ptr, f_ptr, g_ptr, it_ptr, err_ptr,
    n, m, cost_stride, eps, max_iter, tol, floor,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, ACC: tl.constexpr, WARM: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_M)
    a = tl.load(a_ptr + p * n + rows, mask=rows < n, other=0.0).to(ACC)
    b = tl.load(b_ptr + p * m + cols, mask=cols < m, other=0.0).to(ACC)
    cmask = (rows[:, None] < n) & (cols[None, :] < m)
    C = tl.load(c_ptr + p * cost_stride + rows[:, None] * m + cols[None, :], mask=cmask, other=0.0)
    K = -C.to(ACC) / eps
    row_ok = a > 0
    col_ok = b > 0
    log_a = tl.log(tl.where(row_ok, a, 1.0))
    log_b = tl.log(tl.where(col_ok, b, 1.0))
    thr = tl.where(tol > 0, tol * tl.sum(a, 0), -1.0)  # tol = 0: never stop early

    # Iteration 1, then the error of its state (a by-product of the next row pass).
    if WARM:  # warm start g0 (cost units), e.g. handed over by the scaling form
        G = tl.load(g0_ptr + p * m + cols, mask=cols < m, other=0.0).to(ACC) / eps
    else:
        G = tl.zeros([BLOCK_M], dtype=ACC)
    F = log_a - _lse_rows(G, K, col_ok, floor)
    G = log_b - _lse_cols(F, K, row_ok, floor)
    lse_r = _lse_rows(G, K, col_ok, floor)
    err = tl.sum(tl.where(row_ok, tl.abs(tl.exp(F + lse_r) - a), 0.0), 0)
    it = 1
    while (it < max_iter) & (err > thr):
        F = log_a - lse_r
        G = log_b - _lse_cols(F, K, row_ok, floor)
        lse_r = _lse_rows(G, K, col_ok, floor)
        err = tl.sum(tl.where(row_ok, tl.abs(tl.exp(F + lse_r) - a), 0.0), 0)
        it += 1
    F = tl.where(row_ok, F, -lse_r)  # zero-mass rows: c-transform of the final G
    tl.store(f_ptr + p * n + rows, eps * F, mask=rows < n)
    tl.store(g_ptr + p * m + cols, eps * G, mask=cols < m)
    tl.store(it_ptr + p, it)
    tl.store(err_ptr + p, err)


def sinkhorn_log_triton(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float, max_iter: int, tol: float,
    g_init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch one program per problem; a (B, n), b (B, m), cost (B|1, n, m), contiguous."""
    B, n = a.shape
    m = b.shape[1]
    out = torch.float64 if a.dtype == torch.float64 else torch.float32
    acc = tl.float64 if out == torch.float64 else tl.float32
    f = torch.empty((B, n), dtype=out, device=a.device)
    g = torch.empty((B, m), dtype=out, device=a.device)
    n_iter = torch.empty(B, dtype=torch.int64, device=a.device)
    err = torch.empty(B, dtype=out, device=a.device)
    floor = -700.0 if out == torch.float64 else -80.0
    _sinkhorn_log_kernel[(B,)](
        a, b, cost, g if g_init is None else g_init, f, g, n_iter, err,
        n, m, 0 if cost.shape[0] == 1 else n * m, float(eps), int(max_iter), float(tol), floor,
        BLOCK_N=triton.next_power_of_2(n), BLOCK_M=triton.next_power_of_2(m), ACC=acc,
        WARM=g_init is not None,
    )
    return f, g, n_iter, err
