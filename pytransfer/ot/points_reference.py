"""Dense torch reference of point-cloud Sinkhorn: the specification in code (issue 12).

Shapes: x (B, n, d), y (B, m, d), a (B, n), b (B, m). The cost is C_ij = |x_i - y_j|^2 / 2
(p=2) or |x_i - y_j| (p=1). Potentials are in cost units, plan_ij = exp((f_i + g_j - C_ij)/eps)
on the support of a x b (the conventions of ``pytransfer.ot.sinkhorn``). This module forms the
(B, n, m) cost; the compiled and Triton backends never do.

Iterations follow an eps schedule (GeomLoss's eps-scaling, Feydy et al., "Interpolating between
Optimal Transport and MMD using Sinkhorn Divergences", section 3.2): iteration k runs at
schedule[min(k, S - 1)], one iteration per annealing stage, then at the final eps until the
row-marginal error is <= tol * mass or ``max_iter`` iterations ran at the final eps.
"""

from __future__ import annotations

import math

import torch


def eps_schedule(x: torch.Tensor, y: torch.Tensor, eps: float, p: int,
                 scaling: float | None) -> list[float]:
    """GeomLoss's ``epsilon_schedule``: from diameter^p down to eps, the blur (eps^(1/p))
    shrinking by ``scaling`` per stage. The diameter is the diagonal of the bounding box of
    both clouds. Without scaling, or when eps >= diameter^p, the schedule is [eps]."""
    if scaling is None:
        return [eps]
    pts = torch.cat([x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])]).detach()
    diameter = float((pts.max(0).values - pts.min(0).values).double().norm())
    if diameter <= 0 or diameter**p <= eps:
        return [eps]
    blur = eps ** (1 / p)
    start, stop, step = p * math.log(diameter), p * math.log(blur), p * math.log(scaling)
    count = max(0, math.ceil((stop - start) / step))  # numpy.arange's length
    return [diameter**p] + [math.exp(start + k * step) for k in range(count)] + [eps]


def shift(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Translate both clouds by the mean of x (the cost is translation-invariant): the GEMM
    form |x|^2 + |y|^2 - 2 x.y then cancels far less in float32."""
    c = x.mean(-2, keepdim=True)
    return x - c, y - c


def point_cost(x: torch.Tensor, y: torch.Tensor, p: int) -> torch.Tensor:
    """(B, n, m) cost from the GEMM form, clamped at 0. For p=1, squared distances within the
    rounding error of the GEMM form (4 machine epsilons of |x|^2 + |y|^2) count as 0, so that
    coincident points cost exactly 0 rather than the square root of rounding noise."""
    sx, sy = (x * x).sum(-1)[..., :, None], (y * y).sum(-1)[..., None, :]
    sq = (sx + sy - 2 * x @ y.transpose(-1, -2)).clamp_min(0)
    if p == 2:
        return sq / 2
    ok = sq > 4 * torch.finfo(sq.dtype).eps * (sx + sy)
    return torch.where(ok, sq, 1).sqrt() * ok  # NaN-free gradient at coincident points


def _lse(h: torch.Tensor, cost: torch.Tensor, eps: float, support: torch.Tensor) -> torch.Tensor:
    """LSE_j((h_j - C_ij)/eps) over the supported j, for every row i."""
    ninf = torch.tensor(float("-inf"), dtype=h.dtype, device=h.device)
    return torch.logsumexp(torch.where(support, h / eps, ninf)[:, None, :] - cost / eps, -1)


def _log(w: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.where(w > 0, w, 1))


def solve_dense(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, schedule: list[float],
                max_iter: int, tol: float, symmetric: bool = False):
    """(f, g, n_iter, err) for the cost (B, n, m); see :func:`solve`."""
    costT = cost.transpose(-1, -2)

    def lse(h, eps, support, transpose):
        return _lse(h, costT if transpose else cost, eps, support)

    return solve(lse, a, b, schedule, max_iter, tol, symmetric)


def solve(lse, a: torch.Tensor, b: torch.Tensor, schedule: list[float], max_iter: int,
          tol: float, symmetric: bool = False):
    """(f, g, n_iter, err). ``lse(h, eps, support, transpose)`` is LSE_j((h_j - C_ij)/eps) over
    the supported j for every row i (``transpose``: over i for every column j).

    Alternating updates f then g; with ``symmetric`` (a = b, C = C^T: the debiasing terms
    OT(a, a)) GeomLoss's averaged update f <- (f + T(f))/2 with g = f, one log-sum-exp per
    iteration."""
    S = len(schedule)
    total = S - 1 + max_iter
    sup_a, sup_b = a > 0, b > 0
    log_a, log_b = _log(a), _log(b)
    B = a.shape[0]
    f, g = torch.zeros_like(a), torch.zeros_like(b)
    n_iter = torch.zeros(B, dtype=torch.int64, device=a.device)
    err = torch.zeros(B, dtype=a.dtype, device=a.device)
    active = torch.ones(B, dtype=torch.bool, device=a.device)
    thr = tol * a.sum(-1)
    for it in range(total + 1):
        e = schedule[min(it, S - 1)]
        lse_r = lse(g, e, sup_b, False)
        if it >= S:  # the state was produced at the final eps: its row-marginal error
            cur = torch.where(sup_a, (torch.exp(f / e + lse_r) - a).abs(), 0).sum(-1)
            err = torch.where(active, cur, err)
            n_iter = torch.where(active, it, n_iter)
            stop = cur <= thr if tol > 0 else torch.zeros_like(active)
            active = active & ~stop & (it < total)
            if not bool(active.any()):
                break
        t = torch.where(sup_a, e * (log_a - lse_r), 0)
        if symmetric:
            f = torch.where(active[:, None], (f + t) / 2, f)
            g = f
        else:
            f = torch.where(active[:, None], t, f)
            lse_c = lse(f, e, sup_a, True)
            g = torch.where(active[:, None] & sup_b, e * (log_b - lse_c), g)
    e = schedule[-1]
    f = torch.where(sup_a, f, -e * lse_r)  # zero-mass rows: the c-transform (finite)
    if symmetric:
        g = f.clone()
    else:
        g = torch.where(sup_b, g, -e * lse(f, e, sup_a, True))
    return f, g, n_iter, err


def plan(cost, a, b, f, g, eps):
    ninf = torch.tensor(float("-inf"), dtype=f.dtype, device=f.device)
    fs = torch.where(a > 0, f / eps, ninf)
    gs = torch.where(b > 0, g / eps, ninf)
    return torch.exp(fs[:, :, None] + gs[:, None, :] - cost / eps)


def values_dense(cost, a, b, f, g, eps):
    """(<P, C>, <P, C> + eps KL(P || a b^T)) of the plan of (f, g); differentiable in cost."""
    P = plan(cost, a, b, f, g, eps)
    r = P.sum(-1)
    transport = (P * cost).sum((-2, -1))
    xlogx = torch.where(P > 0, P * torch.log(torch.where(P > 0, P, 1)), 0)
    ab = a[:, :, None] * b[:, None, :]
    kl = (xlogx - P * torch.where(P > 0, torch.log(torch.where(ab > 0, ab, 1)), 0)).sum((-2, -1))
    kl = kl - r.sum(-1) + a.sum(-1) * b.sum(-1)
    return transport, transport + eps * kl


def sinkhorn_points_reference(x, y, a, b, schedule, p, max_iter, tol, symmetric=False):
    """(f, g, n_iter, err) of the dense reference; x, y already shifted."""
    cost = point_cost(x, y, p)
    return solve_dense(cost, a, b, schedule, max_iter, tol, symmetric)
