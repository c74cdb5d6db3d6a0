"""Scaling-form Sinkhorn in Triton (issue 4): each program owns BLOCK_B problems sharing
K = exp(-(C - min C)/eps); an iteration is two ``tl.dot`` block products, u = a / (v K^T),
v = b / (u K), with per-problem freezing once a problem converges (its scalings stop changing,
so its products stay its own). Same iterates and stopping rule as
``pytransfer.ot.scaling.sinkhorn_scaling``; problems whose scalings leave the safe range are
flagged and re-solved by the host in the log domain. Products use IEEE fp32 (no TF32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _sinkhorn_scaling_kernel(
    a_ptr, b_ptr, k_ptr, f_ptr, g_ptr, it_ptr, err_ptr, bad_ptr,
    B, n, m, cmin, eps, max_iter, tol, lo, hi,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, ACC: tl.constexpr,
):
    probs = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_M)
    pb = probs < B
    am = pb[:, None] & (rows[None, :] < n)
    bm = pb[:, None] & (cols[None, :] < m)
    A = tl.load(a_ptr + probs[:, None] * n + rows[None, :], mask=am, other=0.0).to(ACC)
    Bw = tl.load(b_ptr + probs[:, None] * m + cols[None, :], mask=bm, other=0.0).to(ACC)
    km = (rows[:, None] < n) & (cols[None, :] < m)
    K = tl.load(k_ptr + rows[:, None] * m + cols[None, :], mask=km, other=0.0).to(ACC)
    Kt = tl.trans(K)
    a_ok = A > 0
    b_ok = Bw > 0
    thr = tl.where(tol > 0, tol * tl.sum(A, 1), -1.0)

    V = tl.where(b_ok, 1.0, 0.0).to(ACC)
    KV = tl.dot(V, Kt, input_precision="ieee")
    U = tl.where(a_ok, A / tl.where(a_ok, KV, 1.0), 0.0)
    KtU = tl.dot(U, K, input_precision="ieee")
    V = tl.where(b_ok, Bw / tl.where(b_ok, KtU, 1.0), 0.0)
    KV = tl.dot(V, Kt, input_precision="ieee")
    err = tl.sum(tl.where(a_ok, tl.abs(U * KV - A), 0.0), 1)
    n_it = tl.where(pb, 1, 0)
    upd = pb & (err > thr) & (max_iter > 1)
    while tl.max(upd.to(tl.int32), 0) > 0:
        U = tl.where(upd[:, None] & a_ok, A / tl.where(a_ok, KV, 1.0), U)
        KtU = tl.dot(U, K, input_precision="ieee")
        V = tl.where(upd[:, None] & b_ok, Bw / tl.where(b_ok, KtU, 1.0), V)
        KV = tl.dot(V, Kt, input_precision="ieee")
        e = tl.sum(tl.where(a_ok, tl.abs(U * KV - A), 0.0), 1)
        err = tl.where(upd, e, err)
        n_it = tl.where(upd, n_it + 1, n_it)
        upd = upd & (err > thr) & (n_it < max_iter)

    bad_u = tl.max(tl.where(a_ok & ~((U >= lo) & (U <= hi)), 1, 0), 1)
    bad_v = tl.max(tl.where(b_ok & ~((V >= lo) & (V <= hi)), 1, 0), 1)
    # zero-mass entries: c-transforms -eps log(K v), -eps log(K^T u) (padding: log 1)
    F = tl.where(a_ok, tl.log(tl.where(a_ok, U, 1.0)), -tl.log(tl.where(am, KV, 1.0)))
    G = tl.where(b_ok, tl.log(tl.where(b_ok, V, 1.0)), -tl.log(tl.where(bm, KtU, 1.0)))
    F = eps * F + cmin
    G = eps * G
    tl.store(f_ptr + probs[:, None] * n + rows[None, :], F, mask=am)
    tl.store(g_ptr + probs[:, None] * m + cols[None, :], G, mask=bm)
    tl.store(it_ptr + probs, n_it, mask=pb)
    tl.store(err_ptr + probs, err, mask=pb)
    tl.store(bad_ptr + probs, (bad_u + bad_v) > 0, mask=pb)


def sinkhorn_scaling_triton(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float, max_iter: int, tol: float,
    lo: float, hi: float, block_b: int = 16,
) -> tuple[torch.Tensor, ...]:
    """(f, g, n_iter, err, bad) for a (B, n), b (B, m) and a shared cost (1, n, m)."""
    B, n = a.shape
    m = b.shape[1]
    out = torch.float64 if a.dtype == torch.float64 else torch.float32
    C = cost[0].to(out)
    cmin = C.min()
    K = torch.exp(-(C - cmin) / eps).contiguous()
    f = torch.empty((B, n), dtype=out, device=a.device)
    g = torch.empty((B, m), dtype=out, device=a.device)
    n_iter = torch.empty(B, dtype=torch.int64, device=a.device)
    err = torch.empty(B, dtype=out, device=a.device)
    bad = torch.empty(B, dtype=torch.bool, device=a.device)
    _sinkhorn_scaling_kernel[(triton.cdiv(B, block_b),)](
        a, b, K, f, g, n_iter, err, bad,
        B, n, m, float(cmin), float(eps), int(max_iter), float(tol), lo, hi,
        BLOCK_B=block_b, BLOCK_N=max(16, triton.next_power_of_2(n)),
        BLOCK_M=max(16, triton.next_power_of_2(m)),
        ACC=tl.float64 if out == torch.float64 else tl.float32,
    )
    return f, g, n_iter, err, bad
