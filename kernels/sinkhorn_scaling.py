"""Scaling-form Sinkhorn in Triton (issue 4): each program owns BLOCK_B problems sharing
K = exp(-(C - min C)/eps); an iteration is two ``tl.dot`` block products, u = a / (v K^T),
v = b / (u K), with per-problem freezing once a problem converges (its scalings stop changing,
so its products stay its own). Same iterates and stopping rule as
``pytransfer.ot.scaling.sinkhorn_scaling``; a problem whose scalings would leave the safe range
stops there, flagged, and the host continues it in the log domain from its last in-range
potentials (warm start: its iteration count matches the CPU's). Products use IEEE fp32 (no TF32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _sinkhorn_scaling_kernel(
    a_ptr, b_ptr, k_ptr, v0_ptr, f_ptr, g_ptr, it_ptr, err_ptr, bad_ptr,
    B, n, m, cmin, eps, max_iter, tol, lo, hi,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, ACC: tl.constexpr,
    WARM: tl.constexpr,
):
    probs = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)  # int64 offsets
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

    # A problem whose new u or v leaves [lo, hi] stops before that update (flagged ``bad``): it
    # keeps its last in-range v and the count of completed iterations, and the host continues
    # it in the log domain from g = eps log v (absorption, as on the CPU).
    if WARM:  # warm start: initial scalings v0 = exp(g/eps), in range (checked by the host)
        V = tl.load(v0_ptr + probs[:, None] * m + cols[None, :], mask=bm, other=0.0).to(ACC)
    else:
        V = tl.where(b_ok, 1.0, 0.0).to(ACC)
    U = tl.zeros([BLOCK_B, BLOCK_N], dtype=ACC)
    KV = tl.dot(V, Kt, input_precision="ieee")
    KtU = tl.zeros([BLOCK_B, BLOCK_M], dtype=ACC)
    err = tl.zeros([BLOCK_B], dtype=ACC)
    n_it = tl.zeros([BLOCK_B], dtype=tl.int32)
    bad = n_it > 0
    upd = pb
    while tl.max(upd.to(tl.int32), 0) > 0:
        Un = tl.where(a_ok, A / tl.where(a_ok, KV, 1.0), 0.0)
        out_u = tl.max(tl.where(a_ok & ~((Un >= lo) & (Un <= hi)), 1, 0), 1) > 0
        bad = bad | (upd & out_u)
        upd = upd & ~out_u
        U = tl.where(upd[:, None], Un, U)
        KtUn = tl.dot(U, K, input_precision="ieee")
        Vn = tl.where(b_ok, Bw / tl.where(b_ok, KtUn, 1.0), 0.0)
        out_v = tl.max(tl.where(b_ok & ~((Vn >= lo) & (Vn <= hi)), 1, 0), 1) > 0
        bad = bad | (upd & out_v)
        upd = upd & ~out_v
        V = tl.where(upd[:, None], Vn, V)
        KtU = tl.where(upd[:, None], KtUn, KtU)
        KV = tl.dot(V, Kt, input_precision="ieee")
        e = tl.sum(tl.where(a_ok, tl.abs(U * KV - A), 0.0), 1)
        err = tl.where(upd, e, err)
        n_it = tl.where(upd, n_it + 1, n_it)
        upd = upd & (err > thr) & (n_it < max_iter)

    # zero-mass entries: c-transforms -eps log(K v), -eps log(K^T u) (padding: log 1)
    F = tl.where(a_ok, tl.log(tl.where(a_ok, U, 1.0)), -tl.log(tl.where(am, KV, 1.0)))
    G = tl.where(b_ok, tl.log(tl.where(b_ok, V, 1.0)), -tl.log(tl.where(bm, KtU, 1.0)))
    F = eps * F + cmin
    G = eps * G
    tl.store(f_ptr + probs[:, None] * n + rows[None, :], F, mask=am)
    tl.store(g_ptr + probs[:, None] * m + cols[None, :], G, mask=bm)
    tl.store(it_ptr + probs, n_it, mask=pb)
    tl.store(err_ptr + probs, err, mask=pb)
    tl.store(bad_ptr + probs, bad, mask=pb)


def launch_shape(B: int, n: int, m: int, block_b: int = 16) -> tuple[int, int, int, int]:
    """(grid, BLOCK_B, BLOCK_N, BLOCK_M): BLOCK_B problems per program, each side padded to a
    power of two of at least 16 (``tl.dot``'s minimum)."""
    return (triton.cdiv(B, block_b), block_b, max(16, triton.next_power_of_2(n)),
            max(16, triton.next_power_of_2(m)))


def sinkhorn_scaling_triton(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float, max_iter: int, tol: float,
    lo: float, hi: float, block_b: int = 16, v0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """(f, g, n_iter, err, bad) for a (B, n), b (B, m) and a shared cost (1, n, m); ``v0``
    (B, m): initial scalings (warm start), else 1 on b's support."""
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
    grid, block_b, block_n, block_m = launch_shape(B, n, m, block_b)
    _sinkhorn_scaling_kernel[(grid,)](
        a, b, K, a if v0 is None else v0.contiguous(), f, g, n_iter, err, bad,
        B, n, m, float(cmin), float(eps), int(max_iter), float(tol), lo, hi,
        BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_M=block_m,
        ACC=tl.float64 if out == torch.float64 else tl.float32, WARM=v0 is not None,
    )
    return f, g, n_iter, err, bad
