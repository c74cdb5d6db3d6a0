"""Scaling-form Sinkhorn for a shared cost, stabilised by absorption (issue 4): the batched
GEMM loop (the reference, and the CPU backend for a few problems on a large K, with the fused
C++ half-step ``div_cpu``; otherwise the CPU runs ``pytransfer.ot.block``) and the constants
shared with the C++ and Triton kernels.

With K = exp(-(C - min C)/eps) computed once, an iteration for all B problems is two GEMMs,
    u = a / (v K^T),   v = b / (u K),
the same iterates as the log domain: f = eps log u + min C, g = eps log v. The marginal error
is a by-product of the next product, ||u * (K v) - a||_1. A problem whose scalings leave the
safe range is absorbed (Schmitzer 2019): its
last in-range scalings become log potentials, g = eps log v, and it continues in the log
domain from there; the others keep sharing K. Converged problems leave the working set, so a
GEMM only ever spans the active problems (per-problem early exit).

``method="auto"`` uses this path when the cost is shared and (max C - min C)/eps is at most
``AUTO_RANGE[dtype]`` (50 for float32, 500 for float64: K's smallest entry e^-50 / e^-500 is
far from underflow), and the log domain otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pytransfer import _ext

AUTO_RANGE = {torch.float32: 50.0, torch.float64: 500.0}
#: beyond this exponent range K's entries underflow: method="scaling" is refused
MAX_RANGE = {torch.float32: 80.0, torch.float64: 700.0}
#: scalings outside [lo, hi] trigger absorption. Chosen so that K v and K^T u stay normal
#: for K >= e^-AUTO_RANGE (float32: 1e-15 * e^-50 ~ 2e-37 > 1.2e-38).
SAFE_RANGE = {torch.float32: (1e-15, 1e15), torch.float64: (1e-80, 1e80)}

# (w, den, x_old, x_new, with_err) -> (err | None, bad mask | None when no problem is bad);
# writes x_new = w / den
DivFn = Callable[..., tuple[torch.Tensor | None, torch.Tensor]]


def div_reference(w, den, x_old, x_new, with_err):
    lo, hi = SAFE_RANGE[w.dtype]
    err = (x_old * den - w).abs().sum(-1) if with_err else None
    support = w > 0
    x_new.copy_(torch.where(support, w / torch.where(support, den, 1), 0))
    bad = (support & ~((x_new >= lo) & (x_new <= hi))).any(-1)
    return err, (bad if bool(bad.any()) else None)


def div_cpu(w, den, x_old, x_new, with_err):
    B, length = w.shape
    err = torch.empty(B, dtype=w.dtype)
    bad = torch.empty(B, dtype=torch.uint8)
    lo, hi = SAFE_RANGE[w.dtype]
    any_bad = _ext.call("scaling_div", w.dtype, _ext.src(w, B, length), _ext.src(den, B, length),
                        _ext.src(x_old, B, length), _ext.dst(x_new, B, length), B, length,
                        with_err, _ext.dst(err, B), _ext.dst(bad, B, dtype=torch.uint8), lo, hi)
    return (err if with_err else None), (bad.bool() if any_bad else None)


def scaling_range(cost: torch.Tensor, eps: float) -> float:
    """(max C - min C) / eps over the finite entries (+inf: forbidden pairs, K = 0 there):
    the exponent range of K (host sync)."""
    cost = cost.detach()
    hi = cost.max()
    if bool(torch.isinf(hi)):
        hi = cost.nan_to_num(posinf=float("-inf")).max()
    return float(hi - cost.min()) / eps


def warm_scalings(b, g_init, eps):
    """(v0, start_log) of a warm start: v0 = exp(g/eps) on b's support (1 where the problem
    starts in the log domain instead), start_log marks problems whose v0 leaves SAFE_RANGE
    (None when none does); (None, None) without a warm start."""
    if g_init is None:
        return None, None
    lo, hi = SAFE_RANGE[b.dtype]
    sup = b > 0
    v0 = torch.where(sup, torch.exp(g_init / eps), 0)
    start_log = (sup & ~((v0 >= lo) & (v0 <= hi))).any(-1)
    if not bool(start_log.any()):
        return v0, None
    return torch.where(start_log[:, None], sup.to(v0.dtype), v0), start_log


def sinkhorn_scaling(a, b, cost, eps, max_iter, tol, div: DivFn, log_solver, g_init=None):
    """(f, g, n_iter, err) for a (B, n), b (B, m), shared cost (1, n, m); see the module doc.
    ``g_init`` (B, m): warm start from v = exp(g/eps); a problem whose v leaves SAFE_RANGE
    starts in the log domain from g_init."""
    B = a.shape[0]
    C = cost[0]
    cmin = C.min()
    K = torch.exp(-(C - cmin) / eps)
    Kt = K.t().contiguous()
    thr = tol * a.sum(-1)
    f, g = torch.empty_like(a), torch.empty_like(b)
    n_iter = torch.zeros(B, dtype=torch.int64, device=a.device)
    err = torch.zeros_like(thr)
    absorbed_ids, absorbed_g, absorbed_it = [], [], []

    ids = torch.arange(B, device=a.device)
    A, Bw, T = a.contiguous(), b.contiguous(), thr
    U, U_new = torch.zeros_like(A), torch.empty_like(A)
    V, V_new = (Bw > 0).to(a.dtype), torch.empty_like(Bw)  # g = 0 on the support
    v0, start_log = warm_scalings(Bw, g_init, eps)
    if v0 is not None:
        V = v0.contiguous()
    KV, KtU = torch.empty_like(A), torch.empty_like(Bw)  # GEMM outputs, reused

    def keep(mask):
        nonlocal ids, A, Bw, T, U, U_new, V, V_new, KV, KtU
        ids, A, Bw, T = ids[mask], A[mask], Bw[mask], T[mask]
        U, U_new, V, V_new = U[mask], U_new[mask], V[mask], V_new[mask]
        KV, KtU = KV[mask], KtU[mask]

    def absorb(mask, V_good, it):
        absorbed_ids.append(ids[mask])
        absorbed_g.append(torch.where(Bw[mask] > 0, eps * torch.log(V_good[mask]), 0))
        absorbed_it.append(torch.full_like(ids[mask], it))
        keep(~mask)

    if start_log is not None:  # warm starts outside the range: the log domain from g_init
        absorbed_ids.append(ids[start_log])
        absorbed_g.append(g_init[start_log])
        absorbed_it.append(torch.zeros_like(ids[start_log]))
        keep(~start_log)
    it = 0
    while ids.numel():
        torch.matmul(V, Kt, out=KV)
        check = it == max_iter or (it > 0 and tol > 0)
        e, bad = div(A, KV, U, U_new, check)
        if check:
            stop = torch.ones_like(ids, dtype=torch.bool) if it == max_iter else e <= T
            if bool(stop.any()):  # finish them with the state (U, V) whose error is e
                i = ids[stop]
                log_kv = torch.log(KV[stop])
                f[i] = torch.where(A[stop] > 0, eps * torch.log(U[stop]), -eps * log_kv) + cmin
                g[i] = torch.where(Bw[stop] > 0, eps * torch.log(V[stop]),
                                   -eps * torch.log(KtU[stop]))
                n_iter[i], err[i] = it, e[stop]
                keep(~stop)
                bad = bad[~stop] if bad is not None and bool(bad[~stop].any()) else None
                if ids.numel() == 0:
                    break
        if bad is not None:
            absorb(bad, V, it)
            if ids.numel() == 0:
                break
        U, U_new = U_new, U
        torch.matmul(U, K, out=KtU)
        _, bad = div(Bw, KtU, V, V_new, False)
        if bad is not None:
            absorb(bad, V, it)
            if ids.numel() == 0:
                break
        V, V_new = V_new, V
        it += 1

    if absorbed_ids:  # continue absorbed problems in the log domain from their potentials
        ids_all, g_all, it_all = map(torch.cat, (absorbed_ids, absorbed_g, absorbed_it))
        for done in torch.unique(it_all).tolist():  # one call per iteration count already run
            sel = it_all == done
            i = ids_all[sel]
            fi, gi, ni, ei = log_solver(a[i], b[i], cost, eps, max(max_iter - done, 1), tol,
                                        g_all[sel])
            f[i], g[i], n_iter[i], err[i] = fi, gi, ni + done, ei
    return f, g, n_iter, err
